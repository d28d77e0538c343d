"""Decoding seeds of an evaluation: a pure function of (eval seed, utterance id, seed index), and
how far the model's scores move from one seed to the next (eval.num_seeds > 1).

Not the position in the slice (adding an utterance must not reseed the others) and not Python's
salted `hash`: a SHA-256 of the three, so two processes, machines or runs agree on every seed.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from harmonica.evaluation.text import corpus_wer

SEED_BITS = 63  # torch.Generator.manual_seed takes any non-negative int64


def utterance_seed(eval_seed: int, utterance_id: str, index: int = 0) -> int:
    """The seed that decodes utterance `utterance_id` the index-th time (eval.num_seeds > 1)."""
    digest = hashlib.sha256(f"{eval_seed}\x1f{utterance_id}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def by_seed(rows: Sequence[Mapping[str, Any]], source: str = "model") -> dict[int, dict[str, float]]:
    """seed index -> {"wer": corpus WER, "cer": mean CER} of `source` over that seed's decodings: how far
    one evaluation of the same model can land from another by sampling alone. Rows without a
    seed_index count as seed 0 (single-seed tables)."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(int(row.get("seed_index") or 0), []).append(row)

    def mean_cer(group: list[Mapping[str, Any]]) -> float:
        values = [float(v) for r in group if (v := r.get(f"{source}_cer")) is not None]  # logged NaN is None
        return sum(values) / len(values) if values else float("nan")

    return {index: {"wer": corpus_wer([r.get("text") or "" for r in group],
                                      [r.get(f"{source}_hypothesis") or "" for r in group]),
                    "cer": mean_cer(group)}
            for index, group in sorted(groups.items())}


def seed_spread_metrics(rows: Sequence[Mapping[str, Any]], prefix: str = "eval", source: str = "model") -> dict[str, float]:
    """`<prefix>/seeds/{wer,cer}_{min,max,std}` over the per-seed values; empty with one seed."""
    per = by_seed(rows, source)
    if len(per) < 2:
        return {}
    out: dict[str, float] = {}
    for key in ("wer", "cer"):
        values = [v[key] for v in per.values()]
        out[f"{prefix}/seeds/{key}_min"] = min(values)
        out[f"{prefix}/seeds/{key}_max"] = max(values)
        out[f"{prefix}/seeds/{key}_std"] = statistics.stdev(values)
    return out


def describe_by_seed(rows: Sequence[Mapping[str, Any]], source: str = "model") -> str | None:
    """"WER by decoding seed 0.710 / 0.863 / 0.790 (spread 0.153)"; None with one seed."""
    per = by_seed(rows, source)
    if len(per) < 2:
        return None
    wers = [v["wer"] for v in per.values()]
    return (f"WER by decoding seed {' / '.join(f'{w:.3f}' for w in wers)} (spread {max(wers) - min(wers):.3f}: "
            "what sampling alone moves one evaluation)")
