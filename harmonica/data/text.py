"""Text frontends: normalisation, a fixed vocabulary and its hash for the AR/NAR contract.

`chars` (this module) tokenises normalised characters; `phonemes` (harmonica.data.phonemes) tokenises
espeak-ng IPA. `build_frontend(cfg.text)` picks one; preprocessing, training and inference all use it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from harmonica.config.schema import TextConfig

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'.,?!-:;\""


@dataclass(frozen=True)
class TextFrontend:
    lowercase: bool = True
    max_text_len: int = 256

    @property
    def symbols(self) -> tuple[str, ...]:
        chars = CHARS.lower() if self.lowercase else CHARS
        return SPECIALS + tuple(dict.fromkeys(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
        text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
        text = re.sub(r"\s+", " ", text).strip()
        return text.lower() if self.lowercase else text

    def encode(self, text: str) -> list[int]:
        """BOS + symbol ids + EOS, truncated to max_text_len."""
        return self.encode_counted(text)[0]

    def encode_counted(self, text: str) -> tuple[list[int], int]:
        """(`encode(text)`, how many symbols of the normalised text were outside the vocabulary)."""
        index = {s: i for i, s in enumerate(self.symbols)}
        ids = [index.get(c, self.unk_id) for c in self.normalize(text)]
        unknown = sum(i == self.unk_id for i in ids)
        ids = ids[: self.max_text_len - 2]
        return [self.bos_id, *ids, self.eos_id], unknown

    def vocab_hash(self) -> str:
        blob = "\n".join(self.symbols).encode() + f"|lower={self.lowercase}".encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> dict[str, str | int | bool]:
        return {
            "text.frontend": "chars",
            "text.vocab_size": self.vocab_size,
            "text.vocab_hash": self.vocab_hash(),
            "text.lowercase": self.lowercase,
        }


def build_frontend(cfg: TextConfig) -> TextFrontend:
    if cfg.frontend == "phonemes":
        from harmonica.data.phonemes import PhonemeFrontend

        # espeak reads case (acronyms), so the text reaches it un-lowercased
        return PhonemeFrontend(lowercase=False, max_text_len=cfg.max_text_len, voice=cfg.phoneme_voice)
    return TextFrontend(lowercase=cfg.lowercase, max_text_len=cfg.max_text_len)
