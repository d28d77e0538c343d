"""The NAR's count-table prior: stage k's logits = the network's + log p(codebook k | codebook 0)."""

import pytest
import torch
from safetensors.torch import save_file

from harmonica.training.count_table import fit_table
from tests.models.test_nar import _run
from tests.models.tiny import CODEBOOK, N_Q, batch, nar_model


def _table(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, CODEBOOK, (N_Q, 40), generator=g) for _ in range(6)]
    return fit_table(codes, CODEBOOK)  # [n_q, V, V]


def test_the_prior_is_added_per_stage_and_codebook_0_entry_for_int_and_tensor_stages():
    with_prior, without = nar_model("none"), nar_model("none", count_prior=False)
    without.load_state_dict({k: v for k, v in with_prior.state_dict().items() if k != "count_prior"})
    table = _table()
    with_prior.set_count_prior(table)
    b = batch()
    cb0 = b["codes"][:, 0].clamp(min=0)  # [B, T] padding is masked to 0 inside the model
    mask = torch.arange(cb0.size(1))[None] < b["audio_lens"][:, None]  # [B, T]
    cb0 = cb0.masked_fill(~mask, 0)
    for stage in (2, torch.tensor([1, 3, 2])):
        got, _, _ = _run(with_prior, b, stage)
        plain, _, _ = _run(without, b, stage)
        st = torch.full((cb0.size(0),), stage) if isinstance(stage, int) else stage
        want = plain + table[st[:, None], cb0]  # [B, T, V]
        assert torch.allclose(got, want, atol=1e-5)


def test_an_untrained_nar_with_the_prior_scores_like_the_table():
    m = nar_model("none", count_prior=True)
    for head in m.heads:  # a network that says nothing: the logits are the table's
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    table = _table()
    m.set_count_prior(table)
    b = batch()
    _, loss, aux = _run(m, b, 1)
    cb0 = b["codes"][:, 0].masked_fill(~aux["mask"], 0)
    nll = -table[1][cb0, aux["targets"]]  # [B, T]
    assert loss.item() == pytest.approx(float(nll[aux["mask"]].mean()), rel=1e-5)


def test_a_nar_without_the_prior_has_no_buffer_and_refuses_one():
    m = nar_model("none", count_prior=False)
    assert "count_prior" not in m.state_dict()
    with pytest.raises(ValueError, match="count_prior=false"):
        m.set_count_prior(_table())


def test_the_prior_travels_with_the_checkpoint_and_older_checkpoints_still_load(tmp_path):
    import json

    from harmonica.inference.synthesize import load_model

    m = nar_model("none")
    m.set_count_prior(_table())
    meta = {"kind": "nar", "contract": {**m.contract(), "n_q": N_Q}, "model_config": m.cfg.model_dump(mode="json")}
    for name, state, config in (("new", m.state_dict(), meta["model_config"]),
                                ("old", {k: v for k, v in m.state_dict().items() if k != "count_prior"},
                                 {k: v for k, v in meta["model_config"].items() if k != "count_prior"})):
        d = tmp_path / name
        d.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / "ema.safetensors"))
        (d / "meta.json").write_text(json.dumps({**meta, "model_config": config}))
        loaded, _ = load_model(d)
        if name == "new":
            assert torch.equal(loaded.count_prior, m.count_prior)
        else:  # written before the prior existed: built without one
            assert not loaded.cfg.count_prior and "count_prior" not in loaded.state_dict()
