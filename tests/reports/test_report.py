"""`harmonica report`: every section, config diff, curves, audio embedded, artifacts logged."""

import re

import pytest
from mlflow.tracking import MlflowClient

from harmonica.reports import SECTIONS, ReportError, build_report
from harmonica.reports.report import EMPTY_AUDIO, curve_groups
from tests.reports.store import DIFFERING_PARAM


def _sections(md: str, html: str) -> None:
    for title in SECTIONS:
        assert f"\n## {title}\n" in md, title
        assert f"<h2>{title}</h2>" in html, title


def _md_section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _html_section(html: str, title: str) -> str:
    return html.split(f"<h2>{title}</h2>", 1)[1].split("</section>", 1)[0]


@pytest.mark.slow
def test_training_run_report(report_store, tmp_path):
    s = report_store
    paths = build_report(s.nar_b, tracking_uri=s.tracking_uri, out_dir=tmp_path / "rep")
    md, html = paths.markdown.read_text(), paths.html.read_text()
    _sections(md, html)
    assert md.startswith("# Run report: nar-collapsing (train_nar)")

    # header: stage, project, status, description, code version (the test tree may be clean or dirty)
    overview = _md_section(md, "Overview")
    assert "| Stage | train_nar |" in overview and "| Project | demo |" in overview and "FINISHED" in overview
    assert "**Description:** NAR training on project 'demo'" in overview and "| Code version | git " in overview

    # config diff: the default baseline is the previous finished train_nar run; exactly one param differs
    assert paths.baseline_run_id == s.nar_a
    diff = _md_section(md, "Config diff")
    assert "nar-baseline" in diff and "1 of " in diff
    rows = [line for line in diff.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{DIFFERING_PARAM}` | 0.1 | 0.99 |"]

    # key curves: four plotly figures, plotly.js inlined exactly once, no images in the Markdown
    curves = _md_section(md, "Key curves")
    for heading in ("Loss", "Per-codebook predicted utilisation", "Attention entropy per layer (mean and min)",
                    "Gradient norms per group"):
        assert f"### {heading}" in curves
    for key in ("`nar/loss`", "`val/loss`", "`nar/cb1/util_pred`", "`nar/cb2/util_pred`",
                "`nar/attn_entropy/layer0`", "`nar/attn_entropy/layer0_min`", "`grad_norm/total`"):
        assert key in curves, key
    assert html.count("plotly.js v") == 1
    assert len(re.findall(r"Plotly\.newPlot\(", _html_section(html, "Key curves"))) == 4
    assert "![" not in md and "data:" not in md and "](report.html" in md

    best = _md_section(md, "Best checkpoint")
    assert "| metric | val_ema/loss (min) |" in best and "| step | 8 |" in best
    assert "| model | nar-ema-step0000008 |" in best and "| model reference | `models:/m-" in best
    assert "best first by val_ema/loss" in best and "| nar-ema-step0000004 | 4 |" in best

    # the evaluate run scored this run's checkpoint
    assert "evaluate-" in _md_section(md, "Eval summary")

    audio_md, audio_html = _md_section(md, "Audio samples"), _html_section(html, "Audio samples")
    assert "Latest samples (step 8" in audio_md and "(../samples/step_000008/" in audio_md
    assert "(../samples/reference/" in audio_md
    assert audio_html.count('<audio controls preload="metadata" src="data:audio/wav;base64,') >= 2

    collapse = _md_section(md, "Collapse events")
    assert "collapse event(s), first at step" in collapse and "| codebook |" in collapse
    assert "collapse floor 0.99" in _html_section(html, "Key curves")  # the monitor's floor on the util plot
    failures = _md_section(md, "Failure reasons")
    assert "collapse detected" in failures

    client = MlflowClient(s.tracking_uri)
    logged = {a.path: a.file_size for a in client.list_artifacts(s.nar_b, "report")}
    assert logged == {"report/report.md": paths.markdown.stat().st_size,
                      "report/report.html": paths.html.stat().st_size}


def test_evaluate_run_report(report_store, tmp_path):
    s = report_store
    paths = build_report(s.evaluate, tracking_uri=s.tracking_uri, out_dir=tmp_path / "rep")
    md, html = paths.markdown.read_text(), paths.html.read_text()
    _sections(md, html)
    assert paths.baseline_run_id is None
    assert "no baseline" in _md_section(md, "Config diff")
    assert "no training curves" in _md_section(md, "Key curves")
    assert html.count("plotly.js v") == 1

    best = _md_section(md, "Best checkpoint")
    assert "| NAR | " + s.nar_b in best

    ev = _md_section(md, "Eval summary")
    # the decomposition: ground truth | resynthesis | codebook 0 alone | gt codebook 0 + NAR | model
    assert ("| metric | ground truth | codec resynthesis | resynthesis, codebook 0 alone | "
            "gt codebook 0 + model NAR | model (AR + NAR) |") in ev
    assert "WER gap to the codec resynthesis" in ev and "= NAR " in ev and " + AR " in ev
    wer_row = next(line for line in ev.splitlines() if line.startswith("| WER |"))
    assert wer_row.count("[") == 5  # every source with its 95% bootstrap interval
    for label in ("| WER |", "| CER |", "| SIM |", "| fail rate (any) |", "| fail: looping |"):
        assert label in ev, label
    assert "### Worst 5 utterances" in ev
    worst = [line for line in ev.split("### Worst", 1)[1].splitlines() if line.startswith("| LJ")]
    assert 1 <= len(worst) <= 5
    for w in worst:  # every decoded utterance plays; an empty decode says so instead of a dead link
        assert ("[audio/" in w and "](../audio/" in w) or ("| (empty) |" in w and EMPTY_AUDIO in w), w
    ev_html = _html_section(html, "Eval summary")
    assert ev_html.count('src="data:audio/wav;base64,') == sum("](../audio/" in w for w in worst) >= 1
    assert "plots/eval_distributions.html" in ev

    assert "[audio/" in _md_section(md, "Audio samples")
    # collapse events of the trained NAR run it evaluated; the AR came from a checkpoint directory
    collapse = _md_section(md, "Collapse events")
    assert "training run nar-collapsing" in collapse and "| codebook |" in collapse
    assert "collapse events unknown for AR" in collapse
    failures = _md_section(md, "Failure reasons")
    assert "the evaluated training run nar-collapsing" in failures
    assert "no gate results" in failures
    client = MlflowClient(s.tracking_uri)
    assert {a.path for a in client.list_artifacts(s.evaluate, "report")} == {"report/report.md", "report/report.html"}


def test_explicit_baseline_and_no_logging(report_store, tmp_path):
    s = report_store
    paths = build_report(s.nar_a, tracking_uri=s.tracking_uri, baseline_run_id=s.nar_b, out_dir=tmp_path,
                         log_to_run=False)
    diff = _md_section(paths.markdown.read_text(), "Config diff")
    assert "given baseline" in diff and f"| `{DIFFERING_PARAM}` | 0.99 | 0.1 |" in diff
    assert not paths.logged
    assert not list(MlflowClient(s.tracking_uri).list_artifacts(s.nar_a, "report"))
    with pytest.raises(ReportError, match="baseline run 'f{32}' not found|not found"):
        build_report(s.nar_a, tracking_uri=s.tracking_uri, baseline_run_id="f" * 32, out_dir=tmp_path)
    # an evaluate run (named by its short id) against an evaluate baseline (also short): paired over the
    # same utterances, and every artifact of the run read under its full id
    paths = build_report(s.evaluate[:8], tracking_uri=s.tracking_uri, baseline_run_id=s.evaluate[:10],
                         out_dir=tmp_path / "ev", log_to_run=False)
    md = paths.markdown.read_text()
    assert paths.run_id == s.evaluate and "no per-utterance table" not in md and "no audio artifacts" not in md
    summary = _md_section(md, "Eval summary")
    assert "Against the baseline" in summary and "| eval/wer |" in summary and "+0.0000 [+0.0000, +0.0000] | ~ |" in summary


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory):
    """An empty store (one experiment) for hand-made runs; creating a sqlite store costs seconds."""
    root = tmp_path_factory.mktemp("bare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("harmonica/bare", artifact_location=(root / "mlartifacts").as_uri())
    return uri, client, exp


def test_a_run_without_data_renders_every_section(bare_store, tmp_path):
    uri, client, exp = bare_store
    run = client.create_run(exp, run_name="empty", tags={"harmonica.stage": "train_nar"})
    paths = build_report(run.info.run_id, tracking_uri=uri, out_dir=tmp_path / "rep")
    md, html = paths.markdown.read_text(), paths.html.read_text()
    _sections(md, html)
    assert "RUNNING" in _md_section(md, "Overview") and "no description" in _md_section(md, "Overview")
    assert "no baseline" in _md_section(md, "Config diff")
    assert "no training curves" in _md_section(md, "Key curves")
    assert "no best checkpoint recorded" in _md_section(md, "Best checkpoint")
    assert "no evaluation" in _md_section(md, "Eval summary")
    assert "no audio artifacts" in _md_section(md, "Audio samples")
    assert "no collapse events" in _md_section(md, "Collapse events")
    assert "run status RUNNING" in _md_section(md, "Failure reasons")
    assert "could not be built" not in md
    assert html.count("plotly.js v") == 1


def test_gate_results_and_stop_reasons(bare_store, tmp_path):
    uri, client, exp = bare_store
    run = client.create_run(exp, run_name="promote-x", tags={
        "harmonica.stage": "promote", "harmonica.decision": "candidate", "harmonica.gates_passed": "false",
        "harmonica.failing_gates": "max_wer", "harmonica.model_name": "harmonica-tts",
        "harmonica.model_version": "3",
        "gate.max_wer.value": "0.9", "gate.max_wer.threshold": "0.5", "gate.max_wer.passed": "false",
        "gate.max_wer.configured": "0.5 (absolute)", "gate.max_wer.reason": "WER 0.9 > 0.5",
        "gate.min_sim.value": "0.8", "gate.min_sim.threshold": "0.7", "gate.min_sim.passed": "true",
        "gate.min_sim.configured": "0.7 (absolute)", "gate.min_sim.reason": "ok",
    })
    client.set_terminated(run.info.run_id, "FAILED")
    paths = build_report(run.info.run_id, tracking_uri=uri, out_dir=tmp_path / "rep")
    failures = _md_section(paths.markdown.read_text(), "Failure reasons")
    assert "run status FAILED" in failures and "promotion gates failed (this run): max_wer" in failures
    assert "| max_wer | FAIL | 0.9 | 0.5 | 0.5 (absolute) | WER 0.9 > 0.5 |" in failures
    assert "| min_sim | PASS |" in failures
    assert "version 3" in _md_section(paths.markdown.read_text(), "Best checkpoint")

    train = client.create_run(exp, run_name="stopped", tags={
        "harmonica.stage": "train_nar", "harmonica.stop_reason": "collapse at step 40: ['nar/cb3/util_pred']"})
    client.log_metric(train.info.run_id, "instability/events", 2, step=30)
    client.log_text(train.info.run_id, '{"step": 30, "reason": "grad norm spike", "lr_reduced": true}\n',
                    "instability_events.jsonl")
    client.set_terminated(train.info.run_id)
    md = build_report(train.info.run_id, tracking_uri=uri, out_dir=tmp_path / "rep2").markdown.read_text()
    failures = _md_section(md, "Failure reasons")
    assert "stop reason: collapse at step 40" in failures
    assert "2 instability event(s) (skipped optimizer steps, LR reduced)" in failures
    assert "| 30 | grad norm spike | true |" in failures


def test_curve_groups_pick_the_key_metrics():
    groups = dict(curve_groups(["ar/loss", "val/loss", "ar/cb0/util_pred", "val/cb0/util_pred", "ar/cb10/util_pred",
                                "ar/cb2/util_pred", "grad_norm/total", "ar/attn_entropy/layer0_min", "lr/x"]))
    assert groups["Loss"] == ["ar/loss", "val/loss"]
    assert groups["Per-codebook predicted utilisation"] == ["ar/cb0/util_pred", "ar/cb2/util_pred", "ar/cb10/util_pred"]
    assert groups["Gradient norms per group"] == ["grad_norm/total"]
    assert list(groups) == ["Loss", "Per-codebook predicted utilisation", "Attention entropy per layer (mean and min)",
                            "Gradient norms per group"]


def test_unknown_run_is_a_clear_error(bare_store, tmp_path):
    uri, _, _ = bare_store
    with pytest.raises(ReportError, match="run '0{32}' not found"):
        build_report("0" * 32, tracking_uri=uri, out_dir=tmp_path)
