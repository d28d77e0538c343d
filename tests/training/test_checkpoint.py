"""Checkpoints: exact optimizer/model round trip, RNG/non-finite/int-key encoding, atomicity, pruning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import harmonica.training.checkpoint as ckpt_mod
from harmonica.training.checkpoint import (
    NonFiniteWeightsError, flatten_state, latest_checkpoint, list_checkpoints, load_checkpoint,
    prune_checkpoints, read_meta, save_checkpoint, unflatten_state,
)


def make(seed: int) -> tuple[nn.Module, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    model[3].weight = model[0].weight  # tied weights: safetensors needs them unaliased
    groups = [{"params": list(model[0].parameters()), "name": "embeddings", "lr_scale": 1.0, "weight_decay": 0.0},
              {"params": list(model[1:3].parameters()) + [model[3].bias], "name": "attention", "lr_scale": 0.5}]
    return model, torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.98))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 10, (4, 5), generator=g)  # [B, T]
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def save(root: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, **kw) -> Path:
    args = {"ema": None, "trainer": {"step": step}, "meta": {"run": "t"}, **kw}
    return save_checkpoint(root, step, model=model.state_dict(), optimizer=opt.state_dict(), **args)


def test_resume_continues_bit_identically(tmp_path: Path):
    model, opt = make(0)
    train(model, opt, 3, seed=1)
    ema = {k: v.detach().clone() * 0.5 for k, v in model.state_dict().items()}
    path = save(tmp_path, 3, model, opt, ema=ema)
    train(model, opt, 4, seed=2)

    ck = load_checkpoint(path)
    model2, opt2 = make(123)  # different init: everything must come from the checkpoint
    model2.load_state_dict(ck.model)
    opt2.load_state_dict(ck.optimizer)
    assert [g["name"] for g in opt2.param_groups] == ["embeddings", "attention"]
    assert opt2.param_groups[1]["betas"] == (0.9, 0.98) and set(ck.optimizer["state"]) == {0, 1, 2, 3, 4, 5}
    train(model2, opt2, 4, seed=2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert ck.step == 3 and ck.meta["run"] == "t" and "saved_at" in ck.meta
    assert all(torch.equal(ck.ema[k], v) for k, v in ema.items())


def test_trainer_state_rng_nonfinite_and_int_keys_round_trip(tmp_path: Path):
    model, opt = make(0)
    proxy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(proxy)  # holds inf in its state
    trainer = {
        "rng": torch.get_rng_state(), "gen": torch.Generator().manual_seed(5).get_state(),
        "np": np.random.default_rng(0).bit_generator.state, "np_legacy": np.random.RandomState(0).get_state(),
        "plateau": plateau.state_dict(), "by_id": {0: "a", 7: (1, 2.5)}, "mixed": {1: None, "1": [float("nan")]},
        "marker_like": {"__tensor__": "not a tensor"}, "neg": -math.inf,
    }
    path = save(tmp_path, 1, model, opt, trainer=trainer)
    back = load_checkpoint(path).trainer
    assert torch.equal(back["rng"], trainer["rng"]) and back["rng"].dtype == torch.uint8
    torch.set_rng_state(back["rng"])
    a = torch.rand(3)
    torch.set_rng_state(trainer["rng"])
    assert torch.equal(a, torch.rand(3))
    g = torch.Generator()
    g.set_state(back["gen"])
    assert back["np"] == trainer["np"]
    legacy = np.random.RandomState()
    legacy.set_state(back["np_legacy"])
    assert legacy.randint(1 << 30) == np.random.RandomState(0).randint(1 << 30)
    assert back["plateau"]["best"] == math.inf and back["plateau"] == plateau.state_dict()
    assert back["by_id"] == {0: "a", 7: (1, 2.5)} and math.isnan(back["mixed"]["1"][0])
    assert set(back["mixed"]) == {1, "1"} and back["marker_like"] == {"__tensor__": "not a tensor"}
    assert back["neg"] == -math.inf
    json.loads((path / "trainer.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def test_flatten_unaliases_views_and_shared_tensors():
    base = torch.arange(10.0)
    tensors, skeleton = flatten_state({"a": base, "b": base, "view": base[2:4], "t": base.view(2, 5).T})
    ptrs = {t.untyped_storage().data_ptr() for t in tensors.values()}
    assert len(ptrs) == 4 and all(t.is_contiguous() for t in tensors.values())
    back = unflatten_state(tensors, json.loads(json.dumps(skeleton)))
    assert torch.equal(back["view"], base[2:4]) and torch.equal(back["t"], base.view(2, 5).T)
    with pytest.raises(TypeError, match="at /x"):
        flatten_state({"x": object()})


def test_non_finite_weights_refused_and_nothing_written(tmp_path: Path):
    model, _ = make(0)
    bad = model.state_dict()
    bad["1.bias"] = bad["1.bias"].clone()
    bad["1.bias"][0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="1.bias"):
        save_checkpoint(tmp_path, 5, model=bad, ema=None, optimizer={}, trainer={}, meta={})
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema["0.weight"][0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="ema:0.weight"):
        save_checkpoint(tmp_path, 5, model=model.state_dict(), ema=ema, optimizer={}, trainer={}, meta={})
    assert list(tmp_path.iterdir()) == []


def test_crash_leftovers_ignored_and_resave_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model, opt = make(0)
    first = save(tmp_path, 10, model, opt)

    def crash(*args, **kwargs):
        raise OSError("disk died mid-write")

    monkeypatch.setattr(ckpt_mod, "_swap_into_place", crash)
    with pytest.raises(OSError):
        save(tmp_path, 20, model, opt)
    monkeypatch.undo()
    assert not (tmp_path / "step_0000020").exists()
    # a hard kill leaves a temp dir behind (no cleanup ran); it must be ignored
    leftover = tmp_path / ".tmp-step_0000030-abc"
    leftover.mkdir()
    (leftover / "meta.json").write_text("{}")
    (tmp_path / "step_0000040").mkdir()  # a stray dir without meta.json: not a checkpoint
    assert latest_checkpoint(tmp_path) == first and list_checkpoints(tmp_path) == [first]
    assert ckpt_mod.clean_temp(tmp_path) == [leftover]

    again = save(tmp_path, 10, model, opt, meta={"run": "second"})
    assert again == first and read_meta(again)["run"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000010", "step_0000040"]


def test_prune_keeps_last_and_protected(tmp_path: Path):
    model, opt = make(0)
    paths = [save(tmp_path, s, model, opt, meta={"s": s}) for s in (1, 2, 3, 4, 5, 10_000_000)]
    assert list_checkpoints(tmp_path) == paths  # sorted by step, even past 7 digits
    deleted = prune_checkpoints(tmp_path, keep_last=2, protect={paths[1]})  # the best step is protected
    assert deleted == [paths[0], paths[2], paths[3]]
    assert list_checkpoints(tmp_path) == [paths[1], paths[4], paths[5]]
    assert read_meta(paths[1])["s"] == 2 and load_checkpoint(paths[1]).step == 2
    prune_checkpoints(tmp_path, keep_last=1)
    assert list_checkpoints(tmp_path) == [paths[5]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_no_pickle_in_module():
    src = Path(ckpt_mod.__file__).read_text()
    assert "torch.load" not in src and "pickle" not in src.replace("never pickle", "")


def test_step_of_inverts_step_dir(tmp_path):
    assert ckpt_mod.step_of(ckpt_mod.step_dir(tmp_path, 1234)) == 1234
    with pytest.raises(ValueError, match="not a step_<N> checkpoint directory"):
        ckpt_mod.step_of(tmp_path / "best")
