import pytest

from harmonica.evaluation.text import cer, corpus_wer, normalize_text, spell_number, wer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello World", "hello world"),
        ("Hello, world! How are you?", "hello world how are you"),
        ("Don't stop; it's fine.", "don't stop it's fine"),
        ("Don\u2019t \u201cquote\u201d me", "don't quote me"),  # typographic quotes
        ("'Tis the dogs' bones", "tis the dogs bones"),  # edge apostrophes dropped
        ("well-known and/or state\u2014of\u2013the-art", "well known and or state of the art"),
        ("  lots   of\t spaces \n here ", "lots of spaces here"),
        ("\uff26\uff55\uff4c\uff4c width \ufb01ne", "full width fine"),  # NFKC
        ("Caf\u00e9 na\u00efve", "caf\u00e9 na\u00efve"),
        ("U.S. costs $5 (50%)", "us costs five fifty"),
        ("Wait 20 minutes, 1,000 people", "wait twenty minutes one thousand people"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_can_keep_digits() -> None:
    assert normalize_text("Wait 20 minutes", spell_numbers=False) == "wait 20 minutes"


@pytest.mark.parametrize(("n", "words"), [(0, "zero"), (13, "thirteen"), (21, "twenty one"),
                                          (105, "one hundred five"), (2024, "two thousand twenty four"),
                                          (1_000_000, "one million")])
def test_spell_number(n: int, words: str) -> None:
    assert spell_number(n) == words


def test_wer_values() -> None:
    assert wer("The cat sat.", "the cat sat") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the cat") == pytest.approx(1 / 3)  # one deletion
    assert wer("a b", "a b c d") == pytest.approx(1.0)  # two insertions over two words
    assert wer("Our train is 20 minutes late", "our train is twenty minutes late") == 0.0


def test_empty_reference_convention() -> None:
    assert wer("", "") == 0.0
    assert wer("...", "") == 0.0
    assert wer("", "hello") == 1.0
    assert cer("", "") == 0.0
    assert cer("", "x") == 1.0
    assert wer("hello there", "") == 1.0


def test_cer_values() -> None:
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert cer("Hello!", "hello") == 0.0
    assert cer("hello", "") == 1.0


def test_corpus_wer_weights_by_words() -> None:
    refs = ["a b c d", "e f"]
    hyps = ["a b c d", "e x"]
    assert corpus_wer(refs, hyps) == pytest.approx(1 / 6)  # not the mean of 0 and 0.5
    assert corpus_wer(["", "a b"], ["x", "a b"]) == pytest.approx(0.5)  # insertion counted
    assert corpus_wer([], []) == 0.0
    with pytest.raises(ValueError):
        corpus_wer(["a"], [])
