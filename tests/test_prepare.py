"""training.prepare: parallel, resumable, atomic; an interrupted + restarted run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rgbd_seg_ros.depth.completion import fill_depth
from rgbd_seg_ros.depth.hha import compute_hha
from rgbd_seg_ros.synthetic import write_dataset
from training.datasets import build_dataset
from training.prepare import atomic_write, prepare

REPO = Path(__file__).resolve().parents[1]
FILL = "fast"  # cheap fill for the interruption test; the colorization fill is checked on 2 frames below
N_TRAIN, N_TEST = 16, 2


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=N_TRAIN, n_test=N_TEST, size=(120, 160))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_interrupted_then_resumed_equals_uninterrupted(synthetic_root, tmp_path):
    ref = prepare("synthetic", synthetic_root, tmp_path / "ref", workers=1, fill=FILL, progress=False)
    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "training.prepare", "synthetic", str(synthetic_root), "--out", str(out),
           "--workers", "2", "--fill", FILL, "--quiet"]  # fmt: skip
    # Own session: the pool workers share the group, so one killpg ends the run and all its workers.
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list((out / "hha").glob("*.png")):
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(list((out / "hha").glob("*.png")))
    assert 0 < done < N_TRAIN + N_TEST, "the run was not interrupted mid-way"
    (out / "hha" / ".7.png.99999.tmp").write_bytes(b"torn write")  # what a kill during a write leaves
    prepare("synthetic", synthetic_root, out, workers=2, fill=FILL, progress=False)
    assert _files(out) == _files(ref)
    assert len(_files(ref)) == 2 * (N_TRAIN + N_TEST) + 1  # filled depth + HHA per frame, manifest.json


def test_cache_is_attached_by_the_loader(synthetic_root, tmp_path):
    out = prepare("synthetic", synthetic_root, tmp_path / "c", splits=["test"], workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["products"] == ["depth_filled", "hha"] and manifest["fill"] == "colorization"
    plain = build_dataset("synthetic", synthetic_root, "test")
    cached = build_dataset("synthetic", synthetic_root, "test", cache_dir=out)
    assert len(cached) == N_TEST
    for i in range(len(plain)):
        frame, meta = plain[i].frame, cached[i].frame.meta
        filled = fill_depth(frame.depth, "colorization", rgb=frame.rgb)
        assert np.isfinite(meta["depth_filled"]).all() and np.isnan(frame.depth).any()
        np.testing.assert_allclose(meta["depth_filled"], filled, atol=0.0005 + 1e-6)  # stored in whole mm
        expected = compute_hha(filled, frame.intrinsics, raw_depth_m=frame.depth)  # Gupta's (D, RD)
        np.testing.assert_array_equal(meta["hha"], expected)  # channel order survives the PNG round trip
    # A cache missing a file fails loudly at load time, naming the file.
    missing = out / "hha" / f"{plain.sample_name(0)}.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        cached[0]
    # Resuming with different settings into the same folder is refused.
    with pytest.raises(ValueError, match="different settings"):
        prepare("synthetic", synthetic_root, out, splits=["test"], hha_params={"camera_height_cm": 100.0})
    with pytest.raises(ValueError, match="unknown fill method"):
        prepare("synthetic", synthetic_root, tmp_path / "d", fill="inpaint")
    with pytest.raises(FileNotFoundError, match="manifest"):
        build_dataset("synthetic", synthetic_root, "test", cache_dir=tmp_path / "nothing")


def test_atomic_write_never_exposes_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "hha" / "x.png"
    atomic_write(target, b"old")

    def crash(fd):
        raise KeyboardInterrupt  # the process dies after writing the data but before the rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new content")
    assert target.read_bytes() == b"old"  # the visible file is the old complete one, never a torn new one
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # the torn temporary is removed
