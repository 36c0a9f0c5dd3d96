"""Images from disk through the Segmenter and back to disk: the file side of ``rgbd-seg segment``.

* **Inputs**: a colour image (anything OpenCV reads; 8-bit) and a depth image registered to it, same size:
  a 16-bit PNG (millimetres by default) or a float TIFF / EXR (where the OpenCV build reads EXR) / ``.npy``
  (metres by default); ``depth_scale`` (metres per unit) overrides the unit. Folders pair by file stem.
* **Intrinsics**: ``fx fy cx cy`` for the images as they are, or a ``camera_info`` YAML in either layout —
  camera_info_manager's calibration file (``image_width``, ``image_height``, ``camera_matrix: {rows, cols,
  data}``) or ``ros2 topic echo`` of a ``sensor_msgs/CameraInfo`` (``width``, ``height``, ``k: [9]``). K is
  scaled (one warning per size) when an image has the calibration's aspect ratio but another size.
* **Outputs** per frame ``NAME`` under ``out/``: ``labels/NAME.png`` (indexed 'P' PNG: pixel values are train
  ids, 255 = no prediction, the palette is the label set's), ``color/NAME.png`` and ``overlay/NAME.png`` (RGB),
  ``confidence/NAME.png`` (16-bit greyscale: softmax probability of the chosen class × 65535).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from rgbd_seg_ros.fileio import atomic_write_bytes
from rgbd_seg_ros.frames import DEPTH_UNITS_WARNING, CameraIntrinsics, RGBDFrame, depth_to_metres, depth_units_warning
from rgbd_seg_ros.labels import LabelSet
from rgbd_seg_ros.render import OUTPUT_NAMES, render_outputs, write_png

LOG = logging.getLogger("rgbd_seg_ros")

RGB_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
DEPTH_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".exr", ".npy", ".pgm")
OUTPUTS: tuple[str, ...] = OUTPUT_NAMES
CONFIDENCE_SCALE = 65535  # confidence PNG value = round(probability × CONFIDENCE_SCALE)
ASPECT_TOLERANCE = 0.01  # relative difference of the x and y scale factors still treated as one aspect ratio


# -- intrinsics -------------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Pinhole intrinsics (pixels) and the image size (width, height) they belong to; ``size`` None = the size of
    whatever image they are applied to (``--intrinsics fx fy cx cy``)."""

    fx: float
    fy: float
    cx: float
    cy: float
    size: tuple[int, int] | None = None
    source: str = "--intrinsics"
    _warned: set[tuple[int, int]] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not (np.isfinite(values).all() and self.fx > 0 and self.fy > 0):
            raise ValueError(f"{self.source}: need finite fx, fy > 0 and finite cx, cy; got {values}")

    def for_image(self, width: int, height: int) -> CameraIntrinsics:
        """The intrinsics of an image of ``width`` × ``height``: scaled from the calibration's size (one warning per
        size) when the aspect ratio matches; ``ValueError`` when it does not."""
        if self.size is None:
            return CameraIntrinsics(self.fx, self.fy, self.cx, self.cy, width, height)
        calib = CameraIntrinsics(self.fx, self.fy, self.cx, self.cy, *self.size)
        if (width, height) == self.size:
            return calib
        sx, sy = width / self.size[0], height / self.size[1]
        if abs(sx - sy) > ASPECT_TOLERANCE * max(sx, sy):
            raise ValueError(
                f"image is {width}x{height} but {self.source} is for {self.size[0]}x{self.size[1]}, another aspect "
                "ratio: the intrinsics cannot be scaled to it (crop or resize the images, or calibrate at this size)"
            )
        if (width, height) not in self._warned:
            self._warned.add((width, height))
            LOG.warning(
                "%s is for %dx%d images; scaling its intrinsics to %dx%d", self.source, *self.size, width, height
            )
        return calib.scaled(width, height)


def _number(value: Any, what: str, source: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"camera info {source}: {what} must be a number, got {value!r}")
    return float(value)


def read_camera_info(path: str | Path) -> Calibration:
    """Intrinsics from a ``camera_info`` YAML: camera_info_manager's calibration file or ``ros2 topic echo`` of a
    ``sensor_msgs/CameraInfo`` (the first document; ROS 1's upper-case ``K`` is accepted too). Uses K (REP 104).

    Raises:
        FileNotFoundError: no such file. ValueError: not YAML, or neither layout; the message names the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera info file not found: {path}")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"camera info {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    doc = docs[0] if docs else None
    if not isinstance(doc, dict):
        raise ValueError(f"camera info {path} holds no YAML mapping")
    if "camera_matrix" in doc:  # camera_info_manager calibration file
        matrix = doc["camera_matrix"]
        if not isinstance(matrix, dict) or "data" not in matrix:
            raise ValueError(f"camera info {path}: camera_matrix must be a mapping with rows, cols and data")
        shape = (matrix.get("rows", 3), matrix.get("cols", 3))
        if shape != (3, 3):
            raise ValueError(f"camera info {path}: camera_matrix must be 3x3, got {shape[0]}x{shape[1]}")
        k, size_keys = matrix["data"], ("image_width", "image_height")
    elif "k" in doc or "K" in doc:  # ros2 topic echo (ROS 1: K)
        k, size_keys = doc.get("k", doc.get("K")), ("width", "height")
    else:
        raise ValueError(
            f"camera info {path} has neither camera_matrix (camera_info_manager calibration file) nor k "
            "(ros2 topic echo of a sensor_msgs/CameraInfo)"
        )
    if not isinstance(k, list) or len(k) != 9:
        raise ValueError(f"camera info {path}: the camera matrix must be a list of 9 numbers, got {k!r}")
    values = [_number(v, "camera matrix entry", path) for v in k]
    missing = [key for key in size_keys if key not in doc]
    if missing:
        raise ValueError(f"camera info {path} has no {' or '.join(missing)}")
    width, height = (_number(doc[key], key, path) for key in size_keys)
    msg = SimpleNamespace(k=values, width=int(width), height=int(height))
    try:
        intr = CameraIntrinsics.from_camera_info(msg)
    except ValueError as exc:
        raise ValueError(f"camera info {path}: {exc}") from None
    return Calibration(intr.fx, intr.fy, intr.cx, intr.cy, (intr.width, intr.height), f"camera info {path}")


def camera_info_yaml(intrinsics: CameraIntrinsics, camera_name: str = "camera") -> str:
    """The camera_info_manager calibration YAML of ``intrinsics`` (no distortion; P = [K | 0])."""
    import yaml

    k = intrinsics.matrix
    doc = {
        "image_width": intrinsics.width,
        "image_height": intrinsics.height,
        "camera_name": camera_name,
        "camera_matrix": {"rows": 3, "cols": 3, "data": k.reshape(-1).tolist()},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.0] * 5},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": np.eye(3).reshape(-1).tolist()},
        "projection_matrix": {"rows": 3, "cols": 4, "data": np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist()},
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A colour image and its registered depth image; ``name`` names the outputs."""

    name: str
    rgb: Path
    depth: Path


def _images(folder: Path, suffixes: Sequence[str]) -> dict[str, list[Path]]:
    """Files of ``folder`` with one of ``suffixes`` (any case), by stem."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def find_pairs(rgb_dir: str | Path, depth_dir: str | Path) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Pair the colour images of ``rgb_dir`` with the depth images of ``depth_dir`` by file stem.

    Returns the pairs (sorted by name) and the names that cannot be paired, each with the reason (missing
    partner, several files with one stem).

    Raises:
        FileNotFoundError / NotADirectoryError: a folder does not exist. ValueError: both are one folder.
    """
    rgb_dir, depth_dir = Path(rgb_dir), Path(depth_dir)
    for flag, folder in (("--rgb-dir", rgb_dir), ("--depth-dir", depth_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder")
    if rgb_dir.resolve() == depth_dir.resolve():
        raise ValueError(f"--rgb-dir and --depth-dir are both {rgb_dir}: files pair by name, so they must differ")
    rgbs, depths = _images(rgb_dir, RGB_SUFFIXES), _images(depth_dir, DEPTH_SUFFIXES)
    pairs, bad = [], []
    for name in sorted(set(rgbs) | set(depths)):
        colour, depth = rgbs.get(name, []), depths.get(name, [])
        if len(colour) > 1 or len(depth) > 1:
            files = ", ".join(p.name for p in (*colour, *depth))
            bad.append((name, f"several files share the name {name!r} ({files}); keep one of each"))
        elif not depth:
            bad.append((name, f"{colour[0]} has no depth image {name}.* in {depth_dir}"))
        elif not colour:
            bad.append((name, f"{depth[0]} has no colour image {name}.* in {rgb_dir}"))
        else:
            pairs.append(Pair(name, colour[0], depth[0]))
    return pairs, bad


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log while decoding: a broken file is reported once, by our error naming it."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _read_unchanged(path: Path, what: str) -> np.ndarray:
    from rgbd_seg_ros.datasets.io import read_unchanged

    try:
        with _quiet_opencv():
            return read_unchanged(path, what)
    except (OSError, ValueError, EOFError) as exc:
        message = " ".join(str(exc).split())
        message = message if str(path) in message else f"cannot read {what} {path}: {message}"
        if path.suffix.lower() == ".exr" and not cv2.haveImageReader(str(path)):
            message += " (this OpenCV build reads no EXR: save float depth as TIFF or .npy)"
        raise ValueError(message) from None


def _raw_depth(path: Path) -> np.ndarray:
    """A depth image as stored, checked to be one channel of 16+ bit integers or floats."""
    raw = _read_unchanged(path, "depth image")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim != 2:
        raise ValueError(f"depth image {path} has shape {raw.shape}; expected one channel (H×W)")
    if raw.dtype.kind not in "uif" or raw.dtype.itemsize < 2:
        raise ValueError(
            f"depth image {path} is {raw.dtype}; expected 16-bit integers (millimetres) or floats (metres)"
        )
    return raw


def read_depth(path: str | Path, depth_scale: float | None = None) -> np.ndarray:
    """A depth image as float32 metres, NaN = no measurement.

    Integer images are millimetres and float images metres unless ``depth_scale`` (metres per unit) is given;
    8-bit or multi-channel images are refused (``ValueError`` naming the file).
    """
    return depth_to_metres(_raw_depth(Path(path)), depth_scale)


def read_rgb(path: str | Path) -> np.ndarray:
    """A colour image as uint8 H×W×3 RGB (``ValueError`` naming the file if it cannot be read)."""
    from rgbd_seg_ros.datasets.io import read_rgb as _read

    path = Path(path)
    try:
        with _quiet_opencv():
            return _read(path)
    except (OSError, ValueError) as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def read_frame(
    rgb_path: str | Path, depth_path: str | Path, calibration: Calibration, depth_scale: float | None = None
) -> RGBDFrame:
    """The RGBDFrame of a colour image and its registered depth image (same size), intrinsics from
    ``calibration`` (scaled to the image size where needed). ``ValueError`` names the file at fault; depth that
    does not look like its unit leaves :func:`~rgbd_seg_ros.frames.depth_units_warning`'s text in
    ``frame.meta[DEPTH_UNITS_WARNING]``."""
    rgb = read_rgb(rgb_path)
    raw = _raw_depth(Path(depth_path))
    depth = depth_to_metres(raw, depth_scale)
    if depth.shape != rgb.shape[:2]:
        raise ValueError(
            f"depth image {depth_path} is {depth.shape[1]}x{depth.shape[0]} but colour image {rgb_path} is "
            f"{rgb.shape[1]}x{rgb.shape[0]}; depth must be registered to the colour image at the same size"
        )
    units = depth_units_warning(raw, depth_scale)
    meta = {DEPTH_UNITS_WARNING: f"{depth_path}: {units} (--depth-scale)"} if units else {}
    intrinsics = calibration.for_image(rgb.shape[1], rgb.shape[0])
    return RGBDFrame(rgb, depth, intrinsics, frame_id=Path(rgb_path).stem, meta=meta)


# -- outputs ----------------------------------------------------------------------------------------------------
def output_paths(out: str | Path, name: str) -> dict[str, Path]:
    """Where the outputs of frame ``name`` go: ``out/<output>/<name>.png`` for each of :data:`OUTPUTS`."""
    return {kind: Path(out) / kind / f"{name}.png" for kind in OUTPUTS}


def write_label_png(path: str | Path, labels: np.ndarray, label_set: LabelSet) -> Path:
    """Write a label image atomically: an indexed ('P') PNG with the label set's palette when the ids fit in 8 bits
    (pixel value = train id, ``ignore_index`` in the void colour), else a 16-bit greyscale PNG of the ids."""
    from PIL import Image

    label_set.check_labels(labels)
    if label_set.ignore_index > 255:
        return write_png(path, labels.astype(np.uint16))
    palette = np.zeros((256, 3), np.uint8)
    palette[: label_set.num_classes] = label_set.palette
    palette[label_set.ignore_index] = label_set.void_color
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def write_outputs(
    out: str | Path, name: str, frame: RGBDFrame, result: Any, label_set: LabelSet, alpha: float = 0.5
) -> dict[str, Path]:
    """Write the :data:`OUTPUTS` of one segmented frame (``result``: a ``Segmentation``) under ``out``, each file
    atomically; returns their paths. The images are :func:`rgbd_seg_ros.render.render_outputs`'."""
    images = render_outputs(frame.rgb, result.labels, result.confidence, label_set, OUTPUTS, alpha)
    paths = output_paths(out, name)
    write_label_png(paths["labels"], images["labels"][0], label_set)
    write_png(paths["color"], images["color"][0])
    write_png(paths["overlay"], images["overlay"][0])
    confidence = np.rint(np.clip(images["confidence"][0], 0.0, 1.0) * CONFIDENCE_SCALE).astype(np.uint16)
    write_png(paths["confidence"], confidence)
    return paths


def prepare_output(out: str | Path, names: Sequence[str], overwrite: bool = False) -> Path:
    """Create ``out`` and its output folders, and check that no output file of ``names`` exists unless
    ``overwrite`` (cheap: call it before loading a model).

    Raises:
        OSError: a folder cannot be created. FileExistsError: an output exists and ``overwrite`` is False.
    """
    out = Path(out)
    if not overwrite:
        existing = [p for name in names for p in output_paths(out, name).values() if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more outputs of this run)" if len(existing) > 1 else ""
            raise FileExistsError(f"{existing[0]} exists{more}; pass --overwrite to replace, or choose another --out")
    for kind in OUTPUTS:
        (out / kind).mkdir(parents=True, exist_ok=True)
    return out


# -- the loop ---------------------------------------------------------------------------------------------------
@dataclass
class SegmentSummary:
    """What a run did: names written and names skipped with the reason."""

    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def segment_pairs(
    segmenter: Any,
    pairs: Sequence[Pair],
    calibration: Calibration,
    out: str | Path,
    depth_scale: float | None = None,
    alpha: float = 0.5,
    progress: bool = True,
) -> SegmentSummary:
    """Segment each pair with ``segmenter`` (a :class:`~rgbd_seg_ros.pipeline.Segmenter`) and write its outputs
    under ``out`` (already made by :func:`prepare_output`). A pair that cannot be read is reported on stderr by
    name and skipped; every file is written atomically."""
    from tqdm import tqdm

    summary, units_warned = SegmentSummary(), False
    bar = tqdm(pairs, desc="segment", unit="pair", disable=not progress or len(pairs) < 2, file=sys.stderr)
    for pair in bar:
        try:
            frame = read_frame(pair.rgb, pair.depth, calibration, depth_scale)
        except (ValueError, TypeError) as exc:
            summary.skipped.append((pair.name, str(exc)))
            tqdm.write(f"skipped {pair.name}: {exc}", file=sys.stderr)
            continue
        if frame.meta.get(DEPTH_UNITS_WARNING) and not units_warned:
            units_warned = True
            LOG.warning("%s", frame.meta[DEPTH_UNITS_WARNING])
        write_outputs(out, pair.name, frame, segmenter(frame), segmenter.label_set, alpha)
        summary.written.append(pair.name)
    return summary


__all__ = [
    "Calibration",
    "Pair",
    "SegmentSummary",
    "camera_info_yaml",
    "find_pairs",
    "output_paths",
    "prepare_output",
    "read_camera_info",
    "read_depth",
    "read_frame",
    "read_rgb",
    "segment_pairs",
    "write_label_png",
    "write_outputs",
]
