"""The Optuna RDB storage of a sweep: opening it (heartbeats and the stale-trial callback on), and the
storage-wide lock the launch-time bookkeeping of a study runs under.

The lock is a marker study `<study>::harmonica-lock` (study names are unique in the storage, so creating
it succeeds for one process at a time); it is deleted on release and broken when older than
LOCK_STALE_SECONDS (a worker that died inside it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import RDBStorage

from harmonica.config.load import ConfigError

log = logging.getLogger(__name__)

LOCK_STALE_SECONDS = 300.0
LOCK_SUFFIX = "::harmonica-lock"


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password (for tags and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(
    url: str, heartbeat_interval: int | None = 20, grace_period: int | None = 120,
    on_stale: StaleCallback | None = None, attempts: int = 5,
) -> RDBStorage:
    """An Optuna RDB storage (sqlite:///..., postgresql://user:pw@host/db, mysql://...).

    With `heartbeat_interval` (seconds), a RUNNING trial whose last heartbeat is older than `grace_period`
    is *stale*: `optuna.storages.fail_stale_trials` fails it and calls `on_stale` (Optuna's
    `heartbeat_stale_trial_callback`, e.g. a RetryHeartbeatStaleTrialCallback) with it, in the one
    process whose FAIL transition succeeded. heartbeat_interval=None: no heartbeats, nothing goes stale.

    SQLite waits up to 60 s for a lock (several local workers); creating the schema is retried because
    two workers opening a fresh database at once may both try to create it.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat_interval is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=on_stale)
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                storage = RDBStorage(url, **kwargs)
            if url.startswith("sqlite"):
                _serialise_sqlite(storage)
            return storage
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the Optuna storage {redact(url)} needs the database driver '{exc.name}' "
                "(PostgreSQL: pip install psycopg2-binary)"
            ) from None
        except Exception as exc:
            if attempt == attempts:
                raise ConfigError(f"cannot open the Optuna storage {redact(url)}: {exc}") from exc
            log.warning("opening the Optuna storage failed (%s); retrying", exc.__class__.__name__)
            time.sleep(0.5 + random.random() * 2)
    raise AssertionError("unreachable")


def _serialise_sqlite(storage: RDBStorage) -> None:
    """Make every SQLite transaction take the write lock up front (BEGIN IMMEDIATE).

    pysqlite starts a transaction only at the first write, so Optuna's read-check-write of
    WAITING -> RUNNING is not atomic between processes: two local workers could pop the same trial.
    (SQLAlchemy's documented recipe; PostgreSQL/MySQL use a row lock instead.)
    """
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections from the schema check predate the hooks


@contextlib.contextmanager
def storage_lock(storage: RDBStorage, study_name: str, timeout: float = 600.0) -> Iterator[None]:
    """A storage-wide mutex for `study_name` (see the module doc)."""
    name = study_name + LOCK_SUFFIX
    deadline = time.monotonic() + timeout
    while True:
        try:
            lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            storage.set_study_user_attr(lock_id, "acquired_at", time.time())
            storage.set_study_user_attr(lock_id, "holder", worker_id())
            break
        except DuplicatedStudyError:
            _break_if_stale(storage, name)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the sweep lock '{name}' is still held after {timeout:.0f} s; if no other worker is "
                    f"starting, delete it: optuna delete-study --study-name '{name}' --storage <url>"
                ) from None
            time.sleep(0.2 + random.random() * 0.5)
    try:
        yield
    finally:
        with contextlib.suppress(KeyError):
            storage.delete_study(lock_id)


def _break_if_stale(storage: RDBStorage, name: str) -> None:
    try:
        lock_id = storage.get_study_id_from_name(name)
        acquired = storage.get_study_user_attrs(lock_id).get("acquired_at")
    except KeyError:
        return  # released meanwhile
    if acquired is not None and time.time() - float(acquired) > LOCK_STALE_SECONDS:
        log.warning("breaking the stale sweep lock '%s' (held for %.0f s)", name, time.time() - float(acquired))
        with contextlib.suppress(KeyError):
            storage.delete_study(lock_id)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


