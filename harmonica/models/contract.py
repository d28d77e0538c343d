"""The AR/NAR/codec interface contract: what must agree before anything is synthesised.

Both checkpoints carry `meta.json["contract"]`, written by the trainer from the token cache and the
model. A pair that disagrees on any of these fields trains fine and then produces garbage (or a
shape error deep in decoding); checking them up front turns that into an actionable message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# field -> why it must match (shown to the user)
SHARED_FIELDS: dict[str, str] = {
    "codec_fingerprint": "the two models were trained on tokens of different codecs (or codec fits)",
    "codec_name": "the two models were trained on tokens of different codecs",
    "n_q": "the number of codebooks differs",
    "codebook_size": "the codebook size differs",
    "codebook_sizes": "the per-stage codebook sizes differ",
    "frame_rate": "the token frame rate differs",
    "sample_rate": "the codec sample rate differs",
    "text_vocab_hash": "the text frontends (vocabularies) differ",
    "bos_id": "the text BOS id differs",
    "eos_id": "the text EOS id differs",
    "pad_id": "the text padding id differs",
    "max_text_len": "the maximum text length differs",
}


@dataclass(frozen=True)
class Mismatch:
    field: str
    ar: Any
    nar: Any
    why: str

    @property
    def message(self) -> str:
        return f"{self.field}: AR has {self.ar!r}, NAR has {self.nar!r} ({self.why})"


class IncompatibleModelsError(ValueError):
    """An AR/NAR/codec combination that must not be used together."""

    def __init__(self, mismatches: list[Mismatch], fix: str) -> None:
        self.mismatches = mismatches
        lines = "\n  ".join(m.message for m in mismatches)
        super().__init__(f"incompatible checkpoints:\n  {lines}\n{fix}")


def check_pair(ar: dict[str, Any], nar: dict[str, Any], codec_fingerprint: str | None = None) -> list[Mismatch]:
    """All mismatches between an AR contract and a NAR contract (and the codec that will decode)."""
    out: list[Mismatch] = []
    if ar.get("kind") != "ar":
        out.append(Mismatch("kind", ar.get("kind"), nar.get("kind"), "the --ar checkpoint is not an AR model"))
    if nar.get("kind") != "nar":
        out.append(Mismatch("kind", ar.get("kind"), nar.get("kind"), "the --nar checkpoint is not a NAR model"))
    for field, why in SHARED_FIELDS.items():
        if ar.get(field) != nar.get(field):
            out.append(Mismatch(field, ar.get(field), nar.get(field), why))
    # the NAR must accept every sequence the AR can produce
    ar_max_audio = int(ar.get("max_seq_len", 0)) - 1
    nar_max_audio = int(nar.get("max_seq_len", 0)) - 1
    if ar_max_audio > nar_max_audio:
        out.append(Mismatch(
            "max_seq_len", ar.get("max_seq_len"), nar.get("max_seq_len"),
            f"the AR can emit {ar_max_audio} audio tokens but the NAR accepts only {nar_max_audio}",
        ))
    if codec_fingerprint is not None:
        for kind, c in (("AR", ar), ("NAR", nar)):
            if c.get("codec_fingerprint") != codec_fingerprint:
                out.append(Mismatch(
                    "codec_fingerprint", ar.get("codec_fingerprint"), nar.get("codec_fingerprint"),
                    f"the codec that would decode ({codec_fingerprint[:12]}) is not the one the {kind} was trained on",
                ))
    return out


FIX = (
    "Use an AR and a NAR trained from the same token cache (same project settings: codec.*, text.*, "
    "model.*.max_seq_len); `harmonica train --model-type ar|nar --project P` on one preprocess, or "
    "retrain the odd one out."
)


def require_compatible(ar: dict[str, Any], nar: dict[str, Any], codec_fingerprint: str | None = None) -> None:
    mismatches = check_pair(ar, nar, codec_fingerprint)
    if mismatches:
        raise IncompatibleModelsError(mismatches, FIX)
