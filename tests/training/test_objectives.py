"""Loss terms: CE matches torch, focal downweights easy tokens, each regulariser's gradient raises
the entropy it rewards, and the objective follows the schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harmonica.config.schema import TrainingConfig
from harmonica.training.steps import build_task
from harmonica.training.objectives import (
    nearest_entries,
    Objective,
    codebook_label_smoothing,
    compute_objective,
    masked_ce,
    prediction_entropy,
    scheduled_sampling_mix,
    token_noise,
    usage_entropy,
)

B, T, V = 3, 7, 11


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 3:] = False
    targets[~mask] = -100  # padding may hold anything
    return logits, targets, mask


def cfg(**kw) -> TrainingConfig:
    base = dict(total_steps=100, warmup_steps=10, log_every=1, val_every=1, ckpt_every=1,
                sample_every=1, label_smoothing=0.0, codebook_entropy_weight=0.0,
                usage_entropy_weight=0.0)
    base.update(kw)
    return TrainingConfig(**base)


def sgd_step(x: torch.Tensor, loss: torch.Tensor, lr: float = 0.5) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return (x - lr * g).detach()


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_masked_ce_matches_torch_on_valid_positions(ls):
    logits, targets, mask = batch()
    ref = F.cross_entropy(logits[mask], targets[mask], label_smoothing=ls)
    assert masked_ce(logits, targets, mask, label_smoothing=ls) == pytest.approx(ref.item(), rel=1e-5)


def test_masked_ce_ignores_nonfinite_padding_and_empty_mask():
    logits, targets, mask = batch()
    dirty = logits.clone()
    dirty[~mask] = float("nan")
    assert masked_ce(dirty, targets, mask).item() == pytest.approx(masked_ce(logits, targets, mask).item())
    empty = torch.zeros_like(mask)
    assert masked_ce(logits, targets, empty).item() == 0.0


def test_focal_weights_downweight_easy_tokens():
    # Position 0 is easy (target confidently predicted), position 1 hard; gamma moves the loss
    # towards the hard position and the per-position weights have mean 1.
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 2] = 6.0
    targets = torch.tensor([[2, 3]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    nll = F.cross_entropy(logits[0], targets[0], reduction="none")
    plain = masked_ce(logits, targets, mask)
    focal = masked_ce(logits, targets, mask, focal_gamma=2.0)
    assert plain.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    w = (1 - torch.exp(-nll)) ** 2
    w = w / w.mean()
    assert w[0] < 0.05 < 1.9 < w[1]  # easy token nearly ignored
    assert focal.item() == pytest.approx((w * nll).mean().item(), rel=1e-5)
    assert focal > plain  # weight moved to the hard token


def test_prediction_entropy_bounds():
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert prediction_entropy(torch.zeros(2, 3, V), mask).item() == pytest.approx(math.log(V), rel=1e-5)
    peaked = torch.full((2, 3, V), -50.0)
    peaked[..., 0] = 50.0
    assert prediction_entropy(peaked, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_sgd_on_negative_prediction_entropy_raises_it():
    logits, _, mask = batch(1)
    x = (logits * 3).requires_grad_(True)
    before = prediction_entropy(x, mask)
    x2 = sgd_step(x, -before)
    assert prediction_entropy(x2, mask) > before.detach() + 1e-3


def test_sgd_on_negative_usage_entropy_raises_it():
    logits, _, mask = batch(2)
    x = (logits * 3).requires_grad_(True)
    before = usage_entropy(x, mask)
    x2 = sgd_step(x, -before)
    assert usage_entropy(x2, mask) > before.detach() + 1e-3


def test_usage_entropy_rises_on_collapsed_marginal_with_low_position_entropy():
    # Every position confidently predicts token 0: per-position and marginal entropy both low.
    # The usage-entropy gradient must still spread the marginal over other entries.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, T, V, generator=g) * 0.1
    logits[..., 0] += 6.0
    mask = torch.ones(B, T, dtype=torch.bool)
    x = logits.clone().requires_grad_(True)
    assert prediction_entropy(x, mask) < 0.1 * math.log(V)
    before = usage_entropy(x, mask)
    assert before < 0.1 * math.log(V)
    x2 = sgd_step(x, -before, lr=50.0)  # the loss is a mean over 21 positions: small gradients
    after = usage_entropy(x2, mask)
    assert after > before.detach() * 1.2
    # the step lowered the dominant logit relative to the others at every position
    margin = lambda z: (z[..., 0] - z[..., 1:].mean(-1))  # noqa: E731
    assert (margin(x2) < margin(x.detach())).all()


def test_usage_entropy_is_marginal_not_mean_of_positions():
    # Each position one-hot on a different entry: per-position entropy 0, marginal uniform.
    logits = torch.full((1, V, V), -50.0)
    logits[0, torch.arange(V), torch.arange(V)] = 50.0
    mask = torch.ones(1, V, dtype=torch.bool)
    assert prediction_entropy(logits, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert usage_entropy(logits, mask).item() == pytest.approx(math.log(V), rel=1e-5)


@pytest.mark.parametrize("which", ["entropy", "usage_entropy"])
def test_full_objective_regulariser_gradient_raises_entropy(which):
    """With the CE contribution removed (loss - ce term), one SGD step on the objective raises the
    regularised entropy; with the regulariser weight at 0 the same step leaves entropy to CE."""
    logits, targets, mask = batch(4)
    kw = {"codebook_entropy_weight": 0.5, "codebook_entropy_warmup_steps": 0} if which == "entropy" \
        else {"usage_entropy_weight": 0.5}
    c = cfg(**kw)
    x = (logits * 3).requires_grad_(True)
    loss, terms = compute_objective(x, targets, mask, 0, c)
    reg_only = loss - masked_ce(x, targets, mask)  # = -w * entropy term(s): CE weight 0
    x2 = sgd_step(x, reg_only, lr=2.0)
    fn = prediction_entropy if which == "entropy" else usage_entropy
    assert fn(x2, mask) > terms[which] + 1e-4
    # and the regulariser weight 0 objective is exactly CE
    loss0, _ = compute_objective(x, targets, mask, 0, cfg())
    assert loss0.item() == pytest.approx(masked_ce(x, targets, mask).item(), rel=1e-6)


def test_compute_objective_terms_and_schedules():
    logits, targets, mask = batch(5)
    c = cfg(label_smoothing=0.2, label_smoothing_end=0.0, label_smoothing_decay_steps=40,
            codebook_entropy_weight=0.04, codebook_entropy_warmup_steps=20, usage_entropy_weight=0.1)
    loss, t = compute_objective(logits, targets, mask, 10, c)
    assert set(t) == {"loss", "ce", "ce_smoothed", "entropy", "usage_entropy",
                      "reg_entropy_weight", "label_smoothing"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in t.values())
    assert t["label_smoothing"].item() == pytest.approx(0.15)
    assert t["reg_entropy_weight"].item() == pytest.approx(0.02)
    assert t["ce"].item() == pytest.approx(masked_ce(logits, targets, mask).item(), rel=1e-6)
    assert t["ce_smoothed"].item() == pytest.approx(
        masked_ce(logits, targets, mask, label_smoothing=0.15).item(), rel=1e-6)
    expected = t["ce_smoothed"] - 0.02 * t["entropy"] - 0.1 * t["usage_entropy"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # past the warmup the entropy bonus is gone and smoothing has reached its end value
    loss_late, t_late = compute_objective(logits, targets, mask, 40, c)
    assert t_late["reg_entropy_weight"].item() == 0.0 and t_late["label_smoothing"].item() == 0.0
    assert loss_late.item() == pytest.approx((t_late["ce"] - 0.1 * t_late["usage_entropy"]).item(), rel=1e-6)


def test_per_codebook_label_smoothing_rule():
    assert codebook_label_smoothing(0.1, None, None) == 0.1
    assert codebook_label_smoothing(0.1, 0, 8) == 0.1  # AR codebook: configured value
    assert codebook_label_smoothing(0.1, 1, 8) == pytest.approx(0.05)  # first NAR codebook
    assert codebook_label_smoothing(0.1, 7, 8) == pytest.approx(0.1)  # finest: full value
    vals = [codebook_label_smoothing(0.1, k, 8) for k in range(1, 8)]
    assert vals == sorted(vals)
    assert codebook_label_smoothing(0.1, 1, 2) == 0.1
    with pytest.raises(ValueError):
        codebook_label_smoothing(0.1, 8, 8)
    logits, targets, mask = batch(6)
    obj = Objective(cfg(label_smoothing=0.1), n_q=8)
    _, t = obj(logits, targets, mask, 0, codebook_index=1)
    assert t["label_smoothing"].item() == pytest.approx(0.05)
    assert t["ce_smoothed"].item() == pytest.approx(
        masked_ce(logits, targets, mask, label_smoothing=0.05).item(), rel=1e-6)


def test_token_noise():
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(64, 64, dtype=torch.long)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 32:] = False
    noisy = token_noise(tokens, 0.3, 1000, g, mask=mask)
    changed = noisy != tokens
    assert not changed[:, 32:].any()  # padding untouched
    assert changed[:, :32].float().mean().item() == pytest.approx(0.3 * 999 / 1000, abs=0.04)
    assert noisy.max() < 1000 and noisy.dtype == tokens.dtype
    assert (tokens == 0).all()  # input not modified
    assert token_noise(tokens, 0.0, 1000, g) is tokens


def test_token_noise_with_neighbours_picks_near_entries():
    table = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])  # [V=5, D=1]
    assert nearest_entries(table, 1)[:, 0].tolist() == [1, 0, 1, 4, 3]
    near = nearest_entries(table, 2)  # [5, 2]
    assert near.shape == (5, 2) and not (near == torch.arange(5)[:, None]).any()  # never itself
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (64, 64), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 32:] = False
    tokens[:, 40:] = -1  # padding ids stay
    noisy = token_noise(tokens, 0.3, 5, g, mask=mask, neighbours=near)
    changed = noisy != tokens
    assert not changed[:, 32:].any() and (noisy[:, 40:] == -1).all()
    assert changed[:, :32].float().mean().item() == pytest.approx(0.3, abs=0.04)  # a neighbour is never itself
    rows, cols = changed.nonzero(as_tuple=True)
    assert all(int(n) in near[int(t)].tolist() for t, n in zip(tokens[rows, cols], noisy[rows, cols]))


def test_the_ar_task_asks_for_the_codec_only_when_neighbours_are_on():
    def no_codec():
        raise AssertionError("the codec was loaded although token_noise_neighbours is 0")

    assert build_task("ar", TrainingConfig(token_noise=0.4), 5, 4, no_codec).neighbours is None
    table = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])
    task = build_task("ar", TrainingConfig(token_noise=0.4, token_noise_neighbours=2), 5, 4, lambda: table)
    assert task.neighbours.shape == (5, 2)
    with pytest.raises(ValueError, match="token_noise_neighbours"):
        build_task("ar", TrainingConfig(token_noise=0.4, token_noise_neighbours=2), 5, 4)


def test_scheduled_sampling_mix():
    g = torch.Generator().manual_seed(0)
    gold = torch.zeros(100, 100, dtype=torch.long)
    pred = torch.ones_like(gold)
    mixed = scheduled_sampling_mix(gold, pred, 0.7, g)
    assert (mixed == 0).float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert scheduled_sampling_mix(gold, pred, 1.0, g) is gold
    assert (scheduled_sampling_mix(gold, pred, 0.0, g) == 1).all()
    mask = torch.zeros_like(gold, dtype=torch.bool)
    assert (scheduled_sampling_mix(gold, pred, 0.0, g, mask=mask) == 0).all()


def test_sharpened_usage_entropy_sees_argmax_collapse_and_its_gradient_spreads_it():
    from harmonica.training.objectives import usage_entropy

    torch.manual_seed(0)
    # every position nearly uniform with the same tiny bias: argmax collapsed onto entry 0
    logits = (0.01 * torch.randn(4, 50, 16)).requires_grad_()
    with torch.no_grad():
        logits[..., 0] += 0.5
    mask = torch.ones(4, 50, dtype=torch.bool)
    soft, sharp = usage_entropy(logits, mask), usage_entropy(logits, mask, temperature=0.05)
    assert soft > 0.95 * math.log(16)  # temperature 1 calls this healthy
    assert sharp < 0.5 * math.log(16)  # the sharpened marginal sees the collapse
    opt = torch.optim.SGD([logits], lr=100.0)  # the marginal's gradient is averaged over 200 positions
    for _ in range(10):
        opt.zero_grad()
        (-usage_entropy(logits, mask, temperature=0.05)).backward()
        opt.step()
    assert usage_entropy(logits, mask, temperature=0.05) > sharp
    hist = torch.bincount(logits.argmax(-1).flatten(), minlength=16)
    assert (hist > 0).sum() > 4  # ascending it moved argmaxes off the collapsed entry


def test_neighbour_smoothing_moves_target_mass_to_the_nearest_entries_only():
    from harmonica.training.objectives import neighbour_nll

    table = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])  # [V=5, D=1]
    near = nearest_entries(table, 1)  # [5, 1]: 1, 0, 1, 4, 3
    cfg = TrainingConfig(label_smoothing=0.0, codebook_entropy_weight=0.0, neighbour_smoothing=0.5,
                         neighbour_smoothing_k=1)
    targets = torch.tensor([[0, 3, 5, 2]])  # [1, 4]; 5 = STOP (outside the table)
    mask = torch.tensor([[True, True, True, False]])
    logits = torch.zeros(1, 4, 6, requires_grad=True)  # [1, 4, V+1]
    loss, terms = compute_objective(logits, targets, mask, 0, cfg, codebook_index=0, neighbours=near)
    loss.backward()
    g = logits.grad[0]  # [4, 6]: negative where the target distribution puts mass
    assert g[0, 0] < 0 and g[0, 1] < 0 and g[0, 0] == pytest.approx(g[0, 1].item())  # half on 0, half on its neighbour 1
    assert (g[0, 2:] > 0).all()  # a far miss is not rewarded
    assert g[1, 3] < 0 and g[1, 4] < 0 and (g[1, :3] > 0).all()
    assert g[2, 5] < 0 and (g[2, :5] > 0).all()  # STOP keeps all its mass
    assert (g[3] == 0).all()  # padding
    # the plain CE stays the comparable metric: smoothing changes the loss, not terms["ce"]
    plain, plain_terms = compute_objective(logits.detach(), targets, mask, 0, cfg, codebook_index=0)
    assert terms["ce"] == pytest.approx(plain_terms["ce"].item())
    logp = torch.log_softmax(torch.tensor([[[5.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]), -1)  # [1, 1, 6]
    nb = neighbour_nll(logp, -logp[..., 0], torch.tensor([[0]]), torch.tensor([[True]]), near)
    assert nb.item() == pytest.approx(-logp[0, 0, 1].item())  # target 0 -> its neighbour 1's nll


def test_neighbour_smoothing_asks_for_the_codec_and_is_refused_for_the_nar():
    table = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])
    cfg = TrainingConfig(neighbour_smoothing=0.3, neighbour_smoothing_k=2)
    task = build_task("ar", cfg, 5, 4, lambda: table)
    assert task.target_neighbours.shape == (5, 2) and task.neighbours is None
    with pytest.raises(ValueError, match="neighbour_smoothing"):
        build_task("ar", cfg, 5, 4)
    with pytest.raises(ValueError, match="training.nar.neighbour_smoothing"):
        build_task("nar", cfg, 5, 4)


def test_embedding_regression_prices_a_miss_by_its_distance_in_the_codec_space():
    from harmonica.training.objectives import embedding_regression

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])  # [V=3, D=2]
    targets = torch.tensor([[0, 0, 3, 1]])  # [1, 4]; 3 = STOP
    mask = torch.tensor([[True, True, True, False]])
    logits = torch.full((1, 4, 4), -30.0)  # [1, 4, V+1]
    logits[0, 0, 1] = 30.0  # a near miss (entry 1 for 0)
    logits[0, 1, 2] = 30.0  # a far miss (entry 2 for 0)
    logits[0, 2, 0] = 30.0  # STOP target: not an entry, left out
    mse = embedding_regression(logits, targets, mask, table)
    assert mse.item() == pytest.approx(((1.0 / 2) + (100.0 / 2)) / 2, rel=1e-4)  # mean over the 2 entry targets
    near = embedding_regression(logits[:, :1], targets[:, :1], mask[:, :1], table)
    far = embedding_regression(logits[:, 1:2], targets[:, 1:2], mask[:, 1:2], table)
    assert near < far  # the CE would price both alike
    uniform = torch.zeros(1, 1, 4, requires_grad=True)
    loss = embedding_regression(uniform, torch.tensor([[0]]), torch.tensor([[True]]), table)
    loss.backward()
    g = uniform.grad[0, 0]  # descending it moves mass from the far entry 2 towards entry 0
    assert g[2] > 0 and g[0] < 0 and g[3] == 0  # STOP's logit is not part of the expectation


def test_embedding_regression_asks_for_the_codec_and_is_refused_for_the_nar():
    table = torch.tensor([[0.0], [1.0], [3.0], [10.0], [12.0]])
    cfg = TrainingConfig(embedding_regression_weight=0.5)
    task = build_task("ar", cfg, 5, 4, lambda: table)
    assert torch.equal(task.table, table) and task.target_neighbours is None and task.neighbours is None
    with pytest.raises(ValueError, match="embedding_regression_weight"):
        build_task("ar", cfg, 5, 4)
    with pytest.raises(ValueError, match="training.nar.embedding_regression_weight"):
        build_task("nar", cfg, 5, 4)
