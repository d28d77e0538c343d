"""`harmonica registry list|show|rollback`: read the registry and move `champion` back by hand.

Rollback runs under the same registry lock as promotion, so it never interleaves with a
concurrent champion move. It refuses a version that is not earlier than the current champion or
that failed its gates unless `force`; every rollback is recorded on the target version
(harmonica.rollback_reason, harmonica.rolled_back_from, ...), on the version it replaces
(harmonica.rolled_back_to) and in the registered model's champion history (tag + description).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harmonica.registry.package import MODEL_NAME
from harmonica.tracking import names
from harmonica.tracking.read import NotFoundError, RegisteredModelRecord, VersionRecord
from harmonica.tracking.registry import CHAMPION, ModelRegistry, actor, now_iso

HISTORY_TAG = names.CHAMPION_HISTORY


class RegistryError(ValueError):
    """A registry request that cannot be served; the message says what exists."""


def _model(registry: ModelRegistry, name: str) -> RegisteredModelRecord:
    rm = registry.model(name)
    if rm is None:
        raise RegistryError(f"no registered model '{name}' on {registry.tracking_uri}: promote an evaluation first "
                            "(`harmonica promote --evaluation RUN_ID`)")
    return rm


def _aliases_by_version(rm: RegisteredModelRecord) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in rm.aliases.items():
        out.setdefault(str(version), []).append(alias)
    return out


def _when(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(mv: VersionRecord, aliases: dict[str, list[str]]) -> dict[str, Any]:
    t = mv.tags
    return {
        "version": mv.version,
        "aliases": sorted(aliases.get(mv.version, [])),
        "decision": t.get(names.DECISION, "?"),
        "gates_passed": t.get(names.GATES_PASSED, "?"),
        "failing_gates": t.get(names.FAILING_GATES, ""),
        "primary_metric": t.get(names.PRIMARY_METRIC, ""),
        "primary_value": t.get(names.PRIMARY_VALUE, ""),
        "evaluation_run_id": t.get(names.EVALUATION_RUN_ID, ""),
        "code": f"{t.get(names.GIT_COMMIT, 'unknown')[:12]} dirty={t.get(names.GIT_DIRTY, '?')}",
        "created": _when(mv.created_ms),
        "rollback_reason": t.get(names.ROLLBACK_REASON, ""),
        "superseded_by": t.get(names.SUPERSEDED_BY, ""),
    }


def list_versions(name: str = MODEL_NAME, *, tracking_uri: str) -> list[dict[str, Any]]:
    """All versions, newest first, with aliases, decision, gates, primary metric and code."""
    registry = ModelRegistry(tracking_uri)
    aliases = _aliases_by_version(_model(registry, name))
    return [_row(mv, aliases) for mv in sorted(registry.versions(name), key=lambda v: -int(v.version))]


def resolve_version(registry: ModelRegistry, name: str, ref: str) -> VersionRecord:
    """A version number or an alias (champion, candidate, ...)."""
    ref = str(ref).lstrip("v") if str(ref).lstrip("v").isdigit() else str(ref)
    try:
        found = registry.version(name, ref) if ref.isdigit() else registry.version_by_alias(name, ref)
    except NotFoundError:
        found = None
    if found is None:
        rm = _model(registry, name)
        raise RegistryError(f"'{name}' has no version or alias {ref!r} (aliases: "
                            f"{', '.join(f'{a}=v{v}' for a, v in rm.aliases.items()) or 'none'})")
    return found


def show_version(name: str, ref: str, *, tracking_uri: str) -> dict[str, Any]:
    """Everything about one version: tags (gates, provenance, decision), description, aliases, source."""
    registry = ModelRegistry(tracking_uri)
    mv = resolve_version(registry, name, ref)
    rm = _model(registry, name)
    return {
        "name": name,
        "version": mv.version,
        "aliases": sorted(_aliases_by_version(rm).get(mv.version, [])),
        "status": mv.status,
        "source": mv.source,
        "run_id": mv.run_id,
        "created": _when(mv.created_ms),
        "description": mv.description,
        "tags": dict(sorted(mv.tags.items())),
        "gates": {k: v for k, v in sorted(mv.tags.items()) if k.startswith("gate.")},
        "uri": f"models:/{name}/{mv.version}",
    }


@dataclass
class RollbackResult:
    name: str
    from_version: str | None
    to_version: str
    reason: str
    forced: bool
    message: str


def rollback(name: str, to_version: str, reason: str, *, tracking_uri: str, force: bool = False,
             lock_timeout: float = 120.0) -> RollbackResult:
    """Move `champion` to an earlier version and record why."""
    if not reason or not reason.strip():
        raise RegistryError("a rollback needs a reason (--reason): it is recorded on the version and in the history")
    registry = ModelRegistry(tracking_uri)
    _model(registry, name)
    target = resolve_version(registry, name, to_version)
    version = target.version
    with registry.lock(name, purpose=f"rollback to v{version}", timeout=lock_timeout):
        current = _model(registry, name).aliases.get(CHAMPION)
        problems = []
        if current == version:
            raise RegistryError(f"v{version} already is the champion of '{name}'")
        if current is not None and int(version) > int(current):
            problems.append(f"v{version} is not earlier than the champion v{current} (rollback goes back)")
        if target.tags.get(names.GATES_PASSED) != "true":
            failing = target.tags.get(names.FAILING_GATES, "unknown")
            problems.append(f"v{version} did not pass its gates (failing: {failing})")
        if target.tags.get(names.PROMOTION_COMPLETE) not in (None, "true"):
            problems.append(f"v{version} is an incomplete promotion")
        if problems and not force:
            raise RegistryError("refusing the rollback: " + "; ".join(problems) + " — pass --force to do it anyway")
        registry.set_alias(name, CHAMPION, version)
        at = now_iso()
        tags = {
            names.ROLLBACK_REASON: reason.strip()[:4900],
            names.ROLLED_BACK_FROM: current or "none",
            names.ROLLED_BACK_AT: at,
            names.ROLLED_BACK_BY: actor(),
            names.ROLLBACK_FORCED: str(bool(problems)).lower(),
        }
        registry.set_version_tags(name, version, tags)
        if current is not None:
            registry.set_version_tags(name, current,
                                      {names.ROLLED_BACK_TO: f"v{version} at {at}: {reason.strip()}"[:4900]})
        registry.record_champion_event(name, {"at": at, "to": version, "from": current, "via": "rollback",
                                             "by": actor(), "reason": reason.strip()[:500],
                                             "forced": bool(problems)})
    forced = f", forced: {'; '.join(problems)}" if problems else ""
    if current is None:
        message = f"{name}: champion set to v{version}; there was no champion before (rollback{forced}); reason: {reason.strip()}"
    else:
        message = f"{name}: champion v{current} -> v{version} (rollback{forced}); reason: {reason.strip()}"
    return RollbackResult(name, current, version, reason.strip(), bool(problems), message)


def champion_history(name: str = MODEL_NAME, *, tracking_uri: str) -> list[dict[str, Any]]:
    registry = ModelRegistry(tracking_uri)
    _model(registry, name)
    return registry.champion_history(name)


__all__ = ["HISTORY_TAG", "RegistryError", "RollbackResult", "champion_history", "list_versions", "rollback",
           "show_version"]
