"""SGNet: paper parameter counts, S-Conv placement, forward/backward, inputs, ImageNet loading, ONNX, MACs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from rgbd_seg_ros.models import build_model, list_models
from rgbd_seg_ros.models.coarse import coarse_logits
from rgbd_seg_ros.models.sconv import SConv
from rgbd_seg_ros.models.summary import count_macs, count_params, model_row, model_table


def _meta(name: str, backbone: str, **options):
    with torch.device("meta"):
        return build_model(name, 40, backbone=backbone, **options)


@pytest.mark.parametrize(
    ("name", "backbone", "options", "paper_m"),
    [
        ("sgnet", "resnet101", {}, 58.3),
        ("sgnet_aspp", "resnet101", {}, 64.7),
        ("sgnet", "resnet50", {}, 39.3),
        ("sgnet", "resnet101", {"sconv_stages": ()}, 56.8),  # the paper's baseline (Table I)
    ],
)
def test_parameter_counts_match_paper(name, backbone, options, paper_m):
    params = count_params(_meta(name, backbone, **options)) / 1e6
    assert abs(params - paper_m) / paper_m < 0.005, f"{name}-{backbone}: {params:.2f} M vs paper {paper_m} M"


def test_sconv_placement_strides_and_dilations_follow_the_authors():
    model = _meta("sgnet", "resnet101")
    placed = {
        stage: {i for i, block in enumerate(getattr(model, f"layer{stage}")) if isinstance(block.conv2, SConv)}
        for stage in range(1, 5)
    }
    assert placed == {1: {0, 1, 2}, 2: {0, 2, 3}, 3: {0, 21, 22}, 4: {0, 1, 2}}
    assert model.layer2[0].conv2.stride == 2 and model.layer3[0].conv2.stride == 2
    assert all(getattr(model, f"layer{s}")[i].conv2.dilation == 1 for s, idx in placed.items() for i in idx)
    assert model.layer3[1].conv2.dilation == (2, 2)  # plain blocks keep the stage dilation
    dilated = _meta("sgnet", "resnet101", sconv_dilation=True)
    assert dilated.layer3[21].conv2.dilation == 2 and dilated.layer4[0].conv2.dilation == 4
    basic = _meta("sgnet", "resnet34")
    assert {i for i, b in enumerate(basic.layer3) if isinstance(b.conv1, SConv)} == {0, 4, 5}


def _check_train_step(model, batch: int, size: tuple[int, int], channels: int) -> None:
    torch.manual_seed(0)
    rgb = torch.randn(batch, 3, *size)
    depth = torch.rand(batch, channels, *size) * 4 + 0.5
    out = model.train()(rgb, depth)
    assert set(out) == {"out", "aux"} and len(out["aux"]) == len(model.aux_weights)
    for logits in (out["out"], *out["aux"]):
        assert logits.shape == (batch, model.num_classes, *size)
    loss = out["out"].logsumexp(1).mean() + sum(
        w * a.logsumexp(1).mean() for w, a in zip(model.aux_weights, out["aux"])
    )
    loss.backward()
    first = next(m for m in model.modules() if isinstance(m, SConv))
    for part in (first.offset_generator.weight, first.weight_generator2.weight, model.dsn3[0].weight):
        assert part.grad is not None and part.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "batch"), [("sgnet", 1), ("sgnet_aspp", 2)])  # ASPP's pooled BN needs batch ≥ 2
def test_forward_backward_resnet18_240x320(name, batch):
    model = build_model(name, 13, backbone="resnet18")
    _check_train_step(model, batch, (240, 320), 1)


@pytest.mark.parametrize(
    ("name", "backbone", "options"),
    [
        ("sgnet_aspp", "resnet50", {"output_stride": 8}),  # bottleneck S-Convs (the authors' models)
        ("sgnet", "resnet34", {"guidance": "xyz", "sconv_dilation": True}),
    ],
)
def test_forward_backward_other_variants_small(name, backbone, options):
    model = build_model(name, 7, backbone=backbone, **options)
    _check_train_step(model, 2, (48, 64), model.input_spec.depth_channels)


def test_eval_returns_logits_at_input_size_and_tolerates_invalid_depth():
    model = build_model("sgnet", 9, backbone="resnet18").eval()
    depth = torch.rand(1, 1, 100, 130) * 4
    depth[..., :30, :40] = float("nan")  # invalid depth (RGBDFrame convention)
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, 100, 130), depth)
    assert logits.shape == (1, 9, 100, 130) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["sgnet", "sgnet_aspp"])
def test_coarse_logits_are_the_output_before_its_final_upsampling(name):
    """Inside `coarse_logits` the eval forward returns the 1/16 head logits; upsampled bilinearly with
    align_corners=True they are the normal output. Outside it, and in training, nothing changes."""
    torch.manual_seed(0)
    model = build_model(name, 9, backbone="resnet18").eval()
    rgb, depth = torch.randn(2, 3, 96, 128), torch.rand(2, 1, 96, 128) * 4
    with torch.inference_mode():
        full = model(rgb, depth)
        with coarse_logits(model) as align_corners:
            coarse = model(rgb, depth)
        again = model(rgb, depth)
    assert align_corners is True and coarse.shape == (2, 9, 6, 8)
    upsampled = F.interpolate(coarse, size=(96, 128), mode="bilinear", align_corners=True)
    torch.testing.assert_close(upsampled, full, rtol=1e-5, atol=1e-5)
    assert again.shape == full.shape, "the flag is restored on leaving"
    with coarse_logits(model.train()):
        assert model(rgb, depth)["out"].shape[-2:] == (96, 128), "training always upsamples"


def test_bad_inputs_raise_clear_errors():
    model = build_model("sgnet", 4, backbone="resnet18").eval()
    rgb = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        model(rgb, torch.rand(1, 3, 32, 32))  # XYZ given to a depth-guided model
    with pytest.raises(ValueError, match="depth_input"):
        model(rgb, torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="rgb"):
        model(torch.randn(1, 4, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="guidance"):
        build_model("sgnet", 4, backbone="resnet18", guidance="hha")
    with pytest.raises(ValueError, match="backbones"):
        build_model("sgnet", 4, backbone="resnet152")


def test_registry_and_input_specs():
    assert {"sgnet", "sgnet_aspp"} <= set(list_models())
    spec = _meta("sgnet", "resnet18").input_spec
    assert spec.rgb_order == "bgr" and spec.depth_encoding == "depth" and spec.depth_channels == 1
    assert spec.rgb_norm.scale == 1.0 and spec.rgb_norm.std == (1.0, 1.0, 1.0)
    assert spec.rgb_norm.mean == pytest.approx((104.008, 116.669, 122.675))  # caffe means, B, G, R
    xyz = _meta("sgnet_aspp", "resnet18", guidance="xyz", stem="torchvision").input_spec  # torchvision weights
    assert xyz.depth_channels == 3 and xyz.rgb_order == "rgb" and xyz.rgb_norm.scale == 255.0
    assert _meta("sgnet", "resnet18", stem="torchvision", norm="caffe").input_spec.rgb_order == "bgr"
    with pytest.raises(ValueError, match="norm"):
        build_model("sgnet", 4, backbone="resnet18", norm="bgr")


def test_imagenet_weights_load_by_name_into_sconv(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("sgnet", 5, backbone="resnet18", stem="torchvision", pretrained=str(tmp_path / "resnet18.pth"))
    assert isinstance(model.layer2[0].conv1, SConv)
    torch.testing.assert_close(model.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    torch.testing.assert_close(model.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_with_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from rgbd_seg_ros.onnx_ops import export_onnx

    torch.manual_seed(0)
    model = build_model("sgnet", 6, backbone="resnet18").eval()
    for module in model.modules():
        if isinstance(module, SConv):  # non-zero, fractional offsets exercise the offset layout
            torch.nn.init.normal_(module.offset_generator.weight, std=0.02)
            torch.nn.init.normal_(module.offset_generator.bias, std=1.0)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    rgb, depth = torch.randn(1, 3, 64, 80), torch.rand(1, 1, 64, 80) * 4
    path = export_onnx(model, (rgb, depth), tmp_path / "sgnet.onnx", input_names=["rgb", "depth"])
    assert "DeformConv" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy()})
    with torch.no_grad():
        expected = model(rgb, depth).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, (rgb, depth), tmp_path / "old.onnx", opset=17)


def test_mac_count_includes_deformable_convs():
    sconv = SConv(16, 32, stride=2)
    x, guide = torch.randn(1, 16, 20, 24), torch.rand(1, 1, 20, 24)
    h, w, ho, wo = 20, 24, 10, 12
    phi = (1 * 64 + 64 * 64 + 64 * 64) * 9 * h * w
    eta = 64 * 18 * 9 * ho * wo
    weight_gen = 9 * 64 * 9 * ho * wo + 9 * 64 * 64 * 9  # fused DCNv1 (K×64×3×3) + the kernel product itself
    main = 32 * 16 * 9 * ho * wo
    assert count_macs(sconv, x, guide) == phi + eta + weight_gen + main


def test_model_table_covers_every_sgnet_backbone():
    rows = {r.backbone: r for r in model_table(size=(240, 320), models=["sgnet"])}
    assert set(rows) == {"resnet18", "resnet34", "resnet50", "resnet101"}
    assert rows["resnet101"].params_m == pytest.approx(58.3, rel=0.005)
    assert 0 < rows["resnet18"].gmacs < rows["resnet34"].gmacs < rows["resnet50"].gmacs < rows["resnet101"].gmacs
    assert model_row("sgnet_aspp", "resnet18", size=(240, 320)).gmacs > rows["resnet18"].gmacs
