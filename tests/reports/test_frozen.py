"""The report and compare output of real tiny runs is the frozen one (tests/reports/frozen/): the
Markdown text and an outline of the HTML (tags, attributes, text; not plotly.js or base64 payloads)
after normalising run ids, times, durations, hashes and paths. See tests/reports/frozen.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.reports import build_report, compare_runs, format_table
from tests.reports.frozen import check, html_outline, normalise
from tests.tiny import run_tiny_pipeline

STAGES = ("pipeline", "preprocess", "train_ar", "train_nar", "evaluate", "promote")


def _report(name: str, run_id: str, uri: str, out: Path, ids: dict, paths: dict,
            baseline: str | None = None, tree: bool = True) -> list[str]:
    rep = build_report(run_id, tracking_uri=uri, baseline_run_id=baseline, out_dir=out / name, log_to_run=False)
    md = check(f"{name}.md", normalise(rep.markdown.read_text(encoding="utf-8"), ids, paths, tree))
    outline = check(f"{name}.html.txt", html_outline(rep.html.read_text(encoding="utf-8"), ids, paths, tree))
    return [d for d in (md, outline) if d]


def _compare(name: str, run_ids: list[str], uri: str, ids: dict, paths: dict, **kw) -> list[str]:
    diff = check(f"{name}.txt", normalise(format_table(compare_runs(run_ids, tracking_uri=uri), **kw), ids, paths))
    return [diff] if diff else []


def _same(diffs: list[str]) -> None:
    assert not diffs, "\n".join(diffs)


@pytest.fixture
def paths(tmp_path_factory, tiny_corpus) -> dict[str, str]:
    return {str(tiny_corpus): "corpus", str(tmp_path_factory.getbasetemp()): "tmp"}


@pytest.mark.slow
def test_report_store_reports_are_the_frozen_ones(report_store, tmp_path, paths):
    s = report_store
    ids = {s.nar_a: "nar_a", s.nar_b: "nar_b", s.evaluate: "evaluate"}
    _same([*_report("store_train_nar_b", s.nar_b, s.tracking_uri, tmp_path, ids, paths),  # baseline: nar_a
           *_report("store_train_nar_a_vs_b", s.nar_a, s.tracking_uri, tmp_path, ids, paths, baseline=s.nar_b),
           *_report("store_evaluate", s.evaluate, s.tracking_uri, tmp_path, ids, paths),
           *_compare("compare_nar_a_nar_b", [s.nar_a, s.nar_b], s.tracking_uri, ids, paths),
           *_compare("compare_nar_b_evaluate", [s.nar_b, s.evaluate], s.tracking_uri, ids, paths, col_width=40)])


@pytest.mark.slow
def test_hand_made_runs_reports_are_the_frozen_ones(tmp_path, paths):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("harmonica/bare", artifact_location=(tmp_path / "mlartifacts").as_uri())
    paths = {**paths, str(tmp_path): "store"}
    empty = client.create_run(exp, run_name="empty", tags={"harmonica.stage": "train_nar"}).info.run_id
    promote = client.create_run(exp, run_name="promote-x", tags={
        "harmonica.stage": "promote", "harmonica.decision": "refused", "harmonica.gates_passed": "false",
        "harmonica.failing_gates": "max_wer", "harmonica.model_name": "harmonica-tts",
        "harmonica.model_version": "3", "mlflow.note.content": "refused: WER 0.9 > 0.5 | see gates",
        "harmonica.git_dirty": "false",
        "gate.max_wer.value": "0.9", "gate.max_wer.threshold": "0.5", "gate.max_wer.passed": "false",
        "gate.max_wer.configured": "0.5 (absolute)", "gate.max_wer.reason": "WER 0.9 > 0.5",
        "gate.min_sim.value": "0.8", "gate.min_sim.threshold": "0.7", "gate.min_sim.passed": "true",
        "gate.min_sim.configured": "0.7 (absolute)", "gate.min_sim.reason": "ok",
        "gate.max_cer.skipped": "true", "gate.max_cer.reason": "not configured",
    }).info.run_id
    client.set_terminated(promote, "FAILED")
    train = client.create_run(exp, run_name="stopped", tags={
        "harmonica.stage": "train_nar", "harmonica.stop_reason": "collapse at step 40: ['nar/cb3/util_pred']",
        "harmonica.early_stop": "patience", "harmonica.cache_mismatch": "true",
        "harmonica.cache_mismatch_fields": "codec.n_q", "harmonica.git_dirty": "true",
        "harmonica.git_commit": "0123456789abcdef", "harmonica.source_hash": "feedbeef"}).info.run_id
    client.log_metric(train, "instability/events", 2, step=30)
    client.log_text(train, '{"step": 30, "reason": "grad norm | spike", "lr_reduced": true}\nnot json\n',
                    "instability_events.jsonl")
    client.set_terminated(train)
    ids = {empty: "empty", promote: "promote", train: "stopped"}
    _same([d for name, run_id in (("bare_empty", empty), ("bare_promote", promote), ("bare_stopped", train))
           for d in _report(name, run_id, uri, tmp_path / "rep", ids, paths, tree=False)])


@pytest.mark.slow
def test_pipeline_reports_are_the_frozen_ones(tmp_path, tiny_corpus, tiny_cache_workdir, paths):
    """Every run kind of a tiny pipeline with its promote step (a real registered version)."""
    work = tmp_path / "work"
    run_tiny_pipeline(work, tiny_corpus, tiny_cache_workdir)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            runs[run.data.tags["harmonica.stage"]] = run.info.run_id
    assert set(runs) == set(STAGES)
    ids = {rid: stage for stage, rid in runs.items()}
    _same([*(d for stage in STAGES for d in _report(f"pipeline_{stage}", runs[stage], uri, tmp_path / "rep", ids,
                                                    paths)),
           *_compare("compare_pipeline_train_eval", [runs["train_ar"], runs["train_nar"], runs["evaluate"]], uri,
                     ids, paths)])
