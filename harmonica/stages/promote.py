"""`harmonica promote` and `harmonica registry ...`: stage runners for the CLI.

The evaluate run decides the project: its `harmonica.project` tag selects the config whose gates
(mlruns_config/gates.yaml layered with the project yaml and the CLI overrides) are applied. The
tracking URI is resolved like every other stage (MLFLOW_TRACKING_URI > tracking.tracking_uri >
sqlite:///<workdir>/mlflow.db).
"""

from __future__ import annotations

import os
from pathlib import Path

from harmonica.config import load_config
from harmonica.registry.promote import Decision, evaluation_project, promote
from harmonica.registry.pyfunc import MODEL_NAME
from harmonica.tracking.adapter import resolve_tracking_uri


def registry_uri(workdir: Path | str, project: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> str:
    cfg = load_config(project or "base", list(overrides))
    return resolve_tracking_uri(cfg.tracking, Path(workdir))


def run_promote(evaluation_run_id: str, workdir: Path | str, *, allow_dirty: bool = False,
                model_name: str = MODEL_NAME, project: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), extra_tags: dict[str, str] | None = None,
                allow_unfinished: bool = False, allow_mixed_pair: bool = False) -> Decision:
    """Resolve the store and the evaluate run's project config, then `promote`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # CLI output stays readable
    workdir = Path(workdir)
    uri = registry_uri(workdir, project, overrides)
    cfg = load_config(project or evaluation_project(uri, evaluation_run_id) or "demo", list(overrides))
    uri = resolve_tracking_uri(cfg.tracking, workdir)
    return promote(evaluation_run_id, tracking_uri=uri, workdir=workdir, allow_dirty=allow_dirty,
                   model_name=model_name, cfg=cfg, extra_tags=extra_tags, allow_unfinished=allow_unfinished,
                   allow_mixed_pair=allow_mixed_pair)
