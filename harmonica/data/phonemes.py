"""Phoneme text frontend (`text.frontend: phonemes`): espeak-ng IPA over a fixed symbol inventory.

Text -> espeak-ng clauses (`harmonica.data.espeak.phonemize`, voice `text.phoneme_voice`) -> one IPA
string: clauses joined by their punctuation (`,` `.` `?` `!` `;` `:`, the clause boundaries) and a
space, words separated by a space (the word boundary). Tokens are single Unicode code points of that
string; `ˈ` (primary) and `ˌ` (secondary stress), `ː` (length) and combining marks are tokens of their
own. Example: "Hello there, how are you?" -> "həlˈoʊ ðˈɛɹ, hˈaʊ ɑːɹ juː?".

The inventory below is FIXED: ids are positions in it, so it may only grow at the end (which changes
the vocabulary hash, hence the token cache key and the AR/NAR contract). Symbols outside it map to
`<unk>` and are counted (`encode_counted`); preprocessing logs the count.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from harmonica.data import espeak
from harmonica.data.text import SPECIALS, TextFrontend

WORD_BOUNDARY = " "
CLAUSE_MARKS = ",.?!;:"
STRESS_AND_LENGTH = "ˈˌːˑ"
# espeak-ng's English voices use: a æ ɐ ɑ ɒ ʌ ɔ o e ə ɚ ɛ ɜ i ɪ ᵻ u ʊ (vowels), b d ð f ɡ h j k l m n
# ŋ p ɹ ɾ s ʃ t θ v w z ʒ ʔ (consonants) and the syllabic mark; the rest of the common IPA letters
# are in so that other espeak languages/accents encode without <unk>.
VOWELS = "aæɐɑɒʌɔoɵøœɶeəɘɚɛɜɝɞiɪɨᵻuʊʉɯɤyʏ"
CONSONANTS = "bβcçdðfɡgɣhɦɥjʝkɬlɫɭʎʟmɱnŋɲɳpɸqrɹɺɻɽɾʀʁsʂʃtθvʋwʍxχzʐʒʑɕʔʕħɢɰɟʡʢ"
DIACRITICS = "\u0329\u0303\u032a\u02b0\u02b2\u02b7\u02de\u0306\u031a"  # syllabic, nasal, dental, ʰ ʲ ʷ ˞, extra-short, no release
INVENTORY: tuple[str, ...] = tuple(
    dict.fromkeys(WORD_BOUNDARY + CLAUSE_MARKS + STRESS_AND_LENGTH + VOWELS + CONSONANTS + DIACRITICS)
)
INVENTORY_VERSION = 1
_PUNCT = re.compile(f"[{re.escape(CLAUSE_MARKS)}]")


def clause_mark(consumed: str, last: bool) -> str:
    """The clause boundary symbol ending a clause, from the source text espeak consumed for it.

    espeak reads one character beyond the clause, so that look-ahead character is dropped first
    (except for the last clause). No punctuation (e.g. espeak split a very long clause) -> "".
    """
    span = consumed if last else consumed[:-1]
    marks = _PUNCT.findall(span)
    return marks[-1] if marks else ""


@dataclass(frozen=True)
class PhonemeFrontend(TextFrontend):
    voice: str = "en-us"

    @property
    def symbols(self) -> tuple[str, ...]:
        return SPECIALS + INVENTORY

    def normalize(self, text: str) -> str:
        """Text -> the IPA string that is tokenised (see the module docstring)."""
        clauses = espeak.phonemize(super().normalize(text), self.voice)
        parts: list[str] = []
        for i, (ipa, consumed) in enumerate(clauses):
            ipa = re.sub(r"\s+", WORD_BOUNDARY, ipa).strip()
            mark = clause_mark(consumed, last=i == len(clauses) - 1)
            if ipa or mark:
                parts.append(ipa + mark)
        return WORD_BOUNDARY.join(parts)

    def vocab_hash(self) -> str:
        blob = "\n".join(self.symbols).encode() + f"|phonemes/{INVENTORY_VERSION}|voice={self.voice}".encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> dict[str, str | int | bool]:
        return {
            "text.frontend": "phonemes",
            "text.vocab_size": self.vocab_size,
            "text.vocab_hash": self.vocab_hash(),
            "text.phoneme_voice": self.voice,
        }
