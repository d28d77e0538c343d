"""The preprocess stage end to end: corpus -> quality -> codec -> cache -> MLflow run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.config import load_config
from harmonica.data.cache import find_cache, StaleCacheError
from harmonica.stages.preprocess import run_preprocess
from tests.factories import FIXABLE, LOAD_REASON, RECIPE_REASON, make_ljspeech_corpus

# small enough to fit and encode a dozen utterances in a couple of seconds
FAST = [
    "codec.n_q=2",
    "codec.codebook_size=16",
    "codec.kmeans_iters=3",
    "codec.griffin_lim_iters=2",
    "tracking.system_metrics=false",
    "data.quality.min_chars_per_sec=1",
    "data.quality.max_chars_per_sec=100",
]
BAD = ["missing_audio", "corrupt_audio", "empty_text", "non_utf8_text", "zero_length", "empty_file",
       "non_finite", "other_sr", "stereo"]


def _cfg(corpus: Path, *extra: str):
    return load_config("demo", [*FAST, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *extra])


def _harmonica(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harmonica.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_bad_inputs_are_reported_not_fatal_and_run_records_everything(tmp_path: Path, workdir: Path):
    corpus = make_ljspeech_corpus(tmp_path, n=30, bad=BAD)
    cfg = _cfg(corpus.root)
    out = run_preprocess(cfg, workdir, progress=False)
    res = out.result
    report = json.loads((res.quality_dir / "quality_report.json").read_text())
    reasons = {row["id"]: row["reasons"] for row in report["rows"]}
    for kind, reason in {**RECIPE_REASON, **LOAD_REASON}.items():
        assert reasons[corpus.bad[kind]] == [reason], kind
    for kind in FIXABLE:  # resampled / downmixed, then kept
        assert report_row(report, corpus.bad[kind])["status"] == "kept"
    blacklist = (res.quality_dir / "blacklist.txt").read_text().splitlines()
    assert len(blacklist) == res.counts["rejected"] == len(RECIPE_REASON) + len(LOAD_REASON)

    client = MlflowClient(out.tracking_uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["harmonica.cache_fingerprint"] == res.cache.fingerprint
    assert run.data.tags["harmonica.cache_reused"] == "false"
    assert run.data.tags["codec.pretrained"] == "true"  # mel_rvq fitted on the training split
    assert run.data.metrics["preprocess/quality/rejected"] == res.counts["rejected"]
    assert run.data.metrics["preprocess/quality/non_finite"] == 1
    assert run.data.params["codec.n_q"] == "2"
    [ds] = run.inputs.dataset_inputs
    assert ds.dataset.digest == res.cache.fingerprint
    artifacts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"config.yaml", "quality", "manifests", "cache"} <= artifacts
    quality = {Path(a.path).name for a in client.list_artifacts(out.run_id, "quality")}
    assert quality == {"quality_report.json", "quality_report.csv", "blacklist.txt"}

    # the cache itself: every kept utterance, codes within the codebook, the contract
    train = res.cache.load_split("train")
    text, codes, row = train.item(0)
    assert codes.shape[0] == 2 and int(codes.max()) < 16 and text[0] == 1 and text[-1] == 2
    assert res.cache.contract["n_q"] == 2 and res.cache.contract["max_audio_frames"] == 511


def report_row(report: dict, utt_id: str) -> dict:
    return next(r for r in report["rows"] if r["id"] == utt_id)


@pytest.mark.slow
def test_identical_rerun_reuses_and_codec_change_invalidates(tmp_path: Path, workdir: Path):
    corpus = make_ljspeech_corpus(tmp_path, n=10)
    first = run_preprocess(_cfg(corpus.root), workdir, progress=False).result
    again = run_preprocess(_cfg(corpus.root), workdir, progress=False)
    assert again.result.reused and again.result.cache.fingerprint == first.cache.fingerprint
    tags = MlflowClient(again.tracking_uri).get_run(again.run_id).data.tags
    assert tags["harmonica.cache_reused"] == "true"

    changed = run_preprocess(_cfg(corpus.root, "codec.codebook_size=8"), workdir, progress=False).result
    assert not changed.reused and changed.cache.fingerprint != first.cache.fingerprint
    assert changed.cache.directory != first.cache.directory

    # training-side lookup: the config's own cache is found, a config nobody built for is refused
    found, diff = find_cache(_cfg(corpus.root), workdir)
    assert found.fingerprint == first.cache.fingerprint and diff == []
    with pytest.raises(StaleCacheError, match="codec.n_q: cache has 2, config says 3"):
        find_cache(_cfg(corpus.root, "codec.n_q=3"), workdir)
    stale, diff = find_cache(_cfg(corpus.root, "codec.n_q=3"), workdir, allow_mismatch=True)
    assert diff and stale.directory.exists()
    assert stale.fingerprint == changed.cache.fingerprint  # the newest of the project's caches...
    # ...unless a checkpoint names the cache it was trained on (evaluate passes the NAR's)
    trained, diff = find_cache(_cfg(corpus.root, "codec.n_q=3"), workdir, allow_mismatch=True,
                               prefer=first.cache.fingerprint)
    assert trained.fingerprint == first.cache.fingerprint and diff


@pytest.mark.slow
def test_parallel_workers_give_the_same_cache(tmp_path: Path, workdir: Path):
    corpus = make_ljspeech_corpus(tmp_path, n=8)
    one = run_preprocess(_cfg(corpus.root), workdir / "a", progress=False).result
    two = run_preprocess(_cfg(corpus.root, "data.workers=2"), workdir / "b", progress=False).result
    assert one.cache.fingerprint == two.cache.fingerprint
    assert (one.cache.load_split("train").codes == two.cache.load_split("train").codes).all()


@pytest.mark.slow
def test_cli_preprocess_and_its_errors(tmp_path: Path, workdir: Path):
    corpus = make_ljspeech_corpus(tmp_path, n=8)
    ok = _harmonica("preprocess", "--project", "demo", "--corpus", str(corpus.root), "--format", "ljspeech",
                    "--workdir", str(workdir), "--no-progress", *FAST, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "fingerprint" in ok.stdout and "kept 8 / 8" in ok.stdout

    missing = _harmonica("preprocess", "--corpus", str(tmp_path / "nope"), "--format", "ljspeech",
                         "--workdir", str(workdir), cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr

    typo = _harmonica("preprocess", "--workdir", str(workdir), "codec.nq=4", cwd=tmp_path)
    assert typo.returncode != 0 and "did you mean 'codec.n_q'" in typo.stderr

    broken = make_ljspeech_corpus(tmp_path / "broken", n=3, bad=["missing_audio", "corrupt_audio", "empty_text"])
    none = _harmonica("preprocess", "--corpus", str(broken.root), "--format", "ljspeech",
                      "--workdir", str(workdir), "--no-progress", *FAST, cwd=tmp_path)
    assert none.returncode != 0 and "no usable" in none.stderr
    assert "Traceback" not in none.stderr


@pytest.mark.slow
def test_mlflow_run_preprocess_entry_point_on_the_demo_corpus(root: Path, workdir: Path):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        ["mlflow", "run", str(root), "-e", "preprocess", "--env-manager", "local",
         "--experiment-name", "harmonica/demo", "-P", "project=demo", "-P", f"workdir={workdir}",
         "-P", "overrides=data.corpus_format=demo text.frontend=chars codec.n_q=8 codec.codebook_size=256 "
         "codec.ladder_utterances=0 codec.kmeans_iters=4 codec.griffin_lim_iters=4"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harmonica/demo")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["harmonica.stage"] == "preprocess"
    assert run.data.params["codec.kmeans_iters"] == "4"
    assert run.data.metrics["preprocess/train/utterances"] == 160
    assert run.data.metrics["preprocess/quality/kept"] == 224
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["harmonica.cache_fingerprint"]


@pytest.mark.slow
def test_phoneme_frontend_ids_are_in_the_cache_key_and_contract(tmp_path: Path, workdir: Path):
    from harmonica.data.text import build_frontend

    corpus = make_ljspeech_corpus(tmp_path, n=10)
    chars = run_preprocess(_cfg(corpus.root, "text.frontend=chars"), workdir, progress=False).result
    cfg = _cfg(corpus.root, "text.frontend=phonemes")
    out = run_preprocess(cfg, workdir, progress=False)
    ph = out.result
    assert not ph.reused and ph.cache.directory != chars.cache.directory
    frontend = build_frontend(cfg.text)
    assert ph.cache.contract["text_vocab_hash"] == frontend.vocab_hash() != chars.cache.contract["text_vocab_hash"]
    assert ph.cache.contract["text_vocab_size"] == frontend.vocab_size
    assert ph.cache.meta["text"]["text.frontend"] == "phonemes"
    train = ph.cache.load_split("train")
    text, _, row = train.item(0)
    assert text.tolist() == frontend.encode(row["text"])  # phonemised once, at preprocess
    metrics = MlflowClient(out.tracking_uri).get_run(out.run_id).data.metrics
    assert metrics["preprocess/text/unknown_symbols"] == ph.cache.meta["text"]["unknown_symbols"] == 0
    found, _ = find_cache(cfg, workdir)
    assert found.directory == ph.cache.directory


@pytest.mark.slow
def test_demo_generated_corpus_is_synthesised_at_preprocess_and_keyed(workdir: Path):
    gen = ["data.corpus_format=demo_generated", "data.generated.sentences=20", "data.generated.eval_sentences=2",
           "data.generated.val_sentences=2", "data.generated.prompts_per_speaker=1",
           "data.generated.voices=[en-us+m3, en+f3]"]
    cfg = load_config("demo", [*FAST, *gen])
    res = run_preprocess(cfg, workdir, progress=False).result
    assert res.counts["kept"] == 22 and set(res.cache.splits()) == {"train", "val", "eval", "prompt"}
    assert len(list((workdir / "corpora").glob("demo_generated-*/wavs/*/*.flac"))) == 22
    assert find_cache(cfg, workdir)[0].directory == res.cache.directory
    # another generator setting is another corpus: the old cache must not be taken for it
    with pytest.raises(StaleCacheError, match="data.generated"):
        find_cache(load_config("demo", [*FAST, *gen, "data.generated.sentences=21"]), workdir)


@pytest.mark.slow
def test_per_stage_codebook_sizes_reach_the_contract(tmp_path: Path, workdir: Path):
    corpus = make_ljspeech_corpus(tmp_path, n=10)
    res = run_preprocess(_cfg(corpus.root, "codec.codebook_sizes=[16,4]"), workdir, progress=False).result
    assert res.cache.contract["codebook_size"] == 16 and res.cache.contract["codebook_sizes"] == [16, 4]
    codes = res.cache.load_split("train").codes
    assert int(codes[1].max()) < 4 and int(codes[0].max()) < 16


@pytest.mark.slow
def test_codec_ladder_is_logged_and_reused(tmp_path: Path, workdir: Path, monkeypatch):
    corpus = make_ljspeech_corpus(tmp_path, n=12)
    cfg = _cfg(corpus.root, "data.eval_fraction=0.2", "codec.ladder_utterances=2")
    out = run_preprocess(cfg, workdir, progress=False)
    client = MlflowClient(out.tracking_uri)
    metrics = client.get_run(out.run_id).data.metrics
    for level in ("ground_truth", "unquantized", "k1", "k2"):
        for m in ("wer", "cer"):
            assert 0.0 <= metrics[f"codec/ladder/{level}/{m}"], (level, m)
    assert "codec/ladder/k3/wer" not in metrics  # n_q = 2
    for level in ("ground_truth", "unquantized", "k1", "k2"):  # each level's 95% interval over the slice
        key = f"codec/ladder/{level}/wer"
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], level
    table = (Path(client.download_artifacts(out.run_id, "codec_ladder/codec_ladder.md"))).read_text()
    assert table.count("\n") == 2 + 4 and "| k2 |" in table and "| unquantized |" in table
    rows = json.loads(Path(client.download_artifacts(out.run_id, "codec_ladder/rows.json")).read_text())
    assert len(rows["data"]) == 2 * 4
    # a second preprocess reuses the cache and the stored ladder (same figures, no new ASR pass)
    again = run_preprocess(cfg, workdir, progress=False)
    m2 = MlflowClient(again.tracking_uri).get_run(again.run_id).data.metrics
    assert again.result.reused and m2["codec/ladder/k1/cer"] == metrics["codec/ladder/k1/cer"]
    assert m2["codec/ladder/time_sec"] == metrics["codec/ladder/time_sec"]
    assert m2["codec/ladder/k1/wer_ci_high"] == metrics["codec/ladder/k1/wer_ci_high"]
    # the slice size is not a token setting: same cache
    other = run_preprocess(_cfg(corpus.root, "data.eval_fraction=0.2"), workdir, progress=False)
    assert other.result.reused
    # a ladder stored by an older harmonica (no version, no unquantized level) is measured again
    stored = again.result.cache.directory / "codec_ladder.json"
    payload = json.loads(stored.read_text())
    del payload["settings"]["version"]
    payload["metrics"] = {k: v for k, v in payload["metrics"].items() if "/unquantized/" not in k}
    stored.write_text(json.dumps(payload))
    third = run_preprocess(cfg, workdir, progress=False)
    m3 = MlflowClient(third.tracking_uri).get_run(third.run_id).data.metrics
    assert "codec/ladder/unquantized/wer" in m3
    assert json.loads(stored.read_text())["settings"]["version"] >= 2
    # a stored ladder cut short (a kill mid-write by an older harmonica, a full disk) is measured again
    stored.write_text('{"settings": {"utter')
    fourth = run_preprocess(cfg, workdir, progress=False)
    assert "codec/ladder/unquantized/wer" in MlflowClient(fourth.tracking_uri).get_run(fourth.run_id).data.metrics
    assert "codec/ladder/unquantized/wer" in json.loads(stored.read_text())["metrics"]  # written whole again
    # decoded as evaluate decodes: another smoothing kernel (the demo's is [1, 2, 1]) is another ladder,
    # measured again and recorded
    calls: list = []
    from harmonica.codec import base

    smooth = base.smooth_frames
    monkeypatch.setattr(base, "smooth_frames", lambda x, k: calls.append(list(k)) or smooth(x, k))
    fifth = run_preprocess(_cfg(corpus.root, "data.eval_fraction=0.2", "codec.ladder_utterances=2",
                                "eval.decode.latent_smoothing=[1,6,1]"), workdir, progress=False)
    assert fifth.result.reused  # not a token setting
    assert json.loads(stored.read_text())["settings"]["latent_smoothing"] == [1, 6, 1]
    assert len(calls) == 2 * 3 and all(k == [1, 6, 1] for k in calls)  # 2 utterances: unquantized, k1, k2


def test_codec_ladder_skips_a_codec_without_trained_weights(tmp_path: Path):
    from harmonica.data.cache import TokenCache
    from harmonica.data.preprocess import PreprocessResult
    from harmonica.stages.preprocess import log_ladder

    class Tags:
        tags: dict = {}

        def set_tags(self, tags):
            self.tags.update(tags)

        def log_metrics(self, *a, **k):
            raise AssertionError("a random codec's ladder must not be logged")

    cache = TokenCache(tmp_path, {"codec": {"codec.pretrained": False}})
    run = Tags()
    log_ladder(run, load_config("demo", ["codec.ladder_utterances=4"]),
               PreprocessResult(cache, False, {}, tmp_path, tmp_path))
    assert run.tags["codec.ladder"].startswith("skipped: the codec has no trained weights")
