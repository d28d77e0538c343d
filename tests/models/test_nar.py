import pytest
import torch
import torch.nn.functional as F

from harmonica.models import NARModel
from tests.models.tiny import CODEBOOK, N_Q, batch, nar_model

SPEAKER_KW = {
    "prompt": lambda b: {"prompt": b["prompt"], "prompt_lens": b["prompt_lens"]},
    "embedding": lambda b: {"speaker": b["speaker"]},
    "none": lambda b: {},
}


def _run(m: NARModel, b: dict, stage, **kw):
    return m(b["text"], b["text_lens"], b["codes"], b["audio_lens"], stage, **SPEAKER_KW[m.speaker_condition](b), **kw)


@pytest.mark.parametrize("mode", ["prompt", "embedding", "none"])
def test_forward_shapes_and_loss_equal_manual_ce(mode: str) -> None:
    m = nar_model(mode)
    b = batch()
    stage = torch.tensor([1, 3, 2])
    logits, loss, aux = _run(m, b, stage, collect_attn=True)
    B, _, T = b["codes"].shape
    assert logits.shape == (B, T, CODEBOOK)
    assert aux["attn_entropy"].shape == (1 + 2, 4)  # text_layers + n_layers, n_heads
    assert torch.equal(aux["stage"], stage)
    for i in range(B):
        n = int(b["audio_lens"][i])
        assert aux["targets"][i, :n].tolist() == b["codes"][i, int(stage[i]), :n].tolist()
        assert int(aux["mask"][i].sum()) == n
    manual = F.cross_entropy(logits[aux["mask"]], aux["targets"][aux["mask"]])
    torch.testing.assert_close(loss, manual)


def test_int_stage_equals_per_sample_stage() -> None:
    m = nar_model()
    b = batch()
    l_int, loss_int, _ = _run(m, b, 2)
    l_vec, loss_vec, aux = _run(m, b, torch.full((3,), 2))
    torch.testing.assert_close(l_int, l_vec)
    torch.testing.assert_close(loss_int, loss_vec)
    est = torch.randint(0, CODEBOOK, (3, 11))
    torch.testing.assert_close(_run(m, b, 2, self_cond=est)[0], _run(m, b, torch.full((3,), 2), self_cond=est)[0])
    # a mixed batch gives each item what a single-stage batch gives it
    mixed, _, _ = _run(m, b, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(mixed[1], l_int[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="stage must be in 1..3"):
        _run(m, b, 0)
    with pytest.raises(ValueError, match="stage must be in 1..3"):
        _run(m, b, N_Q)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stage_k_ignores_codebooks_k_and_above(k: int) -> None:
    m = nar_model()
    b = batch()
    base, _, _ = _run(m, b, k)
    b2 = dict(b, codes=b["codes"].clone())
    b2["codes"][:, k:] = torch.randint(0, CODEBOOK, b2["codes"][:, k:].shape)
    changed, _, _ = _run(m, b2, k)
    torch.testing.assert_close(base[:, :], changed[:, :], atol=0, rtol=0)
    b3 = dict(b, codes=b["codes"].clone())
    b3["codes"][:, k - 1] = (b3["codes"][:, k - 1] + 1) % CODEBOOK  # a lower codebook does matter
    assert (_run(m, b3, k)[0] - base).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["prompt", "embedding", "none"])
def test_padding_invariance(mode: str) -> None:
    m = nar_model(mode)
    b = batch()
    stage = torch.tensor([1, 3, 2])
    logits, _, _ = _run(m, b, stage)
    for i in range(3):
        L, T, P = int(b["text_lens"][i]), int(b["audio_lens"][i]), int(b["prompt_lens"][i])
        one = {"text": b["text"][i : i + 1, :L], "text_lens": b["text_lens"][i : i + 1],
               "codes": b["codes"][i : i + 1, :, :T], "audio_lens": b["audio_lens"][i : i + 1],
               "prompt": b["prompt"][i : i + 1, :, :P], "prompt_lens": b["prompt_lens"][i : i + 1],
               "speaker": b["speaker"][i : i + 1]}
        single, _, _ = _run(m, one, stage[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1, :T], single, atol=1e-5, rtol=1e-5)


def test_speaker_conditions_are_used_and_required() -> None:
    b = batch()
    m = nar_model("prompt")
    base = _run(m, b, 1)[0]
    other = dict(b, prompt=(b["prompt"] + 1) % CODEBOOK)
    assert (_run(m, other, 1)[0] - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs prompt"):
        m(b["text"], b["text_lens"], b["codes"], b["audio_lens"], 1)
    long_prompt = torch.randint(0, CODEBOOK, (3, N_Q, 50))  # > prompt_frames: truncated, no error
    assert m(b["text"], b["text_lens"], b["codes"], b["audio_lens"], 1, prompt=long_prompt)[0].shape[1] == 11
    e = nar_model("embedding")
    base = _run(e, b, 1)[0]
    assert (_run(e, dict(b, speaker=(b["speaker"] + 1) % 5), 1)[0] - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs speaker"):
        e(b["text"], b["text_lens"], b["codes"], b["audio_lens"], 1)


def test_audio_length_limit() -> None:
    m = nar_model(max_seq_len=16)
    b = batch(T=15)
    assert _run(m, b, 1)[0].shape[1] == 15
    with pytest.raises(ValueError, match="at most max_seq_len - 1 = 15"):
        _run(m, batch(T=16), 1)
    assert NARModel.cap_audio(batch(T=16)["codes"], 16).shape[-1] == 15


def test_self_cond_changes_logits_and_refine_pair() -> None:
    m = nar_model()
    b = batch()
    none, _, _ = _run(m, b, 2)
    est = torch.randint(0, CODEBOOK, (3, 11))
    with_est, _, _ = _run(m, b, 2, self_cond=est)
    assert (none - with_est).abs().max() > 1e-4
    kw = SPEAKER_KW["prompt"](b)
    args = (b["text"], b["text_lens"], b["codes"], b["audio_lens"], torch.tensor([1, 2, 3]))
    l1, l2, loss, aux = m.forward_refine(*args, **kw, gt_fraction=0.0, collect_attn=True)
    torch.testing.assert_close(loss, 0.5 * (aux["loss1"] + aux["loss2"]))
    assert aux["attn_entropy"].shape == (3, 4)
    m_ = aux["mask"]
    assert torch.equal(aux["self_cond"][m_], l1.argmax(-1)[m_])  # fully self-conditioned
    ref, _, _ = m(*args, **kw, self_cond=aux["self_cond"])
    torch.testing.assert_close(l2, ref)
    plain, loss_plain, _ = m(*args, **kw)
    torch.testing.assert_close(l1, plain)
    _, _, _, aux_gt = m.forward_refine(*args, **kw, gt_fraction=1.0)
    assert torch.equal(aux_gt["self_cond"][m_], aux_gt["targets"][m_])  # fully teacher-forced
    _, _, _, aux_half = m.forward_refine(*args, **kw, gt_fraction=torch.tensor([0.0, 1.0, 0.5]),
                                         generator=torch.Generator().manual_seed(0))
    assert aux_half["self_cond"].shape == (3, 11)


def test_every_parameter_gets_a_gradient() -> None:
    m = nar_model("prompt").train()
    b = batch()
    args = (b["text"], b["text_lens"], b["codes"], b["audio_lens"], torch.tensor([1, 2, 3]))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for step in range(2):
        _, _, loss, _ = m.forward_refine(*args, **SPEAKER_KW["prompt"](b), gt_fraction=0.5)
        opt.zero_grad()
        loss.backward()
        dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        # AdaLN modulation starts at zero (identity), so only the stage embedding behind it has a
        # zero gradient on the very first step; after one update every parameter learns
        assert dead == ([] if step else ["stage_emb.weight"])
        opt.step()


@pytest.mark.parametrize("mode", ["prompt", "embedding", "none"])
def test_generate_greedy_is_consistent_with_forward(mode: str) -> None:
    m = nar_model(mode)
    b = batch()
    cb0 = b["codes"][:, 0]
    kw = SPEAKER_KW[mode](b)
    codes = m.generate(b["text"], b["text_lens"], cb0, b["audio_lens"], **kw, temperature=0.0)
    assert codes.shape == (3, N_Q, 11) and codes.dtype == torch.long
    mask = torch.arange(11)[None] < b["audio_lens"][:, None]
    assert torch.equal(codes[:, 0][mask], cb0[mask]) and (codes[:, :, :][~mask[:, None].expand_as(codes)] == 0).all()
    for k in range(1, N_Q):
        logits, _, _ = m(b["text"], b["text_lens"], codes, b["audio_lens"], k, **kw)
        assert torch.equal(logits.argmax(-1)[mask], codes[:, k][mask])


def test_generate_refine_and_sampling_options() -> None:
    m = nar_model().train()
    b = batch()
    kw = SPEAKER_KW["prompt"](b)
    args = (b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"])
    one = m.generate(*args, **kw, refine_steps=1)
    two = m.generate(*args, **kw, refine_steps=2)
    assert m.training and two.shape == one.shape
    # refine step 2 of stage 1 = forward with self_cond = step-1 estimate
    l2, _, _ = m.eval()(b["text"], b["text_lens"], one, b["audio_lens"], 1, **kw, self_cond=one[:, 1])
    mask = torch.arange(11)[None] < b["audio_lens"][:, None]
    assert torch.equal(l2.argmax(-1)[mask], two[:, 1][mask])
    s1 = m.generate(*args, **kw, temperature=[1.0, 1.0, 0.0], top_k=[0, 5], top_p=0.9,
                    generator=torch.Generator().manual_seed(0))
    s2 = m.generate(*args, **kw, temperature=[1.0, 1.0, 0.0], top_k=[0, 5], top_p=0.9,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2)
    with pytest.raises(ValueError, match="refine_steps"):
        m.generate(*args, **kw, refine_steps=0)


@pytest.mark.slow
def test_overfit_two_sequences_all_stages() -> None:
    torch.manual_seed(0)
    m = nar_model("prompt").train()
    b = batch(B=2, T=8, seed=7)
    # every sequence at every stage in one batch: rows (seq, stage)
    rep = lambda x: x.repeat_interleave(N_Q - 1, dim=0)  # noqa: E731
    stage = torch.arange(1, N_Q).repeat(2)
    args = (rep(b["text"]), rep(b["text_lens"]), rep(b["codes"]), rep(b["audio_lens"]), stage)
    kw = {"prompt": rep(b["prompt"]), "prompt_lens": rep(b["prompt_lens"])}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(100):
        _, _, loss, aux = m.forward_refine(*args, **kw, gt_fraction=0.5, generator=g)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert aux["loss1"].item() < 0.05 * first and aux["loss2"].item() < 0.05 * first
    codes = m.generate(b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"],
                       prompt=b["prompt"], prompt_lens=b["prompt_lens"], refine_steps=2)
    mask = torch.arange(8)[None] < b["audio_lens"][:, None]
    assert torch.equal(codes.transpose(1, 2)[mask], b["codes"].transpose(1, 2)[mask])


@pytest.mark.parametrize("refine", [False, True])
def test_context_repeats_shares_the_context_across_stages(refine: bool) -> None:
    """R stages of one batch in one pass (context encoded once, tiled) = R separate passes."""
    m = nar_model()
    b = batch()
    B = b["codes"].size(0)
    stages = [1, 3]
    tiled = {**b, "codes": b["codes"].repeat(2, 1, 1), "audio_lens": b["audio_lens"].repeat(2)}
    stage = torch.tensor(stages).repeat_interleave(B)
    kw = {"refine": True, "generator": torch.Generator().manual_seed(0)} if refine else {}
    logits, _, aux = _run(m, tiled, stage, context_repeats=2, **kw)
    for i, k in enumerate(stages):
        kw1 = {"refine": True, "generator": torch.Generator().manual_seed(0)} if refine else {}
        one, _, aux1 = _run(m, b, k, **kw1)
        if not refine:  # refinement draws its ground-truth mix over all rows at once
            torch.testing.assert_close(logits[i * B:(i + 1) * B], one, atol=1e-5, rtol=0)
        torch.testing.assert_close(aux["targets"][i * B:(i + 1) * B], aux1["targets"])
    if refine:
        torch.testing.assert_close(aux["logits1"][:B], _run(m, b, 1, refine=True)[2]["logits1"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="context_repeats"):
        _run(m, tiled, stage, context_repeats=3)


def test_per_stage_codebook_sizes_bound_generated_ids() -> None:
    from harmonica.config.schema import ModelConfig, NARModelConfig
    from harmonica.models import build_model

    sizes = [CODEBOOK, 3, 5, 2]
    contract = {"text_vocab_size": 24, "codebook_size": CODEBOOK, "n_q": N_Q, "max_text_len": 16,
                "codebook_sizes": sizes}
    section = NARModelConfig(d_model=32, n_layers=1, n_heads=4, max_seq_len=32, text_layers=1, prompt_frames=6)
    torch.manual_seed(0)
    m = build_model("nar", ModelConfig(nar=section), contract)
    assert m.codebook_sizes == sizes and m.contract()["codebook_sizes"] == sizes
    assert m.heads[0].out_features == CODEBOOK  # tables/heads: the largest size
    b = batch()
    for temperature in (0.0, 1.0):
        codes = m.generate(b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"],
                           **SPEAKER_KW["prompt"](b), temperature=temperature)
        for k in range(1, N_Q):
            assert int(codes[:, k].max()) < sizes[k]
    with pytest.raises(ValueError, match="codebook_sizes"):
        NARModel(section, text_vocab_size=24, codebook_size=CODEBOOK, n_q=N_Q, max_text_len=16,
                 codebook_sizes=[CODEBOOK, 99, 2, 2])


def test_generate_reports_each_stage_distribution_for_a_soft_decode() -> None:
    """probs_out: stage k's distribution over its own entries, whose argmax is the greedy code, and
    which the forward's logits give under the same lower codebooks."""
    from harmonica.config.schema import ModelConfig, NARModelConfig
    from harmonica.models import build_model

    sizes = [CODEBOOK, 3, 5, 2]
    contract = {"text_vocab_size": 24, "codebook_size": CODEBOOK, "n_q": N_Q, "max_text_len": 16,
                "codebook_sizes": sizes}
    section = NARModelConfig(d_model=32, n_layers=1, n_heads=4, max_seq_len=32, text_layers=1, prompt_frames=6)
    torch.manual_seed(0)
    m = build_model("nar", ModelConfig(nar=section), contract).eval()
    b = batch()
    kw = SPEAKER_KW["prompt"](b)
    probs: dict[int, torch.Tensor] = {}
    codes = m.generate(b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"], **kw, temperature=0.0,
                       probs_out=probs)
    assert sorted(probs) == list(range(1, N_Q))
    for k in range(1, N_Q):
        assert probs[k].shape == (3, 11, sizes[k])
        torch.testing.assert_close(probs[k].sum(-1), torch.ones(3, 11))
        mask = torch.arange(11)[None] < b["audio_lens"][:, None]
        assert torch.equal(probs[k].argmax(-1)[mask], codes[:, k][mask])
        logits, _, _ = m(b["text"], b["text_lens"], codes, b["audio_lens"], k, **kw)
        torch.testing.assert_close(probs[k][mask], logits[..., : sizes[k]].softmax(-1)[mask])
