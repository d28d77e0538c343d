import json

import pytest

from harmonica.data.manifest import (
    CorpusManifests, Rejection, Utterance, read_manifest, write_manifest,
)


def _utt(i: int, split: str = "train") -> Utterance:
    return Utterance(f"u{i}", "spk", f"Text {i} caf\u00e9", f"/x/u{i}.wav", 1.5 + i, 16000, split)


def test_roundtrip_and_exact_keys(tmp_path):
    utts = [_utt(0), _utt(1, "val")]
    path = write_manifest(tmp_path / "m.jsonl", utts)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    row = json.loads(lines[0])
    assert list(row) == ["id", "speaker", "text", "path", "duration", "sample_rate", "split"]
    assert "caf\u00e9" in lines[0]  # utf-8, not \u escapes
    assert read_manifest(path) == utts
    assert Utterance.from_dict(utts[1].to_dict()) == utts[1]


def test_bad_split_and_missing_key():
    with pytest.raises(ValueError):
        _utt(0, "test")
    with pytest.raises(ValueError, match="lacks keys"):
        Utterance.from_dict({"id": "x"})


def test_corpus_manifests_write(tmp_path):
    cm = CorpusManifests(
        [_utt(0), _utt(1, "val"), _utt(2, "eval"), _utt(3, "prompt"), _utt(4)],
        [Rejection("bad", "/x/bad.wav", "missing_file")],
    )
    assert [u.id for u in cm.by_split("train")] == ["u0", "u4"]
    paths = cm.write(tmp_path)
    assert set(paths) == {"train", "val", "eval", "prompt", "rejected"}
    assert paths["train"].name == "manifest_train.jsonl"
    assert len(read_manifest(paths["train"])) == 2
    rej = json.loads(paths["rejected"].read_text().splitlines()[0])
    assert rej["reason"] == "missing_file" and rej["id"] == "bad"
    back = CorpusManifests.read(tmp_path)
    assert sorted(back.utterances, key=lambda u: u.id) == cm.utterances
    assert back.rejected == cm.rejected
