import csv
import json

import numpy as np
import pytest

from harmonica.config.schema import QualityConfig
from harmonica.data.audio import load_audio, normalize, trim_silence
from harmonica.data.corpora import prepare_demo
from harmonica.data.manifest import Rejection
from harmonica.data.quality import (
    QualityReport, assess, chars_per_sec, clipping_ratio, estimate_snr_db, longest_silence_sec,
)
from tests.factories import tone

SR = 16000
CFG = QualityConfig()
TEXT = "The kettle is boiling in the kitchen."  # 37 chars: ~25 chars/s over a 1.5 s clip


@pytest.fixture(scope="module")
def demo_clean():
    cm = prepare_demo()
    utts = cm.utterances[::9]  # a spread over speakers and splits keeps the test fast
    return [(u, trim_silence(load_audio(u.path, SR), SR, -40.0)) for u in utts]


def test_quiet_on_clean_demo_speech(demo_clean):
    for u, wav in demo_clean:
        for x in (wav, normalize(wav, "peak", -1.0)):  # pipeline order and after normalization
            r = assess(x, SR, u.text, CFG, 0.5, 10.0)
            assert r.passed, (u.id, r.failed, r.metrics)
            assert r.metrics["snr_db"] > CFG.min_snr_db + 10


def test_long_internal_silence():
    speech = tone(SR, 1.0)
    wav = np.concatenate([speech, np.zeros(int(1.6 * SR), np.float32), speech])
    assert longest_silence_sec(wav, SR, -40.0) == pytest.approx(1.7, abs=0.05)  # + tone's own edges
    padded = np.concatenate([np.zeros(3 * SR, np.float32), speech, np.zeros(3 * SR, np.float32)])
    assert longest_silence_sec(padded, SR, -40.0) < 0.2  # leading/trailing silence ignored
    r = assess(wav, SR, TEXT + " " + TEXT, CFG, 0.5, 10.0)
    assert r.failed == ["long_silence"]


def test_clipping():
    wav = np.clip(tone(SR, 1.5) * 4, -1, 1)
    assert clipping_ratio(wav, 0.999) > 0.05
    assert clipping_ratio(tone(SR, 1.5), 0.999) == 0.0
    r = assess(wav, SR, TEXT, CFG, 0.5, 10.0)
    assert r.failed == ["clipping"]


def test_low_snr():
    rng = np.random.default_rng(0)
    clean = tone(SR, 1.5)
    assert estimate_snr_db(clean, SR) > 40
    noisy = clean + rng.normal(0, 0.1, clean.size).astype(np.float32)
    assert estimate_snr_db(noisy, SR) < CFG.min_snr_db
    r = assess(noisy, SR, TEXT, CFG, 0.5, 10.0)
    assert r.failed == ["low_snr"]


def test_text_rate_and_duration_checks():
    wav = tone(SR, 1.5)
    assert chars_per_sec("a  b", 1.0) == 3.0
    assert assess(wav, SR, TEXT, CFG, 0.5, 10.0).passed
    assert assess(wav, SR, TEXT * 3, CFG, 0.5, 10.0).failed == ["text_too_fast"]
    assert assess(wav, SR, "Hi.", CFG, 0.5, 10.0).failed == ["text_too_slow"]
    assert assess(wav, SR, "   ", CFG, 0.5, 10.0).failed == ["empty_text"]
    assert assess(wav, SR, TEXT, CFG, 2.0, 10.0).failed == ["too_short"]
    assert assess(wav, SR, TEXT, CFG, 0.1, 1.0).failed == ["too_long"]


def test_disabled_only_duration_and_empty_text():
    off = QualityConfig(enabled=False)
    bad = np.clip(tone(SR, 1.5) * 4, -1, 1)
    assert assess(bad, SR, "Hi.", off, 0.5, 10.0).passed
    assert assess(bad, SR, "", off, 2.0, 10.0).failed == ["empty_text", "too_short"]


def test_report_files(tmp_path):
    rep = QualityReport()
    rep.add_result("a", "s1", assess(tone(SR, 1.5), SR, TEXT, CFG, 0.5, 10.0))
    rep.add_result("b", "s1", assess(np.clip(tone(SR, 1.5) * 4, -1, 1), SR, "", CFG, 0.5, 10.0))
    rep.add_rejections([Rejection("c", "/x/c.wav", "missing_file", "gone", "s2"),
                        Rejection("d", "/x/d.wav", "non_utf8_text", "", "s2")])
    rep.add_rejection("e", "non_finite", speaker="s2", detail="NaN")
    counts = rep.counts()
    assert counts == {"total": 5, "kept": 1, "rejected": 4, "clipping": 1, "empty_text": 1,
                      "missing_file": 1, "non_finite": 1, "non_utf8_text": 1}
    paths = rep.write(tmp_path)
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["summary"] == counts and len(data["rows"]) == 5
    assert data["rows"][1]["reasons"] == ["empty_text", "clipping"]
    assert data["rows"][1]["metrics"]["chars_per_sec"] == 0.0
    with open(paths["csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["kept"] + ["rejected"] * 4
    assert "snr_db" in rows[0] and rows[2]["snr_db"] == ""
    lines = paths["blacklist"].read_text(encoding="utf-8").splitlines()
    assert lines == ["b\tempty_text,clipping", "c\tmissing_file", "d\tnon_utf8_text", "e\tnon_finite"]
    assert rep.kept_ids == ["a"]


def test_report_json_survives_infinite_metric(tmp_path):
    rep = QualityReport()
    rep.add_result("z", "s", assess(np.zeros(0, np.float32), SR, "text", CFG, 0.5, 10.0))
    paths = rep.write(tmp_path)
    row = json.loads(paths["json"].read_text())["rows"][0]
    assert row["metrics"]["chars_per_sec"] is None and "too_short" in row["reasons"]
