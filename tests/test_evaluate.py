"""evaluate.py and the test protocols: the CLI prints ``mIoU:`` (percent, as metrics.json) and agrees with
training's validation; sliding windows stitch back to the whole-frame result; flip and multi-scale logits equal
averages computed frame by frame; sharded evaluation over two gloo processes equals one process."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgbd_seg_ros.depth.encode import InputSpec
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.metrics import ConfusionMatrix
from rgbd_seg_ros.models.checkpoints import read_metadata
from rgbd_seg_ros.pipeline import Segmenter
from training.config import load_config
from training.engine import Trainer
from training.evaluation import Protocol, evaluate, frame_logits, sliding_logits, window_starts

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "configs" / "synthetic_sgnet_r18.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step SGNet-R18 on 48×64 synthetic rooms, validated on the 3 test rooms at the end of training."""
    from rgbd_seg_ros.synthetic import write_dataset

    base = tmp_path_factory.mktemp("eval")
    rooms = write_dataset(base / "rooms", n_train=4, n_test=3, size=(48, 64), seed=1)
    threads = torch.get_num_threads()
    overrides = [f"out_dir={base / 'run'}", f"data.root={rooms}", "max_iters=2", "batch_size=2", "threads=1",
                 "augment.crop=[32,40]", "data.num_workers=0", "checkpoint_every=0"]  # fmt: skip
    cfg = load_config(RECIPE, overrides)
    ckpt = Trainer(cfg).run()
    torch.set_num_threads(threads)
    return ckpt, rooms


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    # torch keeps these tests fast (no ONNX export); the default `auto` path is covered by tests/test_run_defaults.py.
    backend = () if "--backend" in args else ("--backend", "torch")
    cmd = [sys.executable, str(ROOT / "training" / "evaluate.py"), *args, *backend]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_evaluate_cli_prints_miou_matching_training_validation(trained, tmp_path):
    ckpt, rooms = trained
    out = tmp_path / "eval"
    run = run_evaluate("--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(rooms), "--out", str(out),
                       "--num-workers", "0")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    match = re.search(r"^mIoU: ([0-9.]+)$", run.stdout, re.M)
    assert match, run.stdout
    miou = float(match.group(1))
    assert 0.0 <= miou <= 100.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unit"] == "percent" and metrics["miou"] == pytest.approx(miou, abs=0.006)
    assert len(metrics["per_class_iou"]) == 40 and metrics["num_pixels"] > 0
    assert (out / "confusion.png").stat().st_size > 0
    # training validated the same weights on the same split with the same (single-scale) protocol
    assert read_metadata(ckpt)["val_miou"] == pytest.approx(miou, abs=0.006)


def test_evaluate_multiscale_flip_and_sliding_options(trained, tmp_path, capsys):
    """The CLI's options become the protocol (the recipe's scales, a ⌈2/3⌉ stride) and its confusion matrix is the
    one of that protocol's logits, computed here frame by frame (the protocol maths: the tests below)."""
    from rgbd_seg_ros.datasets import build_dataset
    from training import evaluate as cli

    ckpt, rooms = trained
    out = tmp_path / "ms"
    args = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(rooms), "--out", str(out),
            "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    assert cli.main([*args, "--multiscale", "--flip", "--sliding", "--crop", "32,40", "--limit", "2"]) == 0
    assert re.search(r"^mIoU: [0-9.]+$", capsys.readouterr().out, re.M)
    metrics = json.loads((out / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert protocol["scales"] == [0.75, 1.0, 1.25]  # the recipe's eval.scales, stored in the checkpoint
    assert protocol["flip"] is True and protocol["sliding"] == [[32, 40], [22, 27]]  # stride ⌈2/3 crop⌉

    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    seg.input_size = None  # sliding windows run at the frame's own size, not the recipe's 120×160
    want = Protocol(scales=(0.75, 1.0, 1.25), flip=True, sliding=((32, 40), (22, 27)))
    cm = ConfusionMatrix(40)
    for sample in map(build_dataset("synthetic", rooms, "test").__getitem__, range(2)):
        logits = frame_logits(seg, sample.frame, want)
        cm.update(logits.argmax(1)[0].numpy().astype(np.int64), sample.labels.astype(np.int64))
    np.testing.assert_array_equal(np.array(metrics["confusion_matrix"]), cm.matrix)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * cm.pixel_accuracy(), abs=1e-9)


def test_evaluate_reports_a_missing_dataset_clearly(trained, tmp_path, capsys):
    from training import evaluate as cli

    code = cli.main(["--checkpoint", str(trained[0]), "--dataset", "nyudv2", "--root", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and "Traceback" not in err


# -- protocols -----------------------------------------------------------------------------------------------------
class PointwiseXYZ(nn.Module):
    """Logits from a 1×1 conv of the XYZ map (and RGB): any window/intrinsics mistake changes them."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, k, 1)

    def forward(self, rgb, xyz):
        return self.conv(torch.cat([rgb, xyz], 1))


class Backend:
    device = "cpu"

    def __init__(self, model):
        self.model = model

    def __call__(self, rgb, second):
        with torch.no_grad():
            return self.model(rgb, second)


def _segmenter() -> Segmenter:
    torch.manual_seed(0)
    spec = InputSpec(depth_encoding="xyz")
    return Segmenter(Backend(PointwiseXYZ(40)), spec, get_label_set("synthetic"), depth_fill="none")


def _frame(h=37, w=50) -> RGBDFrame:
    rng = np.random.default_rng(0)
    k = CameraIntrinsics(fx=40.0, fy=41.0, cx=20.3, cy=17.9, width=w, height=h)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return RGBDFrame(rgb, rng.uniform(0.5, 4.0, (h, w)).astype(np.float32), k)


def test_window_starts_cover_the_image_and_end_flush():
    assert window_starts(10, 20, 5) == [0]
    starts = window_starts(640, 480, 320)
    assert starts == [0, 160]
    for length, crop, stride in ((37, 20, 13), (50, 24, 16), (100, 30, 30)):
        s = window_starts(length, crop, stride)
        covered = np.zeros(length, bool)
        for x in s:
            covered[x : x + crop] = True
        assert covered.all() and s[-1] + crop == length and all(b - a <= stride for a, b in itertools.pairwise(s))


def _mirrored(frame: RGBDFrame) -> RGBDFrame:
    """The mirrored scene's frame, written out here: pixels reversed along x, ``cx' = W − 1 − cx``."""
    k = frame.intrinsics
    flipped = CameraIntrinsics(fx=k.fx, fy=k.fy, cx=k.width - 1 - k.cx, cy=k.cy, width=k.width, height=k.height)
    return RGBDFrame(frame.rgb[:, ::-1].copy(), frame.depth[:, ::-1].copy(), flipped)


def _at_frame_size(logits: torch.Tensor, frame: RGBDFrame) -> torch.Tensor:
    return F.interpolate(logits, size=(frame.height, frame.width), mode="bilinear", align_corners=False)


def test_flip_averages_the_frame_and_the_mirrored_frame():
    seg, frame = _segmenter(), _frame()
    plain = seg.logits(frame)
    mirrored = seg.logits(_mirrored(frame)).flip(-1)  # back to the frame's pixel order
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # XYZ x → −x: the mirrored frame's logits differ
    torch.testing.assert_close(frame_logits(seg, frame, Protocol(flip=True)), (plain + mirrored) / 2)


def test_multiscale_averages_the_logits_of_each_scale_at_frame_size():
    seg, frame = _segmenter(), _frame()
    scales = (0.5, 1.0, 1.5)
    per_scale = [_at_frame_size(seg.logits(frame.resized(*seg.model_size((37, 50), s))), frame) for s in scales]
    assert not torch.allclose(per_scale[0], per_scale[2], atol=1e-3)  # the scales see different pixels
    torch.testing.assert_close(frame_logits(seg, frame, Protocol(scales=scales)), sum(per_scale) / len(scales))


def test_sliding_multiscale_flip_compose():
    """Windows at each scale, each window with its mirror, averaged: for a pointwise model that is the mean over
    scales of the whole resized frame's flip average (windows of a pointwise model stitch to the whole frame)."""
    seg, frame = _segmenter(), _frame()
    scales = (0.75, 1.25)
    expected = []
    for s in scales:
        small = frame.resized(round(37 * s), round(50 * s))
        flip_mean = (seg.logits(small) + seg.logits(_mirrored(small)).flip(-1)) / 2
        expected.append(_at_frame_size(flip_mean, frame))
    got = frame_logits(seg, frame, Protocol(scales=scales, flip=True, sliding=((20, 24), (13, 16))))
    torch.testing.assert_close(got, sum(expected) / len(scales), rtol=1e-5, atol=1e-5)


def test_sliding_windows_stitch_to_the_whole_frame_result():
    seg, frame = _segmenter(), _frame()
    for flip in (False, True):  # a mirrored frame has mirrored XYZ (x → −x), so flip changes the logits
        whole = seg.logits(frame, (1.0,), flip)
        stitched = sliding_logits(seg, frame, crop=(20, 24), stride=(13, 16), flip=flip)
        torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seg.logits(frame, (1.0,), True), seg.logits(frame), atol=1e-3)
    ms = frame_logits(seg, frame, Protocol(scales=(1.0, 1.0), sliding=((20, 24), (13, 16))))
    torch.testing.assert_close(ms, seg.logits(frame), rtol=1e-5, atol=1e-5)


# -- sharded evaluation ----------------------------------------------------------------------------------------------
def _samples(n: int = 5) -> list[SimpleNamespace]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        frame = _frame(37 + i, 50 - i)
        labels = rng.integers(0, 40, (frame.height, frame.width)).astype(np.uint8)
        labels[rng.random(labels.shape) < 0.1] = 255
        out.append(SimpleNamespace(frame=frame, labels=labels))
    return out


def _shard_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo rank: evaluate its share of the samples, sum the matrix over ranks, save it."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = evaluate(_segmenter(), _samples(), Protocol(), rank, world)
        np.save(Path(out_dir) / f"rank{rank}.npy", result.matrix.matrix)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_evaluation_over_two_gloo_processes_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_shard_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    whole = evaluate(_segmenter(), _samples(), Protocol()).matrix.matrix
    shards = [evaluate(_segmenter(), _samples(), Protocol(), r, 2).matrix.matrix for r in range(2)]  # no group
    assert all(0 < s.sum() < whole.sum() for s in shards)  # each rank alone sees only part of the pixels
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), whole)
