"""ACNet: parameter count and the authors' key layout, ACM maths, forward/backward, input rules, the authors'
released checkpoint, ImageNet initialisation of the three branches, ONNX.

Forward tests use a ResNet-18 stand-in (the paper uses ResNet-50); the ResNet-50 count uses the ``meta`` device.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torchvision

from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.acnet import AttentionComplementary
from rgbd_seg_ros.models.checkpoints import load_official


def test_parameter_count_and_the_authors_key_layout():
    with torch.device("meta"):
        model = build_model("acnet", 40, backbone="resnet50")
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params_m - 116.6) / 116.6 < 0.005, f"ACNet R50: {params_m:.2f} M vs 116.6 M"
    keys = model.state_dict().keys()
    assert len(keys) == 1260  # the authors' ACNet (40 classes) state dict has 1260 entries
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "conv1_d.weight",
        "bn1_d.weight",
        "layer1.0.conv1.weight",
        "layer1_d.0.downsample.0.weight",
        "layer4_m.2.bn3.running_var",
        "atten_rgb_0.1.weight",
        "atten_depth_4.1.bias",
        "agant0.0.weight",
        "agant4.1.running_mean",
        "deconv1.5.upsample.0.weight",
        "deconv4.2.conv2.weight",
        "final_conv.2.bn2.weight",
        "final_deconv.weight",
        "final_deconv.bias",
        "out5_conv.weight",
        "out2_conv.bias",
    ):
        assert key in keys, key
    assert model.conv1_d.weight.shape == (64, 1, 7, 7)
    assert model.final_deconv.weight.shape == (64, 40, 2, 2)  # 2×2 stride-2 transposed conv to the classes


def test_acm_output_is_input_times_sigmoid_of_pooled_projection():
    torch.manual_seed(0)
    acm = AttentionComplementary(16)
    x = torch.randn(2, 16, 5, 7)
    conv = acm[1]
    z = x.mean(dim=(2, 3))  # GAP, B×C
    v = torch.sigmoid(z @ conv.weight[:, :, 0, 0].T + conv.bias)  # φ is a full C×C matrix with bias
    torch.testing.assert_close(acm(x), x * v[:, :, None, None])


def test_forward_backward_resnet18_with_deep_supervision():
    torch.manual_seed(0)
    model = build_model("acnet", 6, backbone="resnet18")
    size = (256, 320)  # 240×320 is not a multiple of 32 (see test_input_rules)
    rgb, depth = torch.randn(1, 3, *size), torch.randn(1, 1, *size)
    out = model.train()(rgb, depth)
    assert set(out) == {"out", "aux"} and len(out["aux"]) == len(model.aux_weights) == 4
    assert out["out"].shape == (1, 6, *size)
    for aux, factor in zip(out["aux"], (2, 4, 8, 16)):  # out2..out5
        assert aux.shape == (1, 6, size[0] // factor, size[1] // factor)
    loss = out["out"].logsumexp(1).mean() + sum(
        w * a.logsumexp(1).mean() for w, a in zip(model.aux_weights, out["aux"])
    )
    loss.backward()
    for param in (
        model.conv1_d.weight,
        model.atten_depth_0[1].weight,
        model.layer1_m[0].conv1.weight,
        model.atten_rgb_4[1].weight,
        model.agant0[0].weight,
        model.out5_conv.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.eval()(rgb[..., :64, :96], depth[..., :64, :96]).shape == (1, 6, 64, 96)


@pytest.fixture(scope="module")
def r18():
    """A ResNet-18 ACNet (5 classes) in eval mode with calibrated BN statistics; tests only read it."""
    torch.manual_seed(0)
    model = build_model("acnet", 5, backbone="resnet18")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # one train-mode pass sets the running statistics to the batch's
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 96), torch.randn(4, 1, 64, 96))
    return model.eval()


def test_input_rules(r18):
    with pytest.raises(ValueError, match="divisible by 32"):
        r18(torch.zeros(1, 3, 240, 320), torch.zeros(1, 1, 240, 320))
    with pytest.raises(ValueError, match="B×1×H×W"):
        r18(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="differ"):
        r18(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 96))
    spec = r18.input_spec
    assert spec.depth_encoding == "depth" and spec.depth_channels == 1 and spec.size_divisor == 32
    assert spec.depth_norm.scale == 1.0  # metres
    assert spec.depth_norm.mean == pytest.approx((2.8424,), abs=1e-4)
    assert spec.depth_norm.std == pytest.approx((0.9933,), abs=1e-4)
    assert spec.rgb_norm.scale == 255.0
    assert spec.rgb_norm.mean == pytest.approx((0.4850, 0.4163, 0.3982), abs=1e-4)
    assert spec.rgb_norm.std == pytest.approx((0.2642, 0.2728, 0.2831), abs=1e-4)


def test_load_official_released_checkpoint(tmp_path, r18):
    # The authors' save_ckpt layout: {'global_step', 'epoch', 'state_dict', 'optimizer'}, keys without prefix.
    state = {k: v.clone() for k, v in r18.state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-3, "momentum": 0.9, "params": [0, 1]}]}
    path = tmp_path / "ckpt_epoch_1195.00.pth"
    torch.save({"global_step": 237805, "epoch": 1195, "state_dict": state, "optimizer": optimizer}, path)
    target = build_model("acnet", 5, backbone="resnet18").eval()
    report = load_official(target, path)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(state)
    x, d = torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(target(x, d), r18(x, d))


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # loading into a meta model is a no-op, by design
def test_load_official_reads_legacy_files_and_reports_foreign_keys(tmp_path, r18):
    # PyTorch 0.4's non-zip format (the released file's), with a DataParallel prefix and a key ACNet lacks.
    state = {"module.conv1.weight": r18.conv1.weight.detach().clone(), "module.atten_rgb_5.1.weight": torch.zeros(1)}
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"global_step": 0, "epoch": 0, "state_dict": state, "optimizer": {}}, path, _use_new_zipfile_serialization=False
    )
    with torch.device("meta"):
        target = build_model("acnet", 5, backbone="resnet18")
    with pytest.raises(ValueError, match="atten_rgb_5"):
        load_official(target, path)
    with pytest.warns(UserWarning, match="missing"):
        report = load_official(target, path, strict=False)
    assert report.loaded == ["conv1.weight"] and report.unexpected == ["atten_rgb_5.1.weight"]


def test_imagenet_weights_fill_all_three_branches(tmp_path):
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet, path)
    model = build_model("acnet", 5, backbone="resnet18", pretrained=str(path))
    got = model.state_dict()
    torch.testing.assert_close(got["conv1.weight"], imagenet["conv1.weight"])
    torch.testing.assert_close(got["conv1_d.weight"], imagenet["conv1.weight"].mean(dim=1, keepdim=True))
    torch.testing.assert_close(got["bn1_d.running_var"], imagenet["bn1.running_var"])
    for branch in ("", "_d", "_m"):
        torch.testing.assert_close(got[f"layer3{branch}.1.conv2.weight"], imagenet["layer3.1.conv2.weight"])


def test_onnx_runtime_matches_torch(r18):
    import onnxruntime as ort

    torch.manual_seed(1)
    rgb, depth = torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            r18,
            (rgb, depth),
            buf,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["rgb", "depth"],
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy()})
    with torch.no_grad():
        ref = r18(rgb, depth).numpy()
    scale = float(np.abs(ref).max())
    assert got.shape == ref.shape and scale > 1.0  # logits of a realistic magnitude, not ~0
    # 1e-4 relative to the logit range: float32 PyTorch itself is ~1e-5 of the range away from float64 here
    assert np.abs(got - ref).max() <= 1e-4 * scale
