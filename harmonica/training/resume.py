"""Which checkpoint `train --resume` continues from, and whether the requested config lets it.

* `select_checkpoint`: the newest *valid* checkpoint of the latest run (damaged ones are skipped,
  each with its reason), or the one `--resume-from STEP|PATH` names.
* `result_config` / `config_changes`: the result-affecting settings a checkpoint was trained with
  (stored in its meta.json) against the requested ones. A difference is refused unless the caller
  accepts it explicitly; the run's original `config.yaml` and params are never rewritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonica.config.load import NON_RESULT_KEYS, flatten
from harmonica.config.schema import HarmonicaConfig
from harmonica.training import checkpoint as ckpt
from harmonica.training.ckpt_check import CheckpointInvalid, validate
from harmonica.tracking import names

log = logging.getLogger(__name__)


class ResumeRefused(RuntimeError):
    """Resuming would silently change what the run records; the message gives the ways forward."""


@dataclass
class ResumeTarget:
    run_id: str
    path: Path
    meta: dict[str, Any]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints passed over, why


def result_config(cfg: HarmonicaConfig, kind: str) -> dict[str, Any]:
    """Flat settings that can change this model's training result (other model kind, eval, gates,
    tracking and logging cadence left out)."""
    other = "nar" if kind == "ar" else "ar"
    drop = (*NON_RESULT_KEYS, f"model.{other}", f"training.{other}", "eval", "gates", f"training.{kind}.device")
    flat = flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in drop)}


def config_changes(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(requested))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r} -> requested {requested.get(k, '<absent>')!r}"
            for k in keys if saved.get(k) != requested.get(k)]


def saved_config(meta: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The checkpoint's result config; older checkpoints only know their model block."""
    if "result_config" in meta:
        return dict(meta["result_config"])
    if "model_config" in meta:
        return {f"model.{kind}.{k}": v for k, v in flatten(meta["model_config"]).items()}
    return None


def _valid_newest_first(root: Path) -> tuple[tuple[Path, dict[str, Any]] | None, list[tuple[Path, str]]]:
    skipped: list[tuple[Path, str]] = []
    for path in reversed(ckpt.list_checkpoints(root)):
        try:
            return (path, validate(path)), skipped
        except CheckpointInvalid as exc:
            skipped.append((path, f"{exc.file} {exc.problem}"))
    return None, skipped


def select_checkpoint(runs_root: Path, kind: str, project: str, resume_from: str | None = None) -> ResumeTarget:
    """runs_root = <workdir>/checkpoints/<project>/<kind>; each sub-directory is one run's."""
    if resume_from and not resume_from.isdigit():
        path = Path(resume_from).resolve()
        meta = validate(path)  # an explicitly named checkpoint must be valid: no silent fallback
        if meta["kind"] != kind:
            raise CheckpointInvalid(path, names.CKPT_META, f"is a {meta['kind']} checkpoint, not {kind}")
        run_id = str(meta.get("run_id") or path.parent.parent.name)
        return ResumeTarget(run_id, path, meta)
    runs = [d for d in runs_root.iterdir() if d.is_dir()] if runs_root.is_dir() else []
    latest = [(max((c / names.CKPT_META).stat().st_mtime for c in ckpt.list_checkpoints(d / "ckpt")), d)
              for d in runs if ckpt.list_checkpoints(d / "ckpt")]
    if not latest:
        raise FileNotFoundError(f"--resume: no checkpoint of a {kind} run of project '{project}' under {runs_root}")
    run_dir = max(latest)[1]
    if resume_from:  # a step of the latest run
        path = ckpt.step_dir(run_dir / "ckpt", int(resume_from))
        if not path.is_dir():
            have = [ckpt.step_of(p) for p in ckpt.list_checkpoints(run_dir / "ckpt")]
            raise FileNotFoundError(f"--resume-from {resume_from}: run {run_dir.name} has checkpoints at steps {have}")
        return ResumeTarget(run_dir.name, path, validate(path))
    found, skipped = _valid_newest_first(run_dir / "ckpt")
    for path, why in skipped:
        log.warning("--resume: skipping damaged checkpoint %s: %s", path, why)
    if found is None:
        reasons = "\n  ".join(f"{p.name}: {why}" for p, why in skipped)
        raise CheckpointInvalid(run_dir / "ckpt", "step_*", f"are all damaged, nothing to resume from:\n  {reasons}")
    return ResumeTarget(run_dir.name, found[0], found[1], skipped)


def check_config(target: ResumeTarget, cfg: HarmonicaConfig, kind: str, accept_change: bool) -> list[str]:
    """The differences between the checkpoint's and the requested result config; raises ResumeRefused
    when there are some and accept_change is False."""
    saved = saved_config(target.meta, kind)
    requested = result_config(cfg, kind)
    if saved is None:
        return []
    if "result_config" not in target.meta:
        requested = {k: v for k, v in requested.items() if k in saved}
    changes = config_changes(saved, requested)
    if changes and not accept_change:
        raise ResumeRefused(
            f"--resume: the requested config differs from the one checkpoint {target.path} was trained with:\n  "
            + "\n  ".join(changes)
            + "\nResuming with it would make the run's recorded params and config.yaml describe something "
            "else. Either start a new run (drop --resume), or pass --accept-config-change to continue this "
            "run with the change recorded as a tag and a new config.resume-<n>.yaml artifact "
            "(the original config.yaml and params stay as they were)."
        )
    return changes
