"""How the training scripts (``train.py``, ``evaluate.py``) end and stop: the exit codes, one line for an expected
failure or an interruption, a traceback only for a bug; Ctrl-C and SIGTERM as requests to stop.

This module imports nothing heavy, so the scripts can report a bad command line before torch is loaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

EXIT_BUG = 1  # an unexpected exception: a bug (the traceback is printed)
EXIT_USAGE = 2  # bad command line, recipe or input
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, the shell's code for Ctrl-C)

#: The signals that ask a run to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunError(Exception):
    """An expected failure of a run's inputs or outputs (bad weights file, existing run, unwritable folder, a
    dataset that does not fit the recipe): the message is the one line shown to the user."""


class Interrupted(Exception):
    """A run that stopped cleanly on Ctrl-C or SIGTERM; the message says what was kept and how to continue.
    ``announce``: print it (False on all but one of a distributed run's ranks)."""

    def __init__(self, message: str, announce: bool = True) -> None:
        super().__init__(message)
        self.announce = announce


def error_line(prog: str, message: object, kind: str = "error") -> None:
    """Print ``prog: kind: message`` on stderr, whitespace folded to one line."""
    print(f"{prog}: {kind}: {' '.join(str(message).split())}", file=sys.stderr)


def guarded(prog: str, body: Callable[[], int], expected: tuple[type[Exception], ...], interrupted: str = "") -> int:
    """Run ``body`` and return its exit code, or end as the module docstring says.

    Args:
        prog: the script's name, first on every line.
        body: the script's work; returns the exit code.
        expected: exceptions whose message is the one error line (exit 2).
        interrupted: what to print after "interrupted" when a second Ctrl-C ends the run at once.
    """
    try:
        return body()
    except expected as exc:
        error_line(prog, exc)
        return EXIT_USAGE
    except Interrupted as exc:
        if exc.announce:
            error_line(prog, exc, "interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        error_line(prog, interrupted or "stopped", "interrupted")
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        error_line(prog, "this is a bug, please report it with the traceback above", "unexpected error")
        return EXIT_BUG


@contextlib.contextmanager
def stop_requests(announce: bool, repeat_window_s: float = 1.0) -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C (SIGINT) or SIGTERM asks for a stop instead of ending the process.

    The first signal sets the flag that the yielded function reads. A repeat within ``repeat_window_s`` seconds is
    the same request (a double press, or a launcher passing on a signal the process got already); a later one
    acts at once, with the previous handlers back (Ctrl-C: :class:`KeyboardInterrupt`). ``announce``: write a line
    saying so. A signal the process was started to ignore (a background job's SIGINT) stays ignored. Signal
    handlers exist only in the main thread; elsewhere the flag stays False.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous = {s: handler for s, handler in previous.items() if handler is not signal.SIG_IGN}
    first: float | None = None  # time.monotonic() of the first request

    def request(signum: int, _frame) -> None:
        nonlocal first
        if first is None:
            first = time.monotonic()
            if announce:  # os.write: print() from a signal handler can meet a half-written buffer
                line = f"\n{signal.Signals(signum).name}: stopping after this step (with a checkpoint); again: now\n"
                os.write(sys.stderr.fileno(), line.encode())
        elif time.monotonic() - first > repeat_window_s:
            _set_handlers(previous)
            signal.raise_signal(signum)

    _set_handlers(dict.fromkeys(previous, request))
    try:
        yield lambda: first is not None
    finally:
        _set_handlers(previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored within the block (main thread only): processes started in it inherit that, and
    Python leaves an inherited ignored SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        _set_handlers(previous)


def _set_handlers(handlers: dict) -> None:
    """``signal.signal`` for each (signal, handler); None (a handler set outside Python) becomes the default."""
    for s, handler in handlers.items():
        signal.signal(s, signal.SIG_DFL if handler is None else handler)


def worker_ignores_ctrl_c(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a terminal's Ctrl-C, or a SIGTERM to the process group (Slurm), reaches the
    workers too; the main process decides."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
