"""SA-Gate: Table 1 parameter count, gate maths, tied shortcut, forward/backward, the authors' checkpoints, ONNX.

Forward tests use a ResNet-18 stand-in (the paper uses ResNet-50/101); parameter counts use ResNet-50 on the
``meta`` device (no memory, no arithmetic).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.depth.encode import IMAGENET_MEAN, IMAGENET_STD
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.backbones import ResNet
from rgbd_seg_ros.models.checkpoints import load_checkpoint, load_official, save_checkpoint
from rgbd_seg_ros.models.coarse import coarse_logits
from rgbd_seg_ros.models.sagate import SAGate


def _params(model: torch.nn.Module, *, aux: bool) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if aux or "aux" not in n)


def test_parameter_count_matches_table1_and_the_shortcut_tie_is_optional():
    with torch.device("meta"):
        tied = build_model("sagate", 40, backbone="resnet50")
        untied = build_model("sagate", 40, backbone="resnet50", share_shortcut=False)
    params_m = _params(tied, aux=False) / 1e6
    assert abs(params_m - 63.4) / 63.4 < 0.005, f"SA-Gate R50 without aux: {params_m:.2f} M vs paper 63.4 M"
    assert _params(tied, aux=True) > _params(tied, aux=False)  # the aux head exists and is named "aux"
    shortcuts = sum(
        p.numel() for i in range(1, 5) for p in getattr(tied.backbone, f"layer{i}")[0].downsample.parameters()
    )
    assert _params(untied, aux=False) - _params(tied, aux=False) == shortcuts  # one more copy of each shortcut
    block = tied.backbone.layer3[0]
    assert block.downsample is block.hha_downsample
    assert untied.backbone.layer3[0].downsample is not untied.backbone.layer3[0].hha_downsample
    keys = tied.state_dict().keys()
    assert {"backbone.layer3.0.downsample.0.weight", "backbone.layer3.0.hha_downsample.0.weight"} <= keys
    # layer4 dilated with multi-grid 2/4/8 at output stride 16, as the authors' code
    assert [b.conv2.dilation[0] for b in tied.backbone.layer4] == [2, 4, 8]
    assert tied.backbone.layer4[0].conv2.stride == (1, 1)


def _mlp(fsp, guide: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """σ(W2 ReLU(W1 [GAP(guide) ‖ GAP(main)] + b1) + b2), written out from the Linear weights."""
    fc1, fc2 = fsp.filter.fc[0], fsp.filter.fc[2]
    g = torch.cat((guide.mean(dim=(2, 3)), main.mean(dim=(2, 3))), dim=1)
    hidden = torch.relu(g @ fc1.weight.T + fc1.bias)
    return torch.sigmoid(hidden @ fc2.weight.T + fc2.bias)[:, :, None, None]


def test_aggregation_weights_are_a_per_pixel_softmax():
    torch.manual_seed(0)
    gate = SAGate(32).eval()
    rgb, hha = torch.randn(2, 32, 5, 7), torch.randn(2, 32, 5, 7)
    a_rgb, a_hha = gate.aggregation_weights(rgb, hha)
    assert a_rgb.shape == (2, 1, 5, 7)
    torch.testing.assert_close(a_rgb + a_hha, torch.ones_like(a_rgb))
    assert a_rgb.min() > 0 and a_hha.min() > 0 and a_rgb.std() > 0  # varies per pixel
    # the weights act on the *input* features (Eq. 8), and both streams move half-way towards the merge
    (rgb_out, hha_out), merged = gate(rgb, hha)
    torch.testing.assert_close(merged, rgb * a_rgb + hha * a_hha)
    torch.testing.assert_close(rgb_out, torch.relu((rgb + merged) / 2))
    torch.testing.assert_close(hha_out, torch.relu((hha + merged) / 2))


@pytest.mark.parametrize("zeroed", ["hha", "rgb"])
def test_recalibration_with_one_modality_zeroed(zeroed):
    torch.manual_seed(1)
    gate = SAGate(32, reduction=4).eval()
    live = torch.randn(2, 32, 4, 6)
    zero = torch.zeros_like(live)
    rgb, hha = (live, zero) if zeroed == "hha" else (zero, live)
    rec_rgb, rec_hha = gate.recalibrate(rgb, hha)
    if zeroed == "hha":
        torch.testing.assert_close(rec_rgb, rgb)  # RGB_rec = RGB + W_hha·0
        torch.testing.assert_close(rec_hha, rgb * _mlp(gate.fsp_hha, rgb, hha))  # HHA_rec = 0 + W_rgb·RGB
    else:
        torch.testing.assert_close(rec_hha, hha)
        torch.testing.assert_close(rec_rgb, hha * _mlp(gate.fsp_rgb, hha, rgb))
    a_rgb, a_hha = gate.aggregation_weights(rgb, hha)
    (_, _), merged = gate(rgb, hha)
    torch.testing.assert_close(merged, live * (a_rgb if zeroed == "hha" else a_hha))


def test_forward_backward_resnet18_240x320_with_aux():
    torch.manual_seed(0)
    model = build_model("sagate", 7, backbone="resnet18")
    rgb, hha = torch.randn(2, 3, 240, 320), torch.randn(2, 3, 240, 320)
    out = model.train()(rgb, hha)
    assert set(out) == {"out", "aux"} and len(out["aux"]) == len(model.aux_weights) == 1
    assert model.aux_weights == (0.2,)
    for logits in (out["out"], *out["aux"]):
        assert logits.shape == (2, 7, 240, 320)
    loss = out["out"].logsumexp(1).mean() + model.aux_weights[0] * out["aux"][0].logsumexp(1).mean()
    loss.backward()
    gate = model.backbone.sagates[0]
    for param in (
        gate.gate_rgb.weight,
        gate.fsp_hha.filter.fc[0].weight,
        model.backbone.hha_conv1.weight,
        model.backbone.layer1[0].hha_conv1.weight,
        model.aux_head[0].weight,
        model.head.aspp.pool_red_conv.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.eval()(rgb[:1, :, :64, :96], hha[:1, :, :64, :96]).shape == (1, 7, 64, 96)


def test_input_checks_and_spec(trained_like):
    model = trained_like
    with pytest.raises(ValueError, match="B×3×H×W"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 96))
    spec = model.input_spec
    assert spec.depth_encoding == "hha" and spec.depth_channels == 3
    for norm in (spec.rgb_norm, spec.depth_norm):  # HHA normalised like RGB: /255, ImageNet mean/std
        assert norm.scale == 255.0 and norm.mean == IMAGENET_MEAN and norm.std == IMAGENET_STD


# The authors' layout differs from ours only in the deep stem (a Sequential ``conv1.{0,1,3,4,6}`` + ``bn1``)
# and the aux head (``head.auxlayer.block.{0,1,4}``); every other key is theirs verbatim.
_AUTHORS_STEM = {
    "conv1.": "conv1.0.",
    "bn1.": "conv1.1.",
    "conv2.": "conv1.3.",
    "bn2.": "conv1.4.",
    "conv3.": "conv1.6.",
}


def _to_authors_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("backbone.", "backbone.hha_"):
            rest = key.removeprefix(prefix)
            if rest != key and not rest.startswith("layer"):
                if rest.startswith("bn3."):
                    key = prefix + "bn1." + rest[4:]
                for ours, theirs in _AUTHORS_STEM.items():
                    if rest.startswith(ours):
                        key = prefix + theirs + rest[len(ours) :]
        out[key.replace("aux_head.", "head.auxlayer.block.")] = value
    return out


def _calibrate_bn(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """One train-mode pass with cumulative BN statistics, so eval-mode activations are normalised."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(*inputs)
    model.eval()


@pytest.fixture(scope="module")
def trained_like():
    """A ResNet-18 SA-Gate (5 classes) in eval mode with calibrated BN statistics; tests only read it."""
    torch.manual_seed(0)
    model = build_model("sagate", 5, backbone="resnet18")
    _calibrate_bn(model, torch.randn(4, 3, 64, 96), torch.randn(4, 3, 64, 96))
    return model


def test_load_official_training_checkpoint(tmp_path, trained_like):
    state = _to_authors_layout(trained_like.state_dict())
    for key in (
        "backbone.conv1.0.weight",
        "backbone.hha_conv1.6.weight",
        "backbone.bn1.running_var",
        "backbone.layer1.0.hha_conv1.weight",
        "backbone.layer2.0.hha_downsample.1.weight",
        "backbone.sagates.0.fsp_rgb.filter.fc.0.weight",
        "backbone.sagates.3.gate_hha.bias",
        "head.aspp.map_convs.3.weight",
        "head.aspp.pool_red_conv.weight",
        "head.last_conv.4.running_mean",
        "head.classify.bias",
        "head.auxlayer.block.4.weight",
    ):
        assert key in state, key
    path = tmp_path / "epoch-400.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 400, "iteration": 39200}, path)

    target = build_model("sagate", 5, backbone="resnet18").eval()
    report = load_official(target, path)
    assert not report.missing and not report.unexpected
    x, h = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(target(x, h), trained_like(x, h))


def test_save_and_load_checkpoint_keeps_the_tied_shortcut(tmp_path, trained_like):
    path = save_checkpoint(trained_like, tmp_path / "sagate")
    loaded, _ = load_checkpoint(path)
    assert loaded.backbone.layer2[0].downsample is loaded.backbone.layer2[0].hha_downsample
    x, h = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, h), trained_like(x, h))


def test_imagenet_weights_go_into_both_streams(tmp_path):
    torch.manual_seed(0)
    imagenet = ResNet(18, stem="deep")
    path = tmp_path / "resnet18_v1c.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("sagate", 4, backbone="resnet18", pretrained=str(path))
    ref = imagenet.state_dict()
    got = model.backbone.state_dict()
    for ours, theirs in (
        ("conv1.weight", "conv1.weight"),
        ("hha_conv3.weight", "conv3.weight"),
        ("hha_bn3.running_var", "bn3.running_var"),
        ("layer3.1.conv2.weight", "layer3.1.conv2.weight"),
        ("layer3.1.hha_conv2.weight", "layer3.1.conv2.weight"),
        ("layer2.0.hha_downsample.0.weight", "layer2.0.downsample.0.weight"),
    ):
        torch.testing.assert_close(got[ours], ref[theirs])


def test_onnx_runtime_matches_torch(trained_like):
    import onnxruntime as ort

    model = trained_like
    torch.manual_seed(1)
    rgb, hha = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (rgb, hha),
            buf,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["rgb", "hha"],
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"rgb": rgb.numpy(), "hha": hha.numpy()})
    with torch.no_grad():
        ref = model(rgb, hha).numpy()
    scale = float(np.abs(ref).max())
    assert got.shape == ref.shape and scale > 1.0  # logits of a realistic magnitude, not ~0
    # 1e-4 relative to the logit range: float32 PyTorch itself is ~1e-5 of the range away from float64 here
    assert np.abs(got - ref).max() <= 1e-4 * scale


def test_coarse_logits_are_the_output_before_its_final_upsampling(trained_like):
    """Inside `coarse_logits` the eval forward returns the decoder's 1/4 logits; upsampled bilinearly with
    align_corners=True (the authors') they are the normal output."""
    torch.manual_seed(2)
    rgb, hha = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full = trained_like(rgb, hha)
        with coarse_logits(trained_like) as align_corners:
            coarse = trained_like(rgb, hha)
    assert align_corners is True and coarse.shape == (1, 5, 16, 24)
    upsampled = F.interpolate(coarse, size=(64, 96), mode="bilinear", align_corners=True)
    torch.testing.assert_close(upsampled, full, rtol=1e-5, atol=1e-5)
