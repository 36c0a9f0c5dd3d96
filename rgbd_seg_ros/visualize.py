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
