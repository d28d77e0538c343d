"""Seeded residual k-means (k-means++ init + Lloyd) and frame sampling for codec fitting.

Everything is deterministic for a given seed and input order: randomness comes only from a
private ``torch.Generator`` / ``numpy.random.Generator``, never from global RNG state.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 32_768  # rows per distance block: bounds memory at CHUNK x K floats
_SEED_POINTS_PER_CLUSTER = 40  # k-means++ runs on a subsample: its loop is O(k * N * D)


def nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid, via matmul in row blocks.

    x ``[N, D]``, centroids ``[K, D]`` -> (idx ``[N]`` int64, dist ``[N]``).
    """
    c_sq = centroids.pow(2).sum(1)  # [K]
    idx, dist = [], []
    for start in range(0, x.shape[0], _CHUNK):
        xb = x[start : start + _CHUNK]  # [n, D]
        # ||x||^2 is constant per row, so argmin only needs ||c||^2 - 2 x.c
        d = torch.addmm(c_sq[None, :], xb, centroids.t(), alpha=-2.0)  # [n, K]
        best, i = d.min(dim=1)
        idx.append(i)
        dist.append((best + xb.pow(2).sum(1)).clamp_min_(0.0))
    return torch.cat(idx), torch.cat(dist)


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``[N, D]`` -> ``[k, D]``. With N <= k, points repeat (cheap, harmless)."""
    n = x.shape[0]
    if n <= k:
        extra = torch.randint(0, n, (k - n,), generator=gen)
        order = torch.cat([torch.randperm(n, generator=gen), extra])
        return x[order].clone()  # [k, D]
    # one matvec per pick (||x||^2 - 2 x.c + ||c||^2): the loop runs k times, keep it lean
    x_sq = x.pow(2).sum(1)  # [N]
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = torch.randint(0, n, (1,), generator=gen)
    d2 = (x_sq - 2.0 * (x @ x[chosen[0]]) + x_sq[chosen[0]]).clamp_min_(0.0)  # [N]
    for j in range(1, k):
        total = d2.sum()
        if total <= 0:  # all remaining points coincide with a centroid
            chosen[j] = torch.randint(0, n, (1,), generator=gen)
        else:
            chosen[j] = torch.multinomial(d2, 1, generator=gen)
        c = chosen[j]
        torch.minimum(d2, (x_sq - 2.0 * (x @ x[c]) + x_sq[c]).clamp_min_(0.0), out=d2)
    return x[chosen].clone()  # [k, D]


def kmeans(
    x: torch.Tensor, k: int, iters: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means from k-means++ seeds: ``[N, D]`` -> (centroids ``[k, D]``, counts ``[k]``).

    Empty clusters are re-seeded with the worst-fit points so the codebook stays fully used.
    """
    x = x.float()
    n_seed = min(x.shape[0], _SEED_POINTS_PER_CLUSTER * k)
    pool = x if n_seed == x.shape[0] else x[torch.randperm(x.shape[0], generator=gen)[:n_seed]]
    cent = kmeans_pp_init(pool, k, gen)  # [k, D]
    for _ in range(iters):
        idx, dist = nearest(x, cent)
        counts = torch.bincount(idx, minlength=k)  # [k]
        sums = torch.zeros_like(cent).index_add_(0, idx, x)  # [k, D]
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if 0 < empty.numel() < x.shape[0]:
            worst = dist.topk(empty.numel()).indices
            new[empty] = x[worst]
        else:
            new[empty] = cent[empty]
        cent = new
    idx, _ = nearest(x, cent)
    return cent, torch.bincount(idx, minlength=k).float()


def residual_kmeans(
    x: torch.Tensor, n_q: int, k: int | list[int], iters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``n_q`` stages, each on the residual left by the previous ones; ``k`` entries per stage
    (an int, or one size per stage).

    x ``[N, D]`` -> (codebooks ``[n_q, K, D]``, counts ``[n_q, K]``), K = max size; a stage with fewer
    entries has zero rows (and zero counts) after its own size.
    """
    sizes = [k] * n_q if isinstance(k, int) else list(k)
    K = max(sizes)
    gen = torch.Generator().manual_seed(int(seed))
    residual = x.float().clone()  # [N, D]
    books = torch.zeros(n_q, K, x.shape[1])  # [n_q, K, D]
    counts = torch.zeros(n_q, K)  # [n_q, K]
    for stage, size in enumerate(sizes):
        cent, cnt = kmeans(residual, size, iters, gen)
        idx, _ = nearest(residual, cent)
        residual -= cent[idx]
        books[stage, :size], counts[stage, :size] = cent, cnt
    return books, counts


def residual_quantize(x: torch.Tensor, codebooks: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """x ``[N, D]``, codebooks ``[n_q, K, D]`` (stage s uses its first sizes[s] rows) -> codes ``[n_q, N]``."""
    residual = x.float().clone()  # [N, D]
    codes = []
    for stage, book in enumerate(codebooks):
        if sizes is not None:
            book = book[: sizes[stage]]  # [K_s, D]
        idx, _ = nearest(residual, book)
        residual -= book[idx]
        codes.append(idx)
    return torch.stack(codes)  # [n_q, N]


def residual_dequantize(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes ``[k, N]`` (first k stages) -> summed centroids ``[N, D]``."""
    out = torch.zeros(codes.shape[1], codebooks.shape[2], dtype=codebooks.dtype)
    for stage, idx in enumerate(codes):
        out += codebooks[stage][idx]
    return out


class FrameReservoir:
    """Uniform sample of at most `capacity` rows from a stream of ``[n, D]`` blocks (Algorithm R).

    Bounded memory whatever the corpus size; seeded, so the same stream gives the same sample.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.buffer: np.ndarray | None = None  # [capacity, D]
        self.seen = 0

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape[0] == 0:
            return
        if self.buffer is None:
            self.buffer = np.empty((self.capacity, rows.shape[1]), dtype=np.float32)
        free = max(0, min(self.capacity - self.seen, rows.shape[0]))
        self.buffer[self.seen : self.seen + free] = rows[:free]
        rest = rows[free:]
        if rest.shape[0]:
            # row with global index g replaces slot j ~ U[0, g] when j < capacity
            g = self.seen + free + np.arange(rest.shape[0])
            j = np.floor(self.rng.random(rest.shape[0]) * (g + 1)).astype(np.int64)
            keep = np.nonzero(j < self.capacity)[0]
            # sequential semantics: for a slot hit twice the later row wins
            slots_rev, first_rev = np.unique(j[keep][::-1], return_index=True)
            self.buffer[slots_rev] = rest[keep[::-1][first_rev]]
        self.seen += rows.shape[0]

    def sample(self) -> torch.Tensor:
        """The kept rows ``[min(seen, capacity), D]``."""
        if self.buffer is None:
            raise ValueError("no frames to fit on (empty fit data)")
        return torch.from_numpy(self.buffer[: min(self.seen, self.capacity)].copy())
