"""Case 6 (data side): the quality filter's rejects never reach the codec fit; an empty eval split warns."""

import shutil

import numpy as np

from harmonica.codec import build_codec
from harmonica.data.audio import write_audio
from harmonica.data.preprocess import _fit_codec, build_token_cache, load_manifests
from tests.factories import tone
from tests.tiny import tiny_cfg


def test_files_the_filter_rejects_are_not_used_to_fit_the_codec(tmp_path, tiny_corpus):
    corpus = shutil.copytree(tiny_corpus, tmp_path / "corpus")
    cfg = tiny_cfg(corpus, "data.max_duration=4")
    train = load_manifests(cfg, corpus).by_split("train")
    long_one = train[0]
    write_audio(long_one.path, np.tile(tone(16_000, 1.2), 6), 16_000)  # 7.2 s > max_duration
    manifests = load_manifests(cfg, corpus)  # re-scan: the manifest now knows its real duration
    train = manifests.by_split("train")
    used = _fit_codec(build_codec(cfg.codec), train, cfg, progress=False)
    assert used == len(train) - 1


def test_an_empty_eval_split_warns_at_preprocess(tmp_path, tiny_corpus, caplog):
    corpus = shutil.copytree(tiny_corpus, tmp_path / "corpus")
    cfg = tiny_cfg(corpus)
    evals = [u for u in load_manifests(cfg, corpus).utterances if u.split == "eval"]
    assert evals
    for utt in evals:  # silence: the quality filter rejects every eval utterance
        write_audio(utt.path, np.zeros(16_000 * 2, dtype=np.float32), 16_000)
    result = build_token_cache(cfg, tmp_path / "work", progress=False)
    assert "eval" not in result.cache.splits() and "train" in result.cache.splits()
    assert f"the eval split is empty ({len(evals)} eval utterances in the corpus" in caplog.text
