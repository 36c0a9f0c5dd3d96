"""Run an entry point as a user would (a subprocess) and check how it fails.

Shared by the table tests of every command (``rgbd-seg …``, ``training/train.py``, ``training/evaluate.py``):
a failure must exit with the documented code, print one line naming the culprit, print no traceback, and
leave every file that existed before byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The documented exit codes (README "Exit codes").
EXIT_USAGE = 2  # bad command line or bad input: the message names it
EXIT_NOTHING_DONE = 3  # the command ran but processed nothing (every input rejected)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: DDS on loopback, one thread, the repository importable."""
    env = dict(os.environ)
    env.update(
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOCALHOST_ONLY="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def rgbd_seg(*args: str) -> list[str]:
    """The ``rgbd-seg`` command line (the installed console script's module, with this interpreter)."""
    return [sys.executable, "-m", "rgbd_seg_ros.cli", *args]


def script(path: str, *args: str) -> list[str]:
    """A repository script such as ``training/train.py``."""
    return [sys.executable, str(ROOT / path), *args]


def _ctrl_c_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_as_from_a_terminal(cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Start ``cmd`` as a shell in a terminal does: its own process group, Ctrl-C not ignored (even where this test
    process ignores it, as a background job does). ``os.killpg(proc.pid, SIGINT)`` is then a Ctrl-C."""
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_ctrl_c_default, **kwargs)


@dataclass
class Run:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 600, **env: str) -> Run:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=child_env(**env), stdin=subprocess.DEVNULL
    )
    return Run(cmd, proc.returncode, proc.stdout, proc.stderr)


def snapshot(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file under ``roots`` (files or folders)."""
    out: dict[Path, str] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_clean_failure(result: Run, culprit: str, code: int = EXIT_USAGE) -> str:
    """The run failed with ``code``, no traceback, and one error line that names ``culprit``; returns that line."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, f"{result.cmd}: traceback\n{text}"
    assert result.returncode == code, f"{result.cmd}: exit {result.returncode}, expected {code}\n{text}"
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, f"{result.cmd}: expected one error line, got {errors}\n{text}"
    assert culprit in errors[0], f"{result.cmd}: {culprit!r} not named in {errors[0]!r}"
    return errors[0]
