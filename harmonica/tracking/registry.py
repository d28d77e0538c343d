"""The model-registry side of the MLflow seam: registered models, versions, aliases, the champion
history and the registry lock, with typed results (`VersionRecord`, `RegisteredModelRecord` of
harmonica.tracking.read). Promotion and `harmonica registry ...` write the registry only through a
`ModelRegistry`.

The champion history is a bounded JSON list in the registered model's `harmonica.champion_history`
tag (newest last) and is rendered into its description, so the MLflow UI shows who moved `champion`
when and why; `harmonica.champion` names the version it was moved to.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.tracking import names
from harmonica.tracking.lock import ALREADY_EXISTS, NOT_FOUND, RegistryLock, error_code, lock_name
from harmonica.tracking.read import (
    NotFoundError,
    RegisteredModelRecord,
    TrackingReader,
    VersionRecord,
)

CANDIDATE, CHAMPION = names.CANDIDATE_ALIAS, names.CHAMPION_ALIAS
HISTORY_KEEP = 30
DESCRIPTION_LIMIT = 4900  # registered model / version descriptions are VARCHAR(5000) in the registry DB
TAG_LIMIT = 4900  # tag values likewise


def actor() -> str:
    """Who acts on the registry: user@host:pid."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _literal(value: str) -> str:
    """A string literal of MLflow's search syntax: single quotes, double quotes around a value holding one."""
    value = str(value)
    return f'"{value}"' if "'" in value else f"'{value}'"


def describe_model(name: str, history: list[dict[str, Any]]) -> str:
    """The registered model's description: what it is, its aliases, how to load it, the champion history."""
    lines = [
        f"{name}: harmonica text-to-speech (AR + NAR EMA weights, codec state, text frontend, contract).",
        ("Aliases: `champion` = the version to serve (moved only by `harmonica promote` when all gates pass "
         "and it beats the champion on the primary metric, or by `harmonica registry rollback`); "
         "`candidate` = the latest registered version."),
        "Load: mlflow.pyfunc.load_model('models:/" + name + "@champion').predict(pd.DataFrame({'text': [...]}))",
    ]
    if history:
        lines += ["", "Champion history (newest last):"]
        events = [f"- {h.get('at', '')} v{h.get('from') or '-'} -> v{h.get('to')} by {h.get('via')} "
                  f"({h.get('by', '')}): {str(h.get('reason', ''))[:300]}" for h in history[-HISTORY_KEEP:]]
        while events and len("\n".join(lines + events)) > DESCRIPTION_LIMIT:
            events = events[1:]  # the registry column holds 5000 characters: oldest first out
        lines += events
    return "\n".join(lines)[:DESCRIPTION_LIMIT]


class ModelRegistry:
    """Reads and writes the model registry of one tracking store (`tracking_uri`)."""

    def __init__(self, tracking_uri: str, client: MlflowClient | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._client = client or MlflowClient(tracking_uri)
        self.reader = TrackingReader(tracking_uri, self._client)

    # ----------------------------------------------------------------------------- models
    def model(self, name: str) -> RegisteredModelRecord | None:
        """The registered model, None when there is none (other store errors raise)."""
        try:
            return RegisteredModelRecord.from_mlflow(self._client.get_registered_model(name))
        except MlflowException as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise

    def ensure_model(self, name: str) -> RegisteredModelRecord:
        """The registered model, created (managed by harmonica promote, described) when missing."""
        found = self.model(name)
        if found is not None:
            return found
        try:
            self._client.create_registered_model(name, tags={names.MANAGED_BY: "harmonica promote"},
                                                 description=describe_model(name, []))
        except MlflowException as exc:
            if error_code(exc) not in ALREADY_EXISTS:
                raise
        return RegisteredModelRecord.from_mlflow(self._client.get_registered_model(name))

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, None when the model or the alias does not exist."""
        found = self.model(name)
        return found.aliases.get(alias) if found is not None else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.delete_registered_model_alias(name, alias)

    # ----------------------------------------------------------------------------- versions
    def versions(self, name: str) -> list[VersionRecord]:
        """Every version, oldest first, with its aliases."""
        return self.reader.model_versions(name)

    def version(self, name: str, version: str | int) -> VersionRecord:
        """One version by number; NotFoundError when it does not exist."""
        return self.reader.model_version(name, version)

    def version_by_alias(self, name: str, alias: str) -> VersionRecord | None:
        return self.reader.version_by_alias(name, alias)

    def find_versions(self, name: str, key: str, value: str) -> list[VersionRecord]:
        """Versions of `name` with tag key=value, oldest first (the search filter, else a full listing)."""
        try:
            found = list(self._client.search_model_versions(f"name={_literal(name)} and tags.`{key}`={_literal(value)}"))
        except MlflowException as exc:
            if error_code(exc) in NOT_FOUND:
                return []
            found = [v for v in self._client.search_model_versions(f"name={_literal(name)}")
                     if (v.tags or {}).get(key) == value]
        return sorted((VersionRecord.from_mlflow(v) for v in found), key=lambda v: int(v.version))

    def create_version(self, name: str, *, source: str, run_id: str, tags: Mapping[str, str],
                       description: str = "", model_id: str | None = None) -> VersionRecord:
        """Register the logged model at `source` (models:/<model id>) as a new version of `name`."""
        mv = self._client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags),
                                               description=description, model_id=model_id or None)
        return VersionRecord.from_mlflow(mv)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """One request per tag, in the given order (the registry has no batch call)."""
        for key, value in tags.items():
            self._client.set_model_version_tag(name, str(version), key, str(value))

    def describe_version(self, name: str, version: str, description: str) -> None:
        self._client.update_model_version(name, str(version), description=description[:DESCRIPTION_LIMIT])

    # ----------------------------------------------------------------------------- champion history
    def champion_history(self, name: str) -> list[dict[str, Any]]:
        """Every recorded champion move of `name`, oldest first ([] without a model or history)."""
        found = self.model(name)
        if found is None:
            return []
        try:
            return list(json.loads(found.tags.get(names.CHAMPION_HISTORY, "[]")))
        except ValueError:
            return []

    def record_champion_event(self, name: str, event: dict[str, Any]) -> None:
        """Append to the model's history tag (bounded), name the new champion, re-render the description."""
        history = (self.champion_history(name) + [event])[-HISTORY_KEEP:]
        blob = json.dumps(history)
        while len(blob) > TAG_LIMIT and len(history) > 1:
            history = history[1:]
            blob = json.dumps(history)
        self._client.set_registered_model_tag(name, names.CHAMPION_HISTORY, blob)
        self._client.set_registered_model_tag(name, names.CHAMPION, str(event.get("to")))
        self._client.update_registered_model(name, description=describe_model(name, history))

    # ----------------------------------------------------------------------------- lock
    def lock(self, model_name: str, *, purpose: str, timeout: float, stale_after: float | None = None) -> RegistryLock:
        """The registry lock of `model_name` (not yet acquired: use it as a context manager)."""
        kwargs = {} if stale_after is None else {"stale_after": stale_after}
        return RegistryLock(self._client, lock_name(model_name), purpose=purpose, timeout=timeout, **kwargs)


__all__ = ["CANDIDATE", "CHAMPION", "DESCRIPTION_LIMIT", "ModelRegistry", "NotFoundError", "actor",
           "describe_model", "now_iso"]
