"""Text normalisation and word/character error rates for the intelligibility (WER) gate.

Both sides are normalised the way seed-tts-eval does before jiwer, so a WER measures recognition
errors rather than casing and punctuation differences between the transcript style of the ASR
model and the corpus text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import jiwer

# NFKC does not fold typographic quotes, so map them by hand; otherwise "don’t" would lose its
# apostrophe (treated as punctuation) and read as "dont" against a reference's "don't".
_QUOTE_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u0060": "'", "\u00b4": "'",
                            "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})
# Hyphens, dashes and slashes join words ("well-known", "and/or"): split them instead of gluing the
# halves together, which would turn one word into a different, never-matching token.
_SPLITTERS = re.compile(r"[-\u2010\u2011\u2012\u2013\u2014\u2015\u2212/]")
# An apostrophe is only kept between two word characters (contractions, possessives like "john's").
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\b\d+\b")
_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def _strip_punct(s: str) -> str:
    # Unicode categories P* (punctuation) and S* (symbols) cover string.punctuation and the
    # CJK/typographic marks seed-tts-eval strips with zhon; they are removed, not spaced, as there
    # ("1,000" -> "1000", "u.s." -> "us").
    return "".join(ch for ch in s if ch == "'" or unicodedata.category(ch)[0] not in "PS")


def spell_number(n: int) -> str:
    """English cardinal words for a non-negative integer, space separated ("21" -> "twenty one")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + spell_number(n % 100))
    for value, word in _SCALES:
        if n >= value:
            if n >= 1000 * value and value == _SCALES[0][0]:
                break  # beyond the table: fall back to digit by digit below
            rest = n % value
            return spell_number(n // value) + " " + word + ("" if rest == 0 else " " + spell_number(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize_text(s: str, *, spell_numbers: bool = True) -> str:
    """Lowercase, NFKC, hyphens/dashes/slashes -> spaces, punctuation removed (apostrophes inside
    words kept: "Don't!" -> "don't"), whitespace collapsed and stripped.

    `spell_numbers` (default on, an addition to seed-tts-eval) writes digit runs as English
    cardinals ("20" -> "twenty"): whisper prints most numbers as digits while corpus texts spell
    them out, and that style difference alone cost ~1 word per number on the demo corpus.
    Applied after punctuation removal, so "1,000" -> "one thousand" (but "3.5" -> "thirty five").
    """
    s = unicodedata.normalize("NFKC", s).translate(_QUOTE_MAP).lower()
    s = _SPLITTERS.sub(" ", s)
    s = _strip_punct(s)
    s = _LOOSE_APOSTROPHE.sub("", s)
    if spell_numbers:
        s = _DIGITS.sub(lambda m: f" {spell_number(int(m.group()))} ", s)
    return _SPACES.sub(" ", s).strip()


def _word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit operations, reference words) on already-normalised text."""
    n_ref = len(ref.split())
    if n_ref == 0:
        return len(hyp.split()), 0  # jiwer refuses an empty reference: every hyp word is an insertion
    if not hyp:
        return n_ref, n_ref  # all deletions
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, n_ref


def wer(ref: str, hyp: str) -> float:
    """Word error rate of `hyp` against `ref` after `normalize_text`.

    An empty (normalised) reference has no words to divide by: the WER is defined as 0.0 when the
    hypothesis is empty too and 1.0 otherwise (anything recognised is a hallucination), rather than
    raising like jiwer. Values can exceed 1.0 when the hypothesis has many insertions.
    """
    r, h = normalize_text(ref), normalize_text(hyp)
    if not r:
        return 0.0 if not h else 1.0
    errors, n = _word_errors(r, h)
    return errors / n


def cer(ref: str, hyp: str) -> float:
    """Character error rate after `normalize_text` (single spaces count as characters, as in jiwer).

    Empty reference: 0.0 if the hypothesis is empty too, else 1.0 (same convention as `wer`).
    """
    r, h = normalize_text(ref), normalize_text(hyp)
    if not r:
        return 0.0 if not h else 1.0
    if not h:
        return 1.0
    return float(jiwer.cer(r, h))


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level WER: total word errors / total reference words (not a mean of per-utterance WERs,
    which would over-weight short sentences). Pairs with an empty reference add their hypothesis
    words as insertions. With no reference words at all: 0.0 if there are no errors, else 1.0."""
    if len(refs) != len(hyps):
        raise ValueError(f"corpus_wer: {len(refs)} references but {len(hyps)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        e, n = _word_errors(normalize_text(ref), normalize_text(hyp))
        errors += e
        words += n
    if words == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / words
