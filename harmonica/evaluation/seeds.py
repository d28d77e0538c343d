"""Decoding seeds of an evaluation: a pure function of (eval seed, utterance id, seed index).

Not the position in the slice (adding an utterance must not reseed the others) and not Python's
salted `hash`: a SHA-256 of the three, so two processes, machines or runs agree on every seed.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch.Generator.manual_seed takes any non-negative int64


def utterance_seed(eval_seed: int, utterance_id: str, index: int = 0) -> int:
    """The seed that decodes utterance `utterance_id` the index-th time (eval.num_seeds > 1)."""
    digest = hashlib.sha256(f"{eval_seed}\x1f{utterance_id}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
