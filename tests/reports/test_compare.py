"""`harmonica compare`: differing params shown, identical ones hidden, key metrics and tags."""

import pytest

from harmonica.reports import compare_runs, format_table
from harmonica.reports.common import ReportError, better_is_higher, fmt_num, key_metric_names
from harmonica.reports.paired import paired_rows, verdict
from tests.reports.store import DIFFERING_PARAM


@pytest.mark.slow
def test_compare_shows_the_differing_param_and_hides_identical_ones(report_store):
    s = report_store
    result = compare_runs([s.nar_a, s.nar_b], tracking_uri=s.tracking_uri)
    assert [k for k, _ in result.params] == [DIFFERING_PARAM]
    assert result.param(DIFFERING_PARAM) == ["0.1", "0.99"]
    assert result.identical_params > 100
    assert dict(result.tags)["stage"] == ["train_nar", "train_nar"]
    assert "ar run" not in dict(result.tags)  # only evaluate runs have what they scored
    key_metrics = {"nar/loss", "val/loss", "val_ema/loss", "nar/util_pred_median", "collapse/events"}
    assert key_metrics <= dict(result.metrics).keys()
    assert result.metric("collapse/events")[0] == 0 and result.metric("collapse/events")[1] > 0

    table = format_table(result)
    lines = table.splitlines()
    assert lines[1].split()[1:] == ["nar-baseline", "nar-collapsing"]
    row = next(line for line in lines if line.startswith(DIFFERING_PARAM))
    assert row.split() == [DIFFERING_PARAM, "0.1", "0.99"]
    n = result.identical_params
    assert f"params that differ (1 of {n + 1}; {n} identical hidden)" in table
    for hidden in ("training.nar.lr", "model.nar.d_model", "project "):
        assert hidden not in table
    collapse = next(line for line in lines if line.startswith("collapse/events")).split()
    assert collapse[1:3] == ["0", "*"]  # fewer events is better
    for tag in ("stage", "config_hash", "git_commit", "dirty"):
        assert any(line.startswith(tag + " ") for line in lines), tag


def test_compare_mixed_stages_and_truncation(report_store):
    s = report_store
    result = compare_runs([s.nar_b, s.evaluate], tracking_uri=s.tracking_uri)
    assert "eval.split" in dict(result.params)
    metrics = dict(result.metrics)
    assert metrics["eval/wer"][0] is None and metrics["eval/wer"][1] is not None
    assert "oracle/gt_coarse/wer" in metrics and "baseline/resynthesis/wer" in metrics
    # what the evaluate run scored (its AR and NAR runs) is shown; a training run has none
    assert dict(result.tags)["nar run"] == ["—", s.nar_b[:12]]
    assert dict(result.tags)["ar run"][0] == "—" and dict(result.tags)["ar run"][1] != "—"
    low, high = result.intervals["eval/wer"][1]
    assert result.intervals["eval/wer"][0] is None and low <= metrics["eval/wer"][1] <= high
    wide = format_table(result, col_width=40)
    assert any(line.startswith("eval/wer ") and f"[{fmt_num(low, 3)}, {fmt_num(high, 3)}]" in line
               for line in wide.splitlines())
    table = format_table(result, col_width=12)
    # a metric cell (value, interval, best mark) is never cut: the column widens to the widest (the "*" of
    # a 0.7328 [0.668, 0.798] * cell was cut to "…" at the default width, stop 33); a longer run name is
    cell = f"{fmt_num(metrics['eval/wer'][1])} [{fmt_num(low, 3)}, {fmt_num(high, 3)}]"
    sim_low, sim_high = result.intervals["eval/sim"][1]
    sim = f"{fmt_num(metrics['eval/sim'][1])} [{fmt_num(sim_low, 3)}, {fmt_num(sim_high, 3)}]"
    assert len(sim) > 12 and any(line.startswith("eval/sim ") and line.rstrip().endswith(sim)
                                 for line in table.splitlines())
    name = result.runs[1].name
    run_row = next(line for line in table.splitlines() if line.startswith("run "))
    shown = run_row.split()[-1]
    assert shown.endswith("…") and name.startswith(shown[:-1]) and len(shown) < len(name)
    assert any(line.startswith("eval/wer ") and line.rstrip().endswith(cell) for line in table.splitlines())
    assert max(len(line) for line in table.splitlines()) <= 48 + 2 * (len(sim) + 2)


def test_compare_takes_short_ids_and_names_and_pairs_evaluate_runs(report_store):
    """The 8 characters the logs print and a run's name name it; two evaluate runs on the same utterances
    get a paired difference (an evaluation against itself: exactly 0, within the noise)."""
    s = report_store
    result = compare_runs([s.nar_a[:8], "nar-collapsing"], tracking_uri=s.tracking_uri)
    assert [r.run_id for r in result.runs] == [s.nar_a, s.nar_b]
    assert result.paired == []  # training runs: nothing to pair
    with pytest.raises(ReportError, match="no run has that id, id prefix"):
        compare_runs([s.nar_a, "no-such-run"], tracking_uri=s.tracking_uri)
    same = compare_runs([s.evaluate, s.evaluate[:8]], tracking_uri=s.tracking_uri)
    paired = dict(same.paired)
    assert set(paired) == {"eval/wer", "eval/cer", "eval/sim", "eval/fail/any"}
    wer = paired["eval/wer"][1]
    assert paired["eval/wer"][0] is None and wer.utterances > 0
    assert (wer.difference, wer.low, wer.high, verdict(wer)) == (0.0, 0.0, 0.0, "~")
    table = format_table(same)
    assert "evaluate runs vs A, paired" in table
    assert any(line.startswith("B: eval/wer ") and line.rstrip().endswith(f"~ ({wer.utterances} utterances)")
               for line in table.splitlines())
    assert "scored other training runs" not in table  # one model against itself: decoding noise is all there is
    same.tags = [(label, [values[0], "another-run"]) if label == "ar run" else (label, values)
                 for label, values in same.tags]
    assert "(B scored other training runs than A: these intervals hold the decoding and ASR noise" in format_table(same)


def _rows(errors: list[int], ids: list[str], words: int = 4) -> list[dict]:
    """An evaluate table: utterance i has `errors[i]` substituted words out of `words`."""
    text = " ".join(["word"] * words)
    return [{"id": u, "text": text, "model_hypothesis": "", "model_wer": e / words, "model_cer": e / words,
             "model_sim": 0.8} for u, e in zip(ids, errors)]


def test_paired_rows_say_better_worse_or_within_the_noise() -> None:
    ids = [f"u{i}" for i in range(30)]
    reference = _rows([2] * 30, ids)
    worse = _rows([3] * 30, ids)  # one more error on every utterance
    mixed = _rows([1, 3] * 15, ids)  # as many better as worse
    elsewhere = _rows([0] * 30, [f"v{i}" for i in range(30)])  # no shared utterance
    rows = dict(paired_rows([reference, worse, mixed, elsewhere, None], samples=500))
    wer = rows["eval/wer"]
    assert wer[0] is None and wer[3] is None and wer[4] is None
    assert wer[1].difference == pytest.approx(0.25) and verdict(wer[1]) == "worse"
    assert wer[2].difference == pytest.approx(0.0) and wer[2].low < 0 < wer[2].high and verdict(wer[2]) == "~"
    better = dict(paired_rows([worse, reference], samples=500))["eval/wer"][1]
    assert better.difference == pytest.approx(-0.25) and verdict(better) == "better"
    assert verdict(dict(paired_rows([reference, worse], samples=500))["eval/sim"][1]) == "~"  # same SIM
    assert paired_rows([None, worse], samples=500) == []


def test_compare_needs_two_runs(report_store):
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([report_store.nar_a], tracking_uri=report_store.tracking_uri)


def test_key_metrics_show_what_the_models_read_with_the_right_direction() -> None:
    """An AR comparison shows its text gain, a NAR's its margin over the count table, with the
    free-running check's WER, in a fixed order."""
    have = ["eval/wer", "throughput/tokens_per_sec", "val/asr_wer", "val_ema/text_gain", "val_ema/loss",
            "ar/loss", "val_ema/ce_margin", "ar/cb0/ce"]
    assert key_metric_names(have) == ["ar/loss", "val_ema/loss", "val_ema/text_gain", "val_ema/ce_margin",
                                      "val/asr_wer", "eval/wer"]
    assert all(better_is_higher(m) for m in ("val_ema/text_gain", "val_ema/ce_margin"))
    assert not any(better_is_higher(m) for m in ("val/asr_wer", "val_ema/loss", "eval/wer"))


def test_the_cli_names_runs_as_the_logs_and_the_ui_do(report_store):
    """`harmonica report <8 characters>` writes outputs/reports/<full id>; `harmonica compare` takes names."""
    from click.testing import CliRunner

    from harmonica.cli import main

    s, wd = report_store, ["--workdir", str(report_store.workdir)]
    out = CliRunner().invoke(main, ["report", s.nar_a[:8], "--no-log", *wd])
    assert out.exit_code == 0, out.output
    assert (s.workdir / "outputs" / "reports" / s.nar_a / "report.md").is_file()
    out = CliRunner().invoke(main, ["compare", "nar-baseline", "nar-collapsing", *wd])
    assert out.exit_code == 0 and s.nar_a[:12] in out.output and s.nar_b[:12] in out.output, out.output
    out = CliRunner().invoke(main, ["report", "no-such-run", "--no-log", *wd])
    assert out.exit_code != 0 and "no run has that id, id prefix or name" in out.output


def test_evaluate_runs_of_different_checkpoints_show_what_trained_them(report_store, tmp_path):
    """Two evaluate runs that scored different NAR runs: the NAR runs' differing param gets its own
    section, and the evaluate runs' own training.* params (their project config, which trained nothing
    they scored) are counted, not shown as if they had. A scored run missing from the store shows "—"."""
    from mlflow.tracking import MlflowClient

    from harmonica.tracking import names

    s = report_store
    client = MlflowClient(s.tracking_uri)
    source = client.get_run(s.evaluate)
    twin = client.create_run(s.experiment_id, run_name="evaluate-of-nar-a",
                             tags={**{k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")},
                                   names.NAR_RUN_ID: s.nar_a})
    params = dict(source.data.params)
    params["training.nar.lr"] = "0.5"  # the evaluate's own config differs in a training knob only
    for key, value in params.items():
        client.log_param(twin.info.run_id, key, value)
    client.set_terminated(twin.info.run_id)
    try:
        result = compare_runs([s.evaluate, twin.info.run_id], tracking_uri=s.tracking_uri, paired_samples=0)
        assert dict(result.trained) == {"nar run": [(DIFFERING_PARAM, ["0.99", "0.1"])]}
        assert "training.nar.lr" not in dict(result.params) and result.evaluate_training_params > 0
        table = format_table(result)
        assert "params that differ between the nar runs scored (1)" in table
        row = next(line for line in table.splitlines() if line.startswith(DIFFERING_PARAM))
        assert row.split() == [DIFFERING_PARAM, "0.99", "0.1"]
        assert "training.* params of the evaluate runs' config hidden" in table
        client.set_tag(twin.info.run_id, names.NAR_RUN_ID, "0" * 32)  # a run not in this store
        gone = compare_runs([s.evaluate, twin.info.run_id], tracking_uri=s.tracking_uri, paired_samples=0)
        assert (DIFFERING_PARAM, ["0.99", None]) in dict(gone.trained)["nar run"]
    finally:
        client.delete_run(twin.info.run_id)


def test_what_trained_the_scored_runs_leaves_out_the_other_models_knobs():
    """An AR run's training.nar.* / model.nar.* params trained nothing it holds (a project's NAR settings
    changed between two AR runs showed up as a difference of the ARs); the shared and own knobs stay."""
    from types import SimpleNamespace

    from harmonica.reports.compare import _trained_differences
    from harmonica.tracking import names

    trained = {
        "ar1": {"training.ar.total_steps": "2800", "training.nar.muon_groups": "[a, t]", "model.nar.d_model": "128",
                "codec.n_q": "4", "training.ar.lr": "0.001"},
        "ar2": {"training.ar.total_steps": "2000", "training.nar.muon_groups": "[a]", "model.nar.d_model": "256",
                "codec.n_q": "8", "training.ar.lr": "0.001"},
    }
    reader = SimpleNamespace(resolve_run=lambda rid: SimpleNamespace(params=trained[rid]))
    runs = [SimpleNamespace(tags={names.AR_RUN_ID: rid, names.NAR_RUN_ID: "nar"}) for rid in ("ar1", "ar2")]
    assert _trained_differences(reader, runs) == [
        ("ar run", [("codec.n_q", ["4", "8"]), ("training.ar.total_steps", ["2800", "2000"])])]
