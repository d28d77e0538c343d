"""Draws on the generator's device: a seed means the same numbers wherever the model runs."""

import torch

from harmonica.models.sampling import integers, sample_next, uniform


def test_uniform_and_integers_are_the_seed_s_cpu_draws_on_the_asked_device():
    cpu = torch.device("cpu")
    a = uniform((2, 3), torch.Generator().manual_seed(5), cpu)
    assert torch.equal(a, torch.rand((2, 3), generator=torch.Generator().manual_seed(5)))
    b = integers(7, (4,), torch.Generator().manual_seed(5), cpu, torch.int32)
    assert b.dtype == torch.int32 and torch.equal(b, torch.randint(0, 7, (4,), generator=torch.Generator().manual_seed(5),
                                                                   dtype=torch.int32))
    assert uniform((3,), None, cpu).shape == (3,)  # no generator: torch's global one


def test_sample_next_follows_the_generator():
    logits = torch.randn(4, 9)
    x = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    y = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, y) and x.shape == (4,)
