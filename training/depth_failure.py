"""Training-time depth failure: remove depth from a sample the way real sensors lose it.

Real depth dies in whole regions or entirely (sunlight on active stereo, glass and mirrors, black or far
surfaces, a loose cable, a driver restart). :class:`DepthFailure` sets such pixels of ``frame.depth`` to NaN
*before* hole filling and encoding (it runs as the last step of the recipe's augmentation, and
``training.data.Collate`` fills and encodes afterwards through ``encode_frames``), so the model trains on
exactly what the Segmenter feeds it at run time when the sensor fails.

Each mode is drawn independently per sample with its own probability (recipe ``augment.depth_failure``;
all 0 = off, the default and the paper recipes' setting). The synthetic recipes use

===========  =====  ==============================================================================================
mode         p      invalid pattern (sizes relative to the image: the same at any resolution)
===========  =====  ==============================================================================================
``frame``    0.20   every pixel: the sensor is gone (cable, driver restart, sunlight flooding the projector)
``regions``  0.20   1–3 large regions: ellipses with semi-axes 12–40 % of the image's height/width at any
                    angle, or (each with p = 0.3) a band along one image border 25–60 % of the image deep
                    (sunlight patches, a window, a fogged or blocked part of the view)
``far``      0.15   everything beyond a cut-off drawn uniformly in [1.5, 4.5] m (range limit of stereo/ToF)
``specular`` 0.15   dark/specular objects: whole objects (8-connected components of one label covering 0.5–25 %
                    of the image) each with p = 0.3 (at least one), plus every pixel whose 5×5-median grey
                    level is below a threshold drawn in [20, 45] (black, IR-absorbing surfaces)
``speckle``  0.20   scattered dropout: a fraction drawn in [2, 25] % of the pixels, in clumps of a few pixels
                    (smoothed noise thresholded at that quantile): weak returns, multipath, noisy stereo
===========  =====  ==============================================================================================

Objects for ``specular`` come from the label map (the synthetic generator's "specular" furniture,
``rgbd_seg_ros.synthetic``, likewise loses depth over whole objects; on real datasets labelled objects are the
same proxy for glass, mirrors and polished surfaces), and the dark-pixel threshold covers black surfaces.
Failures only remove depth: every pixel that keeps depth keeps its value. Per-pixel products derived from depth
(``frame.meta['depth_filled']``, ``['hha']`` from a prepare cache) are dropped when depth changes, so the
encoder recomputes them from the failed depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from rgbd_seg_ros.datasets.base import Sample
from rgbd_seg_ros.datasets.cache import PRODUCTS
from rgbd_seg_ros.datasets.io import IGNORE_INDEX

MODES: tuple[str, ...] = ("frame", "regions", "far", "specular", "speckle")

# Per-mode parameters (documented in the module docstring).
REGION_COUNT = (1, 3)
REGION_SEMI_AXIS = (0.12, 0.40)  # × image height / width
REGION_BAND_P = 0.3
REGION_BAND_DEPTH = (0.25, 0.60)  # × image height or width
FAR_CUTOFF_M = (1.5, 4.5)
OBJECT_P = 0.3
OBJECT_AREA = (0.005, 0.25)  # × image area: objects, not the room surfaces (those fail as ``regions``)
DARK_GREY = (20.0, 45.0)  # 8-bit grey level of the 5×5-median-filtered image
SPECKLE_FRACTION = (0.02, 0.25)
SPECKLE_SIGMA_PX = 1.0

DERIVED_PRODUCTS = PRODUCTS  # cache products computed from the depth: stale once depth is removed


def frame_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``frame``: every pixel."""
    return np.ones(shape, bool)


def region_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``regions``: the union of 1–3 ellipses or border bands (bool H×W)."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(REGION_COUNT[0], REGION_COUNT[1] + 1))):
        if rng.random() < REGION_BAND_P:
            side = int(rng.integers(4))  # left, right, top, bottom
            extent = rng.uniform(*REGION_BAND_DEPTH)
            n = max(1, round(extent * (w if side < 2 else h)))
            sl = [slice(None), slice(None)]
            sl[1 if side < 2 else 0] = slice(0, n) if side % 2 == 0 else slice(-n, None)
            mask[tuple(sl)] = 1
        else:
            centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
            axes = (float(rng.uniform(*REGION_SEMI_AXIS)) * w, float(rng.uniform(*REGION_SEMI_AXIS)) * h)
            angle = float(rng.uniform(0, 180))
            # cv2.ellipse takes integer geometry; shift = 4 fractional bits keeps sub-pixel placement.
            c = tuple(round(v * 16) for v in centre)
            a = tuple(max(16, round(v * 16)) for v in axes)
            cv2.ellipse(mask, c, a, angle, 0, 360, 1, thickness=-1, shift=4)
    return mask.astype(bool)


def far_mask(depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``far``: (pixels beyond a cut-off drawn in ``FAR_CUTOFF_M``, the cut-off in metres)."""
    cutoff = float(rng.uniform(*FAR_CUTOFF_M))
    with np.errstate(invalid="ignore"):
        return depth > np.float32(cutoff), cutoff


def object_mask(labels: np.ndarray, rng: np.random.Generator, p: float = OBJECT_P) -> np.ndarray:
    """Whole objects: each 8-connected component of one label (covering ``OBJECT_AREA`` of the image; the ignore
    label excluded) with probability ``p``, at least one when there is any (bool H×W)."""
    lo, hi = (a * labels.size for a in OBJECT_AREA)
    objects: list[np.ndarray] = []
    for value in np.unique(labels):
        if value == IGNORE_INDEX:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == value).astype(np.uint8), connectivity=8)
        objects += [comp == k for k in range(1, n) if lo <= stats[k, cv2.CC_STAT_AREA] <= hi]
    mask = np.zeros(labels.shape, bool)
    if not objects:
        return mask
    chosen = rng.random(len(objects)) < p
    if not chosen.any():
        chosen[int(rng.integers(len(objects)))] = True
    for obj, take in zip(objects, chosen):
        if take:
            mask |= obj
    return mask


def dark_mask(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark surfaces: pixels whose 5×5-median grey level is below a threshold drawn in ``DARK_GREY`` (bool H×W)."""
    grey = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    return grey < rng.uniform(*DARK_GREY)


def specular_mask(rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``specular``: whole objects (:func:`object_mask`) plus dark pixels (:func:`dark_mask`)."""
    return object_mask(labels, rng) | dark_mask(rgb, rng)


def speckle_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``speckle``: a fraction drawn in ``SPECKLE_FRACTION`` of the pixels, in small clumps (bool H×W)."""
    fraction = float(rng.uniform(*SPECKLE_FRACTION))
    noise = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), SPECKLE_SIGMA_PX)
    return noise < np.quantile(noise, fraction)


class DepthFailure:
    """Augmentation step: with probability ``p[mode]`` per sample, each mode's pixels lose their depth (NaN).

    Args:
        frame, regions, far, specular, speckle: the modes' probabilities per sample (see the module docstring).

    Called as ``t(sample, rng)`` like the steps of :mod:`training.transforms`; ``last_modes`` holds the modes
    applied to the most recent sample (for inspection and tests).
    """

    def __init__(
        self, frame: float = 0.0, regions: float = 0.0, far: float = 0.0, specular: float = 0.0, speckle: float = 0.0
    ) -> None:
        self.p = {"frame": frame, "regions": regions, "far": far, "specular": specular, "speckle": speckle}
        for mode, p in self.p.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"depth_failure.{mode} must be a probability in [0, 1], got {p}")
        self.last_modes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg) -> DepthFailure:
        """From the recipe's ``augment.depth_failure`` section (fields named as the modes)."""
        return cls(**{mode: float(getattr(cfg, mode)) for mode in MODES})

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in self.p.values())

    def draw_modes(self, rng: np.random.Generator) -> tuple[str, ...]:
        """The modes to apply to one sample: one uniform draw per mode, in ``MODES`` order."""
        draws = rng.random(len(MODES))
        return tuple(m for m, u in zip(MODES, draws) if u < self.p[m])

    def mask(self, mode: str, sample: Sample, rng: np.random.Generator) -> np.ndarray:
        """The pixels ``mode`` removes from ``sample`` (bool H×W)."""
        f = sample.frame
        shape = (f.height, f.width)
        makers: dict[str, Callable[[], np.ndarray]] = {
            "frame": lambda: frame_mask(shape, rng),
            "regions": lambda: region_mask(shape, rng),
            "far": lambda: far_mask(f.depth, rng)[0],
            "specular": lambda: specular_mask(f.rgb, sample.labels, rng),
            "speckle": lambda: speckle_mask(shape, rng),
        }
        return makers[mode]()

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = rng if rng is not None else np.random.default_rng()
        self.last_modes = modes = self.draw_modes(rng) if self.enabled else ()
        if not modes:
            return sample
        lost = np.zeros(sample.labels.shape, bool)
        for mode in modes:
            lost |= self.mask(mode, sample, rng)
        return with_depth_lost(sample, lost)


def with_depth_lost(sample: Sample, lost: np.ndarray) -> Sample:
    """``sample`` with ``frame.depth`` NaN where ``lost`` (bool H×W) and depth-derived meta products dropped."""
    f = sample.frame
    depth = f.depth.copy()
    depth[lost] = np.nan
    meta = {k: v for k, v in f.meta.items() if k not in DERIVED_PRODUCTS}
    return Sample(replace(f, depth=depth, meta=meta), sample.labels, sample.name)


__all__ = [
    "MODES",
    "DepthFailure",
    "dark_mask",
    "far_mask",
    "frame_mask",
    "object_mask",
    "region_mask",
    "speckle_mask",
    "specular_mask",
    "with_depth_lost",
]
