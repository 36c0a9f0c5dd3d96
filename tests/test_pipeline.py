"""The Segmenter is the one inference path: its labels equal a hand-written argmax(model(encode(frame)))."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.depth.encode import encode_frame
from rgbd_seg_ros.frames import RGBDFrame
from rgbd_seg_ros.models import build_model, list_models
from rgbd_seg_ros.models.checkpoints import save_checkpoint
from rgbd_seg_ros.models.coarse import coarse_logits
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.postprocess import upsample
from rgbd_seg_ros.synthetic import SceneGenerator

H, W = 64, 96  # a multiple of 32 (ACNet) and 16 (AdapNet++/SSMA)

# Small stand-ins of every registered model (ResNet-18 where the model offers it).
SMALL = {
    "sgnet": {"backbone": "resnet18"},
    "sgnet_aspp": {"backbone": "resnet18"},
    "sagate": {"backbone": "resnet18"},
    "acnet": {"backbone": "resnet18"},
    "gff": {"backbone": "resnet18"},
    "adapnet": {},
    "ssma": {},
}


def _calibrate(model: torch.nn.Module, frame: RGBDFrame) -> torch.nn.Module:
    """Give BatchNorm real statistics (two train-mode passes) so logits are O(1), not ~0 for every class."""
    rgb, second = encode_frame(frame, model.input_spec, fill="fast")
    rgb, second = rgb.repeat(2, 1, 1, 1), None if second is None else second.repeat(2, 1, 1, 1)
    rgb = rgb + 0.1 * torch.randn_like(rgb)
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # cumulative average over the calibration passes
        for _ in range(2):
            model(rgb, second)
    return model.eval()


@pytest.fixture(scope="module")
def frame() -> RGBDFrame:
    return SceneGenerator(H, W, seed=11).sample(0).frame


def test_every_registered_model_has_a_small_case():
    assert set(list_models()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_labels_equal_argmax_of_model_on_encoded_frame(name, frame):
    torch.manual_seed(0)
    model = _calibrate(build_model(name, 40, **SMALL[name]), frame)
    seg = Segmenter.from_model(model, "nyuv2-40", device="cpu", depth_fill="fast")
    result = seg(frame)
    # By hand: the frame is already at a valid model size, so: encode → model → argmax.
    rgb, second = encode_frame(frame, model.input_spec, fill="fast")
    with torch.no_grad():
        logits = model(rgb, second)[0]
        with coarse_logits(model) as align_corners:
            coarse = model(rgb, second)
    np.testing.assert_array_equal(result.labels, logits.argmax(0).numpy())
    # Confidence: the chosen class's softmax probability at the resolution of the model's own logits (before its
    # final upsampling, where it has one), upsampled like them.
    steps = [] if align_corners is None else [((H, W), align_corners)]
    probabilities = upsample(torch.softmax(coarse, 1), steps)[0]
    expected = probabilities.gather(0, logits.argmax(0)[None])[0]
    np.testing.assert_allclose(result.confidence, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert result.labels.dtype == np.uint8 and result.confidence.dtype == np.float32
    assert set(result.timings) >= {"resize", "fill", "encode", "transfer", "model", "postprocess", "total"}


def test_input_size_resizes_with_intrinsics_and_upsamples_logits(frame):
    torch.manual_seed(0)
    model = _calibrate(build_model("sgnet", 40, backbone="resnet18", guidance="xyz"), frame)
    seg = Segmenter.from_model(model, "nyuv2-40", input_size=(32, 48), depth_fill="none")
    result = seg(frame)
    small = frame.resized(32, 48)
    assert small.intrinsics == frame.intrinsics.scaled(48, 32)
    rgb, second = encode_frame(small, model.input_spec, fill="none")
    with torch.no_grad():
        logits = F.interpolate(model(rgb, second), size=(H, W), mode="bilinear", align_corners=False)[0]
    assert result.labels.shape == (H, W)
    np.testing.assert_array_equal(result.labels, logits.argmax(0).numpy())


def test_flip_and_multiscale_average_the_logits(frame):
    torch.manual_seed(0)
    model = _calibrate(build_model("sgnet", 40, backbone="resnet18"), frame)
    seg = Segmenter.from_model(model, "nyuv2-40", depth_fill="none")
    mirrored = frame.flipped()
    np.testing.assert_array_equal(mirrored.rgb, frame.rgb[:, ::-1])
    assert mirrored.intrinsics.cx == pytest.approx(W - 1 - frame.intrinsics.cx)
    with torch.no_grad():
        plain = model(*encode_frame(frame, model.input_spec, fill="none"))
        flipped = model(*encode_frame(mirrored, model.input_spec, fill="none")).flip(-1)
        half = model(*encode_frame(frame.resized(H // 2, W // 2), model.input_spec, fill="none"))
    half = F.interpolate(half, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seg.logits(frame, flip=True), (plain + flipped) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seg.logits(frame, scales=(1.0, 0.5)), (plain + half) / 2, rtol=1e-4, atol=1e-5)
    batch = seg.segment_batch([frame, frame], flip=True)
    np.testing.assert_array_equal(batch[0].labels, ((plain + flipped) / 2)[0].argmax(0).numpy())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_round_trip_and_onnx_parity(name, tmp_path, frame):
    """`rgbd-seg export` → the ONNX Runtime backend gives the torch backend's labels and logits.

    Logits agree to 1e-3 relative to the largest logit (float32 round-off grows with the logits' size: BN-calibrated
    random SA-Gate/SSMA logits reach ~50); labels agree on ≥ 99.9 % of pixels.
    """
    from rgbd_seg_ros.cli import main

    torch.manual_seed(0)
    model = _calibrate(build_model(name, 40, **SMALL[name]), frame)
    ckpt = save_checkpoint(model, tmp_path / f"{name}.safetensors", {"label_set": "nyuv2-40"})
    onnx_path = tmp_path / f"{name}.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_path), "--size", f"{H}x{W}"]) == 0
    torch_seg = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch")
    onnx_seg = Segmenter.from_checkpoint(onnx_path, backend="onnxruntime")
    assert onnx_seg.label_set.name == torch_seg.label_set.name == "nyuv2-40"
    assert onnx_seg.model_name == torch_seg.model_name == name
    assert onnx_seg.input_spec == torch_seg.input_spec
    # `export` writes logits at the input size (what other consumers expect); the torch backend takes the coarse
    # logits of the models that end in a bilinear upsampling (GFFNet with a ResNet ends inside its decoder).
    assert onnx_seg.backend.final_align_corners is None
    assert torch_seg.backend.final_align_corners is (True if name in ("sgnet", "sgnet_aspp", "sagate") else None)
    a, b = torch_seg.logits(frame), onnx_seg.logits(frame)
    scale = a.abs().max().item()
    assert scale > 1.0, "calibrated logits must be large enough for the tolerance to mean something"
    assert (a - b).abs().max().item() < 1e-3 * scale
    assert (torch_seg(frame).labels == onnx_seg(frame).labels).mean() >= 0.999


def test_bad_inputs_get_clear_errors_or_defined_results(tmp_path, frame):
    model = build_model("sgnet", 40, backbone="resnet18").eval()
    seg = Segmenter.from_model(model, "nyuv2-40")
    with pytest.raises(TypeError, match="RGBDFrame"):
        seg(frame.rgb)
    with pytest.raises(ValueError, match="registered"):
        RGBDFrame(frame.rgb, frame.depth[: H // 2], frame.intrinsics)
    with pytest.raises(ValueError, match="float32"):
        RGBDFrame(frame.rgb, np.nan_to_num(frame.depth * 1000).astype(np.uint16), frame.intrinsics)
    # All-NaN depth is a defined result: the depth input is all-invalid (0 m) and the model still labels the frame.
    blind = replace(frame, depth=np.full_like(frame.depth, np.nan))
    result = seg(blind)
    assert result.labels.shape == (H, W) and np.isfinite(result.confidence).all()
    _, second = encode_frame(blind, model.input_spec, fill="fast")
    assert torch.equal(second, torch.zeros_like(second))
    with pytest.raises(ValueError, match="label set"):
        Segmenter.from_model(build_model("sgnet", 13, backbone="resnet18"), "nyuv2-40")(frame)
    with pytest.raises(FileNotFoundError):
        Segmenter.from_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="backend 'torch' cannot run an exported ONNX model"):
        Segmenter.from_checkpoint(tmp_path / "x.onnx", backend="torch")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        Segmenter.from_checkpoint(tmp_path / "x.onnx")
