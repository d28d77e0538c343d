"""Ctrl-C and SIGTERM: where they are raised.

Outside the training loop a signal raises at once (KeyboardInterrupt; `Terminated` for SIGTERM), as
Python does. Inside `at_step_boundaries()` the first signal is only recorded and `check()` raises it at
the loop's next step boundary: an exception raised in the middle of a library call (a SQLite write, the
MLflow async-logging queue, a checkpoint being published on another thread) can leave a lock held and
the shutdown that follows waiting on it forever. A second signal raises at once, for a user who will
not wait for the step to end.

`SIGUSR1` prints every thread's stack to stderr (`kill -USR1 <pid>`): how to see where a run is stuck.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's preemption, torchrun stopping its workers) taken like
    Ctrl-C: the run is marked KILLED and `train` prints its resume command, instead of the process
    vanishing with its MLflow run left RUNNING."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: int | None = None  # the signal recorded inside at_step_boundaries(), not yet raised
_deferring = False


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_now(signum: int, frame: Any) -> None:
    raise _exception(signum)


def _defer(signum: int, frame: Any) -> None:
    global _pending
    if _pending is not None or not _deferring:  # the second signal: the user will not wait
        _pending = None
        raise _exception(signum)
    _pending = signum
    name = "Ctrl-C" if signum == signal.SIGINT else f"signal {signal.Signals(signum).name}"
    print(f"\n{name}: stopping after this step (the run is marked KILLED; Ctrl-C again to stop at once)",
          file=sys.stderr, flush=True)


def install() -> None:
    """SIGTERM raises like SIGINT; SIGUSR1 dumps all stacks. Main thread only (a no-op elsewhere)."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _raise_now)
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def run_script(main: Callable[[], object]) -> int:
    """The entry of a script outside the CLI (benchmarks/*.py): signals as in `harmonica` (SIGTERM taken
    like Ctrl-C, so the MLflow runs the script opened end KILLED, not RUNNING) -> its exit status: 0, or
    143 (SIGTERM) / 130 (Ctrl-C) when interrupted. Use as `sys.exit(run_script(main))`."""
    install()
    try:
        main()
    except KeyboardInterrupt as exc:
        print("interrupted: the script's MLflow runs are marked KILLED", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, Terminated) else 130
    return 0


@contextlib.contextmanager
def at_step_boundaries() -> Iterator[None]:
    """Within: a first SIGINT/SIGTERM is raised by `check()`, not where it lands. Main thread only;
    elsewhere (and for signals that Python was told to ignore) nothing changes."""
    global _deferring, _pending
    previous: dict[int, Any] = {}
    try:
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:  # e.g. SIGINT of a job started with `&`: stays ignored
                continue
            previous[sig] = signal.signal(sig, _defer)
    except ValueError:  # not the main thread
        pass
    _deferring, _pending = bool(previous), None
    try:
        yield
    finally:
        _deferring = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    check()  # a signal recorded after the body's last check() (not reached when the body raised)


def check() -> None:
    """Raise the signal recorded since the last call (the caller is at a safe point)."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise _exception(signum)
