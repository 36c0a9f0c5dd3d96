"""The training loop: one process or DistributedDataParallel (``torchrun``; NCCL on GPUs, gloo on the CPU),
AMP on CUDA, optional SyncBatchNorm, gradient accumulation, seeded data, atomic resumable checkpoints,
TensorBoard scalars and overlays, a tqdm progress bar, and the final ``model.safetensors``.

Run folder ``out_dir``:

* ``config.yaml``: the resolved recipe; ``log.jsonl``: one JSON record per optimiser step (``iter``, ``loss``
  and its terms, ``lr``) and per validation (``val_miou`` … in percent); ``tb/``: TensorBoard events;
  ``class_weights.json``: median-frequency weights when the recipe asks for them;
* ``checkpoints/last.pt``: written every ``checkpoint_every`` steps and at the end (temporary file, fsync,
  rename): model, optimiser, scheduler position, GradScaler, every rank's RNG states and the step. The data
  position *is* the step (see :mod:`training.data`), so ``--resume`` continues bit-exactly on the CPU. Ctrl-C or
  SIGTERM also writes it, after the current step, and ends the run with :class:`~training.entry.Interrupted`;
* ``model.safetensors``: the final weights with their metadata (``load_checkpoint`` / ``Segmenter``).

A folder that already holds a run is never overwritten silently: the trainer continues it (``resume``), replaces
exactly the files above (``force``; other files in the folder stay), or refuses with a :class:`RunError`. Every
input (weights files, the checkpoint to resume, the dataset, the output folder) is checked before training
starts; an expected failure is a :class:`RunError` whose message is one line naming the culprit.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import Tensor, nn

from rgbd_seg_ros.fileio import atomic_path, atomic_write_text
from rgbd_seg_ros.labels import LabelSet, get_label_set, overlay
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.backbones import pretrained_reports
from rgbd_seg_ros.models.checkpoints import read_state_dict, save_checkpoint
from rgbd_seg_ros.pipeline import Segmenter
from rgbd_seg_ros.settings import DATASET_DEPTH_RANGES_M, DEFAULT_DEPTH_RANGE_M
from training import data as D
from training.config import Config
from training.entry import Interrupted, RunError, signals_ignored, stop_requests
from training.evaluation import evaluate, protocol_from_eval_config
from training.losses import SegmentationLoss, flatten_outputs, median_frequency_weights

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

#: A prime multiplier of the checkpoint's step in the seed of a run resumed on another number of ranks: the new
#: per-rank seeds then differ from the first part's (``seed + 1 + rank``) and between resume points.
RESEED_PRIME = 7919

#: What a run writes into ``out_dir`` (``force`` replaces exactly these; ``data/``, the generated synthetic set,
#: is a cache and stays). Evaluation folders (``eval``, ``eval_*`` with a ``metrics.json``) of the replaced
#: weights go too.
RUN_OUTPUTS = ("config.yaml", "log.jsonl", "class_weights.json", "model.safetensors", "checkpoints", "tb")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())


# -- distributed ---------------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if ``WORLD_SIZE`` > 1 (NCCL with CUDA, else gloo); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if use_cuda:
        dev = torch.device("cuda", local) if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local, dev)


def _all_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# -- model and optimiser -------------------------------------------------------------------------------------------
def weight_files(cfg: Config) -> dict[str, str]:
    """The recipe's weights files by setting name (``model.pretrained``, ``model.init_from``, ``model.experts.*``)."""
    m = cfg.model
    files = {"model.pretrained": m.pretrained, "model.init_from": m.init_from}
    files.update({f"model.experts.{k}": v for k, v in (m.experts or {}).items()})
    return {k: v for k, v in files.items() if v}


def check_weight_files(cfg: Config) -> None:
    """Read every weights file of the recipe once; raise :class:`RunError` naming the setting of a missing,
    truncated or foreign one."""
    for setting, path in weight_files(cfg).items():
        try:
            read_state_dict(path)
        except (OSError, ValueError, SafetensorError) as exc:
            raise RunError(f"{setting}: {_one_line(exc)}") from None


def build_training_model(cfg: Config, num_classes: int, log=print) -> nn.Module:
    """``build_model`` from the recipe, then ``experts``, ``init_from`` weights and the ``dropout`` override."""
    m = cfg.model
    model = build_model(m.name, num_classes, backbone=m.backbone, pretrained=m.pretrained, **m.options)
    for report in pretrained_reports(model):  # model.pretrained=: which ImageNet layout was found, what was loaded
        log(str(report))
    if m.experts:
        if not hasattr(model, "load_experts") or set(m.experts) != {"rgb", "depth"}:
            raise ValueError(f"model.experts needs a model with load_experts() and keys rgb, depth; got {m.experts}")
        model.load_experts(m.experts["rgb"], m.experts["depth"])
        log(f"experts loaded: {m.experts}")
    if m.init_from:
        own = model.state_dict()
        state = read_state_dict(m.init_from)
        loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(loaded, strict=False)
        skipped = sorted(set(state) - set(loaded))
        kept = sorted(k for k in own if k not in loaded and not k.endswith("num_batches_tracked"))
        log(f"init_from {m.init_from}: loaded {len(loaded)} tensors; not in the model/shape differs: {skipped[:8]}; "
            f"left at init: {kept[:8]}{' …' if len(kept) > 8 else ''}")  # fmt: skip
    if m.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = float(m.dropout)
    return model


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Optimiser groups: recipe ``optim.groups`` by name pattern (lr multiplier, weight decay) and, with
    ``no_decay_norm_bias``, zero weight decay for norm layers and biases. Frozen parameters are left out."""
    o = cfg.optim
    no_decay = set()
    if o.no_decay_norm_bias:
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, _NORM_TYPES) or name == "bias":
                    no_decay.add(id(p))
    groups: dict[tuple[float, float], list[Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult, wd = 1.0, o.weight_decay
        for g in o.groups:
            if re.search(g.pattern, name):
                mult, wd = g.lr_mult, (g.weight_decay if g.weight_decay is not None else wd)
                break
        if id(p) in no_decay:
            wd = 0.0
        groups.setdefault((mult, wd), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [
        {"params": ps, "lr": o.lr * mult, "base_lr": o.lr * mult, "weight_decay": wd}
        for (mult, wd), ps in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o, groups = cfg.optim, param_groups(model, cfg)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor of optimiser step ``t`` (see :class:`training.config.ScheduleConfig`)."""

    policy: str
    total: int
    power: float = 0.9
    end_ratio: float = 0.0
    warmup: int = 0
    step_size: int = 0
    gamma: float = 0.1

    def factor(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.policy == "poly":
            return (1.0 - self.end_ratio) * max(0.0, 1.0 - t / self.total) ** self.power + self.end_ratio
        if self.policy == "step":
            return self.gamma ** (t // max(1, self.step_size))
        return 1.0


# -- checkpoint I/O ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global RNG states training draws from (torch, CUDA, Python); data randomness uses explicit seeds."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`rgbd_seg_ros.fileio.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_weights(module: nn.Module, path: Path, metadata: dict[str, Any], dtype: str = "float32") -> Path:
    """``save_checkpoint`` (atomic); ``float16`` stores a half-precision copy."""
    if dtype == "float16":
        module = copy.deepcopy(module).half()
        metadata = {**metadata, "weights_dtype": "float16"}
    return save_checkpoint(module, path, metadata)


def last_checkpoint(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints" / "last.pt"


def run_outputs(out_dir: str | Path) -> list[Path]:
    """The files and folders of a run present in ``out_dir`` (see :data:`RUN_OUTPUTS`)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    evals = [p for p in sorted(out_dir.glob("eval*")) if (p / "metrics.json").is_file()]
    return found + [p for p in evals if p.name == "eval" or p.name.startswith("eval_")]


def resume_command(out_dir: Path) -> str:
    """The command line that continues the run in ``out_dir``: ``python`` or, under ``torchrun``, ``torchrun`` with
    the same processes per node (a run resumed on another number of ranks is reseeded, so not bit-exact)."""
    script = Path(__file__).resolve().parent / "train.py"  # absolute: the command works from any folder
    args = f"{shlex.quote(str(script))} --resume {shlex.quote(f'out_dir={Path(out_dir).resolve()}')}"
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return f"python {args}"
    nodes = f" on each of the {world // local} nodes" if world != local else ""
    return f"torchrun --nproc_per_node={local} {args}{nodes}"


def check_writable(folder: Path, setting: str) -> None:
    """Create ``folder`` if needed and write a probe file into it; :class:`RunError` naming ``setting`` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise RunError(f"{setting} {folder} is not writable: {exc.strerror or exc}") from None


# -- validation backend ----------------------------------------------------------------------------------------------
class _InferenceBackend:
    """Runs the training model in place for validation (no copy, no memory-format change), autocast on CUDA."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool) -> None:
        self.model, self.device, self.amp = model, str(device), amp and device.type == "cuda"
        self.torch_device = device

    def __call__(self, rgb: Tensor, second: Tensor | None) -> Tensor:
        rgb = rgb.to(self.torch_device)
        second = second.to(self.torch_device) if second is not None else None
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return self.model(rgb, second).float()


# -- the trainer -----------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What the loop works on, made by :meth:`Trainer.setup`: data, model, optimisation and the step range."""

    label_set: LabelSet
    train_ds: Any
    val_ds: Any | None
    module: nn.Module  # the bare model: checkpoints, validation, final weights
    model: nn.Module  # what a step calls: ``module`` or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: SegmentationLoss
    aux_weights: Sequence[float]
    schedule: LRSchedule
    use_amp: bool
    start: int  # first step to run (the checkpoint's step when resumed)
    max_iters: int
    val_miou: float | None = None  # percent, of the latest validation


class Trainer:
    """Train ``cfg`` into ``cfg.train.out_dir``.

    Args:
        resume: continue from ``out_dir/checkpoints/last.pt`` (a folder without a run starts from scratch).
        force: replace a run already in ``out_dir`` (exactly its :data:`RUN_OUTPUTS`); without ``resume`` or
            ``force`` such a folder is refused.
    """

    def __init__(self, cfg: Config, resume: bool = False, force: bool = False) -> None:
        if resume and force:
            raise ValueError("resume and force exclude each other")
        self.cfg, self.resume, self.force = cfg, resume, force
        try:
            self.ctx = init_distributed(cfg.train.device)
        except RuntimeError as exc:
            raise RunError(_one_line(exc)) from None
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
            if cfg.train.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
        self.out_dir = Path(cfg.train.out_dir)
        self.ckpt_path = last_checkpoint(self.out_dir)
        self.writer = None

    # logging ---------------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.ctx.main:
            print(msg, file=sys.stderr, flush=True)

    def _record(self, record: dict[str, Any]) -> None:
        if self.ctx.main:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        path = self.out_dir / "log.jsonl"
        if not (self.ctx.main and path.is_file()):
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("iter", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def _tb(self, start_step: int):
        """The TensorBoard writer (rank 0), or None when the ``tensorboard`` package (extra ``train``) is missing."""
        if self.writer is None and self.ctx.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log("tensorboard is not installed (pip install 'rgbd_seg_ros[train]'): no TensorBoard logs")
                self.writer = False
                return None
            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step or None)
        return self.writer or None

    # setup: every check before the first write -------------------------------------------------------------------
    def setup(self) -> TrainState:
        """Check the inputs and the output folder, build everything the loop needs and prepare ``out_dir``.

        Raises :class:`RunError` for an existing run without resume/force, an unwritable folder, a missing or
        unreadable weights file or checkpoint, or a dataset that does not fit the recipe; then no file of a run
        has been touched yet (the folder may have been created, and the generated synthetic set cached in it).
        """
        cfg, ctx = self.cfg, self.ctx
        self._check_out_dir()
        check_weight_files(cfg)
        try:
            label_set = get_label_set(cfg.model.label_set)
        except (KeyError, ValueError) as exc:
            raise RunError(f"model.label_set: {_one_line(exc)}") from None
        cw = cfg.loss.class_weights
        if isinstance(cw, list) and len(cw) != label_set.num_classes:
            raise RunError(f"loss.class_weights has {len(cw)} values for the {label_set.num_classes} classes of "
                           f"model.label_set {label_set.name!r}")  # fmt: skip
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        module = self._build_model(label_set.num_classes)
        use_amp = cfg.train.amp and ctx.device.type == "cuda"
        if ctx.distributed and ctx.device.type == "cuda" and cfg.train.sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        optimizer = build_optimizer(module, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        start = self._resume_or_seed(module, optimizer, scaler)
        train_ds, val_ds = self._datasets(label_set)
        max_iters = self._max_iters(len(train_ds))
        self._prepare_out_dir()
        self._truncate_log(start)
        weights = self._class_weights(train_ds, label_set.num_classes)
        loss_fn = SegmentationLoss(
            label_set.num_classes,
            cfg.loss.ignore_index,
            weights.to(ctx.device) if weights is not None else None,
            cfg.loss.gamma if cfg.loss.type == "focal" else None,
        )
        aux_weights = cfg.loss.aux_weights if cfg.loss.aux_weights is not None else getattr(module, "aux_weights", ())
        model = module
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                module,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=cfg.train.find_unused_parameters,
            )
        return TrainState(label_set, train_ds, val_ds, module, model, optimizer, scaler, loss_fn, aux_weights,
                          self._schedule(len(train_ds), max_iters), use_amp, start, max_iters)  # fmt: skip

    def _check_out_dir(self) -> None:
        """Refuse a folder holding a run (unless resumed or forced) and one that cannot be written."""
        existing = run_outputs(self.out_dir)
        if self.resume:
            final = self.out_dir / "model.safetensors"
            if not self.ckpt_path.is_file() and final.is_file():
                raise RunError(f"--resume: {self.out_dir} holds finished weights but no checkpoint {self.ckpt_path}; "
                               "replace the run with --force or choose a new out_dir=")  # fmt: skip
        elif existing and not self.force:
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing)
            raise RunError(f"train.out_dir {self.out_dir} already holds a run ({names}): continue it with --resume, "
                           "replace it with --force, or choose a new out_dir=")  # fmt: skip
        check_writable(self.out_dir, "train.out_dir")
        _barrier(self.ctx)  # every rank has looked before rank 0 writes

    def _build_model(self, num_classes: int) -> nn.Module:
        m = self.cfg.model
        try:
            model = build_training_model(self.cfg, num_classes, self.log)
        except (KeyError, TypeError, ValueError) as exc:  # unknown name, backbone or option
            raise RunError(f"model {m.name!r} (backbone {m.backbone}, options {m.options}): {_one_line(exc)}") from None
        return model.to(self.ctx.device)

    def _resume_or_seed(self, module: nn.Module, optimizer, scaler) -> int:
        """The first step: the checkpoint's when resuming from one, else 0 (training randomness seeded per rank)."""
        if self.resume and self.ckpt_path.is_file():
            return self._load_state(self.ckpt_path, module, optimizer, scaler)
        if self.resume:
            self.log(f"--resume: no checkpoint at {self.ckpt_path}; starting from scratch")
        torch.manual_seed(self.cfg.train.seed + 1 + self.ctx.rank)  # training-time randomness (dropout), per rank
        return 0

    def _datasets(self, label_set: LabelSet):
        cfg = self.cfg
        try:
            if self.ctx.main:
                D.dataset_root(cfg)  # generates the synthetic set once
            _barrier(self.ctx)
            root = D.dataset_root(cfg)
            train = D.open_split(cfg, cfg.data.train_split, root)
            val = D.open_split(cfg, cfg.data.val_split, root) if cfg.data.val_split else None
        except (OSError, ValueError) as exc:
            where = cfg.data.root or "the generated set"
            raise RunError(f"data ({cfg.data.dataset} at {where}): {_one_line(exc)}") from None
        if train.num_classes and train.num_classes != label_set.num_classes:
            raise RunError(f"dataset {cfg.data.dataset!r} has {train.num_classes} classes but model.label_set "
                           f"{label_set.name!r} has {label_set.num_classes}")  # fmt: skip
        if len(train) < cfg.train.batch_size:
            raise RunError(f"data.train_split {cfg.data.train_split!r} has {len(train)} frames, fewer than one "
                           f"train.batch_size of {cfg.train.batch_size}")  # fmt: skip
        micro = self.ctx.world * cfg.train.accum_steps
        if cfg.train.batch_size % micro:
            raise RunError(f"train.batch_size {cfg.train.batch_size} is not divisible by {self.ctx.world} ranks × "
                           f"train.accum_steps {cfg.train.accum_steps}")  # fmt: skip
        return train, val

    def _max_iters(self, n_train: int) -> int:
        t = self.cfg.train
        return t.max_iters if t.max_iters is not None else D.epochs_to_steps(t.epochs, n_train, t.batch_size)

    def _schedule(self, n_train: int, max_iters: int) -> LRSchedule:
        s, spe = self.cfg.schedule, D.steps_per_epoch(n_train, self.cfg.train.batch_size)
        warmup = s.warmup_iters or round(s.warmup_epochs * spe)
        step_size = s.step_iters or round(s.step_epochs * spe)
        return LRSchedule(s.policy, max_iters, s.power, s.end_lr_ratio, warmup, step_size, s.gamma)

    def _prepare_out_dir(self) -> None:
        """Rank 0: remove the replaced run's outputs (``force``), make ``checkpoints/``, write ``config.yaml``."""
        if self.ctx.main:
            if self.force:
                for path in run_outputs(self.out_dir):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    self.log(f"--force: removed {path}")
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.yaml", self.cfg.to_yaml())
        _barrier(self.ctx)

    def _class_weights(self, train_ds, num_classes: int) -> Tensor | None:
        cw = self.cfg.loss.class_weights
        if isinstance(cw, str) and cw == "none":
            return None
        if isinstance(cw, list):  # its length is checked in setup
            return torch.tensor(cw, dtype=torch.float32)
        path = self.out_dir / "class_weights.json"
        if self.ctx.main and read_class_weights(path, num_classes, self.log) is None:
            self.log("computing median-frequency class weights over the training split …")
            weights = median_frequency_weights((train_ds.load(i).labels for i in range(len(train_ds))), num_classes)
            atomic_write_text(path, json.dumps(weights.tolist()))
        _barrier(self.ctx)
        return torch.tensor(read_class_weights(path, num_classes), dtype=torch.float32)

    def _set_train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.cfg.train.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # main --------------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """:meth:`setup`, train from the start step to ``max_iters``, validate, write ``model.safetensors``."""
        state = self.setup()
        self._train(state)
        return self._finish(state)

    def _loader(self, state: TrainState) -> torch.utils.data.DataLoader:
        cfg, t_cfg, ctx = self.cfg, self.cfg.train, self.ctx
        sampler = D.StepSampler(len(state.train_ds), t_cfg.batch_size, ctx.world, ctx.rank, t_cfg.accum_steps,
                                t_cfg.seed, state.start, state.max_iters)  # fmt: skip
        return torch.utils.data.DataLoader(
            D.AugmentedDataset(state.train_ds, D.build_transforms(cfg.augment), t_cfg.seed),
            batch_sampler=sampler,
            collate_fn=D.Collate(state.module.input_spec, cfg.data.depth_fill),
            num_workers=cfg.data.num_workers,
            worker_init_fn=D.worker_init if cfg.data.num_workers else None,
            # Spawned, not forked, workers: a fork after the parent has run OpenMP/rclpy threads can deadlock
            # (seen here: a forked worker hung in torch.set_num_threads). The loader is iterated once per run.
            multiprocessing_context="spawn" if cfg.data.num_workers else None,
            pin_memory=ctx.device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG (dropout) independent of the loader
        )

    def _train(self, state: TrainState) -> None:
        """Optimiser steps ``state.start`` … ``state.max_iters - 1`` with logging, checkpoints and validation."""
        cfg, ctx, t_cfg = self.cfg, self.ctx, self.cfg.train
        self._set_train_mode(state.model)
        loader = self._loader(state)
        micro = t_cfg.batch_size // (ctx.world * t_cfg.accum_steps)
        spe = D.steps_per_epoch(len(state.train_ds), t_cfg.batch_size)
        self.log(
            f"training {cfg.model.name} ({cfg.model.backbone or 'default backbone'}) on {cfg.data.dataset}: "
            f"{len(state.train_ds)} frames, batch {t_cfg.batch_size} ({micro} × {ctx.world} ranks × "
            f"{t_cfg.accum_steps} accum), steps {state.start} → {state.max_iters} ({spe} per epoch), "
            f"device {ctx.device}"
        )
        progress = None
        if ctx.main:
            from tqdm import tqdm

            progress = tqdm(total=state.max_iters, initial=state.start, desc="train", unit="it", dynamic_ncols=True)
        batches = None
        try:
            with stop_requests(announce=ctx.main) as stop_requested:
                with signals_ignored():  # spawned workers boot (seconds) with Ctrl-C ignored; then worker_init
                    batches = iter(loader)
                for step in range(state.start, state.max_iters):
                    record = self._step(state, step, [next(batches) for _ in range(t_cfg.accum_steps)])
                    if progress is not None:
                        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
                        progress.update(1)
                    stopping = _all_sum([float(stop_requested())], ctx)[0] > 0  # any rank: every rank
                    self._after_step(state, step + 1, record, stopping)
                    if stopping:
                        self._stop(state, step + 1)
        finally:
            if progress is not None:
                progress.close()
            del batches

    def _after_step(self, state: TrainState, done: int, record: dict[str, Any], stopping: bool = False) -> None:
        """Log the step's record; checkpoint and validate on the recipe's cadence (the last step: in _finish;
        ``stopping``: in :meth:`_stop`, without validation)."""
        t_cfg = self.cfg.train
        self._record(record)
        if self.ctx.main and (done % t_cfg.log_every == 0 or done == state.max_iters):
            tb = self._tb(state.start)
            for k, v in record.items():
                if tb is not None and k != "iter":
                    tb.add_scalar(f"train/{k}", v, done)
        if done == state.max_iters or stopping:
            return
        if t_cfg.checkpoint_every and done % t_cfg.checkpoint_every == 0:
            self._save_state(self.ckpt_path, state, done)
        if state.val_ds is not None and t_cfg.val_every and done % t_cfg.val_every == 0:
            state.val_miou = self.validate(state.module, state.val_ds, state.label_set, done, state.start)
            self._set_train_mode(state.model)

    def _stop(self, state: TrainState, done: int) -> None:
        """Ctrl-C or SIGTERM on any rank (every rank stops at the same step): save the checkpoint after step
        ``done`` and raise :class:`Interrupted`."""
        self._save_state(self.ckpt_path, state, done)
        if self.writer:
            self.writer.close()
        raise Interrupted(
            f"stopped after step {done} of {state.max_iters}; {self.ckpt_path} holds it: continue with "
            f"{resume_command(self.out_dir)}",
            announce=self.ctx.main,
        )

    def _finish(self, state: TrainState) -> Path:
        """The final checkpoint, validation and ``model.safetensors``."""
        self._save_state(self.ckpt_path, state, state.max_iters)
        if state.val_ds is not None:
            state.val_miou = self.validate(state.module, state.val_ds, state.label_set, state.max_iters, state.start)
        out = self._save_final(state.module, state.label_set, state.max_iters, state.val_miou)
        if self.writer:
            self.writer.close()
        _barrier(self.ctx)
        return out

    def _step(self, state: TrainState, step: int, micro: list[tuple[Tensor, Tensor | None, Tensor]]) -> dict:
        """One optimiser step over the accumulated micro-batches; returns its log record (losses summed over
        ranks)."""
        ctx, dev, optimizer, scaler = self.ctx, self.ctx.device, state.optimizer, state.scaler
        factor = state.schedule.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        local_n = sum(float(state.loss_fn.weight_sum(labels)) for _, _, labels in micro)
        (normaliser,) = _all_sum([local_n], ctx)
        parts_sum: dict[str, float] = {}
        for a, (rgb, second, labels) in enumerate(micro):
            rgb, labels = rgb.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            second = second.to(dev, non_blocking=True) if second is not None else None
            sync = a == len(micro) - 1 or not ctx.distributed
            with contextlib.nullcontext() if sync else state.model.no_sync():
                with torch.autocast("cuda", dtype=torch.float16, enabled=state.use_amp):
                    outputs = state.model(rgb, second)
                loss, parts = state.loss_fn(flatten_outputs(outputs, state.aux_weights), labels, normaliser)
                # DDP averages gradients over ranks; the loss is already a share of the global mean.
                scaler.scale(loss * ctx.world).backward()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        if self.cfg.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(state.module.parameters(), self.cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        names = sorted(parts_sum)
        totals = dict(zip(names, _all_sum([parts_sum[k] for k in names], ctx)))
        loss_value = sum(totals[k] for k in names)
        if not math.isfinite(loss_value):
            raise RunError(f"loss is {loss_value} at step {step + 1}: training diverged (lower optim.lr?); "
                           f"{self.ckpt_path} holds the last good state")  # fmt: skip
        record = {"iter": step + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"]}
        if len(names) > 1:
            record.update({f"loss_{k}": totals[k] for k in names})
        return record

    # checkpoints -----------------------------------------------------------------------------------------------------
    def _save_state(self, path: Path, state: TrainState, step: int) -> None:
        states = [rng_state()]
        if self.ctx.distributed:
            states = [None] * self.ctx.world
            dist.all_gather_object(states, rng_state())
        if self.ctx.main:
            ckpt = {
                "model": state.module.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": {"step": step},
                "scaler": state.scaler.state_dict(),
                "rng": states,
                "step": step,
                "world_size": self.ctx.world,
                "config": json.dumps(self.cfg.to_dict()),
                "config_hash": self.cfg.hash(),
            }
            atomic_torch_save(ckpt, path)
        _barrier(self.ctx)

    def _load_state(self, path: Path, module: nn.Module, optimizer, scaler) -> int:
        """Restore a checkpoint written by :meth:`_save_state`; :class:`RunError` when it is unreadable or does
        not fit the recipe's model."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            step, saved_world, saved_hash = int(state["step"]), int(state["world_size"]), state["config_hash"]
            model_state, rng = state["model"], state["rng"]
        except Exception as exc:  # a truncated or foreign file: torch raises many kinds; one line names the file
            raise RunError(f"--resume: {path} is not a readable training checkpoint: {_one_line(exc)}") from None
        if saved_hash != self.cfg.hash():
            diff = _config_diff(json.loads(state["config"]), self.cfg.to_dict())
            self.log(f"warning: resuming with a recipe that differs from the checkpoint's: {diff}")
        try:
            module.load_state_dict(model_state)
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise RunError(f"--resume: {path} does not fit the recipe's model: {_one_line(exc)[:300]}") from None
        scaler.load_state_dict(state["scaler"])
        if saved_world == self.ctx.world:
            set_rng_state(rng[self.ctx.rank])
        else:
            self.log(f"warning: checkpoint from {saved_world} ranks, now {self.ctx.world}: RNG reseeded")
            torch.manual_seed(self.cfg.train.seed + 1 + self.ctx.rank + RESEED_PRIME * step)
        self.log(f"resumed from {path} at step {step}")
        return step

    def _save_final(self, module: nn.Module, label_set, steps: int, val_miou: float | None) -> Path:
        path = self.out_dir / "model.safetensors"
        if self.ctx.main:
            cfg = self.cfg
            metadata = {
                "label_set": label_set.name,
                "training_config_hash": cfg.hash(),
                "dataset": cfg.data.dataset,
                "iterations": steps,
                "depth_fill": cfg.data.depth_fill,
                "input_size": cfg.eval.input_size,
                "eval": json.loads(json.dumps(cfg.to_dict()["eval"])),
                "val_miou": val_miou,
            }
            if cfg.data.dataset in DATASET_DEPTH_RANGES_M:
                metadata["depth_range_m"] = list(DATASET_DEPTH_RANGES_M[cfg.data.dataset])
            write_weights(module, path, metadata, cfg.train.weights_dtype)
            self.log(f"final weights: {path}")
        return path

    # validation --------------------------------------------------------------------------------------------------
    def validate(self, module: nn.Module, val_ds, label_set, step: int, start: int) -> float:
        """Single-scale validation (the recipe's input size and sliding window); returns mIoU in percent."""
        cfg, ctx = self.cfg, self.ctx
        module.eval()
        backend = _InferenceBackend(module, ctx.device, cfg.train.amp)
        depth_range = DATASET_DEPTH_RANGES_M.get(cfg.data.dataset, DEFAULT_DEPTH_RANGE_M)  # as the saved weights record
        segmenter = Segmenter(
            backend, module.input_spec, label_set, cfg.model.name, cfg.eval.input_size, cfg.data.depth_fill,
            depth_range_m=depth_range,
        )  # fmt: skip
        protocol = protocol_from_eval_config({**cfg.to_dict()["eval"], "flip": False}, multiscale=False)
        t0 = time.perf_counter()
        result = evaluate(segmenter, val_ds, protocol, ctx.rank, ctx.world, num_examples=cfg.train.num_val_images)
        summary = result.matrix.as_dict()
        record = {"iter": step, "val_miou": summary["miou"], "val_pixel_acc": summary["pixel_accuracy"],
                  "val_mean_acc": summary["mean_accuracy"]}  # fmt: skip
        self._record(record)
        pct = {k: "n/a" if v is None else f"{v:.2f} %" for k, v in record.items()}
        self.log(f"step {step}: val mIoU {pct['val_miou']} (pixel accuracy {pct['val_pixel_acc']}, "
                 f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
        tb = self._tb(start) if ctx.main else None
        if tb is not None:
            for k, v in record.items():
                if k != "iter" and v is not None:
                    tb.add_scalar(f"val/{k.removeprefix('val_')}", v, step)
            for i, (rgb, gt, pred) in enumerate(result.examples):
                image = np.concatenate([rgb, overlay(rgb, gt, label_set), overlay(rgb, pred, label_set)], axis=1)
                tb.add_image(f"val/overlay_{i}", image, step, dataformats="HWC")
        return record["val_miou"]


def read_class_weights(path: Path, num_classes: int, log=None) -> list[float] | None:
    """The weights in ``path`` if it holds ``num_classes`` finite non-negative numbers, else None (``log`` says why
    when the file exists but is unusable, e.g. written by a run with another label set)."""
    if not path.is_file():
        return None
    try:
        weights = json.loads(path.read_text())
        ok = (isinstance(weights, list) and len(weights) == num_classes
              and all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights))  # fmt: skip
    except (OSError, ValueError):
        ok = False
    if not ok:
        if log is not None:
            log(f"{path} does not hold {num_classes} class weights: recomputing them")
        return None
    return [float(w) for w in weights]


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


__all__ = [
    "RUN_OUTPUTS",
    "DistContext",
    "LRSchedule",
    "RunError",
    "TrainState",
    "Trainer",
    "build_training_model",
    "init_distributed",
    "param_groups",
    "run_outputs",
]
