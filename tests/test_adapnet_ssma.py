"""AdapNet++ and SSMA: parameter counts at the paper's settings, the SSMA block, TF padding, forward/backward,
staged fusion training from unimodal checkpoints, and ONNX Runtime parity."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rgbd_seg_ros.models import build_model, input_spec_for
from rgbd_seg_ros.models.adapnet import DILATIONS, AdapNetEncoder, AdapNetPP, SamePad2d
from rgbd_seg_ros.models.checkpoints import load_checkpoint, save_checkpoint
from rgbd_seg_ros.models.ssma import SSMA, SSMABlock, build_from_experts


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def raw_image(b: int = 2, h: int = 16, w: int = 32, seed: int = 0) -> torch.Tensor:
    """B×3×H×W in 0..255 whose global brightness and contrast vary per image (pooled BNs see real variance)."""
    g = torch.Generator().manual_seed(seed)
    contrast = torch.rand(b, 1, 1, 1, generator=g)
    base = torch.rand(b, 3, 1, 1, generator=g)
    return (torch.rand(b, 3, h, w, generator=g) * contrast + (1 - contrast) * base) * 255


def unit_scale_logits(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Eval mode with the default BN statistics (no mean subtraction, hence no float32 cancellation), and the
    last BN rescaled so the logits are O(1): an absolute ONNX tolerance of 1e-4 is then meaningful.

    (BN statistics calibrated on random images make this random-weight network ill-conditioned: float32 torch
    itself then differs from float64 by ~1e-3.)
    """
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
        model.decoder.up3[1].running_var.copy_(out.square().mean(dim=(0, 2, 3)))


# --- parameter counts ----------------------------------------------------------------------------------------


def test_adapnet_parameter_count_matches_paper():
    model = build_model("adapnet", 12)  # Cityscapes: 11 classes + void
    assert n_params(model) == pytest.approx(30.20e6, rel=0.01)
    assert n_params(model.encoder.aspp) == pytest.approx(2.04e6, rel=0.01)  # Table 11, eASPP
    assert n_params(model.decoder) == pytest.approx(4.59e6, rel=0.01)  # Table 15, AdapNet++ decoder


def test_ssma_parameter_count_matches_paper():
    model = build_model("ssma", 12, modality="hha")
    assert n_params(model) == pytest.approx(56.44e6, rel=0.01)


def test_variants_differ_where_paper_and_code_differ():
    code = AdapNetEncoder("code")
    paper = AdapNetEncoder("paper")
    assert code.layer3.units[5].conv2.dilations == (1, 2) and paper.layer3.units[5].conv2.dilations == (1, 16)
    assert code.layer4.units[2].conv2.dilations == (2, 2) and paper.layer4.units[2].conv2.dilations == (2, 16)
    assert code.layer4.units[2].dropout.p == pytest.approx(0.7) and paper.layer4.units[2].dropout.p == 0.5
    assert code.layer1.units[0].shortcut_from_conv1 and not paper.layer1.units[0].shortcut_from_conv1
    assert n_params(code) == n_params(paper)  # dilations do not change weight shapes
    assert len(DILATIONS["paper"]) == 8


@pytest.mark.parametrize(
    ("eta_on", "hidden"),
    [("2c", 48 // 6), ("c", 24 // 6)],
)
def test_ssma_eta_applies_to_c_or_2c(eta_on, hidden):
    block = SSMABlock(24, eta=6, eta_on=eta_on)
    assert block.reduce.out_channels == hidden and block.expand.out_channels == 48


# --- SSMA block ---------------------------------------------------------------------------------------------


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize(("kernel", "bn"), [(1, True), (3, True), (3, False)])
def test_ssma_block_is_bn_of_conv_of_gated_concat(kernel, bn):
    block = SSMABlock(8, eta=4, fusion_kernel=kernel, fusion_bn=bn)
    _randomise(block)
    block.eval()
    xa, xb = torch.randn(2, 8, 5, 7), torch.randn(2, 8, 5, 7)
    xab = torch.cat([xa, xb], 1)
    hidden = F.relu(F.conv2d(xab, block.reduce.weight, block.reduce.bias, padding=1))
    s = torch.sigmoid(F.conv2d(hidden, block.expand.weight, block.expand.bias, padding=1))
    fused = F.conv2d(s * xab, block.fuse.weight, block.fuse.bias, padding=kernel // 2)
    if bn:
        fused = F.batch_norm(fused, block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias)
    torch.testing.assert_close(block(xa, xb), fused)
    assert s.std() > 0.05  # the gate really varies per element (not a constant)


def test_ssma_gate_selects_elementwise():
    """A closed gate (s → 0) removes the inputs; an open gate (s → 1) passes the plain concatenation."""
    block = SSMABlock(4, eta=2, fusion_kernel=1, fusion_bn=False)
    _randomise(block, seed=1)
    xa, xb = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        block.expand.weight.zero_()
        block.expand.bias.fill_(-30.0)
        closed = block(xa, xb)
        block.expand.bias.fill_(30.0)
        opened = block(xa, xb)
    bias = block.fuse.bias.view(1, -1, 1, 1).expand_as(closed)
    torch.testing.assert_close(closed, bias, atol=1e-6, rtol=0)
    torch.testing.assert_close(opened, F.conv2d(torch.cat([xa, xb], 1), block.fuse.weight, block.fuse.bias))


def test_ssma_block_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        SSMABlock(4, 2)(torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 4))


# --- TF "SAME" padding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "kernel", "pads"), [(32, 7, (2, 3)), (33, 7, (3, 3)), (32, 3, (0, 1)), (33, 3, (1, 1))])
def test_same_pad_follows_tensorflow_formula(n, kernel, pads):
    out = SamePad2d(kernel, 2)(torch.zeros(1, 1, n, n))
    assert out.shape[-1] == n + sum(pads)
    marked = SamePad2d(kernel, 2, value=1.0)(torch.zeros(1, 1, n, n))[0, 0, n // 2]
    assert int(marked[: pads[0]].sum()) == pads[0] and int(marked[len(marked) - pads[1] :].sum()) == pads[1]


def test_tf_padding_changes_strided_alignment_only():
    torch.manual_seed(0)
    sym, tf = AdapNetEncoder(), AdapNetEncoder(tf_padding=True)
    tf.load_state_dict(sym.state_dict())  # same keys: the padding layer has no parameters
    sym.eval(), tf.eval()
    x = raw_image(1, 32, 32)
    a, b = sym.forward_trunk(x), tf.forward_trunk(x)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert not torch.allclose(a[0], b[0])


# --- forward / backward -------------------------------------------------------------------------------------


def test_adapnet_forward_backward_and_eval_shapes():
    model = build_model("adapnet", 5)
    x = raw_image()
    out = model(x, None)
    assert out["out"].shape == (2, 5, 16, 32)
    assert [a.shape for a in out["aux"]] == [(2, 5, 16, 32)] * 2 and model.aux_weights == (0.6, 0.5)
    loss = out["out"].mean() + sum(w * a.mean() for w, a in zip(model.aux_weights, out["aux"]))
    loss.backward()
    assert model.encoder.conv1.weight.grad is not None and model.decoder.aux8[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x, None).shape == (2, 5, 16, 32)
    spec = input_spec_for("adapnet")
    assert spec.depth_encoding == "none" and spec.rgb_order == "bgr" and spec.size_divisor == 16


def test_adapnet_depth_expert_reads_second_input_and_checks_size():
    model = AdapNetPP(3, modality="jet", aux=False).eval()
    with torch.no_grad():
        assert model(None, raw_image(1, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(None, raw_image(1, 16, 24))
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(None, None)


def test_ssma_forward_backward_reaches_both_encoders_and_fusion():
    model = build_model("ssma", 4, modality="jet")
    rgb, jet = raw_image(seed=0), raw_image(seed=1)
    out = model(rgb, jet)
    assert out["out"].shape == (2, 4, 16, 32) and len(out["aux"]) == 2
    out["out"].sum().backward()
    for module in (model.encoder_rgb, model.encoder_depth, model.ssma_latent, model.ssma_skip8, model.decoder.att4):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="differ in size"):
        model(rgb, raw_image(2, 16, 16))


# --- staged training ----------------------------------------------------------------------------------------


def test_ssma_from_unimodal_checkpoints_and_frozen_encoders(tmp_path):
    torch.manual_seed(1)
    rgb_expert, hha_expert = AdapNetPP(3, "rgb"), AdapNetPP(3, "hha")
    rgb_file = tmp_path / "adapnet_rgb.safetensors"
    save_file(rgb_expert.state_dict(), str(rgb_file))

    torch.manual_seed(2)
    model = build_from_experts(3, str(rgb_file), hha_expert, freeze_encoders=True, modality="hha")
    assert model.config["options"] == {"freeze_encoders": True, "modality": "hha"}  # no expert paths stored
    torch.testing.assert_close(model.encoder_rgb.state_dict(), rgb_expert.encoder.state_dict())
    torch.testing.assert_close(model.encoder_depth.state_dict(), hha_expert.encoder.state_dict())
    assert not torch.equal(model.decoder.up1[0].weight, rgb_expert.decoder.up1[0].weight)  # decoder is fresh

    model.train()
    assert not model.encoder_rgb.training and not model.encoder_depth.training and model.decoder.training
    stats = model.encoder_rgb.layer2.norm.running_mean.clone()
    out = model(raw_image(), raw_image(seed=3))
    (out["out"].mean() + out["aux"][0].mean()).backward()
    torch.testing.assert_close(model.encoder_rgb.layer2.norm.running_mean, stats)  # BN frozen
    assert all(p.grad is None for e in model.encoders for p in e.parameters())
    assert model.ssma_latent.reduce.weight.grad is not None
    groups = model.param_groups(fusion_lr=1e-5)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-5

    saved = save_checkpoint(model, tmp_path / "ssma")  # the options rebuild the model without the expert files
    rgb_file.unlink()
    restored, _ = load_checkpoint(saved)
    assert restored.encoders_frozen
    torch.testing.assert_close(restored.state_dict(), model.state_dict())

    model.freeze_encoders(False)
    assert [g["lr"] for g in model.param_groups()] == [1e-4, 1e-3]
    assert model.encoder_rgb.training


def test_ssma_rejects_wrong_expert():
    model = SSMA(3, modality="hha")
    hha_expert = AdapNetPP(3, "hha", aux=False)
    with pytest.raises(ValueError, match="AdapNet\\+\\+ on 'rgb', got one on 'hha'"):
        model.load_experts(hha_expert, hha_expert)
    with pytest.raises(ValueError, match="no AdapNet"):
        model.load_experts({"decoder.up1.0.weight": torch.zeros(1)}, hha_expert)


# --- ONNX ---------------------------------------------------------------------------------------------------


def onnx_parity(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """Export with the TorchScript exporter, run in ONNX Runtime, return max |torch − ORT|."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, inputs, buf, dynamo=False, opset_version=17, input_names=["rgb", "second"][: len(inputs)]
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    assert got.shape == ref.shape
    assert 0.1 < np.abs(ref).max() < 100  # a non-trivial, O(1) output
    return float(np.abs(got - ref).max())


def test_ssma_onnx_matches_torch():
    torch.manual_seed(0)
    model = SSMA(4, modality="hha")
    rgb, hha = raw_image(1, 32, 32, seed=4), raw_image(1, 32, 32, seed=5)
    unit_scale_logits(model, rgb, hha)
    assert onnx_parity(model, rgb, hha) < 1e-4


def test_adapnet_tf_padding_onnx_matches_torch():
    torch.manual_seed(0)
    model = AdapNetPP(4, tf_padding=True)
    x = raw_image(1, 32, 48, seed=9)
    unit_scale_logits(model, x)
    assert onnx_parity(model, x) < 1e-4
