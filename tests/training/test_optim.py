"""Optimizer groups and the scheduler wrapper: every scheduler_type honoured, min_lr, warmup,
per-group scales, plateau reductions, persistent scale() and checkpoint round trips."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import safetensors.torch
import torch
from torch import nn

from harmonica.config.schema import TrainingConfig
from harmonica.training import checkpoint as ckpt
from harmonica.training.optim import Muon, build_optimizer, build_scheduler, orthogonalise

warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.attn = nn.Linear(4, 4)
        self.head = nn.Linear(4, 5)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"embeddings": list(self.emb.parameters()), "attention": list(self.attn.parameters()),
                "output_heads": list(self.head.parameters()), "speaker_encoder": []}


def cfg(**kw) -> TrainingConfig:
    base = dict(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=100, log_every=1, val_every=1,
                ckpt_every=1, sample_every=1)
    base.update(kw)
    return TrainingConfig(**base)


def run(kind: str, steps: int, **kw) -> tuple[list[float], torch.optim.Optimizer, object]:
    c = cfg(scheduler_type=kind, **kw)
    opt = build_optimizer(Tiny().param_groups(), c)
    sched = build_scheduler(opt, c)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.current_lrs()["attention"])
        opt.step()
        sched.step()
    lrs.append(sched.current_lrs()["attention"])
    return lrs, opt, sched


def test_groups_scales_and_weight_decay():
    c = cfg(param_groups={"embeddings": {"lr_scale": 2.0, "weight_decay": 0.0},
                          "output_heads": {"lr_scale": 0.5, "weight_decay": 0.1}})
    opt = build_optimizer(Tiny().param_groups(), c)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"embeddings", "attention", "output_heads"}  # empty group skipped
    assert by_name["embeddings"]["lr"] == pytest.approx(2e-3)
    assert by_name["output_heads"]["weight_decay"] == 0.1
    assert by_name["attention"]["weight_decay"] == 0.01
    assert opt.defaults["betas"] == (0.9, 0.98)
    sched = build_scheduler(opt, c)
    for _ in range(40):
        opt.step()
        sched.step()
    lrs = sched.current_lrs()
    assert lrs["embeddings"] / lrs["attention"] == pytest.approx(2.0)
    assert lrs["output_heads"] / lrs["attention"] == pytest.approx(0.5)


def test_unknown_or_duplicate_groups_rejected():
    m = Tiny()
    with pytest.raises(KeyError):
        build_optimizer({"decoder": list(m.parameters())}, cfg())
    with pytest.raises(ValueError):
        build_optimizer({"attention": list(m.attn.parameters()),
                         "output_heads": list(m.attn.parameters())}, cfg())


def test_warmup():
    lrs, _, _ = run("cosine", 12)
    assert lrs[0] == pytest.approx(1e-4)  # 1/10 of lr for the first update
    assert lrs[4] == pytest.approx(5e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))


def test_scheduler_type_honoured_and_min_lr():
    cos, _, _ = run("cosine", 100)
    lin, _, _ = run("linear", 100)
    const, _, _ = run("constant", 100)
    plat, _, _ = run("plateau", 100)
    assert cos[30] != pytest.approx(lin[30], rel=1e-3)
    assert cos[30] > lin[30]  # cosine stays high longer
    assert cos[100] == pytest.approx(1e-5, rel=1e-9) and lin[100] == pytest.approx(1e-5, rel=1e-9)
    assert min(cos) >= 1e-5 * (1 - 1e-9) and min(lin[10:]) >= 1e-5 * (1 - 1e-9)
    assert const[10:] == [pytest.approx(1e-3)] * 91
    assert plat[10:] == [pytest.approx(1e-3)] * 91  # no validation -> no reduction


def test_plateau_reduces_after_stalled_metric():
    c = cfg(scheduler_type="plateau", min_lr=2e-4)
    opt = build_optimizer(Tiny().param_groups(), c)
    sched = build_scheduler(opt, c, plateau_patience=2)
    assert sched.on_validation(5.0) is False  # during warmup: ignored
    for _ in range(10):
        opt.step()
        sched.step()
    assert sched.on_validation(1.0) is False
    assert sched.on_validation(0.9) is False  # improving
    assert sched.on_validation(0.95) is False
    assert sched.on_validation(0.95) is False
    assert sched.on_validation(0.95) is True  # third bad validation > patience 2
    assert sched.current_lrs()["attention"] == pytest.approx(5e-4)
    opt.step()
    sched.step()  # the reduction survives the per-step LambdaLR update
    assert sched.current_lrs()["attention"] == pytest.approx(5e-4)
    for _ in range(12):
        sched.on_validation(0.95)
    assert sched.current_lrs()["attention"] == pytest.approx(2e-4)  # min_lr floor


def test_non_plateau_ignores_validation():
    _, opt, sched = run("constant", 20)
    for _ in range(20):
        assert sched.on_validation(1.0) is False
    assert sched.current_lrs()["attention"] == pytest.approx(1e-3)


def test_scale_is_persistent_and_floored():
    _, opt, sched = run("constant", 20)
    sched.scale(0.5)
    assert sched.current_lrs()["attention"] == pytest.approx(5e-4)
    opt.step()
    sched.step()
    assert sched.current_lrs()["attention"] == pytest.approx(5e-4)
    for _ in range(20):
        sched.scale(0.5)
    assert sched.current_lrs()["attention"] == pytest.approx(1e-5)  # min_lr floor


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "plateau"])
def test_state_dict_round_trip_continues_identically(kind):
    c = cfg(scheduler_type=kind, param_groups={"output_heads": {"lr_scale": 0.5}})

    def make():
        torch.manual_seed(0)
        opt = build_optimizer(Tiny().param_groups(), c)
        return opt, build_scheduler(opt, c, plateau_patience=1)

    opt, sched = make()
    for i in range(30):
        opt.step()
        sched.step()
        if i >= 10:
            sched.on_validation(1.0)
    sched.scale(0.7)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)  # checkpoints load with weights_only=True
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    opt2, sched2 = make()  # fresh objects, as after a restart; only the scheduler state is loaded
    sched2.load_state_dict(state)
    assert sched2.current_lrs() == pytest.approx(sched.current_lrs())
    for i in range(40):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
            if i % 5 == 0:
                s.on_validation(1.0)
        assert sched2.current_lrs() == pytest.approx(sched.current_lrs(), rel=1e-12)
    assert sched2.lr_scale_factor == pytest.approx(0.7)
    with pytest.raises(ValueError):
        other = cfg(scheduler_type="linear" if kind != "linear" else "cosine")
        build_scheduler(build_optimizer(Tiny().param_groups(), other), other).load_state_dict(state)


def test_orthogonalise_flattens_the_spectrum_of_tall_and_wide_matrices():
    torch.manual_seed(0)
    for shape in ((64, 16), (16, 64), (32, 32)):
        g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 0.5, shape[1]))  # over 1.5 decades
        s = torch.linalg.svdvals(orthogonalise(g))
        assert s.min() > 0.5 and s.max() < 1.5, (shape, s)  # Newton-Schulz's band around 1
        assert orthogonalise(g).shape == g.shape
        batch = torch.stack([g, 2 * g.flip(0)])  # one batch: each matrix on its own
        assert torch.allclose(orthogonalise(batch)[1], orthogonalise(2 * g.flip(0)), atol=1e-5)


def test_muon_steps_the_hidden_matrices_and_adamw_the_rest():
    c = cfg(optimizer="muon", muon_lr=0.02, param_groups={"attention": {"lr_scale": 0.5}})
    model = Tiny()
    opt = build_optimizer(model.param_groups(), c)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"embeddings", "attention/muon", "attention", "output_heads"}
    assert by_name["attention/muon"]["params"] == [model.attn.weight]  # 2D weights of the attention group
    assert by_name["attention"]["params"] == [model.attn.bias]
    assert by_name["attention/muon"]["lr"] == pytest.approx(0.01)  # muon_lr x lr_scale
    assert by_name["embeddings"]["lr"] == pytest.approx(1e-3)
    assert isinstance(opt.parts["muon"], Muon) and isinstance(opt.parts["adamw"], torch.optim.AdamW)
    sched = build_scheduler(opt, c)
    for _ in range(5):  # warmup: the scheduler scales every group, Muon's included
        opt.step()
        sched.step()
    lrs = sched.current_lrs()
    assert lrs["attention/muon"] / lrs["embeddings"] == pytest.approx(10.0)
    # one step moves the Muon weight by lr x an orthogonalised update: every singular value ~ lr
    before = model.attn.weight.detach().clone()
    model.attn.weight.grad = torch.randn(4, 4) * 1e-3
    opt.parts["muon"].step()
    s = torch.linalg.svdvals(model.attn.weight.detach() - before * (1 - lrs["attention/muon"] * 0.01))
    assert s.min() > 0.4 * lrs["attention/muon"] and s.max() < 1.6 * lrs["attention/muon"]


def test_muon_state_round_trips_through_a_checkpoint_and_refuses_adamw_state():
    c = cfg(optimizer="muon")

    def make():
        torch.manual_seed(0)
        model = Tiny()
        opt = build_optimizer(model.param_groups(), c)
        return model, opt, build_scheduler(opt, c)

    def train(model, opt, sched, steps):
        for i in range(steps):
            opt.zero_grad()
            x = torch.arange(5)
            model.head(torch.tanh(model.attn(model.emb(x)))).logsumexp(-1).sum().backward()
            opt.step()
            sched.step()

    m1, o1, s1 = make()
    train(m1, o1, s1, 12)
    tensors, skeleton = ckpt.flatten_state(o1.state_dict())  # the checkpoint's files: safetensors + JSON
    tensors, skeleton = safetensors.torch.load(safetensors.torch.save(tensors)), json.loads(json.dumps(skeleton))
    m2, o2, s2 = make()
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(ckpt.unflatten_state(tensors, skeleton))
    s2.load_state_dict(s1.state_dict())
    train(m1, o1, s1, 5)
    train(m2, o2, s2, 5)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    adamw = build_optimizer(Tiny().param_groups(), cfg())
    with pytest.raises(ValueError, match="another training.optimizer"):
        o2.load_state_dict(adamw.state_dict())
