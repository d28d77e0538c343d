"""A distributed mutex made of an MLflow registered model, so it works wherever the registry does
(SQLite file, PostgreSQL/MySQL behind a tracking server over HTTP) with no extra service.

* acquire = ``create_registered_model(<model>.promotion-lock)``: the registry's unique constraint on
  the name makes exactly one creator win; the others get RESOURCE_ALREADY_EXISTS and retry with
  exponential backoff (plus jitter) until ``timeout``.
* release = ``delete_registered_model`` (in ``finally``); only by the holder (checked by tag).
* the lock carries tags ``holder`` (a fresh uuid per acquisition), ``pid``, ``host``, ``acquired_at``
  (epoch seconds) and ``purpose``, and a description saying how to clear it by hand.
* a lock older than ``stale_after`` seconds is presumed abandoned by a crashed holder and broken by
  *renaming* it to ``<lock>.stale.<holder uuid>``. Renaming, not deleting, keeps breaking safe: two
  waiters that both saw the same stale holder try the same target name and only one rename can
  succeed; a waiter that saw an old holder can never rename a lock re-acquired since by someone
  else, because that target name is already taken. The ``.stale.*`` models are left for inspection
  (they hold no versions; delete them at will).
* ``stale_after`` must exceed the longest critical section; ours (find/register a version, move
  aliases) takes seconds, the default is 300 s. The holder re-checks ownership (`assert_held`)
  right before it moves the champion.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}
NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
DEFAULT_TIMEOUT = 600.0
DEFAULT_STALE_AFTER = 300.0


class LockTimeout(TimeoutError):
    """The lock could not be acquired in time; the message names the holder."""


class LockLost(RuntimeError):
    """The lock was broken (presumed stale) while we held it."""


def lock_name(model_name: str) -> str:
    return f"{model_name}.promotion-lock"


def error_code(exc: MlflowException) -> str:
    """The MLflow error code of an exception (RESOURCE_DOES_NOT_EXIST, ...), "" when it has none."""
    return str(getattr(exc, "error_code", ""))


class RegistryLock:
    def __init__(self, client: MlflowClient, name: str, *, purpose: str = "", timeout: float = DEFAULT_TIMEOUT,
                 stale_after: float = DEFAULT_STALE_AFTER, poll: float = 0.1, max_poll: float = 2.0) -> None:
        self.client = client
        self.name = name
        self.purpose = purpose
        self.timeout = timeout
        self.stale_after = stale_after
        self.poll = poll
        self.max_poll = max_poll
        self.holder: str | None = None
        self.waited = 0.0
        self.broke: list[str] = []

    # --------------------------------------------------------------------------------- acquire
    def _try_create(self, holder: str) -> bool:
        now = time.time()
        tags = {"holder": holder, "pid": str(os.getpid()), "host": socket.gethostname(),
                "acquired_at": f"{now:.3f}", "purpose": self.purpose[:4000]}
        description = (
            f"harmonica promotion lock held by pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC ({self.purpose}). It is deleted when "
            f"the holder finishes and broken automatically after {self.stale_after:g} s; delete it by hand only "
            "if no promotion or rollback is running."
        )
        try:
            self.client.create_registered_model(self.name, tags=tags, description=description)
            return True
        except MlflowException as exc:
            if error_code(exc) in ALREADY_EXISTS:
                return False
            raise

    def _current(self) -> dict[str, str] | None:
        try:
            return dict(self.client.get_registered_model(self.name).tags)
        except MlflowException as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise

    def _break_if_stale(self, tags: dict[str, str]) -> None:
        try:
            age = time.time() - float(tags.get("acquired_at", "nan"))
        except ValueError:
            age = float("nan")
        if not age > self.stale_after:  # NaN (no timestamp yet: mid-creation) is not stale
            return
        old = tags.get("holder", "unknown")
        try:
            self.client.rename_registered_model(self.name, f"{self.name}.stale.{old}")
        except MlflowException as exc:
            if error_code(exc) in ALREADY_EXISTS | NOT_FOUND:
                return  # someone else broke it (and maybe re-acquired): just retry
            raise
        self.broke.append(old)
        log.warning("broke a stale registry lock %s held by pid %s on %s for %.0f s (kept as %s.stale.%s)",
                    self.name, tags.get("pid"), tags.get("host"), age, self.name, old)

    def acquire(self) -> RegistryLock:
        holder = uuid.uuid4().hex
        started = time.monotonic()
        delay = self.poll
        last: dict[str, str] | None = None
        last_error: Exception | None = None
        while True:
            try:
                if self._try_create(holder):
                    self.holder = holder
                    self.waited = time.monotonic() - started
                    return self
                last = self._current()
                if last is not None:
                    self._break_if_stale(last)
            except MlflowException as exc:  # e.g. "database is locked" on SQLite under contention
                last_error = exc
                log.debug("registry lock %s: transient error %s", self.name, exc)
            if time.monotonic() - started > self.timeout:
                who = (f"pid {last.get('pid')} on {last.get('host')} since {last.get('acquired_at')} "
                       f"({last.get('purpose')})") if last else f"unknown (last error: {last_error})"
                raise LockTimeout(
                    f"could not acquire the registry lock '{self.name}' within {self.timeout:g} s; held by {who}. "
                    f"If that process is gone, delete the registered model '{self.name}' (or wait "
                    f"{self.stale_after:g} s for it to be broken)."
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, self.max_poll)

    # --------------------------------------------------------------------------------- release
    def assert_held(self) -> None:
        tags = self._current()
        if self.holder is None or tags is None or tags.get("holder") != self.holder:
            raise LockLost(
                f"the registry lock '{self.name}' is no longer ours (holder now {tags and tags.get('holder')}): "
                f"it was presumed stale after {self.stale_after:g} s; nothing more is changed"
            )

    def release(self) -> None:
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        for attempt in range(20):
            try:
                tags = self._current()
                if tags is None or tags.get("holder") != holder:
                    log.warning("registry lock %s was broken while held; not deleting the new holder's", self.name)
                    return
                self.client.delete_registered_model(self.name)
                return
            except MlflowException as exc:
                if error_code(exc) in NOT_FOUND:
                    return
                time.sleep(0.05 * (attempt + 1))  # transient (SQLite busy): retry
        log.error("could not release the registry lock %s; it will be broken after %g s", self.name,
                  self.stale_after)

    def __enter__(self) -> RegistryLock:  # noqa: PYI034  (acquire returns self)
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
