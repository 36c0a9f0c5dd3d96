"""Precompute filled depth and HHA for a dataset, in parallel worker processes, into a resumable cache.

    python -m training.prepare nyudv2 /data/NYUDv2 --out /data/NYUDv2/cache --workers 8
    python -m training.prepare sunrgbd /data/SUNRGBD --option depth=raw --hha-param camera_height_cm=120

Per sample it writes (layout in :mod:`rgbd_seg_ros.datasets.cache`):

* ``depth_filled/<name>.png``: ``rgbd_seg_ros.depth.completion.fill_depth(depth, method, rgb)`` (skipped with
  ``--fill none``);
* ``hha/<name>.png``: ``rgbd_seg_ros.depth.hha.compute_hha`` of the filled depth, with the raw depth's holes
  left out of the normal fits (Gupta's D / RD); gravity is estimated per frame.

Training then passes ``cache_dir=<out>`` to ``build_dataset`` and finds them in ``frame.meta``.

NYUDv2's ``.mat`` in-painted depth is already complete: prepare it with ``--fill none`` (HHA of the in-painted
depth, which is what SA-Gate's released HHA images hold), or recompute the in-painting from the raw depth
with ``--option depth=raw --fill colorization`` (slow: tens of seconds per 640×480 frame on a small CPU).

Resumable: a sample whose files all exist is skipped, and every file is written to a temporary name and
renamed into place (atomic), so an interrupted run leaves only complete files (plus temporaries, removed on
the next start). The computation is deterministic, so a resumed run produces the same files as an
uninterrupted one. ``manifest.json`` records the dataset, its options and the method; resuming with
different settings into the same directory is refused. Run one preparation per cache folder at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from rgbd_seg_ros.datasets.base import RGBDDataset, Sample
from rgbd_seg_ros.datasets.cache import FORMAT_VERSION, MANIFEST, encode_product, product_path
from rgbd_seg_ros.depth.completion import FILL_METHODS, fill_depth
from rgbd_seg_ros.depth.hha import HHAParams, compute_hha
from rgbd_seg_ros.fileio import atomic_write_bytes
from training.datasets import build_dataset

DEFAULT_CACHE = "rgbd_seg_ros_cache"
_TMP_SUFFIX = ".tmp"  # the suffix of fileio's temporary files

# Per-worker state, set by _init_worker.
_STATE: dict[str, Any] = {}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (parents created) with the package's one atomic writer (``fileio``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def compute_products(sample: Sample, fill: str, hha: bool, hha_params: dict[str, float]) -> dict[str, np.ndarray]:
    """The cache products of one sample: ``depth_filled`` (float32 m) and/or ``hha`` (uint8 H×W×3)."""
    frame, out = sample.frame, {}
    depth = frame.depth
    if fill != "none":
        depth = fill_depth(frame.depth, fill, rgb=frame.rgb)
        out["depth_filled"] = depth
    if hha:
        params = HHAParams(**hha_params)
        out["hha"] = compute_hha(depth, frame.intrinsics, raw_depth_m=frame.depth, params=params)
    return out


def _products(fill: str, hha: bool) -> list[str]:
    return (["depth_filled"] if fill != "none" else []) + (["hha"] if hha else [])


def _init_worker(config: dict[str, Any]) -> None:
    """Worker set-up: the dataset objects arrive pickled (no metadata re-parsing; file handles reopen lazily)."""
    _STATE.clear()
    _STATE.update(config)


def _process(task: tuple[str, int]) -> str:
    split, index = task
    c = _STATE
    ds: RGBDDataset = c["datasets"][split]
    name = ds.sample_name(index)
    try:
        products = compute_products(ds.load(index), c["fill"], c["hha"], c["hha_params"])
    except Exception as exc:
        raise RuntimeError(f"preparing sample {name!r} ({split} #{index}) of {c['root']} failed: {exc}") from exc
    for product, value in products.items():
        atomic_write(product_path(c["out"], product, name), encode_product(product, value))
    return name


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # compare in JSON form (tuples become lists)
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != manifest:
            raise ValueError(
                f"{path} was written with different settings ({existing}); use another --out or delete that "
                f"folder to recompute with {manifest}"
            )
    else:
        atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True).encode())


def prepare(
    name: str,
    root: str | Path,
    out: str | Path | None = None,
    splits: Sequence[str] = ("train", "test"),
    workers: int = 1,
    fill: str = "colorization",
    hha: bool = True,
    hha_params: dict[str, float] | None = None,
    dataset_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Compute the cache products of every sample in ``splits`` into ``out`` (default ``<root>/rgbd_seg_ros_cache``).

    Args:
        workers: worker processes (≤ 1 = in this process).
        fill: ``fill_depth`` method, or ``none``.
        hha: compute HHA.
        hha_params: overrides of :class:`rgbd_seg_ros.depth.hha.HHAParams` fields (e.g. for outdoor data).
        dataset_options: keyword options of the loader (as for ``build_dataset``).

    Returns:
        The cache directory.
    """
    root = Path(root)
    out = Path(out) if out is not None else root / DEFAULT_CACHE
    hha_params, dataset_options = dict(hha_params or {}), dict(dataset_options or {})
    if fill not in FILL_METHODS:
        raise ValueError(f"unknown fill method {fill!r}; choose one of {FILL_METHODS}")
    products = _products(fill, hha)
    if not products:
        raise ValueError("nothing to prepare: fill is 'none' and hha is off")
    if hha:
        HHAParams(**hha_params)  # validate before any work
    manifest = {"format": FORMAT_VERSION, "dataset": name, "dataset_options": dataset_options, "fill": fill,
                "hha_params": hha_params if hha else None, "products": products}  # fmt: skip
    datasets = {split: build_dataset(name, root, split, **dataset_options) for split in splits}
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, manifest)
    for stale in out.rglob(f".*{_TMP_SUFFIX}"):  # left by an interrupted run
        stale.unlink()
    tasks, seen, done = [], set(), 0
    for split, ds in datasets.items():
        for i in range(len(ds)):
            sample_name = ds.sample_name(i)
            if sample_name in seen:  # e.g. SGNet's list repeats 5 training frames
                continue
            seen.add(sample_name)
            if all(product_path(out, p, sample_name).is_file() for p in products):
                done += 1
            else:
                tasks.append((split, i))
    config = {"datasets": datasets, "root": str(root), "out": out, "fill": fill, "hha": hha, "hha_params": hha_params}
    bar = tqdm(total=len(seen), initial=done, desc=f"prepare {name}", unit="frame", disable=not progress)
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker(config)
            for task in tasks:
                _process(task)
                bar.update()
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(config,)) as pool:
                for _ in pool.imap_unordered(_process, tasks, chunksize=1):
                    bar.update()
    return out


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=[x, y]"]`` → ``{"a": 1, "b": ["x", "y"]}`` (values parsed as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--{what} expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="nyudv2 | sunrgbd | cityscapes | synthetic")
    parser.add_argument("root", type=Path, help="dataset root folder")
    parser.add_argument("--out", type=Path, default=None, help=f"cache folder (default <root>/{DEFAULT_CACHE})")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--fill", default="colorization", help="fill_depth method, or 'none'")
    parser.add_argument("--no-hha", action="store_true", help="only fill depth")
    parser.add_argument("--hha-param", action="append", default=[], metavar="KEY=VALUE", help="HHAParams override")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset loader option")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = prepare(
        args.dataset,
        args.root,
        args.out,
        splits=args.splits,
        workers=args.workers,
        fill=args.fill,
        hha=not args.no_hha,
        hha_params=_key_values(args.hha_param, "hha-param"),
        dataset_options=_key_values(args.option, "option"),
        progress=not args.quiet,
    )
    print(f"cache ready: {out} (pass cache_dir={str(out)!r} to build_dataset)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
