import pytest
import torch

from harmonica.data.cache import find_cache
from harmonica.training.text_use import derangement, text_share, text_use_metrics
from harmonica.training.trainer import Trainer
from tests.models.tiny import CODEBOOK, TEXT_VOCAB, ar_model
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


def _batches(B: int = 4, L: int = 6, T: int = 8) -> list[dict]:
    """Audio that is a function of the text: item b says token (3b + t) % CODEBOOK at frame t."""
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, TEXT_VOCAB, (B, L), generator=g)
    text[:, 0] = torch.arange(B) + 3  # distinct texts
    audio = (3 * torch.arange(B)[:, None] + torch.arange(T)[None]) % CODEBOOK  # [B, T]
    return [{"text": text, "text_lens": torch.full((B,), L), "audio": audio, "audio_lens": torch.full((B,), T)}]


def test_derangement_moves_every_item() -> None:
    for n in (2, 3, 7):
        p = derangement(n)
        assert sorted(p.tolist()) == list(range(n)) and all(p[i] != i for i in range(n))
    with pytest.raises(ValueError):
        derangement(1)


def test_text_share_counts_valid_queries_only() -> None:
    probs = torch.zeros(1, 1, 3, 2)
    probs[0, 0, 0] = torch.tensor([0.5, 0.5])  # all mass on text
    probs[0, 0, 1] = torch.tensor([0.1, 0.1])
    probs[0, 0, 2] = torch.tensor([0.9, 0.0])  # padding query
    assert float(text_share(probs, torch.tensor([[True, True, False]]))) == pytest.approx(0.6)


def test_a_text_blind_model_has_no_text_gain_and_a_trained_one_has() -> None:
    batches = _batches()
    blind = ar_model()
    with torch.no_grad():  # identical hidden state for every text token: the text carries nothing
        blind.text_emb.weight.zero_()
        blind.text_pos.table.weight.zero_()
    m = text_use_metrics(blind, batches, "val", 0.2)
    assert m["val/text_gain"] == pytest.approx(0.0, abs=1e-5)
    assert 0 < m["val/attn_text_share"] < 1 and 0 < m["val/guided_attn"] < 1
    assert set(m) >= {"val/attn_text_share/layer0", "val/attn_text_share/layer1"}

    model = ar_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    b = batches[0]
    for _ in range(40):
        opt.zero_grad()
        model(b["text"], b["text_lens"], b["audio"], b["audio_lens"])[1].backward()
        opt.step()
    trained = text_use_metrics(model, batches, "val_ema", 0.2)
    # the first frames are only predictable from the text (later ones also from the audio so far)
    assert trained["val_ema/text_gain"] > 0.2
    assert model.training  # the mode is restored


def test_ar_validation_logs_text_use_and_can_select_on_it(tiny_corpus, tiny_cache_workdir, tmp_path) -> None:
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"), "training.ar.best_metric=val_ema/text_gain",
                   "training.ar.best_mode=max")
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    sink = RecordingSink()
    trainer = Trainer(cfg, "ar", cache, tmp_path / "ckpt", sink, device=torch.device("cpu"))
    trainer.fit()
    for prefix in ("val", "val_ema"):
        assert sorted(sink.metrics[f"{prefix}/text_gain"]) == [4, 8]
        assert all(0 < v < 1 for v in sink.metrics[f"{prefix}/attn_text_share"].values())
    gains = sink.metrics["val_ema/text_gain"]
    assert trainer.state.best_value == max(gains.values())
    assert trainer.state.best_step == max(gains, key=gains.get)


@pytest.mark.slow
def test_a_prompted_ar_trains_validates_samples_and_decodes_with_its_prompt(
        tiny_corpus, tiny_cache_workdir, tmp_path) -> None:
    """model.ar.speaker_condition=prompt end to end: batches carry the speaker's codebook-0 crop,
    the guided loss and the text-use metrics find the audio rows after the prompt, the samples and
    the saved checkpoint decode with a prompt, and without one the error says what to pass."""
    from harmonica.codec import load_codec
    from harmonica.config.schema import DecodeConfig
    from harmonica.inference.decode import decode_ar
    from harmonica.inference.synthesize import load_model

    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"), "model.ar.speaker_condition=prompt", "model.ar.prompt_frames=10",
                   "training.ar.guided_attention_weight=1.0", "training.ar.guided_attention_heads=1",
                   "training.ar.token_noise=0.2")
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    sink = RecordingSink()
    trainer = Trainer(cfg, "ar", cache, tmp_path / "ckpt", sink, device=torch.device("cpu"),
                      codec=load_codec(cfg.codec, cache.codec_dir))
    batch = next(iter(trainer.stream))
    assert batch["prompt"].dim() == 2 and batch["prompt"].size(0) == batch["audio"].size(0)
    assert int(batch["prompt_lens"].max()) <= 10
    result = trainer.fit()
    assert sorted(sink.metrics["val_ema/text_gain"]) == [4, 8]
    assert all(v > 0 for v in sink.metrics["ar/guided_attn"].values())
    # the guided head of each decoder block is reported apart and left out of the collapse floor's minimum
    rows = cfg.model.ar.text_layers + cfg.model.ar.n_layers
    guided = [i for i in range(rows) if f"ar/attn_entropy/layer{i}_guided" in sink.metrics]
    assert guided == list(range(cfg.model.ar.text_layers, rows))
    assert all(f"ar/attn_entropy/layer{i}_min" in sink.metrics for i in range(rows))  # 1 of the heads is guided
    assert list((tmp_path / "samples" / "step_000008").glob("*.wav"))
    model, meta = load_model(result.last_checkpoint, "ema")
    assert meta["contract"]["speaker_condition"] == "prompt" and meta["contract"]["prompt_frames"] == 10
    text, codes, _ = cache.load_split("val").item(0)
    tokens, facts = decode_ar(model, text, DecodeConfig(), 75.0, generator=torch.Generator().manual_seed(0),
                              prompt=codes[:, :10])
    assert tokens.dim() == 1 and facts["ar_frames"] == tokens.numel()
    with pytest.raises(ValueError, match="--prompt-wav"):
        decode_ar(model, text, DecodeConfig(), 75.0)
