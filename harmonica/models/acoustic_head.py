"""An output head that knows how codebook-0 entries sound (model.ar.acoustic_dim).

A plain softmax head learns one weight vector per entry, so it has to learn from examples alone
that entries 17 and 803 are the same vowel at two loudnesses. This head adds, for each frame, the
log-density of an isotropic Gaussian around a point u it predicts in the codec's embedding space:

    logit_v += -scale / 2 * ||u - e_v||^2  (= scale * (u . e_v - ||e_v||^2 / 2) + a term shared by all v)

with e_v entry v's codec embedding reduced to its first `dim` principal components and scaled so the
median distance to an entry's nearest neighbour is 1 (`acoustic_table`). Entries near the predicted
point get alike logits from the first step, and a near miss is cheap by construction; the plain
head beside it keeps whatever the Gaussian cannot say (and the STOP class). The table is a buffer:
fitted once from the codec when training starts, saved and loaded with the weights.

With `inputs=True` (model.ar.acoustic_input) the same table also feeds the AR's input side: each input
frame's embedding gains a learned projection of its entry's row (zero for BOS / STOP), so entries that
sound alike enter the decoder alike too, rare ones included.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def acoustic_table(embeddings: Tensor, dim: int) -> Tensor:
    """A codebook's codec embeddings [V, F] -> [V, dim]: centred, projected on their first dim principal
    components (zero-padded when F < dim), scaled so the median nearest-neighbour distance is 1."""
    x = embeddings.detach().double()  # [V, F]
    x = x - x.mean(dim=0, keepdim=True)  # [V, F]
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh [min(V, F), F]
    comps = vh[:dim]  # [k, F], k <= dim
    comps = comps * torch.where(comps.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)  # a fixed sign per component
    z = F.pad(x @ comps.T, (0, dim - comps.size(0)))  # [V, dim]
    d = torch.cdist(z, z)  # [V, V]
    d.fill_diagonal_(float("inf"))
    nearest = d.min(dim=1).values.median()
    return (z / nearest.clamp_min(1e-12)).float()  # [V, dim]


class AcousticHead(nn.Module):
    """Hidden [B, G, D] -> acoustic logits [B, G * r, V] for r frames per position (module docstring)."""

    def __init__(self, d_model: int, frames_per_step: int, codebook_size: int, dim: int,
                 inputs: bool = False) -> None:
        super().__init__()
        self.r, self.dim = frames_per_step, dim
        self.point = nn.Linear(d_model, frames_per_step * dim)  # u per frame slot
        self.log_scale = nn.Parameter(torch.zeros(()))  # scale = 1: a nearest neighbour costs 1/2 nat
        self.register_buffer("table", torch.zeros(codebook_size, dim))  # [V, dim], set_table before training
        self.inputs = nn.Linear(frames_per_step * dim, d_model, bias=False) if inputs else None  # slot-wise

    @torch.no_grad()
    def set_table(self, embeddings: Tensor) -> None:
        """embeddings [V, F]: the codec's codebook-0 embeddings (`acoustic_table` reduces them)."""
        if embeddings.size(0) != self.table.size(0):
            raise ValueError(f"the codec's codebook 0 has {embeddings.size(0)} entries, this AR {self.table.size(0)}")
        self.table.copy_(acoustic_table(embeddings, self.dim).to(self.table.device))

    def forward(self, z: Tensor) -> Tensor:
        B, G, _ = z.shape
        u = self.point(z).view(B, G * self.r, self.dim)  # [B, G*r, dim]
        e = self.table.to(u.dtype)  # [V, dim]
        return self.log_scale.exp() * (u @ e.T - 0.5 * (e * e).sum(-1))  # [B, G*r, V]

    def embed(self, ids: Tensor) -> Tensor:
        """Input ids [B, G, r] (one group of r frames per position) or [B, P] (frames in slot 0; the
        acoustic prompt) -> [B, G, D] / [B, P, D]. Ids past the table (STOP, BOS) embed as 0."""
        if self.inputs is None:
            raise RuntimeError("this head was built without inputs=True (model.ar.acoustic_input)")
        tab = F.pad(self.table, (0, 0, 0, 2))  # [V+2, dim] STOP and BOS rows are zero
        if ids.dim() == 2:  # slot 0 only
            return tab[ids] @ self.inputs.weight[:, : self.dim].T  # [B, P, D]
        B, G, r = ids.shape
        return self.inputs(tab[ids].view(B, G, r * self.dim))  # [B, G, D]
