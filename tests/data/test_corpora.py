from collections import Counter

import pytest

from harmonica.config.schema import DataConfig
from harmonica.data.audio import AudioError, load_audio
from harmonica.data.corpora import (
    LJSPEECH_PROMPTS, VCTK_PROMPTS_PER_SPEAKER, CorpusError, prepare_corpus, prepare_demo,
    prepare_ljspeech, prepare_vctk,
)
from harmonica.data.manifest import SPLITS
from tests.factories import (
    FIXABLE, LOAD_REASON, RECIPE_REASON, make_ljspeech_corpus, make_vctk_corpus,
)

LJ_BAD = ["missing_audio", "corrupt_audio", "empty_text", "non_utf8_text", "other_sr", "stereo",
          "non_finite", "zero_length", "empty_file"]
VCTK_NEW_BAD = ["missing_audio", "corrupt_audio", "empty_text", "non_utf8_text", "other_sr",
                "stereo", "non_finite", "zero_length", "empty_file"]


def _check_bad_inputs(cm, corpus, target_sr=16000):
    """Each injected problem is a rejection with the right reason, a load-time AudioError, or
    (resample/downmix cases) a healthy utterance; nothing disappears."""
    rejected = {r.id: r for r in cm.rejected}
    utts = {u.id: u for u in cm.utterances}
    for kind, utt_id in corpus.bad.items():
        if kind in RECIPE_REASON:
            assert rejected[utt_id].reason == RECIPE_REASON[kind], kind
            assert utt_id not in utts
        elif kind in LOAD_REASON:
            with pytest.raises(AudioError) as e:
                load_audio(utts[utt_id].path, target_sr)
            assert e.value.reason == LOAD_REASON[kind]
        else:
            assert kind in FIXABLE
            wav = load_audio(utts[utt_id].path, target_sr)
            assert wav.ndim == 1 and abs(len(wav) / target_sr - utts[utt_id].duration) < 1e-3
    assert set(rejected) | set(utts) == set(corpus.ids)  # never silently dropped


def test_ljspeech(tmp_path):
    corpus = make_ljspeech_corpus(tmp_path, n=60)
    cm = prepare_ljspeech(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=3)
    counts = cm.split_counts()
    assert counts == {"train": 60 - 12 - LJSPEECH_PROMPTS, "val": 6, "eval": 6, "prompt": LJSPEECH_PROMPTS}
    assert not cm.rejected and cm.speakers == ["LJ"]
    u = cm.utterances[0]
    assert u.text == corpus.texts[u.id]  # normalized column wins
    assert u.sample_rate == 16000 and u.duration == pytest.approx(1.2, abs=1e-3)
    again = prepare_ljspeech(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=3)
    assert again.utterances == cm.utterances  # deterministic
    other = prepare_ljspeech(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=4)
    assert {u.id for u in other.by_split("eval")} != {u.id for u in cm.by_split("eval")}


def test_ljspeech_bad_inputs(tmp_path):
    corpus = make_ljspeech_corpus(tmp_path, n=20, bad=LJ_BAD)
    cm = prepare_ljspeech(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=0)
    _check_bad_inputs(cm, corpus)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_vctk(tmp_path, layout):
    spk = ["p225", "p226", "p227", "p228", "p229", "p230"]
    corpus = make_vctk_corpus(tmp_path, layout=layout, speakers=spk, n_sentences=20)
    cm = prepare_vctk(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=7)
    assert not cm.rejected
    assert cm.speakers == spk
    suffix = "_mic1.flac" if layout == "new" else ".wav"
    assert all(u.path.endswith(suffix) for u in cm.utterances)
    counts = cm.split_counts()
    assert counts["eval"] == 2 * len(spk)  # 10% of 20 sentence numbers, for every speaker
    assert counts["prompt"] == VCTK_PROMPTS_PER_SPEAKER * len(spk)
    assert counts["val"] == round(0.1 * (120 - 12 - 12))
    assert sum(counts.values()) == 120
    train_texts = {u.text for u in cm.by_split("train") + cm.by_split("val")}
    eval_texts = {u.text for u in cm.by_split("eval")}
    assert eval_texts and not eval_texts & train_texts
    eval_nums = {u.id.split("_")[1] for u in cm.by_split("eval")}
    assert len(eval_nums) == 2
    assert Counter(u.speaker for u in cm.by_split("prompt")) == dict.fromkeys(spk, 2)


def test_vctk_prefers_mic1_flac_and_held_out_speakers(tmp_path):
    corpus = make_vctk_corpus(tmp_path, layout="new", n_sentences=10)
    # An old-layout copy next to the new one must not win.
    old = corpus.root / "wav48" / "p225" / "p225_001.wav"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"garbage")
    cm = prepare_vctk(corpus.root, val_fraction=0.1, eval_fraction=0.2, eval_speakers=["p228"], seed=1)
    by_id = {u.id: u for u in cm.utterances}
    assert by_id["p225_001"].path.endswith("p225_001_mic1.flac")
    p228 = [u for u in cm.utterances if u.speaker == "p228"]
    assert {u.split for u in p228} == {"eval", "prompt"}
    unused = [r for r in cm.rejected if r.reason == "unused_held_out_speaker"]
    assert len(unused) == 10 - 2 - 2 and all(r.speaker == "p228" for r in unused)


@pytest.mark.parametrize("layout,bad", [("new", VCTK_NEW_BAD), ("old", LJ_BAD)])
def test_vctk_bad_inputs(tmp_path, layout, bad):
    corpus = make_vctk_corpus(tmp_path, layout=layout, n_sentences=12, bad=bad)
    cm = prepare_vctk(corpus.root, val_fraction=0.1, eval_fraction=0.1, seed=0)
    _check_bad_inputs(cm, corpus)


def test_vctk_orphan_audio(tmp_path):
    corpus = make_vctk_corpus(tmp_path, layout="old", n_sentences=4)
    (corpus.root / "txt" / "p226" / "p226_003.txt").unlink()
    cm = prepare_vctk(corpus.root, val_fraction=0.0, eval_fraction=0.0, seed=0)
    assert [(r.id, r.reason) for r in cm.rejected] == [("p226_003", "missing_transcript")]


def test_demo_bundled():
    cm = prepare_demo()
    assert not cm.rejected
    counts = cm.split_counts()
    assert counts == {"train": 160, "val": 12, "eval": 40, "prompt": 12}
    assert len(cm.speakers) >= 6
    train_texts = {u.text for u in cm.by_split("train")}
    eval_texts = {u.text for u in cm.by_split("eval")}
    assert len(eval_texts) == 20 and not eval_texts & train_texts
    assert not {u.text for u in cm.by_split("prompt")} & train_texts
    assert Counter(u.speaker for u in cm.by_split("prompt")) == dict.fromkeys(cm.speakers, 2)
    eval_speakers_per_text = Counter(u.text for u in cm.by_split("eval"))
    assert set(eval_speakers_per_text.values()) == {2}
    per_spk_train = Counter(u.speaker for u in cm.by_split("train"))
    assert min(per_spk_train.values()) >= 26
    assert all(u.sample_rate == 16000 and 1.0 < u.duration < 4.0 for u in cm.utterances)


def test_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_ljspeech(tmp_path / "nope")
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_vctk(tmp_path / "nope")
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_demo(tmp_path / "nope")
    with pytest.raises(CorpusError, match="metadata.csv"):
        prepare_ljspeech(tmp_path)
    with pytest.raises(CorpusError, match="wav48_silence_trimmed"):
        prepare_vctk(tmp_path)
    with pytest.raises(CorpusError, match="metadata.csv"):
        prepare_demo(tmp_path)
    with pytest.raises(CorpusError, match="unknown corpus format"):
        prepare_corpus("timit", tmp_path, DataConfig())
    with pytest.raises(CorpusError, match="no corpus_dir"):
        prepare_corpus("ljspeech", None, DataConfig(corpus_format="ljspeech"))


def test_prepare_corpus_dispatch(tmp_path):
    assert prepare_corpus("demo", None, DataConfig()).split_counts()["train"] == 160
    corpus = make_ljspeech_corpus(tmp_path, n=20)
    cfg = DataConfig(corpus_format="ljspeech", corpus_dir=str(corpus.root), val_fraction=0.1,
                     eval_fraction=0.2)
    cm = prepare_corpus(cfg.corpus_format, cfg.corpus_dir, cfg)
    assert cm.split_counts()["eval"] == 4 and set(cm.split_counts()) == set(SPLITS)
