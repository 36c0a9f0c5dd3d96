"""The training loop: one process or DistributedDataParallel (``torchrun``; NCCL on GPUs, gloo on the CPU),
AMP on CUDA, optional SyncBatchNorm, gradient accumulation, seeded data, atomic resumable checkpoints,
TensorBoard scalars and overlays, a tqdm progress bar, and the final ``model.safetensors``.

Run folder ``out_dir``:

* ``config.yaml``: the resolved recipe; ``log.jsonl``: one JSON record per optimiser step (``iter``, ``loss``
  and its terms, ``lr``) and per validation (``val_miou`` …); ``tb/``: TensorBoard events;
* ``checkpoints/last.pt``: written every ``checkpoint_every`` steps and at the end (temporary file, fsync,
  rename): model, optimiser, scheduler position, GradScaler, every rank's RNG states and the step. The data
  position *is* the step (see :mod:`training.data`), so ``--resume`` continues bit-exactly on the CPU;
* ``model.safetensors``: the final weights with their metadata (``load_checkpoint`` / ``Segmenter``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from rgbd_seg_ros.labels import get_label_set, overlay
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.checkpoints import read_state_dict, save_checkpoint
from rgbd_seg_ros.pipeline import Segmenter
from training import data as D
from training.config import Config
from training.evaluation import evaluate, protocol_from_eval_config
from training.losses import SegmentationLoss, flatten_outputs, median_frequency_weights

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


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
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_training_model(cfg: Config, num_classes: int, log=print) -> nn.Module:
    """``build_model`` from the recipe, then ``experts``, ``init_from`` weights and the ``dropout`` override."""
    m = cfg.model
    model = build_model(m.name, num_classes, backbone=m.backbone, pretrained=m.pretrained, **m.options)
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
    """``torch.save`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_weights(module: nn.Module, path: Path, metadata: dict[str, Any], dtype: str = "float32") -> Path:
    """``save_checkpoint`` atomically (temporary file + rename); ``float16`` stores a half-precision copy."""
    if dtype == "float16":
        module = copy.deepcopy(module).half()
        metadata = {**metadata, "weights_dtype": "float16"}
    tmp = save_checkpoint(module, path.with_name(f".{path.stem}.tmp.safetensors"), metadata)
    os.chmod(tmp, 0o644)  # safetensors creates the file private; this is a deliverable
    os.replace(tmp, path)
    return path


def last_checkpoint(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints" / "last.pt"


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
class Trainer:
    """Train ``cfg``; ``resume`` continues from ``out_dir/checkpoints/last.pt`` when it exists."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.cfg, self.resume = cfg, resume
        self.ctx = init_distributed(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
            if cfg.train.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
        self.out_dir = Path(cfg.train.out_dir)
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
        tmp = path.with_name(".log.jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)

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

    # setup -------------------------------------------------------------------------------------------------------
    def _prepare_out_dir(self) -> None:
        if self.ctx.main:
            (self.out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(self.cfg.to_yaml())
        _barrier(self.ctx)

    def _datasets(self):
        cfg = self.cfg
        if self.ctx.main:
            root = D.dataset_root(cfg)  # generates the synthetic set once
        _barrier(self.ctx)
        root = D.dataset_root(cfg)
        train = D.open_split(cfg, cfg.data.train_split, root)
        val = D.open_split(cfg, cfg.data.val_split, root) if cfg.data.val_split else None
        return train, val

    def _class_weights(self, train_ds, num_classes: int) -> Tensor | None:
        cw = self.cfg.loss.class_weights
        if isinstance(cw, str) and cw == "none":
            return None
        if isinstance(cw, list):
            if len(cw) != num_classes:
                raise ValueError(f"loss.class_weights has {len(cw)} values for {num_classes} classes")
            return torch.tensor(cw, dtype=torch.float32)
        path = self.out_dir / "class_weights.json"
        if self.ctx.main and not path.is_file():
            self.log("computing median-frequency class weights over the training split …")
            weights = median_frequency_weights((train_ds.load(i).labels for i in range(len(train_ds))), num_classes)
            path.write_text(json.dumps(weights.tolist()))
        _barrier(self.ctx)
        return torch.tensor(json.loads(path.read_text()), dtype=torch.float32)

    def _set_train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.cfg.train.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # main --------------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, ctx = self.cfg, self.ctx
        t_cfg = cfg.train
        self._prepare_out_dir()
        label_set = get_label_set(cfg.model.label_set)
        train_ds, val_ds = self._datasets()
        if train_ds.num_classes and train_ds.num_classes != label_set.num_classes:
            raise ValueError(
                f"dataset {cfg.data.dataset!r} has {train_ds.num_classes} classes but label set "
                f"{label_set.name!r} has {label_set.num_classes}"
            )
        n_train, batch = len(train_ds), t_cfg.batch_size
        spe = D.steps_per_epoch(n_train, batch)
        max_iters = t_cfg.max_iters if t_cfg.max_iters is not None else D.epochs_to_steps(t_cfg.epochs, n_train, batch)
        s = cfg.schedule
        schedule = LRSchedule(
            s.policy,
            max_iters,
            s.power,
            s.end_lr_ratio,
            warmup=s.warmup_iters or round(s.warmup_epochs * spe),
            step_size=s.step_iters or round(s.step_epochs * spe),
            gamma=s.gamma,
        )

        torch.manual_seed(t_cfg.seed)  # identical initial weights on every rank
        model = build_training_model(cfg, label_set.num_classes, self.log).to(ctx.device)
        spec = model.input_spec
        use_amp = t_cfg.amp and ctx.device.type == "cuda"
        if ctx.distributed and ctx.device.type == "cuda" and t_cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = build_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        aux_weights = cfg.loss.aux_weights if cfg.loss.aux_weights is not None else getattr(model, "aux_weights", ())
        weights = self._class_weights(train_ds, label_set.num_classes)
        loss_fn = SegmentationLoss(
            label_set.num_classes,
            cfg.loss.ignore_index,
            weights.to(ctx.device) if weights is not None else None,
            cfg.loss.gamma if cfg.loss.type == "focal" else None,
        )

        start = 0
        ckpt_path = last_checkpoint(self.out_dir)
        if self.resume and ckpt_path.is_file():
            start = self._load_state(ckpt_path, model, optimizer, scaler)
        else:
            if self.resume:
                self.log(f"--resume: no checkpoint at {ckpt_path}; starting from scratch")
            torch.manual_seed(t_cfg.seed + 1 + ctx.rank)  # training-time randomness (dropout), per rank
        self._truncate_log(start)

        module = model
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=t_cfg.find_unused_parameters,
            )
        self._set_train_mode(model)

        sampler = D.StepSampler(n_train, batch, ctx.world, ctx.rank, t_cfg.accum_steps, t_cfg.seed, start, max_iters)
        loader = torch.utils.data.DataLoader(
            D.AugmentedDataset(train_ds, D.build_transforms(cfg.augment), t_cfg.seed),
            batch_sampler=sampler,
            collate_fn=D.Collate(spec, cfg.data.depth_fill),
            num_workers=cfg.data.num_workers,
            worker_init_fn=D.worker_init if cfg.data.num_workers else None,
            # Spawned, not forked, workers: a fork after the parent has run OpenMP/rclpy threads can deadlock
            # (seen here: a forked worker hung in torch.set_num_threads). The loader is iterated once per run.
            multiprocessing_context="spawn" if cfg.data.num_workers else None,
            pin_memory=ctx.device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG (dropout) independent of the loader
        )
        self.log(
            f"training {cfg.model.name} ({cfg.model.backbone or 'default backbone'}) on {cfg.data.dataset}: "
            f"{n_train} frames, batch {batch} ({sampler.micro} × {ctx.world} ranks × {t_cfg.accum_steps} accum), "
            f"steps {start} → {max_iters} ({spe} per epoch), device {ctx.device}"
        )
        progress = None
        if ctx.main:
            from tqdm import tqdm

            progress = tqdm(total=max_iters, initial=start, desc="train", unit="it", dynamic_ncols=True)
        batches = iter(loader)
        val_miou = None
        for step in range(start, max_iters):
            micro = [next(batches) for _ in range(t_cfg.accum_steps)]
            record = self._step(step, model, micro, optimizer, scaler, loss_fn, aux_weights, schedule, use_amp)
            self._record(record)
            if progress is not None:
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
                progress.update(1)
            tb = self._tb(start) if ctx.main and ((step + 1) % t_cfg.log_every == 0 or step + 1 == max_iters) else None
            if tb is not None:
                for k, v in record.items():
                    if k != "iter":
                        tb.add_scalar(f"train/{k}", v, step + 1)
            done = step + 1
            if t_cfg.checkpoint_every and done % t_cfg.checkpoint_every == 0 and done < max_iters:
                self._save_state(ckpt_path, module, optimizer, scaler, done)
            if val_ds is not None and t_cfg.val_every and done % t_cfg.val_every == 0 and done < max_iters:
                val_miou = self.validate(module, val_ds, label_set, done, start)
                self._set_train_mode(model)
        if progress is not None:
            progress.close()
        del batches
        self._save_state(ckpt_path, module, optimizer, scaler, max_iters)
        if val_ds is not None:
            val_miou = self.validate(module, val_ds, label_set, max_iters, start)
        out = self._save_final(module, label_set, max_iters, val_miou)
        if self.writer:
            self.writer.close()
        _barrier(self.ctx)
        return out

    def _step(self, step, model, micro, optimizer, scaler, loss_fn, aux_weights, schedule, use_amp) -> dict:
        ctx, dev = self.ctx, self.ctx.device
        factor = schedule.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        local_n = sum(float(loss_fn.weight_sum(labels)) for _, _, labels in micro)
        (normaliser,) = _all_sum([local_n], ctx)
        parts_sum: dict[str, float] = {}
        for a, (rgb, second, labels) in enumerate(micro):
            rgb, labels = rgb.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            second = second.to(dev, non_blocking=True) if second is not None else None
            sync = a == len(micro) - 1 or not ctx.distributed
            with contextlib.nullcontext() if sync else model.no_sync():
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    outputs = model(rgb, second)
                loss, parts = loss_fn(flatten_outputs(outputs, aux_weights), labels, normaliser)
                # DDP averages gradients over ranks; the loss is already a share of the global mean.
                scaler.scale(loss * ctx.world).backward()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        if self.cfg.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), self.cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        names = sorted(parts_sum)
        totals = dict(zip(names, _all_sum([parts_sum[k] for k in names], ctx)))
        loss_value = sum(totals[k] for k in names)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step + 1}")
        record = {"iter": step + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"]}
        if len(names) > 1:
            record.update({f"loss_{k}": totals[k] for k in names})
        return record

    # checkpoints -----------------------------------------------------------------------------------------------------
    def _save_state(self, path: Path, module: nn.Module, optimizer, scaler, step: int) -> None:
        states = [rng_state()]
        if self.ctx.distributed:
            states = [None] * self.ctx.world
            dist.all_gather_object(states, rng_state())
        if self.ctx.main:
            state = {
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"step": step},
                "scaler": scaler.state_dict(),
                "rng": states,
                "step": step,
                "world_size": self.ctx.world,
                "config": json.dumps(self.cfg.to_dict()),
                "config_hash": self.cfg.hash(),
            }
            atomic_torch_save(state, path)
        _barrier(self.ctx)

    def _load_state(self, path: Path, module: nn.Module, optimizer, scaler) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config_hash"] != self.cfg.hash():
            diff = _config_diff(json.loads(state["config"]), self.cfg.to_dict())
            self.log(f"warning: resuming with a recipe that differs from the checkpoint's: {diff}")
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if state["world_size"] == self.ctx.world:
            set_rng_state(state["rng"][self.ctx.rank])
        else:
            self.log(f"warning: checkpoint from {state['world_size']} ranks, now {self.ctx.world}: RNG reseeded")
            torch.manual_seed(self.cfg.train.seed + 1 + self.ctx.rank + 7919 * state["step"])
        self.log(f"resumed from {path} at step {state['step']}")
        return int(state["step"])

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
            write_weights(module, path, metadata, cfg.train.weights_dtype)
            self.log(f"final weights: {path}")
        return path

    # validation --------------------------------------------------------------------------------------------------
    def validate(self, module: nn.Module, val_ds, label_set, step: int, start: int) -> float:
        """Single-scale validation (the recipe's input size and sliding window), mIoU in percent."""
        cfg, ctx = self.cfg, self.ctx
        module.eval()
        backend = _InferenceBackend(module, ctx.device, cfg.train.amp)
        segmenter = Segmenter(
            backend, module.input_spec, label_set, cfg.model.name, cfg.eval.input_size, cfg.data.depth_fill
        )
        protocol = protocol_from_eval_config({**cfg.to_dict()["eval"], "flip": False}, multiscale=False)
        t0 = time.perf_counter()
        result = evaluate(segmenter, val_ds, protocol, ctx.rank, ctx.world, num_examples=cfg.train.num_val_images)
        cm = result.matrix
        miou = 100.0 * cm.miou()
        record = {"iter": step, "val_miou": miou, "val_pixel_acc": 100.0 * cm.pixel_accuracy(),
                  "val_mean_acc": 100.0 * cm.mean_accuracy()}  # fmt: skip
        self._record(record)
        self.log(f"step {step}: val mIoU {miou:.2f} (pixel acc {record['val_pixel_acc']:.2f}, "
                 f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
        tb = self._tb(start) if ctx.main else None
        if tb is not None:
            for k, v in record.items():
                if k != "iter":
                    tb.add_scalar(f"val/{k.removeprefix('val_')}", v, step)
            for i, (rgb, gt, pred) in enumerate(result.examples):
                image = np.concatenate([rgb, overlay(rgb, gt, label_set), overlay(rgb, pred, label_set)], axis=1)
                tb.add_image(f"val/overlay_{i}", image, step, dataformats="HWC")
        return miou


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


__all__ = ["DistContext", "LRSchedule", "Trainer", "build_training_model", "init_distributed", "param_groups"]
