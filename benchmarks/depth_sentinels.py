"""Sensor sentinels and near-range speckle: their effect on HHA and on the hole fill, before and after range limiting.

Issue 15 measured, on the ESANet Kinect v2 sample (0.7 % of the pixels at 65535 on a dark carpet), an HHA
height channel of mean 253.6 (154.9 with those pixels masked), and a fast fill that spread 322 stray pixels
under 0.5 m into 2479. This script reproduces both on synthetic VGA frames, each against a baseline run beside
it on the same frame:

* **height channel**: ~0.7 % of the pixels set to 65535 mm on the floor of a 16UC1 frame. *before*: 65535 read
  as 65.535 m and no range limit (the old behaviour); *after*: the frame made by ``ros.convert.to_rgbd_frame``
  and prepared by the Segmenter (sentinels invalid, depth range 0.1–10 m); *clean*: those pixels missing.
* **speckle**: single pixels at 5 cm (below ``min_depth_m``); pixels under 0.5 m after the fast fill without
  the range limit (*before*) and with it (*after*).

    .venv/bin/python benchmarks/depth_sentinels.py [--frames 5] [--seed 0]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from rgbd_seg_ros.depth.completion import fill_depth
from rgbd_seg_ros.depth.encode import InputSpec
from rgbd_seg_ros.frames import RGBDFrame, limit_depth_range
from rgbd_seg_ros.labels import get_label_set
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.ros.convert import to_rgbd_frame
from rgbd_seg_ros.settings import DEFAULT_DEPTH_RANGE_M
from rgbd_seg_ros.synthetic import SceneGenerator

FLOOR = 2  # NYUv2-40 id


def _image(array: np.ndarray, encoding: str) -> SimpleNamespace:
    """A duck-typed little-endian ``sensor_msgs/Image``."""
    array = np.ascontiguousarray(array)
    channels = array.shape[2] if array.ndim == 3 else 1
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id="camera"),
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=array.shape[1] * array.itemsize * channels,
        data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def _height(segmenter: Segmenter, frame: RGBDFrame) -> np.ndarray:
    """The HHA height channel (0..255) the Segmenter feeds its model."""
    return segmenter.prepare(frame)[1][0, 1].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.007, help="fraction of the pixels set to 65535")
    args = parser.parse_args()

    spec, labels = InputSpec(depth_encoding="hha"), get_label_set("nyuv2-40")
    after = Segmenter(None, spec, labels)  # the package's defaults; prepare() does not touch the backend
    before = Segmenter(None, spec, labels, depth_range_m=(0.0, np.inf))
    rng = np.random.default_rng(args.seed)
    gen = SceneGenerator(480, 640, seed=args.seed)
    print(f"valid range {DEFAULT_DEPTH_RANGE_M} m; {args.frames} synthetic 480x640 frames, seed {args.seed}")
    print(f"{'frame':>5} {'65535 px':>9} {'height: clean':>14} {'before':>8} {'after':>8} {'255 before':>11} "
          f"{'255 after':>10} | {'speckle px':>10} {'<0.5 m before':>14} {'after':>6}")  # fmt: skip
    rows = []
    for i in range(args.frames):
        scene = gen.sample(i)
        f = scene.frame
        mm = np.where(np.isfinite(f.depth), np.rint(np.nan_to_num(f.depth) * 1000), 0).astype(np.uint16)
        floor = np.flatnonzero((scene.labels == FLOOR).ravel() & (mm.ravel() > 0))
        count = min(floor.size, round(args.fraction * mm.size))
        hit = np.zeros(mm.size, bool)
        hit[rng.choice(floor, count, replace=False)] = True
        hit = hit.reshape(mm.shape)
        raw = np.where(hit, np.uint16(65535), mm)
        clean = RGBDFrame(f.rgb, np.where((mm == 0) | hit, np.nan, mm / 1000.0).astype(np.float32), f.intrinsics)
        h_clean = _height(after, clean)
        h_before = _height(before, RGBDFrame(f.rgb, np.where(raw == 0, np.nan, raw / 1000.0).astype(np.float32),
                                             f.intrinsics))  # fmt: skip
        h_after = _height(after, to_rgbd_frame(_image(f.rgb, "rgb8"), _image(raw, "16UC1"), f.intrinsics)[0])

        valid = np.flatnonzero(np.isfinite(f.depth).ravel())
        speckle = np.zeros(mm.size, bool)
        speckle[rng.choice(valid, round(0.001 * mm.size), replace=False)] = True
        noisy = RGBDFrame(f.rgb, np.where(speckle.reshape(mm.shape), np.float32(0.05), f.depth), f.intrinsics)
        near_before = int((fill_depth(noisy.depth, "fast", f.rgb) < 0.5).sum())
        limited = limit_depth_range(noisy, *DEFAULT_DEPTH_RANGE_M).depth
        near_after = int((fill_depth(limited, "fast", f.rgb) < 0.5).sum())
        row = (count, h_clean.mean(), h_before.mean(), h_after.mean(), (h_before >= 255).mean() * 100,
               (h_after >= 255).mean() * 100, int(speckle.sum()), near_before, near_after)  # fmt: skip
        rows.append(row)
        print(f"{i:5d} {row[0]:9d} {row[1]:14.1f} {row[2]:8.1f} {row[3]:8.1f} {row[4]:10.1f}% {row[5]:9.1f}% | "
              f"{row[6]:10d} {row[7]:14d} {row[8]:6d}")  # fmt: skip
    m = np.mean(np.array(rows, dtype=np.float64), axis=0)
    print(f"{'mean':>5} {m[0]:9.0f} {m[1]:14.1f} {m[2]:8.1f} {m[3]:8.1f} {m[4]:10.1f}% {m[5]:9.1f}% | "
          f"{m[6]:10.0f} {m[7]:14.0f} {m[8]:6.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
