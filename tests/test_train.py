"""Training runs on tiny synthetic rooms (48×64, SGNet-R18, CPU): the loss falls, ``--resume`` after a SIGKILL
or a Ctrl-C continues bit-exactly, and 2-process DDP (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from entry_points import start_as_from_a_terminal
from safetensors.torch import load_file

from training import entry
from training.config import load_config
from training.engine import Trainer, resume_command
from training.entry import stop_requests

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
    n = 100
    common = tiny(rooms, tmp_path, f"max_iters={n}", "data.num_workers=1")
    full, stopped = tmp_path / "full", tmp_path / "stopped dir"  # a space: the hint must quote it
    Trainer(load_config(RECIPE, [*common, f"out_dir={full}"])).run()

    # As a user runs it (from the repository, the script path relative), then Ctrl-C in the terminal: SIGINT to the
    # whole process group, the trainer and its DataLoader worker alike.
    cmd = [sys.executable, "training/train.py", *train_cmd(*common, f"out_dir={stopped}")[2:]]
    proc = start_as_from_a_terminal(cmd, child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_steps(proc, stopped / "log.jsonl", 2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "SIGINT: stopping after this step" in err
    step = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 2 <= step < n, "the signal came after the run had ended"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"train.py: interrupted: stopped after step {step} of {n}; "), line
    assert len(losses(stopped)) == step and not (stopped / "model.safetensors").exists()

    python, script, *rest = shlex.split(line.split("continue with ")[1])  # the command the line gives
    assert python == "python" and Path(script).name == "train.py"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, script, *rest], cwd=elsewhere, env=child_env(), check=True, capture_output=True)
    a, b = load_file(full / "model.safetensors"), load_file(stopped / "model.safetensors")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert losses(stopped) == losses(full) and len(losses(full)) == n


def test_stop_requests_first_signal_asks_a_quick_repeat_is_the_same_a_later_one_acts_at_once(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(entry, "time", SimpleNamespace(monotonic=lambda: now[0]))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever pytest has
    with stop_requests(announce=False, repeat_window_s=1.0) as requested:
        assert not requested()
        signal.raise_signal(signal.SIGINT)  # its Python handler runs before the next line
        assert requested()
        now[0] += 0.9
        signal.raise_signal(signal.SIGINT)  # within the window: the same request (a double press)
        assert requested()
        now[0] += 0.2
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    restored = signal.signal(signal.SIGINT, before)
    assert restored is signal.default_int_handler


def test_an_interrupted_run_exits_130_with_its_line_once_per_distributed_run(capsys):
    def stopped(announce: bool):
        def body() -> int:
            raise entry.Interrupted("stopped after step 3 of 9", announce=announce)

        return body

    assert entry.guarded("train.py", stopped(True), ()) == entry.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "train.py: interrupted: stopped after step 3 of 9\n"
    assert entry.guarded("train.py", stopped(False), ()) == entry.EXIT_INTERRUPTED  # another rank: silent
    assert capsys.readouterr().err == ""


def test_the_resume_command_names_torchrun_with_the_same_processes_per_node(monkeypatch, tmp_path):
    script = shlex.quote(str(ROOT / "training" / "train.py"))  # absolute, as out_dir: works from any folder
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command(tmp_path / "a b") == (
        f"torchrun --nproc_per_node=4 {script} --resume 'out_dir={tmp_path}/a b' on each of the 2 nodes"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resume_command(tmp_path / "run") == f"python {script} --resume out_dir={tmp_path}/run"


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
