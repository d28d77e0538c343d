"""EMA: hand-computed math, warmup decay, exact swap restore, state round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from harmonica.training.ema import EMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("running", torch.zeros(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def set_weights(m: Tiny, value: float) -> None:
    with torch.no_grad():
        m.lin.weight.fill_(value)
        m.lin.bias.fill_(-value)
        m.running.fill_(2 * value)
        m.count.fill_(int(value))


def test_ema_math_three_updates_without_warmup():
    m = Tiny()
    set_weights(m, 1.0)
    ema = EMA(m, decay=0.9, warmup=False)
    expected = 1.0
    for v in (2.0, 4.0, 3.0):
        set_weights(m, v)
        ema.update(m)
        expected = 0.9 * expected + 0.1 * v
    # by hand: 1 -> 1.1 -> 1.39 -> 1.551
    assert expected == pytest.approx(1.551)
    assert torch.allclose(ema.shadow["lin.weight"], torch.full((1, 2), 1.551))
    assert torch.allclose(ema.shadow["lin.bias"], torch.full((1,), -1.551))
    assert torch.allclose(ema.shadow["running"], torch.full((1,), 3.102))  # float buffer averaged
    assert ema.shadow["count"].item() == 3  # integer buffer copied
    assert ema.num_updates == 3


def test_ema_warmup_decay():
    m = Tiny()
    set_weights(m, 0.0)
    ema = EMA(m, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    expected = 0.0
    for n, v in enumerate((10.0, 20.0, 30.0)):
        d = min(0.999, (1 + n) / (10 + n))
        set_weights(m, v)
        ema.update(m)
        expected = d * expected + (1 - d) * v
    # by hand, d = 0.1, 2/11, 1/4:  0.9*10 = 9;  (2*9 + 9*20)/11 = 18;  18/4 + 0.75*30 = 27
    assert expected == pytest.approx(27.0)
    assert ema.shadow["lin.weight"][0, 0].item() == pytest.approx(27.0, rel=1e-6)
    assert ema.current_decay() == pytest.approx(4 / 13)
    ema.num_updates = 100_000
    assert ema.current_decay() == 0.999


def test_swap_puts_ema_in_and_restores_raw_exactly():
    torch.manual_seed(0)
    m = Tiny()
    ema = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    ema.update(m)
    raw = {k: v.clone() for k, v in m.state_dict().items()}
    with ema.swap(m) as swapped:
        assert swapped is m
        assert torch.equal(m.lin.weight, ema.shadow["lin.weight"])
        assert not torch.equal(m.lin.weight, raw["lin.weight"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, raw[k])  # bit-exact
    with pytest.raises(RuntimeError):
        with ema.swap(m):
            raise RuntimeError("validation failed")
    assert torch.equal(m.lin.weight, raw["lin.weight"])


def test_copy_to_and_state_round_trip():
    torch.manual_seed(1)
    m = Tiny()
    ema = EMA(m, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            m.lin.weight.add_(1.0)
        ema.update(m)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    ema2 = EMA(Tiny(), decay=0.5, warmup=False)
    ema2.load_state_dict(state)
    assert ema2.decay == 0.99 and ema2.warmup and ema2.num_updates == 3
    for k in ema.shadow:
        assert torch.equal(ema.shadow[k], ema2.shadow[k])
    # both continue identically
    ema.update(m)
    ema2.update(m)
    assert torch.equal(ema.shadow["lin.weight"], ema2.shadow["lin.weight"])
    target = Tiny()
    ema2.copy_to(target)
    assert torch.equal(target.lin.weight, ema2.shadow["lin.weight"])


def test_mismatched_model_rejected():
    ema = EMA(Tiny(), decay=0.9)
    with pytest.raises(KeyError):
        ema.update(nn.Linear(2, 1))
