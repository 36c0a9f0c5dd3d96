"""Time the synthetic scene generator at 480×640 against a per-pixel ray caster of the same scenes.

Usage: ``python benchmarks/synthetic.py [--frames 20] [--baseline-rows 6]``

The baseline casts each pixel's ray through the same room and boxes in plain Python (the textbook slab test),
on ``--baseline-rows`` image rows, and its time is extrapolated to the whole frame; it also checks that both
give the same depth on those rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rgbd_seg_ros.synthetic import SceneGenerator


def per_pixel_depth(gen: SceneGenerator, index: int, rows: range) -> np.ndarray:
    """Noise-free depth of ``rows`` of scene ``index``, one ray at a time."""
    scene = gen.sample(index)
    r_wc, origin = scene.world_from_camera[:3, :3], scene.world_from_camera[:3, 3]
    k = scene.frame.intrinsics
    lo, hi = scene.room
    out = np.zeros((len(rows), k.width))
    for i, v in enumerate(rows):
        for u in range(k.width):
            d = r_wc @ np.array([(u - k.cx) / k.fx, (v - k.cy) / k.fy, 1.0])
            best = min(((hi[a] if d[a] > 0 else lo[a]) - origin[a]) / d[a] for a in range(3) if d[a] != 0)
            for obj in scene.objects:
                tn, tf = -np.inf, np.inf
                for a in range(3):
                    if d[a] == 0:
                        if not obj.lo[a] <= origin[a] <= obj.hi[a]:
                            tn, tf = np.inf, -np.inf
                        continue
                    t1, t2 = (obj.lo[a] - origin[a]) / d[a], (obj.hi[a] - origin[a]) / d[a]
                    tn, tf = max(tn, min(t1, t2)), min(tf, max(t1, t2))
                if tn <= tf and 0 < tn < best:
                    best = tn
            out[i, u] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--baseline-rows", type=int, default=6)
    args = parser.parse_args()

    gen = SceneGenerator(480, 640, seed=0)
    gen.sample(0)  # warm-up
    start = time.perf_counter()
    scenes = [gen.sample(i) for i in range(args.frames)]
    vec_ms = (time.perf_counter() - start) / args.frames * 1e3

    rows = range(200, 200 + args.baseline_rows)
    start = time.perf_counter()
    ref = per_pixel_depth(gen, 0, rows)
    base_ms = (time.perf_counter() - start) * 480 / len(rows) * 1e3
    err = np.abs(ref - scenes[0].depth_clean[rows.start : rows.stop]).max()

    print(f"vectorised generator : {vec_ms:8.1f} ms / 480x640 frame (render + shading + sensor model, 1 process)")
    print(f"per-pixel ray caster : {base_ms:8.1f} ms / frame (depth only, extrapolated from {len(rows)} rows)")
    print(f"speed-up             : {base_ms / vec_ms:8.1f}x   (max depth difference on the baseline rows: {err:.2e} m)")


if __name__ == "__main__":
    main()
