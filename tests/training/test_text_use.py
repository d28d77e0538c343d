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
