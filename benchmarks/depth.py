"""Depth-side speed and fill quality: ms per 480×640 frame against straightforward NumPy versions of the same maths.

For each stage — hole filling (``fast``, ``colorization``), back-projection, normals, gravity, HHA — the library
function and a plain per-pixel / per-offset loop version written here (run in the same process on the same
synthetic frame) are timed, their outputs compared, and the speed-up printed as a ratio of medians. On a CUDA
machine the torch HHA path is timed too. Figures on a shared CPU are noisy: min and median are both printed.

The fill quality section reports the error of the filled pixels against the synthetic scenes' noise-free depth,
per hole cause (depth discontinuity, specular surface, out of range), for ``fast`` and ``colorization``.

    .venv/bin/python benchmarks/depth.py                    # everything (a few minutes on 2 cores)
    .venv/bin/python benchmarks/depth.py --skip-slow        # no colorization, no per-pixel loops over VGA
    .venv/bin/python benchmarks/depth.py --repeat 20 --quality-frames 5
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from rgbd_seg_ros.allocator import tune_allocator
from rgbd_seg_ros.depth.completion import _DIAMOND_5, colorization_system, fill_depth
from rgbd_seg_ros.depth.hha import HHAParams, compute_hha, compute_hha_torch, estimate_gravity, surface_normals
from rgbd_seg_ros.depth.points import backproject
from rgbd_seg_ros.frames import CameraIntrinsics
from rgbd_seg_ros.synthetic import DISCONTINUITY, OUT_OF_RANGE, SPECULAR, SceneGenerator


# -- timing ------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> tuple[list[float], object]:
    """Milliseconds of ``repeat`` calls after ``warmup``, and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, out


def row(name: str, ours: list[float], base: list[float] | None, agreement: str = "") -> None:
    o_min, o_med = min(ours), statistics.median(ours)
    text = f"{name:34s} {o_min:9.2f} {o_med:9.2f}"
    if base:
        b_med = statistics.median(base)
        text += f" {min(base):11.1f} {b_med:11.1f} {b_med / o_med:8.1f}x"
    else:
        text += f" {'':11s} {'':11s} {'':9s}"
    print(f"{text}  {agreement}", flush=True)


# -- straightforward baselines (same maths, plain loops) --------------------------------------------------------
def loop_backproject(depth: np.ndarray, k: CameraIntrinsics) -> np.ndarray:
    out = np.full((*depth.shape, 3), np.nan, np.float32)
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            z = depth[v, u]
            if z > 0:  # False for NaN
                out[v, u] = ((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
    return out


def _shifts(img: np.ndarray, mask: np.ndarray, pad_value: float, mode: str = "constant"):
    """Yield the image shifted by every offset where ``mask`` (odd square or diamond) is set."""
    r = mask.shape[0] // 2
    kwargs = {"constant_values": pad_value} if mode == "constant" else {}
    pad = np.pad(img, r, mode=mode, **kwargs)
    h, w = img.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if mask[dy + r, dx + r]:
                yield dy, dx, pad[r + dy : r + dy + h, r + dx : r + dx + w]


def loop_dilate(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(img.shape, -np.inf, img.dtype)
    for _, _, s in _shifts(img, mask, -np.inf):
        np.maximum(out, s, out=out)
    return out


def loop_erode(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(img.shape, np.inf, img.dtype)
    for _, _, s in _shifts(img, mask, np.inf):
        np.minimum(out, s, out=out)
    return out


def loop_fill_fast(depth: np.ndarray) -> np.ndarray:
    """Ku et al.'s pipeline with offset loops instead of OpenCV (same steps as ``fill_depth(..., "fast")``)."""
    valid = np.isfinite(depth)
    far = np.float32(np.nanmax(depth) + 1.0)
    inv = np.where(valid, far - depth, np.float32(0))
    inv = loop_dilate(inv, _DIAMOND_5)
    full = {k: np.ones((k, k), bool) for k in (5, 7, 31)}
    inv = loop_erode(loop_dilate(inv, full[5]), full[5])
    empty = inv <= 0
    inv[empty] = loop_dilate(inv, full[7])[empty]
    for u in range(inv.shape[1]):  # column extension
        rows = np.nonzero(inv[:, u] > 0)[0]
        if len(rows):
            inv[: rows[0], u] = inv[rows[0], u]
            inv[rows[-1] + 1 :, u] = inv[rows[-1], u]
    while (inv <= 0).any():
        empty = inv <= 0
        inv[empty] = loop_dilate(inv, full[31])[empty]
    inv = np.median(np.stack([s for _, _, s in _shifts(inv, full[5], 0, mode="edge")]), axis=0).astype(np.float32)
    # Bilateral, d = 5 (circular radius 2), sigma colour 1.5, sigma space 2.0, reflect-101 border.
    num = np.zeros(inv.shape, np.float64)
    den = np.zeros(inv.shape, np.float64)
    disk = np.array([[dy * dy + dx * dx <= 4 for dx in range(-2, 3)] for dy in range(-2, 3)])
    for dy, dx, s in _shifts(inv, disk, 0, mode="reflect"):
        wt = np.exp(-(dy * dy + dx * dx) / (2 * 2.0**2)) * np.exp(-((s - inv) ** 2) / (2 * 1.5**2))
        num += wt * s
        den += wt
    return np.where(valid, depth, far - (num / den).astype(np.float32))


def loop_colorization_matrix(depth: np.ndarray, rgb: np.ndarray):
    """The toolbox's per-pixel loops that build the colorization system (COO triplets, then CSR)."""
    from scipy import sparse

    h, w = depth.shape
    gray = rgb.astype(np.float64) @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103]) / 255
    known = np.isfinite(depth).ravel()
    rows, cols, vals = [], [], []
    for i in range(h):
        for j in range(w):
            r = i * w + j
            nb = [(ii, jj) for ii in range(max(0, i - 1), min(h, i + 2)) for jj in range(max(0, j - 1), min(w, j + 2))]
            nb = [p for p in nb if p != (i, j)]
            g = [gray[p] for p in nb]
            c = gray[i, j]
            allv = [*g, c]
            mean = sum(allv) / len(allv)
            csig = 0.6 * sum((x - mean) ** 2 for x in allv) / len(allv)
            mgv = min((x - c) ** 2 for x in g)
            csig = max(csig, -mgv / math.log(0.01), 2e-6)
            wts = [math.exp(-((x - c) ** 2) / csig) for x in g]
            total = sum(wts)
            for (ii, jj), wt in zip(nb, wts):
                rows.append(r)
                cols.append(ii * w + jj)
                vals.append(-wt / total)
            rows.append(r)
            cols.append(r)
            vals.append(1.0 + known[r])
    return sparse.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))


def loop_normals(depth: np.ndarray, fit: np.ndarray, k: CameraIntrinsics, radius: int) -> np.ndarray:
    """The reference formulation: ray-coordinate moments summed offset by offset (float64), adjugate solve."""
    h, w = depth.shape
    xr = (np.arange(w) - k.cx) / k.fx
    yr = (np.arange(h) - k.cy) / k.fy
    x = np.broadcast_to(xr[None, :], (h, w))
    y = np.broadcast_to(yr[:, None], (h, w))
    m = fit.astype(np.float64)
    iz = np.where(fit, 1.0 / np.where(fit, depth, 1.0), 0.0)
    terms = [m * x * x, m * x * y, m * x, m * y * y, m * y, m, iz * x, iz * y, iz]
    sums = [np.zeros((h, w)) for _ in terms]
    full = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    for t, acc in zip(terms, sums):
        for _, _, s in _shifts(t, full, 0.0):
            acc += s
    a, b, c, d, e, f, bx, by, bz = sums
    adj = [d * f - e * e, c * e - b * f, b * e - c * d, a * f - c * c, b * c - a * e, a * d - b * b]
    n = np.stack(
        [
            adj[0] * bx + adj[1] * by + adj[2] * bz,
            adj[1] * bx + adj[3] * by + adj[4] * bz,
            adj[2] * bx + adj[4] * by + adj[5] * bz,
        ],
        -1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n *= np.where(n[..., 2:] < 0, -1.0, 1.0)
    p = np.stack([x, y, np.ones_like(x)], -1) * np.nan_to_num(depth)[..., None]
    n *= np.where((n * p).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    return n


def loop_gravity(normals: np.ndarray) -> np.ndarray:
    nn = normals.reshape(-1, 3)
    nn = nn[np.isfinite(nn[:, 0])].T
    y = np.array([0.0, 1.0, 0.0])
    for thresh, iters in ((45, 5), (15, 5)):
        t = math.radians(thresh)
        for _ in range(iters):
            sim = np.abs(y @ nn)
            nf, nw = nn[:, sim > math.cos(t)], nn[:, sim < math.sin(t)]
            vals, vecs = np.linalg.eig(nw @ nw.T - nf @ nf.T)
            v = vecs[:, np.argmin(vals)]
            y = v * (1.0 if v @ y >= 0 else -1.0)
    return y


def loop_hha(depth: np.ndarray, raw: np.ndarray, k: CameraIntrinsics) -> np.ndarray:
    fit = np.isfinite(raw) & np.isfinite(depth)
    g = loop_gravity(loop_normals(depth, fit, k, 10))
    n = loop_normals(depth, fit, k, 3)
    z = np.nan_to_num(depth) * 100
    xr = (np.arange(depth.shape[1]) - k.cx) / k.fx
    yr = (np.arange(depth.shape[0]) - k.cy) / k.fy
    gh = g if math.degrees(math.acos(min(1.0, g[1]))) > 0.1 else np.array([0.0, 1.0, 0.0])
    height = -z * (gh[0] * xr[None, :] + gh[1] * yr[:, None] + gh[2])
    low = height.min()
    height -= low if low <= -90 else -130
    angle = np.degrees(np.arccos(np.clip(n @ g, -1, 1)))
    angle[np.isnan(angle)] = 180
    out = np.stack([31000 / np.maximum(z, 100), height, angle + 38], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -- main --------------------------------------------------------------------------------------------------------
def diff_text(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    both = np.isfinite(d)
    nan_mismatch = int((np.isnan(a.astype(np.float64)) != np.isnan(b.astype(np.float64))).sum())
    return f"max|diff| {d[both].max():.3g}, mean {d[both].mean():.3g}, NaN mismatches {nan_mismatch}"


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(np.dot(a, b))) / np.linalg.norm(a) / np.linalg.norm(b))))


def speed(args) -> None:
    scene = SceneGenerator(480, 640, seed=args.seed).sample(0)
    frame = scene.frame
    raw, k = frame.depth, frame.intrinsics
    filled = fill_depth(raw, "fast")
    fit = np.isfinite(raw)
    rep, slow = args.repeat, not args.skip_slow
    print(f"480×640 synthetic frame, {np.isnan(raw).mean() * 100:.1f}% holes; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, cv2 threads {cv2.getNumThreads()}, torch threads "
          f"{torch.get_num_threads()}, malloc {'default' if args.default_malloc else 'tuned (as the node)'}"
    )  # fmt: skip
    print(f"{'stage (ms per frame)':34s} {'ours min':>9s} {'ours med':>9s} {'base min':>11s} {'base med':>11s} "
          f"{'speed-up':>9s}  agreement")  # fmt: skip

    ours, out = timed(lambda: fill_depth(raw, "fast"), rep)
    base, ref = timed(lambda: loop_fill_fast(raw), 1, warmup=0) if slow else ([], None)
    row("fill fast (Ku et al.)", ours, base, diff_text(out, ref) if ref is not None else "")
    row("fill fast, gaussian smoothing", timed(lambda: fill_depth(raw, "fast", smoothing="gaussian"), rep)[0], None)
    row("fill none", timed(lambda: fill_depth(raw, "none"), rep)[0], None)
    if slow:
        ours, (matrix, _, _) = timed(lambda: colorization_system(raw, frame.rgb), 1, warmup=0)
        base, ref = timed(lambda: loop_colorization_matrix(raw, frame.rgb), 1, warmup=0)
        row("colorization: build system", ours, base, f"max|diff| {abs(matrix - ref).max():.3g}")
        row(
            "colorization: total (build+solve)",
            timed(lambda: fill_depth(raw, "colorization", frame.rgb), 1, 0)[0],
            None,
        )

    ours, out = timed(lambda: backproject(filled, k), rep)
    base, ref = timed(lambda: loop_backproject(filled, k), 1, warmup=0) if slow else ([], None)
    row("backprojection", ours, base, diff_text(out, ref) if ref is not None else "")

    ours, n_ours = timed(lambda: surface_normals(filled, k, 3, raw_depth_m=raw), rep)
    base, n_ref = timed(lambda: loop_normals(filled, fit, k, 3), 1, warmup=0)
    dots = np.abs((n_ours * n_ref).sum(-1))
    finite = np.isfinite(dots)
    row("normals R=3", ours, base, f"|cos| < 0.9999 at {100 * (dots[finite] < 0.9999).mean():.2f}% of pixels")
    ours, g = timed(lambda: estimate_gravity(filled, k, raw_depth_m=raw), rep)
    base, g_ref = timed(lambda: loop_gravity(loop_normals(filled, fit, k, 10)), 1, warmup=0) if slow else ([], None)
    agree = f"vs truth {angle_deg(g, scene.gravity):.3f}°"
    if g_ref is not None:
        agree += f", vs loop version {angle_deg(g, g_ref):.4f}°"
    row("gravity (R=10 normals + iterations)", ours, base, agree)
    ours, hha = timed(lambda: compute_hha(filled, k, raw_depth_m=raw), rep)
    base, hha_ref = timed(lambda: loop_hha(filled, raw, k), 1, warmup=0) if slow else ([], None)
    agree = ""
    if hha_ref is not None:
        d = np.abs(hha.astype(int) - hha_ref.astype(int))
        agree = "per channel max/% differing: " + ", ".join(
            f"{d[..., c].max()}/{100 * (d[..., c] > 0).mean():.2f}%" for c in range(3)
        )
    row("HHA incl. gravity", ours, base, agree)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # compute_hha then runs both normal fits in the calling thread
    ours, serial = timed(lambda: compute_hha(filled, k, raw_depth_m=raw), rep)
    cv2.setNumThreads(threads)
    row("HHA incl. gravity, one thread", ours, None, f"identical to the above: {np.array_equal(serial, hha)}")
    row("HHA, gravity given", timed(lambda: compute_hha(filled, k, gravity=g, raw_depth_m=raw), rep)[0], None)
    stride2 = HHAParams(gravity_stride=2)
    ours, hha2 = timed(lambda: compute_hha(filled, k, raw_depth_m=raw, params=stride2), rep)
    row(
        "HHA incl. gravity, gravity_stride=2", ours, None, f"differs from stride 1 at {100 * (hha2 != hha).mean():.3f}%"
    )

    devices = (["cuda"] if torch.cuda.is_available() else []) + (["cpu"] if args.torch_cpu else [])
    for device in devices:
        d_t, r_t = torch.from_numpy(filled).to(device), torch.from_numpy(raw).to(device)

        def run(d_t=d_t, r_t=r_t, device=device):
            out = compute_hha_torch(d_t, k, raw_depth=r_t)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        ours, out = timed(run, rep)
        diff = np.abs(out.permute(1, 2, 0).cpu().numpy().astype(int) - hha.astype(int))
        row(
            f"HHA incl. gravity, torch {device}",
            ours,
            None,
            f"vs NumPy: max {diff.max()}, {100 * (diff > 0).mean():.3f}%",
        )


def quality(args) -> None:
    gen = SceneGenerator(480, 640, seed=args.seed + 1)
    causes = {"discontinuity": DISCONTINUITY, "specular": SPECULAR, "out of range": OUT_OF_RANGE}
    methods = ["fast"] + ([] if args.skip_slow else ["colorization"])
    errors = {(m, c): [] for m in methods for c in [*causes, "all holes"]}
    for i in range(args.quality_frames):
        scene = gen.sample(i)
        holes = ~np.isfinite(scene.frame.depth)
        for method in methods:
            err = np.abs(fill_depth(scene.frame.depth, method, scene.frame.rgb) - scene.depth_clean)
            errors[(method, "all holes")].append(err[holes])
            for cause, code in causes.items():
                errors[(method, cause)].append(err[scene.invalid_reason == code])
    print(f"\nfill error on hole pixels vs noise-free depth, {args.quality_frames} synthetic 480×640 frames "
          "(MAE / median, cm; share of hole pixels)")  # fmt: skip
    for cause in [*causes, "all holes"]:
        parts = []
        for method in methods:
            e = np.concatenate(errors[(method, cause)])
            share = e.size / max(np.concatenate(errors[(method, "all holes")]).size, 1) * 100
            parts.append(f"{method} {e.mean() * 100:6.2f} / {np.median(e) * 100:6.2f}" if e.size else f"{method} –")
        print(f"  {cause:14s} ({share:5.1f}%): " + "   ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-slow", action="store_true", help="skip colorization and the slowest loop baselines")
    parser.add_argument("--torch-cpu", action="store_true", help="also time the torch HHA path on the CPU")
    parser.add_argument("--quality-frames", type=int, default=3)
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's malloc as it is (the node tunes it)"
    )
    args = parser.parse_args()
    if not args.default_malloc:
        tune_allocator()
    speed(args)
    if args.quality_frames > 0:
        quality(args)


if __name__ == "__main__":
    main()
