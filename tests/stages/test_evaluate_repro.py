"""Reproducible verdicts: the same checkpoints evaluated in two processes, one of them next to a
CPU-burning process, give identical per-utterance tables, audio and decision; eval.num_seeds."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.registry.decision import champion_verdict
from harmonica.registry.gates import METRIC_GATES, metric_gate
from harmonica.reports.common import table_rows
from harmonica.stages.evaluate import run_evaluate
from tests.tiny import TINY, tiny_cfg


@pytest.fixture
def eval_workdir(tmp_path: Path, tiny_cache_workdir: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    return work


def _evaluate_in_process(workdir: Path, corpus: Path, ckpts: dict, cwd: Path) -> tuple[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "harmonica.cli", "evaluate", "--no-progress", "--workdir", str(workdir),
         "--ar", str(ckpts["ar"]), "--nar", str(ckpts["nar"]), f"data.corpus_dir={corpus}",
         "data.corpus_format=ljspeech", "eval.split=val", *TINY],
        cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"mlflow run\s+([0-9a-f]{32}) in '.*' \((.*)\)", proc.stdout)
    return found.group(1), found.group(2)


def _run_record(client: MlflowClient, run_id: str, tmp: Path) -> tuple[list[dict], dict, dict[str, bytes]]:
    local = Path(client.download_artifacts(run_id, "", str(tmp / run_id)))
    rows = table_rows(json.loads((local / "eval_table.json").read_text(encoding="utf-8")))
    audio = {p.name: p.read_bytes() for p in sorted((local / "audio").glob("*.wav"))}
    return rows, client.get_run(run_id).data, audio


def _decision(cfg, metrics: dict, rows: list[dict], champion_metrics: dict, champion_rows: list[dict]) -> tuple:
    gates = tuple((g.name, g.passed, g.reason) for g in (metric_gate(n, getattr(cfg.gates, n), metrics)
                                                       for n in METRIC_GATES))
    verdict = champion_verdict(metrics["eval/wer"], champion_metrics["eval/wer"], "1", cfg.gates, rows,
                               champion_rows, samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed)
    return gates, verdict


@pytest.mark.slow
def test_two_processes_idle_and_busy_give_identical_tables_and_decision(eval_workdir, tiny_corpus,
                                                                         tiny_checkpoints, tmp_path):
    quiet, uri = _evaluate_in_process(eval_workdir, tiny_corpus, tiny_checkpoints, tmp_path)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # the machine is busy now
    try:
        busy, _ = _evaluate_in_process(eval_workdir, tiny_corpus, tiny_checkpoints, tmp_path)
    finally:
        burner.kill()
        burner.wait()
    client = MlflowClient(uri)
    rows_a, data_a, audio_a = _run_record(client, quiet, tmp_path)
    rows_b, data_b, audio_b = _run_record(client, busy, tmp_path)
    assert rows_a == rows_b and len(rows_a) == 3
    assert audio_a == audio_b and audio_a
    assert len({r["seed"] for r in rows_a}) == 3  # one seed per utterance, from (eval.seed, id)
    timing = ("eval/throughput/",)  # wall-clock figures are the only thing a busy machine may change
    verdict_metrics = [{k: v for k, v in d.metrics.items() if not k.startswith(timing)} for d in (data_a, data_b)]
    assert verdict_metrics[0] == verdict_metrics[1] and "eval/wer_ci_high" in verdict_metrics[0]
    assert data_a.params["eval.threads"] == "1" and data_a.tags["harmonica.eval_threads"] == "1"
    cfg = tiny_cfg(tiny_corpus, "eval.split=val")
    # the decision each run would get against the same champion (the quiet run) is the same
    assert _decision(cfg, data_a.metrics, rows_a, data_a.metrics, rows_a) == \
        _decision(cfg, data_b.metrics, rows_b, data_a.metrics, rows_a)
    moved, reason = _decision(cfg, data_b.metrics, rows_b, data_a.metrics, rows_a)[1]
    assert not moved and "difference candidate - champion +0" in reason


@pytest.mark.slow
def test_num_seeds_decodes_every_utterance_several_times(eval_workdir, tiny_corpus, tiny_checkpoints):
    cfg = tiny_cfg(tiny_corpus, "eval.split=val", "eval.num_seeds=2", "eval.oracle=false", "eval.oracle_stages=[]",
                   "eval.decode.temperature=[1.0,1.0]")
    out = run_evaluate(cfg, eval_workdir, str(tiny_checkpoints["ar"]), str(tiny_checkpoints["nar"]), progress=False)
    rows, m = out.result.rows, out.result.metrics
    assert len(rows) == 6 and m["eval/utterances"] == 3 and m["eval/num_seeds"] == 2
    assert [r["seed_index"] for r in rows] == [0, 1] * 3 and len({r["seed"] for r in rows}) == 6
    assert [r["id"] for r in rows[::2]] == [r["id"] for r in rows[1::2]]
    # the baselines do not depend on the seed: scored once, the same in both rows
    assert all(a["resynthesis_wer"] == b["resynthesis_wer"] for a, b in zip(rows[::2], rows[1::2]))
    assert m["eval/wer_ci_low"] <= m["eval/wer"] <= m["eval/wer_ci_high"]
    # the seed-to-seed spread of the model's score is logged (and only the model's)
    assert m["eval/seeds/wer_min"] <= m["eval/wer"] <= m["eval/seeds/wer_max"]
    assert m["eval/seeds/wer_std"] >= 0 and "baseline/resynthesis/seeds/wer_min" not in m
    assert all(r["gain_db"] <= 0 for r in rows) and m["eval/peak_gain_db_mean"] <= 0
    assert {f"audio/{r['id']}_s1.wav" for r in rows[1::2]} == {r["audio"] for r in rows[1::2] if r["audio"]} or \
        not any(r["audio"] for r in rows[1::2])
