"""Loss terms on codec-token logits (pure functions; no logging, no host syncs).

Shapes: logits [B, T, V], int targets [B, T], bool mask [B, T] (True = valid position). Padded
positions may hold any target value (e.g. -100) and even non-finite logits: they are excluded with
`torch.where`, never by multiplying with the mask (0 * nan = nan), and never by boolean indexing
(which needs a host sync to size its output). Reductions are in float32 whatever the logits dtype.

Why the regularisers (RCA 000, plan 2.2): pure CE on codec tokens collapses into a few frequent
tokens. `prediction_entropy` (per-position confidence penalty, scheduled to fade) widens each
prediction early; `usage_entropy` (entropy of the batch-marginal prediction) rewards using many
codebook entries *across* positions, which per-position entropy alone cannot: a model predicting
the same token everywhere can be uncertain per position yet use one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harmonica.config.schema import TrainingConfig
from harmonica.models.ar import blank_text
from harmonica.models.sampling import integers, uniform
from harmonica.training.schedules import codebook_entropy_weight_at, label_smoothing_at

__all__ = [
    "Objective",
    "codebook_label_smoothing",
    "compute_objective",
    "masked_ce",
    "nearest_entries",
    "prediction_entropy",
    "scheduled_sampling_mix",
    "token_noise",
    "usage_entropy",
]


def _valid_count(mask: Tensor) -> Tensor:
    return mask.sum().clamp_min(1).float()  # an all-padding batch gives 0, not nan


def _ce_parts(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs [B,T,V] float32, nll [B,T], uniform-target CE [B,T]); padding -> target 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    safe_t = torch.where(mask, targets, torch.zeros_like(targets)).long()
    nll = -logp.gather(-1, safe_t.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    return logp, nll, smooth


def _focal_weights(nll: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """(1 - p_t)^gamma normalised to mean 1 over valid positions, zero on padding. Detached: they
    re-weight positions (easy, confident tokens count less), they are not a gradient path of their
    own. The normalisation keeps the loss scale (and so the effective LR) independent of gamma."""
    p_t = torch.exp(-nll.detach())
    w = torch.where(mask, (1.0 - p_t).clamp_min(0.0) ** gamma, torch.zeros_like(p_t))
    return w * (_valid_count(mask) / w.sum().clamp_min(1e-12))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum() / _valid_count(mask)


def masked_ce(logits: Tensor, targets: Tensor, mask: Tensor, label_smoothing: float = 0.0,
              focal_gamma: float = 0.0) -> Tensor:
    """Mean CE over valid positions. With `label_smoothing` e it equals
    F.cross_entropy(label_smoothing=e) on the valid positions: (1-e)*nll + e*mean_v(-log p_v).
    With `focal_gamma` > 0 each position is weighted by (1-p_t)^gamma, weights normalised to mean 1."""
    _, nll, smooth = _ce_parts(logits, targets, mask)
    per_pos = (1.0 - label_smoothing) * nll + label_smoothing * smooth if label_smoothing else nll
    if focal_gamma > 0:
        w = _focal_weights(nll, mask, focal_gamma)
        return torch.where(mask, per_pos * w, torch.zeros_like(per_pos)).sum() / _valid_count(mask)
    return _masked_mean(per_pos, mask)


def prediction_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid positions of the entropy (nats) of each position's predicted distribution."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return _masked_mean(ent, mask)


def usage_entropy(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of the batch-marginal prediction: mean of softmax(logits / temperature) over
    valid positions. Maximal (log V) when the batch as a whole spreads its probability over all
    entries. At temperature 1 a model whose every position is nearly uniform already scores high
    while its argmax picks the same few entries everywhere (the collapse the utilisation metric
    sees); a temperature < 1 sharpens each position towards its argmax, so the marginal tracks the
    histogram of predicted tokens and the gradient pushes those apart."""
    p = F.softmax(logits.float() / temperature, dim=-1)
    p = torch.where(mask.unsqueeze(-1), p, torch.zeros_like(p))
    marginal = p.sum(dim=(0, 1)) / _valid_count(mask)
    return -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()


def codebook_label_smoothing(value: float, codebook_index: int | None, n_q: int | None,
                             first_nar_scale: float = 0.5) -> float:
    """Per-codebook label smoothing (plan 2.2). Rule: the configured value is what the finest codebook
    (n_q-1) gets, and codebook 0 too (it is the AR stage, which has its own config section). The
    NAR codebooks 1..n_q-1 ramp linearly from first_nar_scale*value at codebook 1 to the full value
    at codebook n_q-1: finer residual codebooks have noisier, less predictable targets, so they get
    the stronger confidence penalty; coarse NAR codebooks carry structure and are smoothed less.
    No codebook_index / n_q (or n_q <= 2, a single NAR codebook) -> value unchanged."""
    if codebook_index is None or n_q is None or codebook_index <= 0 or n_q <= 2:
        return value
    if not 0 < codebook_index < n_q:
        raise ValueError(f"codebook_index {codebook_index} outside 0..{n_q - 1}")
    t = (codebook_index - 1) / (n_q - 2)
    return value * (first_nar_scale + (1.0 - first_nar_scale) * t)


def neighbour_nll(logp: Tensor, nll: Tensor, targets: Tensor, mask: Tensor, neighbours: Tensor) -> Tensor:
    """Mean -log p over each target's k nearest entries: log-probs [B, T, V'] (V' >= V, e.g. a STOP
    column), the targets' own nll [B, T] (`_ce_parts`), targets [B, T], neighbours [V, k]
    (`nearest_entries`) -> [B, T]. A target outside the table (STOP) or on padding keeps its own nll,
    so smoothing never moves mass off STOP."""
    V = neighbours.size(0)
    inside = mask & (targets < V)  # [B, T]
    safe = torch.where(inside, targets, torch.zeros_like(targets)).long()  # [B, T]
    nb = -logp.gather(-1, neighbours.to(logp.device)[safe]).mean(-1)  # [B, T]
    return torch.where(inside, nb, nll)


def embedding_regression(logits: Tensor, targets: Tensor, mask: Tensor, table: Tensor) -> Tensor:
    """Mean over valid positions whose target is an entry (not STOP) of the squared error, averaged over
    the embedding dimensions, between the expected embedding under softmax(logits[..., :V]) and the target
    entry's: logits [B, T, V'] (V' >= V), targets [B, T], table [V, D] (a codebook's embeddings) -> 0-d.
    The CE treats every wrong entry alike; this term prices a miss by how far it sounds."""
    V = table.size(0)
    inside = mask & (targets < V)  # [B, T]
    safe = torch.where(inside, targets, torch.zeros_like(targets)).long()  # [B, T]
    table = table.to(device=logits.device, dtype=torch.float32)
    expected = F.softmax(logits[..., :V].float(), dim=-1) @ table  # [B, T, D]
    err = ((expected - table[safe]) ** 2).mean(-1)  # [B, T]
    return _masked_mean(err, inside)


def compute_objective(logits: Tensor, targets: Tensor, mask: Tensor, step: int,
                      cfg: TrainingConfig, codebook_index: int | None = None,
                      n_q: int | None = None, neighbours: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = CE(scheduled label smoothing, focal) - w_ent(step) * prediction_entropy
    - usage_entropy_weight * usage_entropy, with `step` the optimizer step.

    `terms` are detached 0-d tensors on the logits' device (no .item(): the trainer accumulates and
    syncs only when it logs): "ce" (plain, unsmoothed, unweighted CE -- comparable across runs and
    with validation), "ce_smoothed" (the CE term actually optimised), "entropy", "usage_entropy",
    "reg_entropy_weight", "label_smoothing" (the value used, after the per-codebook rule), "loss".
    neighbours [V, k]: with cfg.neighbour_smoothing a, a share a of the target mass goes uniformly to
    the target's k nearest codec entries (`neighbour_nll`). An entropy term whose weight is 0 is still reported but computed without autograd."""
    ls = codebook_label_smoothing(label_smoothing_at(step, cfg), codebook_index, n_q)
    w_ent = codebook_entropy_weight_at(step, cfg)
    w_use = cfg.usage_entropy_weight

    logp, nll, smooth = _ce_parts(logits, targets, mask)
    per_pos = (1.0 - ls) * nll + ls * smooth if ls else nll
    a = cfg.neighbour_smoothing if neighbours is not None else 0.0
    if a > 0:
        per_pos = (1.0 - a) * per_pos + a * neighbour_nll(logp, nll, targets, mask, neighbours)
    if cfg.focal_gamma > 0:
        per_pos = per_pos * _focal_weights(nll, mask, cfg.focal_gamma)
    ce_term = _masked_mean(per_pos, mask)
    loss = ce_term

    with torch.set_grad_enabled(torch.is_grad_enabled() and w_ent > 0):
        ent = _masked_mean(-(logp.exp() * logp).sum(-1), mask)
    if w_ent > 0:
        loss = loss - w_ent * ent
    with torch.set_grad_enabled(torch.is_grad_enabled() and w_use > 0):
        use = usage_entropy(logits, mask, cfg.usage_entropy_temperature)
    if w_use > 0:
        loss = loss - w_use * use

    dev = logits.device
    terms = {
        "loss": loss.detach(),
        "ce": _masked_mean(nll.detach(), mask),
        "ce_smoothed": ce_term.detach(),
        "entropy": ent.detach(),
        "usage_entropy": use.detach(),
        # torch.full fills on device; torch.tensor(x, device=cuda) would be a synchronising copy
        "reg_entropy_weight": torch.full((), w_ent, device=dev),
        "label_smoothing": torch.full((), ls, device=dev),
    }
    return loss, terms


@dataclass
class Objective:
    """`compute_objective` bound to one training section (and, for a model that predicts a fixed
    set of codebooks, to n_q for the per-codebook label-smoothing rule)."""

    cfg: TrainingConfig
    n_q: int | None = None

    def __call__(self, logits: Tensor, targets: Tensor, mask: Tensor, step: int,
                 codebook_index: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return compute_objective(logits, targets, mask, step, self.cfg,
                                 codebook_index=codebook_index, n_q=self.n_q)


def token_noise(tokens: Tensor, p: float, vocab_size: int, generator: torch.Generator | None = None,
                mask: Tensor | None = None, neighbours: Tensor | None = None) -> Tensor:
    """Teacher-forcing input noise: each valid position (all if mask is None) is replaced, with
    probability p, by a token drawn uniformly from [0, vocab_size) -- possibly the same token -- or,
    given neighbours [vocab_size, k] (`nearest_entries`), by one of the token's k nearest entries.
    Returns a new tensor; `tokens` is not modified. The generator may live on any device (`uniform`)."""
    if p <= 0:
        return tokens
    hit = uniform(tokens.shape, generator, tokens.device) < p
    if mask is not None:
        hit = hit & mask
    if neighbours is None:
        rand_tok = integers(vocab_size, tokens.shape, generator, tokens.device, tokens.dtype)
    else:
        pick = integers(neighbours.size(1), tokens.shape, generator, tokens.device)
        rand_tok = neighbours[tokens.clamp(0, vocab_size - 1), pick].to(tokens.dtype)  # padding ids never hit
    return torch.where(hit, rand_tok, tokens)


def nearest_entries(table: Tensor, k: int) -> Tensor:
    """A codebook's embeddings [V, D] -> the k nearest other entries of each [V, k] (Euclidean)."""
    k = min(k, table.size(0) - 1)
    d = torch.cdist(table.float(), table.float())  # [V, V]
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).indices  # [V, k]


def text_dropout(text: Tensor, text_lens: Tensor, p: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Classifier-free guidance training: each row, with probability p, becomes the empty text
    (its BOS and EOS, `models.ar.blank_text`; the rest padding, length 2). text [B, L], text_lens [B]
    -> (text [B, L], text_lens [B], dropped [B] bool). New tensors; the generator may live on any device."""
    if p <= 0:  # no draw: the generator's stream is unchanged when text dropout is off
        return text, text_lens, torch.zeros(text.size(0), dtype=torch.bool, device=text.device)
    dropped = uniform((text.size(0),), generator, text.device) < p  # [B]
    text = torch.where(dropped[:, None], blank_text(text, text_lens), text)  # [B, L]
    return text, torch.where(dropped, torch.full_like(text_lens, 2), text_lens), dropped


def scheduled_sampling_mix(gold: Tensor, predicted: Tensor, teacher_ratio: float,
                           generator: torch.Generator | None = None,
                           mask: Tensor | None = None) -> Tensor:
    """Per position keep the gold token with probability teacher_ratio, else the model's own
    prediction (detached by being integer). Padded positions (mask False) keep gold."""
    if teacher_ratio >= 1.0:
        return gold
    use_pred = uniform(gold.shape, generator, gold.device) >= teacher_ratio
    if mask is not None:
        use_pred = use_pred & mask
    return torch.where(use_pred, predicted.to(gold.dtype), gold)
