"""Training runs on tiny synthetic rooms (48×64, SGNet-R18, CPU): the loss falls, ``--resume`` after a SIGKILL
continues bit-exactly, and 2-process DDP (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.config import load_config
from training.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "configs" / "synthetic_sgnet_r18.yaml"


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    from rgbd_seg_ros.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("rooms"), n_train=16, n_test=4, size=(48, 64), seed=0)


def tiny(root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that shrink the synthetic recipe to seconds on a CPU."""
    return [
        f"out_dir={out}",
        f"data.root={root}",
        "data.val_split=null",
        "data.num_workers=0",
        "augment.crop=[32,40]",
        "batch_size=2",
        "threads=1",
        "log_every=1",
        "checkpoint_every=0",
        *extra,
    ]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def train_cmd(*overrides: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(RECIPE), *overrides]
    return [*cmd, "--resume"] if resume else cmd


def child_env(threads: int = 1) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_loss_decreases_over_50_iterations(rooms, tmp_path):
    cfg = load_config(RECIPE, tiny(rooms, tmp_path, "max_iters=50", "schedule.warmup_iters=5"))
    Trainer(cfg).run()
    values = losses(tmp_path)
    assert len(values) == 50
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.7 * first, f"loss {first:.3f} → {last:.3f}"
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()


def test_resume_after_sigkill_is_bit_exact(rooms, tmp_path):
    n = 4
    common = tiny(rooms, tmp_path, f"max_iters={n}", f"checkpoint_every={n // 2}", "data.num_workers=1")
    full, broken = tmp_path / "full", tmp_path / "broken"
    # uninterrupted, in this process, and validating every 2 steps: validation must not perturb training either
    Trainer(load_config(RECIPE, [*common, f"out_dir={full}", "data.val_split=test", "val_every=2"])).run()

    proc = subprocess.Popen(
        train_cmd(*common, f"out_dir={broken}"), env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = broken / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err.decode()[-2000:]}"
    assert not (broken / "model.safetensors").exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < n

    subprocess.run(train_cmd(*common, f"out_dir={broken}", resume=True), env=child_env(), check=True,
                   capture_output=True)  # fmt: skip
    a, b = load_file(full / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert losses(broken) == losses(full) and len(losses(full)) == n


def test_ddp_two_gloo_processes_equal_one_process_and_accumulation(rooms, tmp_path):
    # BatchNorm batch statistics differ with the per-process batch (SyncBatchNorm is CUDA-only), and dropout draws
    # differ per process: freeze BN and switch dropout off so the runs must agree up to float summation order.
    common = tiny(rooms, tmp_path, "max_iters=3", "batch_size=4", "freeze_bn=true", "model.dropout=0", "optim.lr=0.05")
    one, two, accum = tmp_path / "one", tmp_path / "two", tmp_path / "accum"
    cfg = load_config(RECIPE, [*common, f"out_dir={one}"])
    Trainer(cfg).run()
    cfg = load_config(RECIPE, [*common, f"out_dir={accum}", "accum_steps=2"])
    Trainer(cfg).run()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # TMPDIR: torchrun's own scratch folder (/tmp/torchelastic_*) goes with tmp_path instead of staying behind.
    env = {**child_env(), "TMPDIR": str(tmp_path)}
    run = subprocess.run(launcher + train_cmd(*common, f"out_dir={two}")[1:], env=env, capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    ref = load_file(one / "model.safetensors")
    for other in (two, accum):
        got = load_file(other / "model.safetensors")
        worst = max((got[k].float() - ref[k].float()).abs().max().item() for k in ref)
        assert worst < 1e-4, f"{other.name}: max weight difference {worst}"
        assert losses(other) == pytest.approx(losses(one), rel=1e-5)
    assert abs(losses(one)[-1] - losses(one)[0]) > 1e-3  # the runs did move (the comparison is not vacuous)
