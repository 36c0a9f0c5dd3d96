"""One rule per default (settings.py): input size, backend, threads — and the ONNX export cache behind `auto`."""

import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from rgbd_seg_ros import postprocess
from rgbd_seg_ros.backends import CACHE_KEY, CachedOnnxBackend, OnnxRuntimeBackend, TorchBackend
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.checkpoints import save_checkpoint
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.postprocess import labels_and_confidence, upsample
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
    # The cached graph ends before SGNet's final upsampling: logits at 1/16, upsampled by the post-process.
    session = auto.backend.session(*auto.prepare(frame))
    assert session.final_align_corners is True
    assert session(*auto.prepare(frame)).shape[-2:] == (TRAIN_SIZE[0] // 16, TRAIN_SIZE[1] // 16)
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


def test_export_writes_logits_at_the_input_size_unless_asked_for_coarse_ones(checkpoint, frame, tmp_path):
    from rgbd_seg_ros.cli import main

    full, coarse = tmp_path / "full.onnx", tmp_path / "coarse.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(full)]) == 0
    assert main(["export", str(checkpoint), "--onnx", str(coarse), "--coarse-logits"]) == 0
    a, b = Segmenter.from_checkpoint(full), Segmenter.from_checkpoint(coarse)
    assert a.backend.final_align_corners is None and b.backend.final_align_corners is True
    inputs = b.prepare(frame)
    assert a.backend(*inputs).shape[-2:] == TRAIN_SIZE
    assert b.backend(*inputs).shape[-2:] == (TRAIN_SIZE[0] // 16, TRAIN_SIZE[1] // 16)
    np.testing.assert_array_equal(a(frame).labels, b(frame).labels)


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


def _smooth_logits(k: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """K×h×w logits with real class regions and boundaries: a coarse random field, upsampled, plus noise."""
    torch.manual_seed(seed)
    coarse = torch.randn(1, k, max(2, size[0] // 8), max(2, size[1] // 8)) * 4
    return F.interpolate(coarse, size=size, mode="bilinear")[0] + 0.2 * torch.randn(k, *size)


def _assert_definitions(labels, confidence, logits, steps):
    """Labels: the arg-max of the logits taken through ``steps`` (a pixel may differ only where two classes tie
    within float rounding); confidence: the logits' softmax probability of the chosen class, through ``steps``."""
    up = upsample(logits[None], steps)[0]
    size = steps[-1][0] if steps else tuple(logits.shape[-2:])
    assert labels.shape == confidence.shape == size
    differ = labels.long() != up.argmax(0)
    assert differ.float().mean() <= 1e-4
    if differ.any():
        gap = up.max(0).values - up.gather(0, labels.long()[None])[0]
        assert gap[differ].max() <= 1e-5 * up.abs().max(), "a label differs without a tie"
    every = upsample(torch.softmax(logits, 0)[None], steps)[0]
    torch.testing.assert_close(confidence, every.gather(0, labels.long()[None])[0], rtol=1e-5, atol=2e-6)


CHAINS = {
    # the pipeline's resize of full-resolution logits to the frame: up, down, odd sizes
    "frame 480x640": [((480, 640), False)],
    "frame 97x131": [((97, 131), False)],
    "frame 60x80": [((60, 80), False)],
    # coarse logits (a model's output stride 8) to the model size, the model at the frame size
    "model": [((120, 160), True)],
    # coarse logits → model size → another frame size (two resizes: 3×3 windows)
    "model, frame 480x640": [((120, 160), True), ((480, 640), False)],
    "model, frame 97x131": [((120, 160), True), ((97, 131), False)],
    "model, frame 60x80": [((120, 160), True), ((60, 80), False)],
}


@pytest.mark.parametrize("chain", CHAINS)
def test_lean_postprocess_follows_the_definitions(chain, monkeypatch):
    """Upsample-then-argmax labels and the interpolated probability of the chosen class, for one and two resizes,
    up- and down-sampling; wherever the frame is larger than the logits, from the lean path (the dense fallback's
    threshold lifted, so that the test does not depend on it)."""
    steps = CHAINS[chain]
    source = (15, 20) if steps[0][1] else (120, 160)
    logits = _smooth_logits(40, source, seed=len(chain))
    if steps[-1][0][0] * steps[-1][0][1] > source[0] * source[1]:
        monkeypatch.setattr(postprocess, "DENSE_FRACTION", float("inf"))
        monkeypatch.setattr(postprocess, "_dense", lambda *a: pytest.fail("the lean path must run"))
    _assert_definitions(*labels_and_confidence(logits, steps), logits, steps)


def test_lean_postprocess_at_the_logits_own_size_is_argmax_and_softmax():
    logits = _smooth_logits(40, (60, 80), seed=3)
    labels, confidence = labels_and_confidence(logits, [((60, 80), False)])
    torch.testing.assert_close(labels.long(), logits.argmax(0), rtol=0, atol=0)
    torch.testing.assert_close(confidence, torch.softmax(logits, 0).max(0).values)
    assert labels_and_confidence(logits, [])[0].equal(labels)


@pytest.mark.parametrize("shape", [(40, 30, 40), (300, 12, 16)])
def test_lean_postprocess_noisy_logits_and_many_classes(shape, monkeypatch):
    """Noise (most cells mixed, most classes candidates) takes the dense path with the same definitions; more than
    256 classes give int32 labels."""
    torch.manual_seed(2)
    logits = torch.randn(*shape)
    steps = [((120, 160), True), ((96, 128), False)]
    dense = []
    monkeypatch.setattr(postprocess, "_dense", lambda *a, f=postprocess._dense: dense.append(1) or f(*a))
    labels, confidence = labels_and_confidence(logits, steps)
    assert dense, "noise must take the dense path"
    assert labels.dtype == (torch.uint8 if shape[0] <= 256 else torch.int32)
    _assert_definitions(labels, confidence, logits, steps)


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
