"""Pictures the trainer logs with their step (`Run.log_image`): a sample's spectrogram and the per-codebook
utilisation heatmap. The matrix is a pure function of the utilisation history the trainer keeps
(`TrainState.util_history`); drawing uses matplotlib's Agg canvas directly (no pyplot, no display, no
global backend switch) and returns an RGBA array.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_CB = re.compile(r"^cb(\d+)$")


def _rgba(fig: Any) -> np.ndarray:
    """The drawn figure as a [H, W, 4] uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def spectrogram_image(wav: np.ndarray, sr: int, title: str) -> np.ndarray:
    """Log-magnitude STFT (n_fft 1024, hop 256, 80 dB range) of a waveform, as an RGBA array."""
    from matplotlib.figure import Figure

    n_fft, hop = 1024, 256
    x = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()  # [F, frames]
    db = 20 * torch.log10(spec.clamp_min(1e-5))  # [F, frames]
    fig = Figure(figsize=(6, 2.6), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
              extent=(0, len(wav) / sr, 0, sr / 2000))
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _rgba(fig)


@dataclass(frozen=True)
class UtilMatrix:
    """Per-codebook utilisation over validations: values[i, j] is codebook `codebooks[i]` at `steps[j]`
    (NaN where that validation did not measure it); `below[i, j]` marks finite values under `floor`."""

    codebooks: tuple[int, ...]
    steps: tuple[int, ...]
    values: np.ndarray  # [n_codebooks, n_steps] float
    below: np.ndarray  # [n_codebooks, n_steps] bool
    floor: float


def util_entry(step: int, metrics: Mapping[str, float], prefix: str = "val") -> dict[str, Any]:
    """One validation's column for `TrainState.util_history`: {"step", "util": {"cb<k>": util_pred}} from
    the `<prefix>/cb<k>/util_pred` metrics (non-finite values left out; the checkpoint JSON has no NaN)."""
    pattern = re.compile(rf"^{re.escape(prefix)}/(cb\d+)/util_pred$")
    util = {m[1]: float(v) for k, v in metrics.items() if (m := pattern.match(k)) and math.isfinite(float(v))}
    return {"step": int(step), "util": util}


def util_matrix(history: Sequence[Mapping[str, Any]], floor: float) -> UtilMatrix:
    """The heatmap's matrix from `util_entry` records, in step order (a step recorded twice -- a resumed
    run -- keeps its last record); rows are the codebooks seen in any record, in index order."""
    by_step = {int(h["step"]): h["util"] for h in history}
    steps = tuple(sorted(by_step))
    codebooks = tuple(sorted({int(m[1]) for u in by_step.values() for k in u if (m := _CB.match(k))}))
    values = np.full((len(codebooks), len(steps)), np.nan)
    for j, step in enumerate(steps):
        for i, cb in enumerate(codebooks):
            if f"cb{cb}" in by_step[step]:
                values[i, j] = float(by_step[step][f"cb{cb}"])
    below = np.isfinite(values) & (values < floor)
    return UtilMatrix(codebooks, steps, values, below, float(floor))


def util_heatmap_image(m: UtilMatrix, title: str) -> np.ndarray:
    """The matrix as a heatmap (colour 0..1, viridis; grey: not measured): cells under the collapse floor
    hatched and outlined in red, the floor marked in red on the colour bar. An RGBA array."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n_cb, n_steps = m.values.shape
    fig = Figure(figsize=(min(4.5 + 0.35 * n_steps, 14), 1.6 + 0.35 * max(n_cb, 1)), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(m.values), aspect="auto", cmap=colormaps["viridis"].with_extremes(bad="#d9d9d9"), vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    for i, j in zip(*np.nonzero(m.below)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", hatch="//", linewidth=1.2))
    every = max(1, math.ceil(n_steps / 12))
    ax.set_xticks(range(0, n_steps, every), [str(s) for s in m.steps[::every]], fontsize=7)
    ax.set_yticks(range(n_cb), [f"cb{c}" for c in m.codebooks], fontsize=7)
    ax.set_xlabel("validation step", fontsize=8)
    ax.set_title(f"{title}\nhatched: below the collapse floor {m.floor:g}", fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.ax.axhline(m.floor, color="red", linewidth=1.5)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _rgba(fig)
