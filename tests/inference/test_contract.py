"""AR/NAR/codec compatibility: every kind of contract mismatch is refused by name."""

import copy
import json
import shutil
from pathlib import Path

import pytest

from harmonica.inference.synthesize import Synthesizer
from harmonica.models.contract import SHARED_FIELDS, IncompatibleModelsError, check_pair, require_compatible


def _contracts(tiny_checkpoints):
    ar = json.loads((tiny_checkpoints["ar"] / "meta.json").read_text())["contract"]
    nar = json.loads((tiny_checkpoints["nar"] / "meta.json").read_text())["contract"]
    return ar, nar


def test_a_matching_pair_passes(tiny_checkpoints):
    ar, nar = _contracts(tiny_checkpoints)
    assert check_pair(ar, nar, nar["codec_fingerprint"]) == []


@pytest.mark.parametrize("field", sorted(SHARED_FIELDS))
def test_each_shared_field_mismatch_is_named(field, tiny_checkpoints):
    ar, nar = _contracts(tiny_checkpoints)
    nar = copy.deepcopy(nar)
    nar[field] = "something-else"
    with pytest.raises(IncompatibleModelsError) as err:
        require_compatible(ar, nar)
    assert f"{field}: AR has" in str(err.value) and "same token cache" in str(err.value)


def test_swapped_kinds_nar_too_short_and_foreign_codec(tiny_checkpoints):
    ar, nar = _contracts(tiny_checkpoints)
    fields = {m.field for m in check_pair(nar, ar)}
    assert "kind" in fields
    short = {**nar, "max_seq_len": ar["max_seq_len"] - 10}
    [m] = check_pair(ar, short)
    assert m.field == "max_seq_len" and "accepts only" in m.why
    assert {m.field for m in check_pair(ar, nar, "0" * 64)} == {"codec_fingerprint"}


def test_synthesizer_refuses_before_loading_weights(tiny_checkpoints, tmp_path: Path):
    bad = tmp_path / "nar"
    shutil.copytree(tiny_checkpoints["nar"], bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["contract"]["text_vocab_hash"] = "deadbeef"
    (bad / "meta.json").write_text(json.dumps(meta))
    (bad / "ema.safetensors").write_bytes(b"not even safetensors")  # must never be read
    with pytest.raises(IncompatibleModelsError, match="text_vocab_hash"):
        Synthesizer(tiny_checkpoints["ar"], bad)


def test_guidance_on_an_ar_trained_without_text_dropout_warns(tiny_checkpoints, caplog):
    """The tiny AR trained without text dropout: guiding it works but says what is wrong with it."""
    from harmonica.config.schema import DecodeConfig

    with caplog.at_level("WARNING", logger="harmonica.inference.synthesize"):
        Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"])
    assert "text_guidance" not in caplog.text
    with caplog.at_level("WARNING", logger="harmonica.inference.synthesize"):
        Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"], decode=DecodeConfig(text_guidance=2.0))
    assert "trained without text dropout" in caplog.text
