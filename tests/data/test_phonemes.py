import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmonica.config.schema import TextConfig
from harmonica.data import espeak
from harmonica.data.phonemes import INVENTORY, PhonemeFrontend, clause_mark
from harmonica.data.text import TextFrontend, build_frontend


def test_synthesis_is_deterministic_whatever_came_before():
    # libespeak-ng carries wave-generator state across utterances; each call must not see it
    a, sr = espeak.synthesize("Hello there, how are you?", "en-us+f3", rate=176, pitch=60)
    espeak.synthesize("Something else entirely, to disturb the state.", "en-us+m3")
    b, _ = espeak.synthesize("Hello there, how are you?", "en-us+f3", rate=176, pitch=60)
    assert sr == 22050 and a.dtype == np.float32
    assert 0.8 < len(a) / sr < 3.0 and 0.05 < np.abs(a).max() <= 1.0
    np.testing.assert_array_equal(a, b)
    c, _ = espeak.synthesize("Hello there, how are you?", "en+m1")
    assert len(c) != len(a) or not np.array_equal(c, a)  # the voice matters


def test_bad_voice_is_a_clear_error():
    with pytest.raises(espeak.EspeakError, match="voice"):
        espeak.synthesize("hi", "no-such-voice")


def test_phonemes_keep_word_and_clause_boundaries():
    f = build_frontend(TextConfig(frontend="phonemes"))
    assert isinstance(f, PhonemeFrontend)
    ipa = f.normalize("Hello there, how are you? I am fine.")
    assert ipa == "həlˈoʊ ðˈɛɹ, hˈaʊ ɑːɹ juː? aɪɐm fˈaɪn."
    ids, unknown = f.encode_counted("Hello there, how are you? I am fine.")
    assert unknown == 0 and ids[0] == f.bos_id and ids[-1] == f.eos_id
    assert len(ids) == len(ipa) + 2
    assert f.symbols[ids[1]] == "h" and f.symbols[ids[-2]] == "."
    # case reaches espeak: an acronym is spelled out
    assert f.normalize("the US army") != f.normalize("the us army")


def test_inventory_is_fixed_and_hashed():
    f = PhonemeFrontend(lowercase=False)
    assert f.symbols[:4] == ("<pad>", "<bos>", "<eos>", "<unk>") and f.symbols[4] == " "
    assert len(set(INVENTORY)) == len(INVENTORY) and f.vocab_size == 4 + len(INVENTORY)
    for sym in "ˈˌː,.?!ɪəðɹŋʃʒθᵻɾɚ":
        assert sym in INVENTORY
    assert f.vocab_hash() != TextFrontend().vocab_hash()
    assert f.vocab_hash() != PhonemeFrontend(lowercase=False, voice="en-gb").vocab_hash()
    assert f.vocab_hash() == PhonemeFrontend(lowercase=False).vocab_hash()


def test_unknown_symbols_are_counted():
    f = PhonemeFrontend(lowercase=False, voice="cmn")  # Mandarin output has tone letters
    ids, unknown = f.encode_counted("ni hao")
    assert unknown > 0 and ids.count(f.unk_id) == unknown


def test_clause_mark_drops_espeaks_lookahead_character():
    assert clause_mark("Hello there, h", last=False) == ","
    assert clause_mark("ow are you? I", last=False) == "?"
    assert clause_mark(" am fine.", last=True) == "."
    assert clause_mark("no mark at all", last=True) == ""


def test_missing_espeak_is_one_clear_error(tmp_path):
    # a process where espeakng_loader cannot be imported
    (tmp_path / "espeakng_loader.py").write_text("raise ImportError('simulated: not installed')\n")
    code = ("from harmonica.config.schema import TextConfig\n"
            "from harmonica.data.text import build_frontend\n"
            "build_frontend(TextConfig(frontend='phonemes')).encode('hello')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}", "PATH": ""},
                       cwd=str(tmp_path.parent))
    assert r.returncode != 0
    assert "EspeakError" in r.stderr and "pip install espeakng-loader==0.2.4" in r.stderr
