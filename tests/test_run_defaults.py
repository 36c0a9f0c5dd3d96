"""One rule per default (settings.py): input size, backend, threads — and the ONNX export cache behind `auto`."""

import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros.backends import CACHE_KEY, CachedOnnxBackend, OnnxRuntimeBackend, TorchBackend
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.checkpoints import save_checkpoint
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.postprocess import labels_and_confidence
from rgbd_seg_ros.settings import RunOptions, resolve_backend, resolve_input_size
from rgbd_seg_ros.synthetic import SceneGenerator

TRAIN_SIZE = (48, 64)
OPTIONS = {"width": 8, "head_channels": 16, "proj_channels": 8, "stem": "torchvision"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small SGNet-R18 whose metadata records the size it was trained at, as training writes it."""
    torch.manual_seed(0)
    model = build_model("sgnet", 40, backbone="resnet18", **OPTIONS)
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    return save_checkpoint(model, path, {"label_set": "nyuv2-40", "input_size": list(TRAIN_SIZE)})


@pytest.fixture(scope="module")
def frame():
    return SceneGenerator(96, 128, seed=3).sample(0).frame


def test_input_size_rule_explicit_then_stored_then_frame(caplog):
    with caplog.at_level(logging.WARNING, logger="rgbd_seg_ros"):
        assert resolve_input_size(None, {"input_size": [120, 160]}) == (120, 160)
        assert resolve_input_size(None, {"eval": {"input_size": [60, 80]}}) == (60, 80)
        assert resolve_input_size(None, {}) is None
        assert not caplog.records
        assert resolve_input_size((120, 160), {"input_size": [120, 160]}) == (120, 160)
        assert not caplog.records, "the checkpoint's own size is no reason to warn"
        assert resolve_input_size((240, 320), {"input_size": [120, 160]}, "ck.safetensors") == (240, 320)
    (record,) = caplog.records
    assert "240x320" in record.getMessage() and "120x160" in record.getMessage()


def test_backend_rule():
    assert resolve_backend("auto", "cpu", "m.safetensors") == "onnxruntime"
    assert resolve_backend("auto", "cuda", "m.onnx") == "onnxruntime"
    assert resolve_backend("torch", "cpu", "m.safetensors") == "torch"
    with pytest.raises(ValueError, match="cannot run an exported ONNX"):
        resolve_backend("torch", "cpu", "m.onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        RunOptions(backend="tensorflow")
    with pytest.raises(ValueError, match="depth range"):
        RunOptions(min_depth_m=5.0, max_depth_m=1.0)


def test_checkpoint_runs_at_its_stored_size_by_default(checkpoint, frame):
    seg = Segmenter.from_checkpoint(checkpoint, backend="torch")
    assert seg.input_size == TRAIN_SIZE
    model = build_model("sgnet", 40, backbone="resnet18", **OPTIONS)
    from rgbd_seg_ros.models.checkpoints import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    # Independent of the Segmenter's post-processing: resize → model → upsample → argmax by hand.
    rgb, second = seg.prepare(frame)
    assert tuple(rgb.shape[-2:]) == TRAIN_SIZE
    with torch.no_grad():
        logits = model.eval()(rgb, second)
    expected = F.interpolate(logits, size=(frame.height, frame.width), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(seg(frame).labels, expected[0].argmax(0).numpy())
    assert Segmenter.from_checkpoint(checkpoint, backend="torch", input_size=(96, 128)).input_size == (96, 128)


def test_auto_backend_exports_once_caches_and_matches_torch(checkpoint, frame, tmp_path):
    cache = tmp_path / "cache"
    torch_seg = Segmenter.from_checkpoint(checkpoint, backend="torch")
    auto = Segmenter.from_checkpoint(checkpoint, cache_dir=str(cache))
    assert isinstance(auto.backend, CachedOnnxBackend)
    first = auto(frame)
    assert auto.backend.exports == 1 and auto.backend_name == "onnxruntime (CPUExecutionProvider)"
    (entry,) = cache.glob("*.onnx")
    assert f"{TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}" in entry.name
    np.testing.assert_array_equal(first.labels, torch_seg(frame).labels)
    np.testing.assert_allclose(first.confidence, torch_seg(frame).confidence, atol=1e-4)

    again = Segmenter.from_checkpoint(checkpoint, cache_dir=str(cache))
    np.testing.assert_array_equal(again(frame).labels, first.labels)
    assert again.backend.exports == 0, "a valid cache entry must be reused"

    # A corrupt entry (truncated by a crash or a full disk) is rebuilt, not trusted.
    entry.write_bytes(entry.read_bytes()[:1000])
    rebuilt = Segmenter.from_checkpoint(checkpoint, cache_dir=str(cache))
    np.testing.assert_array_equal(rebuilt(frame).labels, first.labels)
    assert rebuilt.backend.exports == 1
    # A stale entry (another key recorded, e.g. written by other library versions) is rebuilt as well.
    graph = onnx.load(str(entry))
    for prop in graph.metadata_props:
        if prop.key == CACHE_KEY:
            prop.value = "stale"
    onnx.save(graph, str(entry))
    stale = Segmenter.from_checkpoint(checkpoint, cache_dir=str(cache))
    stale(frame)
    assert stale.backend.exports == 1
    assert len(list(cache.glob("*.onnx"))) == 1 and not list(cache.glob(".*tmp"))


def test_cache_key_follows_checkpoint_content(checkpoint, tmp_path):
    model = build_model("sgnet", 40, backbone="resnet18", **OPTIONS)
    other = save_checkpoint(model, tmp_path / "small.safetensors", {"label_set": "nyuv2-40"})  # same name
    a = CachedOnnxBackend(model, {}, checkpoint, tmp_path)
    b = CachedOnnxBackend(model, {}, other, tmp_path)
    assert a.entry((48, 64)) != b.entry((48, 64))
    assert a.entry((48, 64)) != a.entry((96, 128))


def test_num_threads_reaches_torch_and_onnxruntime(checkpoint, frame, tmp_path):
    before = torch.get_num_threads()
    try:
        seg = Segmenter.from_checkpoint(checkpoint, backend="torch", num_threads=2)
        assert isinstance(seg.backend, TorchBackend) and torch.get_num_threads() == 2
        Segmenter.from_checkpoint(checkpoint, backend="torch", num_threads=1)
        assert torch.get_num_threads() == 1
        auto = Segmenter.from_checkpoint(checkpoint, cache_dir=str(tmp_path), num_threads=2)
        auto(frame)
        (session,) = auto.backend._sessions.values()
        assert isinstance(session, OnnxRuntimeBackend)
        assert session.session.get_session_options().intra_op_num_threads == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("size", [(480, 640), (240, 320), (97, 131), (120, 160), (60, 80)])
def test_lean_postprocess_equals_upsample_then_argmax(size):
    """Labels equal `F.interpolate` + argmax (the definition) on smooth logits with real boundaries, up- and
    down-sampling; at the model's own size the confidence is exactly the softmax probability of the label."""
    torch.manual_seed(1)
    coarse = torch.randn(1, 40, 15, 20) * 4
    logits = F.interpolate(coarse, size=(120, 160), mode="bilinear")[0] + 0.2 * torch.randn(40, 120, 160)
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    labels, confidence = labels_and_confidence(logits, *size)
    assert labels.shape == size and confidence.shape == size
    torch.testing.assert_close(labels.long(), up.argmax(0), rtol=0, atol=0)
    probs = torch.softmax(logits, 0)
    if size == (120, 160):
        torch.testing.assert_close(confidence, probs.max(0).values)
    # Everywhere: the model-resolution probability of the chosen class, interpolated like the logits
    # (oracle: interpolate every class's probability map, then pick the label's).
    every = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(confidence, every.gather(0, labels.long()[None])[0], rtol=1e-5, atol=1e-6)


def test_lean_postprocess_noisy_logits_take_the_dense_path():
    torch.manual_seed(2)
    logits = torch.randn(40, 30, 40)
    labels, _ = labels_and_confidence(logits, 120, 160)
    up = F.interpolate(logits[None], size=(120, 160), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(labels.long(), up.argmax(0), rtol=0, atol=0)


def test_depth_range_rule_explicit_then_checkpoint_then_indoor_default(tmp_path, frame):
    from rgbd_seg_ros.settings import DEFAULT_DEPTH_RANGE_M, resolve_depth_range

    outdoor = {"depth_range_m": [0.1, 1000.0]}
    assert resolve_depth_range(RunOptions(), {}) == DEFAULT_DEPTH_RANGE_M
    assert resolve_depth_range(RunOptions(), outdoor) == (0.1, 1000.0)
    assert resolve_depth_range(RunOptions(max_depth_m=50.0), outdoor) == (0.1, 50.0)
    with pytest.raises(ValueError, match="depth range"):
        resolve_depth_range(RunOptions(min_depth_m=20.0), {})  # above the default far limit
    # A checkpoint that records an outdoor range keeps far depth that the indoor default would drop.
    model = build_model("sgnet", 40, backbone="resnet18", **OPTIONS)
    far = save_checkpoint(model, tmp_path / "far.safetensors", {"label_set": "nyuv2-40", **outdoor})
    seg = Segmenter.from_checkpoint(far, backend="torch")
    assert seg.depth_range_m == (0.1, 1000.0)
    deep = frame.depth * 5.0  # a room five times larger: most depth beyond 10 m
    kept = seg.prepare(replace(frame, depth=deep))[1]
    dropped = Segmenter.from_checkpoint(far, backend="torch", max_depth_m=10.0).prepare(replace(frame, depth=deep))[1]
    assert not torch.equal(kept, dropped)
