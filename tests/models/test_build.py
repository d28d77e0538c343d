import pytest
import torch

from harmonica.config.schema import ARModelConfig, ModelConfig, NARModelConfig
from harmonica.models import ARModel, NARModel, build_model
from harmonica.models.layers import GROUP_NAMES
from tests.models.tiny import ar_model, nar_model

CONTRACT = {"text_vocab_size": 24, "codebook_size": 16, "n_q": 4, "max_text_len": 16, "max_audio_frames": 31}


def _tiny_section(cls):
    return cls(d_model=32, n_layers=1, n_heads=2, max_seq_len=32, text_layers=1)


def _assert_partition(model: torch.nn.Module) -> dict[str, int]:
    groups = model.param_groups()
    assert set(groups) <= set(GROUP_NAMES)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no group"
    return {g: len(ps) for g, ps in groups.items()}


def test_ar_param_groups_partition() -> None:
    m = ar_model()
    sizes = _assert_partition(m)
    assert set(sizes) == {"embeddings", "attention", "output_heads", "text_encoder"}
    assert _assert_partition(ar_model(text_layers=0)).keys() == {"embeddings", "attention", "output_heads"}
    heads = {id(p) for p in m.param_groups()["output_heads"]}
    assert id(m.head.weight) in heads and id(m.ln_f.weight) in heads


@pytest.mark.parametrize("mode", ["prompt", "embedding", "none"])
def test_nar_param_groups_partition(mode: str) -> None:
    m = nar_model(mode)
    sizes = _assert_partition(m)
    assert ("speaker_encoder" in sizes) == (mode != "none")
    attn = {id(p) for p in m.param_groups()["attention"]}
    assert id(m.blocks[0].ln1.proj.weight) in attn  # AdaLN modulation lives in the blocks


def test_build_model_from_section_or_model_config() -> None:
    ar = build_model("ar", _tiny_section(ARModelConfig), CONTRACT)
    nar = build_model("nar", ModelConfig(ar=_tiny_section(ARModelConfig), nar=_tiny_section(NARModelConfig)), CONTRACT)
    assert isinstance(ar, ARModel) and isinstance(nar, NARModel)
    c = ar.contract()
    assert c["stop_id"] == 16 and c["audio_bos_id"] == 17 and c["max_seq_len"] == 32 and c["max_audio_len"] == 31
    assert c["text_vocab_size"] == 24 and c["d_model"] == 32 and c["kind"] == "ar"
    c = nar.contract()
    assert c["n_q"] == 4 and c["speaker_condition"] == "prompt" and c["codebook_size"] == 16


def test_build_model_errors() -> None:
    with pytest.raises(KeyError, match="max_text_len"):
        build_model("ar", _tiny_section(ARModelConfig), {k: v for k, v in CONTRACT.items() if k != "max_text_len"})
    with pytest.raises(TypeError):
        build_model("nar", _tiny_section(ARModelConfig), CONTRACT)
    with pytest.raises(ValueError, match="max_seq_len"):
        build_model("ar", _tiny_section(ARModelConfig), dict(CONTRACT, max_audio_frames=32))
    with pytest.raises(ValueError, match="kind"):
        build_model("xl", _tiny_section(ARModelConfig), CONTRACT)  # type: ignore[arg-type]


def test_nar_needs_two_codebooks() -> None:
    with pytest.raises(ValueError, match="n_q >= 2"):
        NARModel(_tiny_section(NARModelConfig), text_vocab_size=8, codebook_size=4, n_q=1, max_text_len=8)


def test_sinusoidal_positions_build_and_run() -> None:
    m = ARModel(_tiny_section(ARModelConfig), text_vocab_size=24, codebook_size=16, max_text_len=16,
                pos_embedding="sinusoidal")
    logits, _, _ = m(torch.randint(3, 24, (1, 5)), torch.tensor([5]), torch.randint(0, 16, (1, 7)), torch.tensor([7]))
    assert logits.shape == (1, 8, 17)
    _assert_partition(m)
