"""On-disk cache of per-sample precomputed inputs (written by ``training.prepare``, read by every loader).

Layout of a cache directory::

    manifest.json              what was computed and how (dataset, loader options, fill method, HHA params)
    depth_filled/<name>.png    16-bit PNG, filled depth in millimetres (0 = still no value or beyond 65.534 m:
                               :func:`~rgbd_seg_ros.frames.metres_to_millimetres_u16`)
    hha/<name>.png             8-bit colour PNG, channels (disparity, height, angle) in the file's R, G, B

``<name>`` is :attr:`Sample.name` (it may contain ``/`` for nested datasets). A loader given ``cache_dir``
attaches the products to the frame, at the frame's resolution, as

* ``frame.meta["depth_filled"]``: float32 H×W metres, NaN where the fill left no value;
* ``frame.meta["hha"]``: uint8 H×W×3, channels (disparity, height, angle) — the channel order of
  Gupta et al.'s HHA and of Depth2HHA's files read as RGB.

Geometric transforms carry both along with the frame (see ``training.transforms``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.frames import depth_to_metres, metres_to_millimetres_u16

from .io import read_rgb, read_unchanged, require_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRODUCTS: tuple[str, ...] = ("depth_filled", "hha")


def product_path(cache_dir: Path, product: str, name: str) -> Path:
    """Where ``product`` of sample ``name`` lives in ``cache_dir``."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown cache product {product!r}; known: {PRODUCTS}")
    return Path(cache_dir) / product / f"{name}.png"


def encode_product(product: str, array: np.ndarray) -> bytes:
    """PNG bytes of a product: ``depth_filled`` float32 metres (NaN = none) or ``hha`` uint8 H×W×3 (D, H, A)."""
    if product == "depth_filled":
        img = metres_to_millimetres_u16(array)
    elif product == "hha":
        hha = np.asarray(array)
        if hha.dtype != np.uint8 or hha.ndim != 3 or hha.shape[2] != 3:
            raise ValueError(f"HHA must be uint8 H×W×3, got {hha.dtype} {hha.shape}")
        img = cv2.cvtColor(hha, cv2.COLOR_RGB2BGR)
    else:
        raise ValueError(f"unknown cache product {product!r}; known: {PRODUCTS}")
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"PNG encoding of {product} failed")
    return buf.tobytes()


def read_product(path: Path, product: str) -> np.ndarray:
    """Decode a product file written by :func:`encode_product`."""
    if product == "depth_filled":
        raw = read_unchanged(path, "cached filled depth")
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(
                f"cached filled depth {path} must be a 16-bit single-channel PNG, got {raw.dtype} {raw.shape}"
            )
        return depth_to_metres(raw)
    if product == "hha":
        return read_rgb(path)
    raise ValueError(f"unknown cache product {product!r}; known: {PRODUCTS}")


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    path = require_file(Path(cache_dir) / MANIFEST, "cache manifest", "run `python -m training.prepare` first")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"cache {path} has format {manifest.get('format')}, this code reads {FORMAT_VERSION}")
    return manifest


def attach(frame_meta: dict[str, Any], shape: tuple[int, int], cache_dir: Path, manifest: dict, name: str) -> None:
    """Load every product ``manifest`` lists for sample ``name`` into ``frame_meta`` (see the module docstring)."""
    for product in manifest["products"]:
        path = product_path(cache_dir, product, name)
        if not path.is_file():
            raise FileNotFoundError(
                f"cached {product} for sample {name!r} not found: {path} (the cache is incomplete; rerun "
                "`python -m training.prepare` with the same arguments to finish it)"
            )
        value = read_product(path, product)
        if value.shape[:2] != shape:
            raise ValueError(
                f"cached {product} {path} is {value.shape[1]}x{value.shape[0]}, the frame is {shape[1]}x{shape[0]}"
            )
        frame_meta[product] = value
