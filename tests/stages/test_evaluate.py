"""`harmonica evaluate` on tiny checkpoints: metrics, baselines, table, audio, links, refusals."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.config.load import config_hash
from harmonica.data.cache import find_cache
from harmonica.evaluation.suite import EvalError, build_eval_slice
from harmonica.stages.evaluate import run_evaluate
from tests.tiny import TINY, tiny_cfg


@pytest.fixture
def eval_workdir(tmp_path: Path, tiny_cache_workdir: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    return work


@pytest.mark.slow
def test_evaluate_logs_metrics_baselines_table_audio_and_links(eval_workdir, tiny_corpus, tiny_checkpoints):
    cfg = tiny_cfg(tiny_corpus, "eval.split=val", "eval.oracle_teacher_forced=true")
    out = run_evaluate(cfg, eval_workdir, str(tiny_checkpoints["ar"]), str(tiny_checkpoints["nar"]), progress=False)
    m = out.result.metrics
    for prefix in ("eval", "baseline/ground_truth", "baseline/resynthesis"):
        for name in ("wer", "cer", "sim", "fail/any", "fail/silence", "fail/looping", "fail/noise", "fail/clipping",
                     "fail/too_long", "fail/too_short"):
            assert f"{prefix}/{name}" in m, f"{prefix}/{name}"
    assert m["eval/utterances"] == 3
    # the decomposition: ground-truth codebook 0 + the model's NAR, the AR's teacher-forced codebook 0 + the
    # NAR, and codebook 0 alone through the codec
    for prefix in ("oracle/gt_coarse", "oracle/tf_coarse", "oracle/resynthesis_k1"):
        for name in ("wer", "cer", "sim", "fail/any"):
            assert f"{prefix}/{name}" in m, f"{prefix}/{name}"
    # 95% bootstrap intervals over utterances around every headline number, baselines and oracles too
    assert m["eval/bootstrap_samples"] == cfg.eval.bootstrap_samples > 0
    for prefix in ("eval", "baseline/ground_truth", "baseline/resynthesis", "oracle/gt_coarse"):
        for name in ("wer", "cer", "fail/any"):
            lo, hi = m[f"{prefix}/{name}_ci_low"], m[f"{prefix}/{name}_ci_high"]
            assert lo <= m[f"{prefix}/{name}"] + 1e-9 and m[f"{prefix}/{name}"] <= hi + 1e-9, (prefix, name)
    # the synthetic tones are not speech: ground truth has no words either, but it is never silent
    assert m["baseline/ground_truth/fail/silence"] == 0.0
    client = MlflowClient(out.tracking_uri)
    run = client.get_run(out.run_id)
    assert run.data.tags["harmonica.stage"] == "evaluate"
    assert run.data.tags["harmonica.ar_run_id"] == "tiny-ar" and run.data.tags["harmonica.nar_run_id"] == "tiny-nar"
    assert run.data.tags["harmonica.weights"] == "ema"
    assert "eval/wer" in run.data.metrics and "baseline/resynthesis/sim" in run.data.metrics
    # where evaluate's time went, per part, within its wall time
    spent = {k.rsplit("/", 1)[1]: v for k, v in run.data.metrics.items() if k.startswith("eval/throughput/seconds/")}
    assert {"wall", "asr", "speaker", "prosody", "ar", "nar", "codec_decode", "codec_decode_baseline"} <= set(spent)
    assert all(v > 0 for v in spent.values()) and sum(v for k, v in spent.items() if k != "wall") <= spent["wall"]
    arts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"eval_table.json", "plots", "config.yaml"} <= arts
    rows = out.result.rows
    assert {"id", "text", "model_hypothesis", "model_wer", "model_sim", "model_fail_looping", "audio",
            "gt_coarse_wer", "gt_coarse_hypothesis", "resynthesis_k1_sim"} <= set(rows[0])
    assert len({r["id"] for r in rows}) == 3
    # evaluations of one pair with other eval settings are told apart in the runs list, or named
    steps = run.data.tags["harmonica.ar_step"], run.data.tags["harmonica.nar_step"]
    assert run.info.run_name == (f"evaluate-{cfg.project}-tiny-a@{steps[0]}-tiny-n@{steps[1]}-"
                                 f"{config_hash(cfg, ('eval',))[:6]}")
    sharper = tiny_cfg(tiny_corpus, "eval.split=val", "eval.max_utterances=1", "eval.decode.temperature=[0.3,0.0]")
    other = run_evaluate(sharper, eval_workdir, str(tiny_checkpoints["ar"]), str(tiny_checkpoints["nar"]),
                         progress=False)
    named = run_evaluate(sharper, eval_workdir, str(tiny_checkpoints["ar"]), str(tiny_checkpoints["nar"]),
                         progress=False, run_name="t03-window")
    assert client.get_run(other.run_id).info.run_name not in (run.info.run_name, "t03-window")
    assert client.get_run(named.run_id).info.run_name == "t03-window"


def test_empty_eval_slice_is_a_clear_error(tiny_corpus, tiny_cache_workdir):
    cfg = tiny_cfg(tiny_corpus)
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    with pytest.raises(EvalError, match="eval slice 'eval' .* is empty"):
        build_eval_slice(_without(cache, "eval"), cfg.eval, 10)


def _without(cache, split):
    class Stub:
        directory = cache.directory

        def splits(self):
            return [s for s in cache.splits() if s != split]

        def load_split(self, name):
            return cache.load_split(name)

    return Stub()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harmonica.cli", "evaluate", "--no-progress", *args, *TINY],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_refusals_name_the_fix(eval_workdir, tiny_corpus, tiny_checkpoints, tmp_path):
    corpus = [f"data.corpus_dir={tiny_corpus}", "data.corpus_format=ljspeech"]
    missing = _cli("--workdir", str(eval_workdir), "--ar", str(tmp_path / "none"), "--nar",
                   str(tiny_checkpoints["nar"]), *corpus, cwd=tmp_path)
    assert missing.returncode != 0 and "not a checkpoint reference" in missing.stderr
    swapped = _cli("--workdir", str(eval_workdir), "--ar", str(tiny_checkpoints["nar"]), "--nar",
                   str(tiny_checkpoints["ar"]), *corpus, cwd=tmp_path)
    assert swapped.returncode != 0 and "kind:" in swapped.stderr
    asr = _cli("--workdir", str(eval_workdir), "--ar", str(tiny_checkpoints["ar"]), "--nar",
               str(tiny_checkpoints["nar"]), *corpus, "eval.asr.model=Systran/faster-whisper-large-v3", cwd=tmp_path)
    assert asr.returncode != 0 and "eval.asr.model" in asr.stderr and "Traceback" not in asr.stderr
    no_gpu = subprocess.run([sys.executable, "-m", "harmonica.cli", "evaluate", "--no-progress", "--workdir",
                             str(eval_workdir), "--ar", str(tiny_checkpoints["ar"]), "--nar", str(tiny_checkpoints["nar"]),
                             *TINY, *corpus, "eval.device=cuda"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert no_gpu.returncode != 0 and "Traceback" not in no_gpu.stderr
    assert "eval.device=cuda but no CUDA device is visible; use eval.device=auto or cpu" in no_gpu.stderr


def test_no_progress_also_quiets_mlflows_download_bars(tiny_corpus, tmp_path, monkeypatch):
    """--no-progress (progress=False) or stderr not a terminal: fetching the checkpoints by run id prints no
    per-file bar; the setting is restored afterwards. With progress on a terminal, MLflow's default is left alone."""
    import harmonica.stages.evaluate as stage

    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    monkeypatch.delenv(key, raising=False)
    seen: list[str | None] = []

    class Stop(Exception):
        pass

    def fake_resolve(ref, tracking_uri, downloads):
        seen.append(os.environ.get(key))
        raise Stop

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(stage, "resolve_checkpoint", fake_resolve)
    for progress, stderr in ((False, Terminal()), (True, Terminal()), (True, io.StringIO())):
        monkeypatch.setattr(sys, "stderr", stderr)
        with pytest.raises(Stop):
            run_evaluate(tiny_cfg(tiny_corpus), tmp_path / "work", "86f861ff", "d4b690de", progress=progress)
    # bars only where harmonica draws its own: on a terminal without --no-progress (a log file gets lines)
    assert seen == ["false", None, "false"] and key not in os.environ
