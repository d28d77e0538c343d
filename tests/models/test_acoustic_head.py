"""The AR's acoustic head (`model.ar.acoustic_dim`): a Gaussian around a predicted point in the codec's
embedding space, added to the plain head's token logits."""

from __future__ import annotations

import pytest
import torch

from harmonica.models.acoustic_head import acoustic_table
from tests.models.tiny import CODEBOOK, ar_model, batch


def _embeddings(seed: int = 3, dim: int = 6) -> torch.Tensor:
    return torch.randn(CODEBOOK, dim, generator=torch.Generator().manual_seed(seed)) * 5 + 2  # [V, F]


def test_table_is_centred_pca_with_unit_median_neighbour_distance() -> None:
    e = _embeddings()
    t = acoustic_table(e, 3)
    assert t.shape == (CODEBOOK, 3)
    torch.testing.assert_close(t.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    d = torch.cdist(t, t)
    d.fill_diagonal_(float("inf"))
    assert d.min(1).values.median().item() == pytest.approx(1.0, abs=1e-5)
    var = t.var(0)
    assert var[0] >= var[1] >= var[2]  # principal components in order
    assert acoustic_table(e, 9).shape == (CODEBOOK, 9) and acoustic_table(e, 9)[:, 6:].abs().max() == 0  # F < dim pads
    torch.testing.assert_close(acoustic_table(e, 3), t)  # deterministic, signs included


def test_logits_are_the_plain_head_plus_a_gaussian_around_the_predicted_point() -> None:
    m = ar_model(frames_per_step=2, acoustic_dim=4)
    m.acoustic.set_table(_embeddings())
    with torch.no_grad():
        m.acoustic.log_scale.fill_(0.7)
    b = batch(seed=2)
    text, tl, audio, al = b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"]
    logits, _, _ = m(text, tl, audio, al)  # [B, T+1, V+1]
    acoustic = m.acoustic
    m.acoustic = None
    plain, _, _ = m(text, tl, audio, al)
    m.acoustic = acoustic
    extra = logits - plain  # [B, T+1, V+1]
    assert extra[..., CODEBOOK].abs().max() == 0  # STOP is the plain head's alone
    # per frame, extra_v = scale * (u . e_v - |e_v|^2 / 2) for one point u: adding back the norms leaves a
    # linear function of the entries' coordinates, which least squares recovers exactly
    e, scale = acoustic.table, acoustic.log_scale.exp()
    rhs = (extra[..., :CODEBOOK] / scale + 0.5 * (e * e).sum(-1)).reshape(-1, CODEBOOK).T  # [V, B*(T+1)]
    u = torch.linalg.lstsq(e, rhs).solution  # [dim, B*(T+1)]
    torch.testing.assert_close(e @ u, rhs, atol=1e-4, rtol=1e-4)
    assert u.abs().max() > 0


def test_the_table_travels_with_the_weights_and_off_is_the_plain_model() -> None:
    m = ar_model(acoustic_dim=3)
    m.acoustic.set_table(_embeddings())
    state = m.state_dict()
    assert "acoustic.table" in state and state["acoustic.table"].abs().sum() > 0
    other = ar_model(acoustic_dim=3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.acoustic.table, m.acoustic.table)
    assert m.contract()["acoustic_dim"] == 3 and "acoustic_dim" not in ar_model().contract()
    assert ar_model().acoustic is None
    assert "output_heads" in m.param_groups() and any(p is m.acoustic.point.weight for p in m.param_groups()["output_heads"])
    with pytest.raises(ValueError, match="entries"):
        m.acoustic.set_table(torch.zeros(CODEBOOK + 1, 4))


def test_acoustic_inputs_embed_each_frame_by_its_table_row() -> None:
    m = ar_model(frames_per_step=2, acoustic_dim=4, acoustic_input=True)
    m.acoustic.set_table(_embeddings())
    head = m.acoustic
    groups = torch.tensor([[[m.bos_id, m.bos_id], [5, 9], [9, m.stop_id]]])  # [1, 3, 2]
    x = head.embed(groups)  # [1, 3, D]
    w = head.inputs.weight  # [D, 2 * dim]
    assert x[0, 0].abs().max() == 0  # BOS and STOP carry no acoustic row
    torch.testing.assert_close(x[0, 1], w[:, :4] @ head.table[5] + w[:, 4:] @ head.table[9])  # one projection per slot
    torch.testing.assert_close(x[0, 2], w[:, :4] @ head.table[9])
    torch.testing.assert_close(head.embed(torch.tensor([[9, 5]]))[0, 0], w[:, :4] @ head.table[9])  # prompt: slot 0
    b = batch(seed=2)
    text, tl, audio, al = b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"]
    with_rows, _, _ = m(text, tl, audio, al)  # [B, T+1, V+1]
    with torch.no_grad():
        head.inputs.weight.zero_()
    without, _, _ = m(text, tl, audio, al)
    assert (with_rows - without).abs().max() > 0  # the input rows reach the logits
    assert m.contract()["acoustic_input"] is True and "acoustic_input" not in ar_model(acoustic_dim=4).contract()
    out = m.generate(text[:1], tl[:1], max_new_tokens=6)  # the decoding path embeds the same way
    assert len(out) == 1 and out[0].numel() >= 1


def test_acoustic_inputs_need_the_table() -> None:
    from harmonica.config.schema import ARModelConfig

    with pytest.raises(ValueError, match="acoustic_dim"):
        ARModelConfig(d_model=32, n_layers=1, n_heads=2, acoustic_input=True)
