"""Training diagnostics as device tensors (plan 4.4, 5.1). Nothing here calls .item()/.cpu() or
sizes a tensor from data (boolean indexing, torch.bincount), so updating them every micro-batch
costs no host sync; the trainer converts the returned dicts to floats only when it logs.

Metric names (0-based indices, matching the code: AR is cb0, NAR codebooks are cb1..cb{n_q-1};
attention layers are layer0..layer{L-1}):
  {prefix}/cb{k}/util_pred      fraction of the K entries predicted (argmax) at least once
  {prefix}/cb{k}/util_target    same for the targets
  {prefix}/cb{k}/usage_entropy  entropy (nats) of the predicted-token histogram
  {prefix}/cb{k}/perplexity     exp(usage_entropy): effective number of entries used
  {prefix}/cb{k}/ce, /acc       mean CE and argmax accuracy over the window's valid positions
  {prefix}/util_pred_median     median of util_pred over the codebooks seen in the window
  {prefix}/attn_entropy/layer{i}      mean over heads;   .../layer{i}_min   min over heads
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "CodebookUsage",
    "attention_entropy_summary",
    "grad_norms",
    "histogram_stats",
    "snapshot_params",
    "update_ratios",
]


def histogram_stats(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(utilisation, entropy nats, perplexity) of one or more histograms [..., K]. An empty
    histogram gives (0, 0, 1)."""
    counts = counts.float()
    util = (counts > 0).float().mean(-1)
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # 0 log 0 = 0
    return util, ent, ent.exp()


class CodebookUsage:
    """Window accumulator of per-codebook predicted/target histograms, CE and accuracy."""

    def __init__(self, n_codebooks: int, codebook_size: int,
                 device: torch.device | str = "cpu") -> None:
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.device = torch.device(device)
        def z(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=self.device)

        self.pred_counts = z(n_codebooks, codebook_size)
        self.target_counts = z(n_codebooks, codebook_size)
        self.ce_sum = z(n_codebooks, dtype=torch.float32)  # float32: MPS has no float64
        self.correct = z(n_codebooks)
        self.count = z(n_codebooks)
        # Which codebooks got data, as a host-side set of Python ints: knowing it from the counts
        # would need a sync, and reporting util 0 for a codebook this model never trains (e.g. cb0
        # in the NAR) would raise false collapse alarms.
        self.seen: set[int] = set()

    def reset(self) -> None:
        for t in (self.pred_counts, self.target_counts, self.ce_sum, self.correct, self.count):
            t.zero_()
        self.seen.clear()

    def _add_hist(self, hist: Tensor, tokens: Tensor, mask: Tensor) -> None:
        # Tokens outside [0, K) at valid positions (e.g. the AR stop token) are not codebook entries:
        # they are left out of the histogram (but still count for ce/acc via the caller's numbers).
        tok = tokens.reshape(-1).long()
        ok = mask.reshape(-1) & (tok >= 0) & (tok < self.codebook_size)
        hist.index_add_(0, tok.clamp(0, self.codebook_size - 1), ok.long())

    @torch.no_grad()
    def update(self, codebook_index: int, pred_tokens: Tensor, target_tokens: Tensor, mask: Tensor,
               ce_sum: Tensor, correct: Tensor | None = None, count: Tensor | None = None) -> None:
        """Accumulate one batch of codebook `codebook_index` (0-based). pred/target/mask are
        [B, T]; ce_sum is the *sum* of per-position CE over valid positions (0-d tensor). correct
        and count default to argmax hits and valid positions computed here."""
        if not 0 <= codebook_index < self.n_codebooks:
            raise IndexError(f"codebook_index {codebook_index} outside 0..{self.n_codebooks - 1}")
        k = codebook_index
        mask = mask.to(self.device, torch.bool)
        pred, tgt = pred_tokens.to(self.device), target_tokens.to(self.device)
        self._add_hist(self.pred_counts[k], pred, mask)
        self._add_hist(self.target_counts[k], tgt, mask)
        if correct is None:
            correct = ((pred == tgt) & mask).sum()
        if count is None:
            count = mask.sum()
        self.ce_sum[k] += ce_sum.detach().to(self.device, torch.float32).reshape(())
        self.correct[k] += correct.to(self.device).long().reshape(())
        self.count[k] += count.to(self.device).long().reshape(())
        self.seen.add(k)

    @torch.no_grad()
    def summary(self, prefix: str) -> dict[str, Tensor]:
        """Metrics of the window so far (see module doc), only for codebooks that got data."""
        out: dict[str, Tensor] = {}
        if not self.seen:
            return out
        u_pred, ent, ppl = histogram_stats(self.pred_counts)
        u_tgt, _, _ = histogram_stats(self.target_counts)
        n = self.count.float().clamp_min(1.0)
        ce, acc = self.ce_sum / n, self.correct.float() / n
        ks = sorted(self.seen)
        for k in ks:
            base = f"{prefix}/cb{k}"
            out[f"{base}/util_pred"] = u_pred[k]
            out[f"{base}/util_target"] = u_tgt[k]
            out[f"{base}/usage_entropy"] = ent[k]
            out[f"{base}/perplexity"] = ppl[k]
            out[f"{base}/ce"] = ce[k]
            out[f"{base}/acc"] = acc[k]
        # quantile(0.5) interpolates between the two middle values for an even count.
        out[f"{prefix}/util_pred_median"] = torch.quantile(u_pred[ks], 0.5)
        return out


def _grads(params: Sequence[nn.Parameter]) -> list[Tensor]:
    return [p.grad.detach() for p in params if p.grad is not None]


def grad_norms(named_groups: Mapping[str, Sequence[nn.Parameter]]) -> dict[str, Tensor]:
    """L2 norm of the gradients per group, plus "total" over all groups (same value as
    clip_grad_norm_ returns for the union). Groups without gradients are omitted. Computed in
    float32 so fp16 gradients do not overflow the sum of squares."""
    out: dict[str, Tensor] = {}
    for name, params in named_groups.items():
        gs = _grads(params)
        if gs:
            out[name] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in gs]))
    if out:
        out["total"] = torch.linalg.vector_norm(torch.stack(list(out.values())))
    return out


@torch.no_grad()
def snapshot_params(named_groups: Mapping[str, Sequence[nn.Parameter]]) -> dict[str, Tensor]:
    """Flat float32 copy of each group's parameters. Take it just before optimizer.step() on log
    steps only (it costs one copy of the weights) and pass it to `update_ratios` after the step."""
    return {name: torch.cat([p.detach().float().reshape(-1) for p in params])
            for name, params in named_groups.items() if len(params)}


@torch.no_grad()
def update_ratios(named_groups: Mapping[str, Sequence[nn.Parameter]],
                  before: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """||w_after - w_before|| / ||w_before|| per group (and "total"), with `before` from
    `snapshot_params`. Healthy AdamW training sits around 1e-4..1e-2 per step; ~0 means a group
    has stopped learning, large values precede divergence."""
    out: dict[str, Tensor] = {}
    d_sq, w_sq = [], []
    for name, old in before.items():
        new = torch.cat([p.detach().float().reshape(-1) for p in named_groups[name]])
        d2, w2 = (new - old).square().sum(), old.square().sum()
        out[name] = (d2.sqrt() / w2.sqrt().clamp_min(1e-12))
        d_sq.append(d2)
        w_sq.append(w2)
    if out:
        out["total"] = torch.stack(d_sq).sum().sqrt() / torch.stack(w_sq).sum().sqrt().clamp_min(1e-12)
    return out


def attention_entropy_summary(attn_entropy: Tensor, prefix: str, sharp: Tensor | None = None) -> dict[str, Tensor]:
    """attn_entropy [n_layers, n_heads] (nats) -> {prefix}/attn_entropy/layer{i} (mean over heads)
    and {prefix}/attn_entropy/layer{i}_min (min over heads; a single collapsed head shows here).
    sharp [n_layers, n_heads] bool: heads trained to be sharp (the AR's guided heads read ~one phone;
    `guided.guided_heads`) -- `_min` leaves them out (their low entropy is the aim, not a collapse; a
    layer of only such heads has no `_min`) and {prefix}/attn_entropy/layer{i}_guided is their mean."""
    ae = attn_entropy.detach().float()
    if ae.dim() != 2:
        raise ValueError(f"attn_entropy must be [n_layers, n_heads], got {tuple(ae.shape)}")
    if sharp is not None and tuple(sharp.shape) != tuple(ae.shape):
        raise ValueError(f"sharp must match attn_entropy {tuple(ae.shape)}, got {tuple(sharp.shape)}")
    # which layers get which names is decided on the host mask: no device sync in the training loop
    free = [[True] * ae.shape[1]] * ae.shape[0] if sharp is None else (~sharp.cpu()).tolist()  # [n_layers][n_heads]
    mean = ae.mean(-1)  # [n_layers]
    free_ae = ae if sharp is None else ae.masked_fill(sharp.to(ae.device), float("inf"))  # guided heads out
    mn = free_ae.amin(-1)  # [n_layers] over the free heads
    out: dict[str, Tensor] = {}
    for i, heads in enumerate(free):
        out[f"{prefix}/attn_entropy/layer{i}"] = mean[i]
        if any(heads):  # min over the free heads
            out[f"{prefix}/attn_entropy/layer{i}_min"] = mn[i]
        if not all(heads):
            out[f"{prefix}/attn_entropy/layer{i}_guided"] = ae[i, [h for h, f in enumerate(heads) if not f]].mean()
    return out
