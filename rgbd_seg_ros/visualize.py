"""Images for people: depth colouring for previews (model inputs are made in ``depth/encode.py``, not here)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize_depth(depth_m: np.ndarray, max_m: float | None = None) -> np.ndarray:
    """Turbo-coloured depth for display: float32 H×W metres → uint8 H×W×3 RGB, invalid (NaN) pixels black.

    Args:
        max_m: depth mapped to the far end of the colour map; None = the 99th percentile of valid depth.
    """
    valid = np.isfinite(depth_m)
    if max_m is None:
        max_m = float(np.percentile(depth_m[valid], 99)) if valid.any() else 1.0
    scaled = np.clip(np.nan_to_num(depth_m, nan=0.0) / max(max_m, 1e-6), 0, 1)
    rgb = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    rgb[~valid] = 0
    return rgb


def titled(image: np.ndarray, title: str) -> np.ndarray:
    """A copy of the H×W×3 uint8 RGB ``image`` with ``title`` in its top-left corner (white on a black band), the
    text sized to the image height."""
    out = np.array(image, dtype=np.uint8, copy=True)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, out.shape[0] / 640)
    thickness = max(1, round(scale * 1.5))
    (width, height), baseline = cv2.getTextSize(title, font, scale, thickness)
    pad = max(2, height // 3)
    cv2.rectangle(out, (0, 0), (width + 2 * pad, height + baseline + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, title, (pad, pad + height), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
