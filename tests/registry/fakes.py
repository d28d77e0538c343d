"""Fake-but-real MLflow runs for registry tests: training and evaluate runs with the tags, params,
metrics and artifacts the real stages write, pointing at copies of the tiny checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from harmonica.config import HarmonicaConfig, to_yaml
from harmonica.tracking.adapter import Tracker

CLEAN = {"harmonica.git_commit": "0123456789abcdef0123456789abcdef01234567", "harmonica.git_dirty": "false",
         "harmonica.source_hash": "feedfacecafebeef"}

# Explicit gates for tests that need a champion (absolute thresholds, no bound): tests never rely on
# projects/demo.yaml's gates, which a demo model is meant to be able to miss.
TEST_GATES = (
    "gates.max_wer.threshold=0.5", "gates.max_wer.relative_to=absolute", "gates.max_wer.bound=null",
    "gates.min_sim.threshold=0.5", "gates.min_sim.relative_to=absolute", "gates.min_sim.bound=null",
    "gates.max_failure_rate.threshold=0.2", "gates.max_failure_rate.relative_to=absolute",
    "gates.max_failure_rate.bound=null",
    "gates.champion_confidence=0",  # point estimates: these fake evaluate runs carry no per-utterance table
)

GOOD_METRICS: dict[str, float] = {
    "eval/wer": 0.20, "eval/cer": 0.10, "eval/sim": 0.80, "eval/fail/any": 0.05, "eval/fail/too_short": 0.0,
    "baseline/ground_truth/wer": 0.05, "baseline/ground_truth/cer": 0.02, "baseline/ground_truth/sim": 0.90,
    "baseline/ground_truth/fail/any": 0.0,
    "baseline/resynthesis/wer": 0.10, "baseline/resynthesis/cer": 0.05, "baseline/resynthesis/sim": 0.85,
    "baseline/resynthesis/fail/any": 0.02,
}


def copy_checkpoints(src: dict[str, Path], dst: Path) -> dict[str, Path]:
    out = {}
    for kind in ("ar", "nar"):
        target = dst / kind
        shutil.copytree(src[kind], target)
        out[kind] = target
    return out


class FakeStore:
    """Runs in the project's experiment of a workdir's SQLite store (or any tracking URI)."""

    def __init__(self, cfg: HarmonicaConfig, workdir: Path, tracking_uri: str | None = None) -> None:
        if tracking_uri:
            cfg = cfg.model_copy(deep=True)
            cfg.tracking.tracking_uri = tracking_uri
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.tracker = Tracker(cfg, self.workdir)
        self.client = self.tracker.client
        self.tracking_uri = self.tracker.tracking_uri
        self.experiment_id = self.tracker.experiment_id()

    def _run(self, name: str, tags: dict[str, str], params: dict[str, str] | None = None,
             metrics: dict[str, float] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name)
        rid = run.info.run_id
        self.client.log_batch(
            rid,
            tags=[RunTag(k, str(v)) for k, v in {"mlflow.runName": name, **tags}.items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            metrics=[Metric(k, float(v), 0, 0) for k, v in (metrics or {}).items()],
        )
        return rid

    def training_run(self, kind: str, *, dirty: str = "false", events: list[dict[str, Any]] | None = None,
                     total_steps: int = 1000, steps: int | None = None, write_events: bool = True,
                     collapse_tag: str | None = None, status: str = "FINISHED", project: str | None = None,
                     params: dict[str, str] | None = None, val_util: float | None = 0.5) -> str:
        """status other than FINISHED: a run killed at `steps` (its loss logged up to there, no
        harmonica.steps tag, as the train stage sets that only at the end)."""
        events = events or []
        last = steps if steps is not None else total_steps
        tags = {"harmonica.stage": f"train_{kind}", "harmonica.project": project or self.cfg.project,
                **CLEAN, "harmonica.git_dirty": dirty, "harmonica.config_hash": f"cfg-{kind}",
                "harmonica.collapse": collapse_tag or ("true" if events else "false")}
        if status == "FINISHED":
            tags["harmonica.steps"] = str(last)
        rid = self._run(f"train_{kind}", tags,
                        params={f"training.{kind}.total_steps": str(total_steps), **(params or {})})
        self.client.log_batch(rid, metrics=[Metric(f"{kind}/loss", 5.0, 0, 0), Metric(f"{kind}/loss", 3.0, 0, last)])
        if val_util is not None:  # validation utilisation of the checkpoints (at step 0: before any of them)
            self.client.log_batch(rid, metrics=[Metric(f"val/cb{1 if kind == 'nar' else 0}/util_pred", val_util, 0, 0)])
        full = [{"kind": "codebook", "name": f"{kind}/cb1", "value": 0.01, "floor": 0.1, "message": "collapse",
                 **{k: v for k, v in e.items() if k not in ("until", "history")}} for e in events]
        if write_events:
            self.client.log_text(rid, "".join(json.dumps(e) + "\n" for e in full), "collapse_events.jsonl")
        metrics = []
        for raw, e in zip(events, full, strict=True):
            if not raw.get("history", True):
                continue  # no utilisation metric logged: recovery cannot be shown
            key = f"{e['name']}/util_pred" if e["kind"] == "codebook" else f"{e['name']}_min"
            until = raw.get("until", e["step"])  # last collapsed step; recovered 10 steps later
            metrics += [Metric(key, 0.01, 0, e["step"]), Metric(key, 0.01, 0, until), Metric(key, 0.5, 0, until + 10)]
        if metrics:
            self.client.log_batch(rid, metrics=metrics)
        if status != "RUNNING":
            self.client.set_terminated(rid, status)
        return rid

    def evaluate_run(self, ar_run: str, nar_run: str, ckpts: dict[str, Path], *,
                     metrics: dict[str, float] | None = None, dirty: str = "false", weights: str = "ema",
                     status: str = "FINISHED", extra_tags: dict[str, str] | None = None,
                     table: list[dict[str, Any]] | None = None) -> str:
        steps = {k: json.loads((ckpts[k] / "meta.json").read_text())["step"] for k in ("ar", "nar")}
        tags = {"harmonica.stage": "evaluate", "harmonica.project": self.cfg.project, **CLEAN,
                "harmonica.git_dirty": dirty, "harmonica.ar_run_id": ar_run, "harmonica.nar_run_id": nar_run,
                "harmonica.ar_checkpoint": str(ckpts["ar"].resolve()),
                "harmonica.nar_checkpoint": str(ckpts["nar"].resolve()),
                "harmonica.ar_step": str(steps["ar"]), "harmonica.nar_step": str(steps["nar"]),
                "harmonica.weights": weights, "harmonica.config_hash": "cfg-eval", **(extra_tags or {})}
        rid = self._run("evaluate", tags, metrics=GOOD_METRICS if metrics is None else metrics)
        self.client.log_text(rid, to_yaml(self.cfg), "config.yaml")
        if table:  # the per-utterance table, in the format the evaluate stage logs it
            self.client.log_table(rid, data={k: [r.get(k) for r in table] for k in table[0]},
                                  artifact_file="eval_table.json")
        if status != "RUNNING":
            self.client.set_terminated(rid, status)
        return rid

    def candidate(self, ckpts: dict[str, Path], *, metrics: dict[str, float] | None = None,
                  train_dirty: str = "false", eval_dirty: str = "false",
                  ar_events: list[dict[str, Any]] | None = None, nar_events: list[dict[str, Any]] | None = None,
                  **eval_kw: Any) -> str:
        """AR + NAR training runs and an evaluate run of them -> the evaluate run id."""
        ar = self.training_run("ar", dirty=train_dirty, events=ar_events)
        nar = self.training_run("nar", dirty=train_dirty, events=nar_events)
        return self.evaluate_run(ar, nar, ckpts, metrics=metrics, dirty=eval_dirty, **eval_kw)


def with_metrics(**changes: float) -> dict[str, float]:
    """GOOD_METRICS with keys given as eval__wer=0.1 (double underscore = slash)."""
    out = dict(GOOD_METRICS)
    for key, value in changes.items():
        out[key.replace("__", "/")] = value
    return out
