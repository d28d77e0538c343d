"""What each command prints when it is done: plain functions from a stage's outcome to lines of text.

Kept apart from the click wiring in cli.py so the wording is testable and a command stays a few lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harmonica.tracking import names


def where(run_id: str, experiment: str, tracking_uri: str, label: str = "mlflow run") -> str:
    return f"  {label:<13} {run_id} in '{experiment}' ({tracking_uri})"


def preprocess_summary(out: Any) -> list[str]:
    res = out.result
    c = res.cache.contract
    lines = ["", f"preprocess {'reused the cache' if res.reused else 'built a new cache'}: {res.cache.directory}",
             f"  fingerprint   {res.cache.fingerprint}",
             f"  codec         {c['codec_name']} n_q={c['n_q']} codebook={c['codebook_size']} "
             f"{c['frame_rate']:g} Hz pretrained={str(res.codec_pretrained).lower()}"]
    for split, stats in sorted(res.cache.meta["splits"].items()):
        lines.append(f"  {split:<6}        {stats['utterances']:>5} utterances {stats['seconds']:>8.1f} s")
    rejected = {k: v for k, v in res.counts.items() if k not in ("total", "kept", "rejected")}
    lines.append(f"  quality       kept {res.counts.get('kept', 0)} / {res.counts.get('total', 0)}; rejected: "
                 + (", ".join(f"{k}={v}" for k, v in rejected.items()) or "none"))
    lines.append(f"  mlflow run    {out.run_id} in experiment '{out.experiment}' ({out.tracking_uri})")
    return lines


def train_summary(kind: str, out: Any) -> list[str]:
    st, m = out.result.state, out.result.final_metrics
    lines = ["", f"train_{kind} finished: {st.step} steps ({st.stop_reason or 'completed'})"]
    for key in ("val_ema/loss", "val/loss", f"{kind}/util_pred_median", "val/util_pred_median"):
        if key in m:
            lines.append(f"  {key:<26} {m[key]:.4f}")
    lines += [f"  collapse events            {len(st.collapse_events)}",
              f"  best checkpoint            {out.result.best_checkpoint} (step {st.best_step})",
              f"  mlflow run                 {out.run_id} in '{out.experiment}' ({out.tracking_uri})"]
    return lines


def evaluate_summary(out: Any, weights: str) -> list[str]:
    from harmonica.evaluation.seeds import describe_by_seed
    from harmonica.reports.decomposition import columns, with_interval

    m = out.result.metrics
    seeds = int(m.get("eval/num_seeds", 1))
    lines = ["", f"evaluate: {int(m['eval/utterances'])} utterances{f' x {seeds} seeds' if seeds > 1 else ''} "
                 f"({weights} weights); peak ceiling attenuated {m['eval/peak_limited_rate']:.0%} of the outputs "
                 f"(mean gain {m['eval/peak_gain_db_mean']:+.2f} dB)"]
    cells = ("wer", "cer", "sim", "fail/any")  # value [95% bootstrap interval over utterances]
    rows = columns(m)
    w = max(30, *(len(label) + 1 for label, _ in rows))  # the labels line up however long the longest
    lines.append(f"  {'':<{w}}" + "".join(f"{c.upper().replace('FAIL/ANY', 'FAIL'):>22}" for c in cells))
    for label, prefix in rows:
        lines.append(f"  {label:<{w}}" + "".join(f"{with_interval(m, f'{prefix}/{c}') or '—':>22}" for c in cells))
    if spread := describe_by_seed(out.result.rows):
        lines.append(f"  model {spread}")
    lines.append(where(out.run_id, out.experiment, out.tracking_uri))
    return lines


def promote_summary(decision: Any) -> list[str]:
    run = f"; promote run {decision.promote_run_id}" if decision.promote_run_id else ""
    champion = f"v{decision.champion_version}" if decision.champion_version else "none"
    return ["", decision.text(),
            f"  registry      {decision.model_name} v{decision.version}, champion {champion}{run} "
            f"({decision.tracking_uri})"]


def pipeline_summary(out: Any, workdir: Path) -> list[str]:
    lines = ["", f"pipeline finished: parent run {out.parent_run_id} in '{out.experiment}'"]
    for step in out.steps:
        lines.append(f"  {step.name:<11} {'reused' if step.skipped else 'ran   '} run {step.run_id}")
    for d in out.decisions:
        lines += ["", d.text()]
    champion = next((d.champion_version for d in out.decisions if d.champion_version), None)
    lines += ["", "champion:     " + (f"harmonica-tts v{champion} (models:/harmonica-tts@champion)" if champion
                                     else "none yet"),
              f"report:       {out.report}   (logged as report/report.html on the evaluate and pipeline runs)"]
    if out.tracking_uri.startswith("sqlite:"):
        db = Path(workdir).resolve() / "mlflow.db"
        lines.append(f"look at it:   mlflow ui --backend-store-uri sqlite:///{db}   (http://127.0.0.1:5000)")
    else:
        lines.append(f"look at it:   {out.tracking_uri}")
    return lines


def sweep_summary(out: Any) -> list[str]:
    lines = ["", f"sweep '{out.study_name}' ({out.storage}): {out.counts}"]
    if out.best_trial is not None:
        lines.append(f"  best trial    #{out.best_trial} values {out.best_values} (feasible: {out.best_feasible}) "
                     f"run {out.best_run_id}")
    if out.beats_baseline is not None:
        lines.append(f"  vs baseline   best {'beats' if out.beats_baseline else 'does NOT beat'} trial "
                     f"{out.baseline_trial} (the project's config)")
    for dead, retry in out.retried:
        lines.append(f"  dead worker   trial {dead} failed (stale heartbeat), "
                     + (f"retried as trial {retry}" if retry is not None else "no retry left"))
    if out.best_config:
        lines.append(f"  best config   {out.best_config}")
    lines += [f"  note          {note}" for note in out.notes]
    lines.append(where(out.parent_run_id, out.experiment, out.tracking_uri))
    return lines


def registry_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'version':>7}  {'aliases':<20} {'decision':<14} {'gates':<26} {'primary':<16} {'code':<26} created"]
    for r in rows:
        gates = "pass" if r["gates_passed"] == "true" else f"FAIL {r['failing_gates']}"
        primary = f"{r['primary_metric'].split('/')[-1]}={r['primary_value'][:8]}"
        decision = r["decision"] + (f"->v{r['superseded_by']}" if r["superseded_by"] else "")
        lines.append(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {decision:<14} {gates:<26} "
                     f"{primary:<16} {r['code']:<26} {r['created']}")
    return lines


def registry_version(info: dict[str, Any]) -> list[str]:
    lines = [f"{info['name']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}  ({info['uri']})",
             f"  created {info['created']}  status {info['status']}  run {info['run_id']}", "",
             info["description"], ""]
    lines += [f"  {key:<34} {value}" for key, value in info["tags"].items()
              if not key.startswith("gate.") and key != names.DECISION_REASONS]
    return lines


def report_summary(run_id: str, paths: Any, tracking_uri: str) -> list[str]:
    lines = [f"report of run {run_id}" + (f" (baseline {paths.baseline_run_id})" if paths.baseline_run_id else ""),
             f"  markdown  {paths.markdown}", f"  html      {paths.html}"]
    if paths.logged:
        lines.append(f"  logged    runs:/{run_id}/report/ ({tracking_uri})")
    return lines
