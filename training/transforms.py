"""Joint RGB-D augmentation of :class:`~training.datasets.Sample` that keeps the intrinsics consistent.

Geometric transforms move RGB, depth, labels and every per-pixel ``frame.meta`` map (e.g. cached ``hha``,
``depth_filled``) together and update the intrinsics so that back-projection stays valid:

* scale and crop: each output pixel ``(u', v')`` with depth ``z`` back-projects, through the new intrinsics,
  to the 3-D point of the input location it was sampled from (exact at the sampled pixel centre; nearest-
  neighbour resampling adds at most half an input pixel). Depth values in metres are never rescaled:
  resizing an image changes the focal length, not the distance to the scene.
* horizontal flip: the output shows the scene mirrored in the camera's y–z plane, so a pixel's 3-D point
  ``(x, y, z)`` becomes ``(−x, y, z)`` (``cx' = W − 1 − cx``); y, z and the distance are preserved.

Resampling: RGB and uint8 meta maps (HHA) bilinearly; depth, labels and other meta maps with nearest
neighbour (pixel-centre aligned, like ``cv2.INTER_NEAREST_EXACT``) so no depth is blended across edges and no
label is invented. Padding: RGB 0, depth NaN, labels 255, uint8 meta 0, float meta NaN.

Photometric transforms change the RGB image only.

Every transform is called as ``t(sample, rng=None)`` with an optional ``numpy.random.Generator`` (a fresh
one, seeded from the OS, when none is given; :class:`Compose` shares one across its transforms).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from rgbd_seg_ros.datasets.base import Sample
from rgbd_seg_ros.datasets.io import IGNORE_INDEX
from rgbd_seg_ros.frames import CameraIntrinsics, RGBDFrame


def _pixel_maps(frame: RGBDFrame) -> dict[str, np.ndarray]:
    """The ``frame.meta`` entries that are per-pixel maps (H×W or H×W×C arrays on the frame's grid)."""
    shape = (frame.height, frame.width)
    return {k: v for k, v in frame.meta.items() if isinstance(v, np.ndarray) and v.ndim >= 2 and v.shape[:2] == shape}


def _rebuild(sample: Sample, rgb, depth, labels, intrinsics: CameraIntrinsics, maps: dict[str, np.ndarray]) -> Sample:
    meta = {**sample.frame.meta, **maps}
    f = sample.frame
    frame = RGBDFrame(rgb, depth, intrinsics, stamp_ns=f.stamp_ns, frame_id=f.frame_id, meta=meta)
    return Sample(frame, labels, sample.name)


def _nearest(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel-centre-aligned nearest-neighbour resize (output pixel u samples input pixel ⌊(u + ½)·W/w⌋), any dtype."""
    xs = np.minimum(np.floor((np.arange(width) + 0.5) * (arr.shape[1] / width)).astype(np.intp), arr.shape[1] - 1)
    ys = np.minimum(np.floor((np.arange(height) + 0.5) * (arr.shape[0] / height)).astype(np.intp), arr.shape[0] - 1)
    return arr[ys[:, None], xs[None, :]]


def _linear(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (pixel-centre aligned) of an 8-bit image with any number of channels."""
    out = cv2.resize(arr, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, *arr.shape[2:])


def resize(sample: Sample, width: int, height: int) -> Sample:
    """Resize everything to ``width`` × ``height`` pixels (intrinsics via :meth:`CameraIntrinsics.scaled`)."""
    f = sample.frame
    if (width, height) == (f.width, f.height):
        return sample
    rgb, depth, labels = (
        _linear(f.rgb, width, height),
        _nearest(f.depth, width, height),
        _nearest(sample.labels, width, height),
    )
    maps = {k: (_linear if v.dtype == np.uint8 else _nearest)(v, width, height) for k, v in _pixel_maps(f).items()}
    return _rebuild(sample, rgb, depth, labels, f.intrinsics.scaled(width, height), maps)


def _fill_value(arr: np.ndarray) -> float:
    return float("nan") if np.issubdtype(arr.dtype, np.floating) else 0


def _window(arr: np.ndarray, x0: int, y0: int, width: int, height: int, fill: float) -> np.ndarray:
    """``arr[y0:y0+height, x0:x0+width]`` where the window may extend past the image (padded with ``fill``)."""
    out = np.full((height, width, *arr.shape[2:]), fill, dtype=arr.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + width, arr.shape[1]), min(y0 + height, arr.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def crop(sample: Sample, x0: int, y0: int, width: int, height: int) -> Sample:
    """The ``width``×``height`` window at top-left pixel ``(x0, y0)``; parts outside the image are padded."""
    f = sample.frame
    rgb = _window(f.rgb, x0, y0, width, height, 0)
    depth = _window(f.depth, x0, y0, width, height, np.nan)
    labels = _window(sample.labels, x0, y0, width, height, IGNORE_INDEX)
    maps = {k: _window(v, x0, y0, width, height, _fill_value(v)) for k, v in _pixel_maps(f).items()}
    return _rebuild(sample, rgb, depth, labels, f.intrinsics.cropped(x0, y0, width, height), maps)


def hflip(sample: Sample) -> Sample:
    """Mirror horizontally (intrinsics via :meth:`CameraIntrinsics.flipped`)."""
    f = sample.frame
    maps = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in _pixel_maps(f).items()}
    rgb, depth = np.ascontiguousarray(f.rgb[:, ::-1]), np.ascontiguousarray(f.depth[:, ::-1])
    labels = np.ascontiguousarray(sample.labels[:, ::-1])
    return _rebuild(sample, rgb, depth, labels, f.intrinsics.flipped(), maps)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Compose:
    """Apply ``transforms`` in order, sharing one random generator per call."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


class Resize:
    """Deterministic resize to ``width`` × ``height`` (e.g. SUN RGB-D's mixed sizes to one input size)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return resize(sample, self.width, self.height)


class RandomScale:
    """Resize by a factor drawn from ``scales`` (a set, e.g. SA-Gate's 0.5…1.75) or uniformly from ``scale_range``."""

    def __init__(self, scales: Sequence[float] | None = None, scale_range: tuple[float, float] | None = None) -> None:
        if (scales is None) == (scale_range is None):
            raise ValueError("give exactly one of scales (a set) or scale_range (lo, hi)")
        if scales is not None and (not len(scales) or min(scales) <= 0):
            raise ValueError(f"scales must be a non-empty set of positive factors, got {scales}")
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        self.scales, self.scale_range = (tuple(scales) if scales is not None else None), scale_range

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        s = float(rng.choice(self.scales)) if self.scales is not None else float(rng.uniform(*self.scale_range))
        f = sample.frame
        return resize(sample, max(1, round(f.width * s)), max(1, round(f.height * s)))


class RandomCrop:
    """A random ``width`` × ``height`` window; an image smaller than that is placed at a random offset and padded."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        f = sample.frame
        dx, dy = f.width - self.width, f.height - self.height
        x0 = int(rng.integers(min(0, dx), max(0, dx) + 1))
        y0 = int(rng.integers(min(0, dy), max(0, dy) + 1))
        return crop(sample, x0, y0, self.width, self.height)


class RandomHorizontalFlip:
    """Mirror with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        return hflip(sample) if rng.random() < self.p else sample


def _with_rgb(sample: Sample, rgb: np.ndarray) -> Sample:
    f = sample.frame
    frame = RGBDFrame(rgb, f.depth, f.intrinsics, stamp_ns=f.stamp_ns, frame_id=f.frame_id, meta=dict(f.meta))
    return Sample(frame, sample.labels, sample.name)


class ColorJitter:
    """Random brightness, contrast and saturation factors in ``[1 − x, 1 + x]``, applied to RGB only."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0) -> None:
        if min(brightness, contrast, saturation) < 0:
            raise ValueError("jitter magnitudes must be >= 0")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        img = sample.frame.rgb.astype(np.float32)
        b, c, s = (float(rng.uniform(1 - x, 1 + x)) for x in (self.brightness, self.contrast, self.saturation))
        img *= b
        gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = (img - gray.mean()) * c + gray.mean()
        gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        img = (img - gray) * s + gray
        return _with_rgb(sample, np.clip(np.rint(img), 0, 255).astype(np.uint8))


class RandomHSV:
    """ACNet-style HSV jitter on RGB only: hue and saturation scaled by factors from ``h_range``/``s_range``,
    value shifted by an offset from ``v_shift`` (8-bit units). Hue wraps around; S and V are clipped."""

    def __init__(
        self,
        h_range: tuple[float, float] = (0.9, 1.1),
        s_range: tuple[float, float] = (0.9, 1.1),
        v_shift: tuple[float, float] = (-25.0, 25.0),
    ) -> None:
        self.h_range, self.s_range, self.v_shift = h_range, s_range, v_shift

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng(rng)
        hsv = cv2.cvtColor(sample.frame.rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H 0..360, S, V 0..1
        hsv[..., 0] = np.mod(hsv[..., 0] * rng.uniform(*self.h_range), 360.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.s_range), 0.0, 1.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + rng.uniform(*self.v_shift) / 255.0, 0.0, 1.0)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        return _with_rgb(sample, np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
