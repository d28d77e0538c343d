"""Inter-process locks on workdir files (token-cache builds, the embedded store's creation).

A lock is a `<name>.lock` file next to what it guards, held with `filelock` (fcntl/msvcrt: the OS
releases it when the holder dies, so a killed process never leaves a stale lock behind). A second
process waits for the holder; `timeout` bounds that wait and ends in an error naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0  # a cache build of a large corpus can take long; waiters just wait


class WorkdirError(RuntimeError):
    """The workdir cannot be used (read-only, not a directory); the message says what to do."""


class LockWaitTimeout(TimeoutError):
    """Another process held the lock for longer than the timeout."""


def ensure_writable(workdir: Path) -> Path:
    """Create workdir if needed and check that this process can write into it."""
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkdirError(f"cannot create the workdir {workdir}: {exc.strerror}; pass a writable --workdir") from None
    if not workdir.is_dir():
        raise WorkdirError(f"the workdir {workdir} is not a directory; pass a directory as --workdir")
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(
            f"the workdir {workdir.resolve()} is not writable (it holds mlflow.db, mlartifacts/, cache/ and "
            "checkpoints/): fix its permissions or pass a writable --workdir"
        )
    return workdir


@contextlib.contextmanager
def hold(path: Path, purpose: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold the inter-process lock `<path>.lock` (its directory is created)."""
    lock_file = Path(str(path) + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish %s (lock %s)", purpose, lock_file)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockWaitTimeout(
                f"another process has held {lock_file} ({purpose}) for more than {timeout:.0f} s; if no "
                "harmonica process is running on this workdir, something else holds the file open"
            ) from None
    try:
        yield
    finally:
        lock.release()
