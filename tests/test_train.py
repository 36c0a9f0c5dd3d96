"""Training runs on tiny synthetic rooms (48×64, SGNet-R18, CPU): the loss falls, ``--resume`` after a SIGKILL
or a Ctrl-C continues bit-exactly, and 2-process DDP (gloo) equals one process with the same global batch."""

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
from training.entry import stop_requests
from training.train import INTERRUPTED_AT_ONCE

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


def _wait_for_steps(proc: subprocess.Popen, log: Path, steps: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= steps:
            return
        time.sleep(0.005)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_the_hint_resumes_bit_exactly(rooms, tmp_path):
    n = 40
    common = tiny(rooms, tmp_path, f"max_iters={n}", "data.num_workers=1")
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    Trainer(load_config(RECIPE, [*common, f"out_dir={full}"])).run()

    # A terminal's Ctrl-C: SIGINT to the whole process group, the trainer and its DataLoader worker alike.
    cmd = train_cmd(*common, f"out_dir={stopped}")
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    _wait_for_steps(proc, stopped / "log.jsonl", 2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    step = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 2 <= step < n, "the signal came after the run had ended"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"train.py: interrupted: stopped after step {step} of {n}; "), line
    assert len(losses(stopped)) == step and not (stopped / "model.safetensors").exists()

    python, script, *rest = line.split("continue with ")[1].split()  # the command the line gives, as printed
    assert (python, script) == ("python", "training/train.py")
    subprocess.run([sys.executable, script, *rest], cwd=ROOT, env=child_env(), check=True, capture_output=True)
    a, b = load_file(full / "model.safetensors"), load_file(stopped / "model.safetensors")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert losses(stopped) == losses(full) and len(losses(full)) == n


def test_stop_requests_first_signal_asks_a_quick_repeat_is_the_same_a_later_one_acts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with stop_requests(announce=False, repeat_window_s=0.3) as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in the main thread at its next instruction
        assert requested()
        os.kill(os.getpid(), signal.SIGINT)  # within the window: what torchrun's forwarding looks like
        time.sleep(0.05)
        time.sleep(0.3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_ends_the_run_at_once_in_one_line(tmp_path):
    from rgbd_seg_ros.synthetic import write_dataset

    rooms = write_dataset(tmp_path / "rooms", n_train=8, n_test=1, size=(240, 320), seed=0)
    slow_steps = tiny(rooms, tmp_path, "max_iters=100000", "augment.crop=[240,320]", "batch_size=8")  # seconds each
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen(train_cmd(*slow_steps), env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        _wait_for_steps(proc, tmp_path / "log.jsonl", 1)
        time.sleep(0.3)  # into the second step
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while "stopping after this step" not in (tmp_path / "stderr.txt").read_text() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(1.2)  # past the repeat window (1 s), still within the step
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line == f"train.py: interrupted: {INTERRUPTED_AT_ONCE}", line
    assert len(losses(tmp_path)) == 1 and not (tmp_path / "checkpoints" / "last.pt").exists()


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
