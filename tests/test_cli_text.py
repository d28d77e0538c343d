"""The console summaries the CLI prints after a stage."""

from types import SimpleNamespace

from harmonica.cli_text import evaluate_summary


def test_the_evaluate_table_lines_up_with_a_long_source_label() -> None:
    m = {"eval/utterances": 4, "eval/peak_limited_rate": 0.0, "eval/peak_gain_db_mean": 0.0}
    for prefix in ("eval", "baseline/ground_truth", "baseline/resynthesis", "oracle/gt_coarse", "oracle/tf_coarse"):
        m.update({f"{prefix}/wer": 0.5, f"{prefix}/cer": 0.25, f"{prefix}/sim": 0.75, f"{prefix}/fail/any": 0.0})
    out = SimpleNamespace(result=SimpleNamespace(metrics=m, rows=[]), run_id="r1", experiment="harmonica/demo",
                          tracking_uri="sqlite:///x.db")
    lines = evaluate_summary(out, "ema")
    table = [line for line in lines[2:] if line.startswith("  ") and "mlflow run" not in line]
    assert any("AR teacher-forced codebook 0 + NAR" in line for line in table) and len(table) == 6
    assert len({len(line) for line in table}) == 1  # every row as wide as the header: the columns line up
    assert all(line.rstrip().endswith("0") for line in table[1:])


def test_the_evaluate_summary_shows_the_model_score_of_each_seed() -> None:
    m = {"eval/utterances": 1, "eval/num_seeds": 2, "eval/peak_limited_rate": 0.0, "eval/peak_gain_db_mean": 0.0,
         "eval/wer": 0.25}
    rows = [{"id": "u", "seed_index": i, "text": "a b", "model_hypothesis": hyp, "model_cer": 0.0}
            for i, hyp in enumerate(("a b", "a c"))]
    out = SimpleNamespace(result=SimpleNamespace(metrics=m, rows=rows), run_id="r1", experiment="e",
                          tracking_uri="sqlite:///x.db")
    lines = evaluate_summary(out, "ema")
    assert "1 utterances x 2 seeds" in lines[1]
    assert "  model WER by decoding seed 0.000 / 0.500 (spread 0.500" in "\n".join(lines)
