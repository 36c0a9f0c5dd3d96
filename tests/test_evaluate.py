"""evaluate.py and the test protocols: the CLI prints ``mIoU:`` and agrees with training's validation; sliding
windows stitch back to the whole-frame result; multi-scale/flip options reach the Segmenter."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rgbd_seg_ros.depth.encode import InputSpec
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.models.checkpoints import read_metadata
from rgbd_seg_ros.pipeline import Segmenter
from training.config import load_config
from training.engine import Trainer
from training.evaluation import Protocol, frame_logits, sliding_logits, window_starts

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
    cmd = [sys.executable, str(ROOT / "training" / "evaluate.py"), *args]
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
    assert metrics["miou"] * 100 == pytest.approx(miou, abs=0.006)
    assert len(metrics["per_class_iou"]) == 40 and metrics["num_pixels"] > 0
    assert (out / "confusion.png").stat().st_size > 0
    # training validated the same weights on the same split with the same (single-scale) protocol
    assert read_metadata(ckpt)["val_miou"] == pytest.approx(miou, abs=0.006)


def test_evaluate_multiscale_flip_and_sliding_options(trained, tmp_path, capsys):
    from training import evaluate as cli

    ckpt, rooms = trained
    out = tmp_path / "ms"
    args = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(rooms), "--out", str(out)]
    assert cli.main([*args, "--multiscale", "--flip", "--sliding", "--crop", "32,40", "--limit", "1"]) == 0
    assert re.search(r"^mIoU: [0-9.]+$", capsys.readouterr().out, re.M)
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol["scales"] == [0.75, 1.0, 1.25]  # the recipe's eval.scales, stored in the checkpoint
    assert protocol["flip"] is True and protocol["sliding"] == [[32, 40], [22, 27]]  # stride ⌈2/3 crop⌉


def test_evaluate_reports_a_missing_dataset_clearly(trained, tmp_path):
    from training import evaluate as cli

    with pytest.raises(SystemExit, match="not found"):
        cli.main(["--checkpoint", str(trained[0]), "--dataset", "nyudv2", "--root", str(tmp_path / "missing")])


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


def test_sliding_windows_stitch_to_the_whole_frame_result():
    seg, frame = _segmenter(), _frame()
    for flip in (False, True):  # a mirrored frame has mirrored XYZ (x → −x), so flip changes the logits
        whole = seg.logits(frame, (1.0,), flip)
        stitched = sliding_logits(seg, frame, crop=(20, 24), stride=(13, 16), flip=flip)
        torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seg.logits(frame, (1.0,), True), seg.logits(frame), atol=1e-3)
    ms = frame_logits(seg, frame, Protocol(scales=(1.0, 1.0), sliding=((20, 24), (13, 16))))
    torch.testing.assert_close(ms, seg.logits(frame), rtol=1e-5, atol=1e-5)
