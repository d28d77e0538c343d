"""`harmonica promote` and `harmonica registry ...`: stage runners for the CLI and the pipeline.

The config is loaded once and the tracking URI resolved once (MLFLOW_TRACKING_URI >
tracking.tracking_uri > sqlite:///<workdir>/mlflow.db), then both travel as arguments. Given a
config (the pipeline's), nothing is loaded. Given a project, its config (mlruns_config/gates.yaml
layered with the project yaml and the overrides) is loaded. Given neither, the evaluate run decides:
its `harmonica.project` tag, read from the store the base config points at, selects the config whose
gates apply (the base config serves only to find the store).
"""

from __future__ import annotations

from pathlib import Path

from harmonica.config import HarmonicaConfig, load_config
from harmonica.registry.decision import Decision, PromotionRefused
from harmonica.registry.evidence import evaluate_run
from harmonica.registry.package import MODEL_NAME
from harmonica.registry.promote import promote
from harmonica.tracking.adapter import resolve_tracking_uri
from harmonica.tracking.read import TrackingReader, quiet_downloads


def registry_uri(workdir: Path | str, project: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> str:
    cfg = load_config(project or "base", list(overrides))
    return resolve_tracking_uri(cfg.tracking, Path(workdir))


def run_promote(evaluation_run_id: str, workdir: Path | str, *, cfg: HarmonicaConfig | None = None,
                project: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                allow_dirty: bool = False, allow_unfinished: bool = False, allow_mixed_pair: bool = False,
                model_name: str = MODEL_NAME, extra_tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, tracking_uri: str | None = None) -> Decision:
    """Resolve the config and the store once, then `promote` (cfg wins over project and overrides)."""
    workdir = Path(workdir)
    if cfg is None and project is None:
        uri = registry_uri(workdir, None, overrides)
        hint = " (check --workdir / MLFLOW_TRACKING_URI)"
        cfg = load_config(evaluate_run(TrackingReader(uri), evaluation_run_id, hint).project or "demo", list(overrides))
    else:
        cfg = cfg or load_config(project or "demo", list(overrides))
        uri = tracking_uri or resolve_tracking_uri(cfg.tracking, workdir)
    with quiet_downloads():  # command-line output stays readable
        return promote(evaluation_run_id, tracking_uri=uri, workdir=workdir, allow_dirty=allow_dirty,
                       model_name=model_name, cfg=cfg, extra_tags=extra_tags, allow_unfinished=allow_unfinished,
                       allow_mixed_pair=allow_mixed_pair, parent_run_id=parent_run_id)


def promote_step(cfg: HarmonicaConfig, evaluation_run_id: str, workdir: Path | str, *, tracking_uri: str,
                 parent_run_id: str, allow_dirty: bool = False, extra_tags: dict[str, str] | None = None) -> Decision:
    """The pipeline's promote step: a refusal is its decision (recorded on the promote run), not an error."""
    try:
        return run_promote(evaluation_run_id, workdir, cfg=cfg, allow_dirty=allow_dirty, extra_tags=extra_tags,
                           parent_run_id=parent_run_id, tracking_uri=tracking_uri)
    except PromotionRefused as exc:
        return exc.decision
