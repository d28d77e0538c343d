import pytest
import torch
import torch.nn.functional as F

from harmonica.models import ARModel
from harmonica.models.ar import prefix_lm_mask
from tests.models.tiny import CODEBOOK, ar_model, batch, reference_greedy


def _ar_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b = batch(seed=seed)
    return b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"]


def test_forward_shapes_targets_and_loss_equal_manual_ce() -> None:
    m = ar_model()
    text, tl, audio, al = _ar_inputs()
    logits, loss, aux = m(text, tl, audio, al)
    B, T = audio.shape
    assert logits.shape == (B, T + 1, CODEBOOK + 1)
    assert aux["targets"].shape == aux["mask"].shape == aux["inputs"].shape == (B, T + 1)
    for b in range(B):
        n = int(al[b])
        assert aux["targets"][b, :n].tolist() == audio[b, :n].tolist()
        assert int(aux["targets"][b, n]) == m.stop_id
        assert aux["inputs"][b, 0] == m.bos_id and aux["inputs"][b, 1 : n + 1].tolist() == audio[b, :n].tolist()
        assert aux["mask"][b].sum() == n + 1 and aux["input_mask"][b].sum() == n
    manual = F.cross_entropy(logits[aux["mask"]], aux["targets"][aux["mask"]])
    torch.testing.assert_close(loss, manual)


def test_prefix_lm_mask_structure() -> None:
    allowed = prefix_lm_mask(torch.tensor([[True, True, False]]), torch.tensor([[True, True, True]]))[0, 0]
    exp = torch.tensor([
        [1, 1, 0, 0, 0, 0],  # text sees valid text only
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],  # (padding query: unused)
        [1, 1, 0, 1, 0, 0],  # audio sees all valid text + audio causally
        [1, 1, 0, 1, 1, 0],
        [1, 1, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, exp)


def test_causality_later_audio_does_not_change_earlier_logits() -> None:
    m = ar_model()
    text, tl, audio, al = _ar_inputs()
    j = 5
    audio2 = audio.clone()
    audio2[:, j:] = (audio2[:, j:] + 3) % CODEBOOK
    l1, _, _ = m(text, tl, audio, al)
    l2, _, _ = m(text, tl, audio2, al)
    # input position j+1 holds a_j: logits 0..j only see inputs 0..j
    torch.testing.assert_close(l1[:, : j + 1], l2[:, : j + 1], atol=1e-6, rtol=0)
    assert (l1[0, j + 1 :] - l2[0, j + 1 :]).abs().max() > 1e-4


def test_padding_invariance() -> None:
    m = ar_model()
    text, tl, audio, al = _ar_inputs()
    logits, _, aux = m(text, tl, audio, al)
    for b in range(text.size(0)):
        L, n = int(tl[b]), int(al[b])
        single, _, _ = m(text[b : b + 1, :L], tl[b : b + 1], audio[b : b + 1, :n], al[b : b + 1])
        torch.testing.assert_close(logits[b : b + 1, : n + 1], single, atol=1e-5, rtol=1e-5)


def test_input_override_and_collect_attn() -> None:
    m = ar_model(text_layers=2, n_layers=3)
    text, tl, audio, al = _ar_inputs()
    base, loss, aux = m(text, tl, audio, al)
    same, loss2, aux2 = m(text, tl, audio, al, input_override=aux["inputs"], collect_attn=True)
    torch.testing.assert_close(base, same, atol=1e-5, rtol=1e-5)
    assert aux2["attn_entropy"].shape == (5, 4)  # text_layers + n_layers, n_heads
    assert torch.isfinite(aux2["attn_entropy"]).all() and (aux2["attn_entropy"] >= 0).all()
    noisy = aux["inputs"].clone()
    noisy[:, 2] = (noisy[:, 2] + 1) % CODEBOOK
    changed, _, aux3 = m(text, tl, audio, al, input_override=noisy)
    torch.testing.assert_close(base[:, :2], changed[:, :2], atol=1e-6, rtol=0)
    assert (base[:, 2:] - changed[:, 2:]).abs().max() > 1e-4
    assert torch.equal(aux3["targets"], aux["targets"])  # targets stay the gold tokens
    with pytest.raises(ValueError, match=r"\[B, T\+1\]"):
        m(text, tl, audio, al, input_override=aux["inputs"][:, 1:])
    pred = m.predicted_inputs(base)
    assert pred.shape == aux["inputs"].shape and (pred[:, 0] == m.bos_id).all()


def test_max_seq_len_1024_edge() -> None:
    """RCA regression: a stop token appended to 1024 frames made 1025 positions vs a 1024 table."""
    m = ar_model(d_model=16, n_layers=1, n_heads=2, text_layers=0, max_seq_len=1024)
    text, tl = torch.randint(3, 20, (1, 5)), torch.tensor([5])
    audio = torch.randint(0, CODEBOOK, (1, 1023))
    logits, loss, _ = m(text, tl, audio, torch.tensor([1023]))
    assert logits.shape == (1, 1024, CODEBOOK + 1) and torch.isfinite(loss)
    too_long = torch.randint(0, CODEBOOK, (1, 1024))
    with pytest.raises(ValueError, match="at most max_seq_len - 1 = 1023"):
        m(text, tl, too_long, torch.tensor([1024]))
    capped = ARModel.cap_audio(too_long, 1024)
    assert capped.shape == (1, 1023)
    assert m(text, tl, capped, torch.tensor([1023]).clamp(max=1023))[0].shape[1] == 1024


def _suppress_stop(m: ARModel, value: float) -> None:
    with torch.no_grad():
        m.head.bias[m.stop_id] = value


def test_generation_never_exceeds_max_seq_len_minus_one() -> None:
    m = ar_model(d_model=16, n_layers=1, n_heads=2, text_layers=0, max_seq_len=1024)
    _suppress_stop(m, -1e4)
    text, tl = torch.randint(3, 20, (2, 5)), torch.tensor([5, 4])
    prefix = torch.randint(0, CODEBOOK, (2, 1005))
    out = m.generate(text, tl, prefix=prefix, prefix_lens=torch.tensor([1005, 1000]), max_new_tokens=500,
                     temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert [len(o) for o in out] == [18, 23]  # prefix + new == 1023 == max_seq_len - 1
    full = m.generate(text[:1], tl[:1], prefix=torch.randint(0, CODEBOOK, (1, 1023)), max_new_tokens=10)
    assert [len(o) for o in full] == [0]  # the prefix already fills the audio budget
    with pytest.raises(ValueError, match="max_seq_len - 1"):
        m.generate(text[:1], tl[:1], prefix=torch.randint(0, CODEBOOK, (1, 1024)), max_new_tokens=10)


def test_generate_respects_max_new_tokens_and_stops_at_stop() -> None:
    m = ar_model()
    text, tl, _, _ = _ar_inputs()
    _suppress_stop(m, -1e4)
    assert [len(o) for o in m.generate(text, tl, max_new_tokens=7)] == [7, 7, 7]
    assert [len(o) for o in m.generate(text, tl, max_new_tokens=500)] == [31, 31, 31]  # max_seq_len 32
    _suppress_stop(m, 1e4)
    out = m.generate(text, tl, max_new_tokens=7)
    assert [len(o) for o in out] == [0, 0, 0]
    assert all(o.dtype == torch.long for o in out)


def _reference_greedy(m: ARModel, text, tl, prefix, plen, max_new, penalty) -> list[int]:
    """No cache: re-run the full training forward on the growing sequence each step."""
    def next_logits(seq: list[int]) -> torch.Tensor:
        audio = torch.tensor([seq], dtype=torch.long).reshape(1, -1)
        return m(text, tl, audio, torch.tensor([len(seq)]))[0][:, len(seq)]  # [1, V+1]

    return reference_greedy(m, next_logits, prefix, plen, max_new, penalty)


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_kv_cache_generation_equals_no_cache_greedy(penalty: float) -> None:
    m = ar_model()
    _suppress_stop(m, 0.1)  # tuned so items stop at different steps (STOP mid-batch is exercised)
    b = batch(seed=4)
    text, tl, prefix = b["text"], b["text_lens"], b["codes"][:, 0, :5].clamp(min=0)
    plens = torch.tensor([5, 2, 0])
    out = m.generate(text, tl, prefix=prefix, prefix_lens=plens, max_new_tokens=20, temperature=0.0,
                     repetition_penalty=penalty)
    for i in range(3):
        L = int(tl[i])
        ref = _reference_greedy(m, text[i : i + 1, :L], tl[i : i + 1], prefix[i], plens[i], 20, penalty)
        assert out[i].tolist() == ref
    lens = [len(o) for o in out]
    assert len(set(lens)) == 3 and max(lens) < 20  # stopped at STOP, at different steps


def test_generate_restores_training_mode_and_is_seeded() -> None:
    m = ar_model(dropout=0.1).train()
    text, tl, _, _ = _ar_inputs()
    a = m.generate(text, tl, max_new_tokens=8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    c = m.generate(text, tl, max_new_tokens=8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert m.training and all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_overfit_two_sequences_then_greedy_reproduces_them() -> None:
    torch.manual_seed(0)
    m = ar_model(dropout=0.0).train()
    text = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 8, 10, 11, 2]])
    tl = torch.tensor([5, 6])
    audio = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 0, 0]])
    al = torch.tensor([8, 6])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        _, loss, _ = m(text, tl, audio, al)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    out = m.eval().generate(text, tl, max_new_tokens=20, temperature=0.0)
    assert out[0].tolist() == audio[0].tolist() and out[1].tolist() == audio[1, :6].tolist()


def test_attention_probabilities_on_request_leave_the_output_unchanged() -> None:
    m = ar_model()
    b = batch()
    text, text_lens, audio, audio_lens = b["text"], b["text_lens"], b["codes"][:, 0].clamp_min(0), b["audio_lens"]
    fused, _, aux0 = m(text, text_lens, audio, audio_lens)
    explicit, _, aux = m(text, text_lens, audio, audio_lens, attn_layers=[1])
    assert "attn_probs" not in aux0 and set(aux["attn_probs"]) == {1}
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    probs = aux["attn_probs"][1]  # [B, H, S, S]
    S = text.size(1) + audio.size(1) + 1
    assert probs.shape == (3, 4, S, S)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, S))
    L = text.size(1)
    assert float(probs[1, :, :, int(text_lens[1]):L].detach().abs().max()) == 0.0  # padded text keys get nothing
