"""Checkpoint I/O: safetensors weights + JSON metadata, and safe reading of other weight files.

* :func:`save_checkpoint` / :func:`load_checkpoint`: our format, one ``.safetensors`` file whose header
  metadata holds a JSON document (model name, backbone, num_classes, build options, input spec and the
  caller's metadata such as the label set and the training-config hash); the model is rebuilt from it.
* :func:`load_official`: the authors' released checkpoints, converted by the model's own
  ``convert_official(state_dict) -> state_dict`` method (key mapping, norm folding), read with
  ``weights_only=True``; ``rgbd-seg convert`` (:mod:`rgbd_seg_ros.models.convert`) turns them into our format once.
* :func:`read_weights` / :func:`torch_load_weights_only`: every torch file is read with ``weights_only=True`` (NumPy
  scalars allowed); a file that pickles code is refused with a message naming what it holds. Handing an authors'
  file to :func:`load_checkpoint` raises a ValueError with the exact ``rgbd-seg convert`` command.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "rgbd_seg_ros.checkpoint/1"
_META_KEY = "rgbd_seg_ros"
#: Metadata fields written from the model itself; the caller cannot override them.
_MODEL_FIELDS = ("model", "backbone", "num_classes", "options")


#: What a torch file may hold besides tensors and containers: NumPy scalars and dtypes (the GFF authors' snapshots
#: store ``mean_iu`` as a NumPy float). Each entry rebuilds a plain number or dtype from bytes and runs no other
#: code; the pickled names of NumPy 1 (``numpy.core``) and NumPy 2 (``numpy._core``) are both listed.
def _numpy_safe_globals() -> list:
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [
        np.dtype,
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        *dtypes,
        *((t, f"numpy.dtypes.{t.__name__}") for t in dtypes),
    ]


@dataclass
class WeightsFile:
    """A weights file as read: the flat tensors and what else its top level held.

    Attributes:
        state: ``name → tensor`` (the ``state_dict``/``model`` wrapper removed).
        wrapper: the key the tensors were found under (``"state_dict"``, ``"model"``), or None for a bare dict.
        extras: the wrapper's other entries (``"optimizer"``, ``"epoch"``, …) → a short description; training-only,
            never loaded into a model.
    """

    state: dict[str, Tensor]
    wrapper: str | None = None
    extras: dict[str, str] = field(default_factory=dict)


def _describe_extra(value: Any) -> str:
    if isinstance(value, dict):
        return f"dict of {len(value)} entries"
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else type(value).__name__


def torch_load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with NumPy scalars allowed (:func:`_numpy_safe_globals`).

    Raises:
        ValueError: the file is truncated or not a torch file, or it pickles Python objects beyond tensors (the
            message names them; such files are never unpickled, because that could run code).
    """
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a plain pickle: the error below says so
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # e.g. "invalid magic number": not a torch file
            raise ValueError(f"{path} is not a readable torch weights file: {first_line(exc)}") from None
        try:
            needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # legacy (non-zip) files: the names are in the unpickler's message
            needs = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        if not needs:  # no Python object named: a plain pickle or another format, not a torch weights file
            detail = re.search(r"WeightsUnpickler error: \s*([^\n]+)", str(exc))
            reason = detail.group(1).strip() if detail else first_line(exc)
            raise ValueError(f"{path} is not a readable torch weights file (a plain pickle?): {reason}") from None
        names = ", ".join(needs)
        raise ValueError(
            f"{path} pickles Python objects ({names}), not only tensors and numbers; it is not loaded, because "
            "unpickling them could run code (rgbd_seg_ros reads torch files with weights_only=True only). Where the "
            "file was made, save just its tensors, e.g. torch.save(ckpt['state_dict'], 'weights.pth'), and use that"
        ) from None
    except Exception as exc:  # truncated zip, legacy EOF, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"{path} is not a readable torch weights file (truncated, or another format?): {first}"
        raise ValueError(message) from exc


def read_weights(path: str | Path) -> WeightsFile:
    """Read a ``.safetensors`` or torch weights file without unpickling code (see :func:`torch_load_weights_only`).

    A ``{'state_dict': …}`` or ``{'model': …}`` wrapper is unwrapped; its other entries (optimiser state, epoch,
    …) are listed in :attr:`WeightsFile.extras`.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, pickled code, or no flat dict of tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return WeightsFile(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types; re-raised with the file name
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    obj = torch_load_weights_only(path)
    wrapper, extras = None, {}
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            wrapper, extras = key, {str(k): _describe_extra(v) for k, v in obj.items() if k != key}
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        found = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} does not hold a state dict of tensors (found {found})")
    return WeightsFile(dict(obj), wrapper, extras)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat ``name → tensor`` dict from ``.safetensors`` or a torch file, never unpickling code.

    Torch files are read with ``weights_only=True`` on the CPU; a ``{'state_dict': …}`` or ``{'model': …}``
    wrapper is unwrapped (:func:`read_weights` also reports the wrapper's other entries).
    """
    return read_weights(path).state


class CheckpointMismatchError(ValueError):
    """A checkpoint was built for another model, class count, backbone or build options than the target."""


def _describe(name: Any, backbone: Any, num_classes: Any) -> str:
    return f"{name!r} (backbone {backbone}, {num_classes} classes)"


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and metadata to one ``.safetensors`` file.

    Args:
        model: built by :func:`~rgbd_seg_ros.models.build_model` (it carries ``config`` and ``input_spec``).
        path: destination; ``.safetensors`` is appended when missing.
        metadata: JSON-serialisable extras, e.g. ``{"label_set": "nyuv2_40", "training_config_hash": "…"}``.

    Returns:
        The path written (atomically, with the permissions of a newly created file).
    """
    config = getattr(model, "config", None)
    spec = getattr(model, "input_spec", None)
    if not isinstance(config, dict) or spec is None:
        raise ValueError("save_checkpoint needs a model built by build_model() (it has no .config/.input_spec)")
    extra = dict(metadata or {})
    clash = sorted(set(extra) & {*_MODEL_FIELDS, "format", "input_spec"})
    if clash:
        raise ValueError(f"metadata keys {clash} are written from the model itself; rename them")
    meta = {
        "format": FORMAT,
        "model": config["name"],
        "backbone": config["backbone"],
        "num_classes": config["num_classes"],
        "options": config["options"],
        "input_spec": spec.to_dict(),
        **extra,
    }
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    from safetensors.torch import save_model

    from rgbd_seg_ros.fileio import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # ordinary permissions (0666 minus the umask), never a half-written file
        save_model(model, str(tmp), metadata={_META_KEY: text})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint written by :func:`save_checkpoint` (tensors are not read)."""
    from safetensors import safe_open

    from rgbd_seg_ros.models.convert import convert_command, tf_checkpoint_prefix  # convert imports this module

    path = Path(path)
    if not path.is_file():
        if tf_checkpoint_prefix(path) is not None:
            raise ValueError(f"{path} is not an rgbd_seg_ros checkpoint: {convert_command(path)}")
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types; re-raised with the file name
        raise ValueError(f"{path} is not a safetensors file ({first_line(exc)}); {convert_command(path)}") from None
    if _META_KEY not in header:
        raise ValueError(f"{path} has no rgbd_seg_ros metadata; {convert_command(path)}")
    meta = json.loads(header[_META_KEY])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT!r})")
    return meta


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_compatible(model: nn.Module, meta: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` naming both sides when ``meta`` was saved for another model."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError("the target model has no .config; build it with build_model()")
    target = {"model": config["name"], "backbone": config["backbone"], "num_classes": config["num_classes"]}
    target["options"] = json.loads(json.dumps(config["options"]))  # tuples → lists, as stored
    diffs = [f"{k}: checkpoint {meta.get(k)!r} vs model {target[k]!r}" for k in target if meta.get(k) != target[k]]
    if diffs:
        saved = _describe(meta.get("model"), meta.get("backbone"), meta.get("num_classes"))
        wanted = _describe(target["model"], target["backbone"], target["num_classes"])
        raise CheckpointMismatchError(
            f"{path} was saved for {saved} but the target model is {wanted}: " + "; ".join(diffs)
        )


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    An authors' released file (ACNet's ``ckpt_epoch_1195.00.pth``, a TF checkpoint, …) is refused with a ValueError
    that names the exact ``rgbd-seg convert`` command to run once (:func:`~rgbd_seg_ros.models.convert.convert`).

    Args:
        path: the ``.safetensors`` file.
        model: optional target; it must match the checkpoint's model, backbone, class count and options
            (else :class:`CheckpointMismatchError`). None = rebuild the model from the metadata.

    Returns:
        ``(model, metadata)``; the model is in eval mode and its ``input_spec`` is the one stored in the file.
    """
    from safetensors.torch import load_model

    from rgbd_seg_ros.depth.encode import InputSpec
    from rgbd_seg_ros.models.registry import build_model

    meta = read_metadata(path)
    if model is None:
        model = build_model(meta["model"], meta["num_classes"], backbone=meta["backbone"], **meta["options"])
    else:
        check_compatible(model, meta, path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"{path} does not fit the model's tensors: {exc}") from exc
    # safetensors lists the aliases of a shared module's tensors (e.g. SA-Gate's tied shortcut) as "unexpected"
    # when BatchNorm refills their num_batches_tracked itself; a name the model has is not a mismatch.
    own = model.state_dict().keys()
    unexpected = [k for k in unexpected if k not in own]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path} does not fit {type(model).__name__}: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    model.input_spec = InputSpec.from_dict(meta["input_spec"])
    return model.eval(), meta


@dataclass
class OfficialLoadReport:
    """What :func:`load_official` matched: loaded keys and the unmatched ones on each side."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the file did not provide
    unexpected: list[str] = field(default_factory=list)  # file keys (after conversion) the model lacks


def load_official(model: nn.Module, path: str | Path, strict: bool = True) -> OfficialLoadReport:
    """Load the authors' released checkpoint into ``model`` through ``model.convert_official``.

    The file is read with ``weights_only=True`` (a ``{'state_dict': …}`` wrapper and ``module.`` prefixes are
    removed), converted by the model class's ``convert_official(state_dict) -> state_dict`` (each model module
    provides its own key mapping and norm folding), then loaded. ``num_batches_tracked`` buffers the file lacks
    are not counted as missing.

    Args:
        strict: raise when keys are unmatched on either side; False = load what matches and warn.

    Raises:
        NotImplementedError: the model has no ``convert_official``.
        ValueError: tensor shapes differ (e.g. another class count), or unmatched keys with ``strict``.
    """
    convert = getattr(model, "convert_official", None)
    if convert is None:
        raise NotImplementedError(f"{type(model).__name__} has no convert_official(); no official weights known")
    raw = read_state_dict(path)
    state = convert({k.removeprefix("module."): v for k, v in raw.items()})
    own = model.state_dict()
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:
        raise ValueError(
            f"{path} does not fit {type(model).__name__} (class count or backbone?): " + "; ".join(shapes[:5])
        )
    report = OfficialLoadReport(
        loaded=sorted(k for k in state if k in own),
        missing=sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked")),
        unexpected=sorted(k for k in state if k not in own),
    )
    if report.missing or report.unexpected:
        detail = (
            f"{len(report.missing)} missing {report.missing[:10]}, "
            f"{len(report.unexpected)} unexpected {report.unexpected[:10]}"
        )
        if strict:
            raise ValueError(f"{path} does not match {type(model).__name__}: {detail}")
        warnings.warn(f"load_official({path}): {detail}", stacklevel=2)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report
