"""A seeded template grammar that writes grammatical English sentences (CC0, see sentence_grammar/).

`generate_sentences(n, seed)` returns n distinct sentences (distinct after lower-casing and dropping
punctuation, the rule the corpus splits use), each at most MAX_WORDS words, the same list for the same
arguments on every machine (only `random.Random(seed)` draws).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

GRAMMAR_DIR = Path(__file__).resolve().parent / "sentence_grammar"
GRAMMAR_VERSION = 2  # bump when templates or words change: it is part of the corpus key
MAX_WORDS = 14
MIN_WORDS = 4


@lru_cache(maxsize=1)
def words() -> dict[str, Any]:
    return json.loads((GRAMMAR_DIR / "words.json").read_text(encoding="utf-8"))


def text_key(text: str) -> str:
    """Identity of a sentence for held-out checks: lower case, punctuation dropped."""
    return re.sub(r"[^\w ]+", "", text.lower()).strip()


class _Grammar:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng
        self.w = words()

    def pick(self, key: str) -> Any:
        return self.r.choice(self.w[key])

    @staticmethod
    def article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    def thing(self, plural: bool = False) -> str:
        """Object noun phrase: determiner, optional adjective, a thing."""
        noun = self.pick("things")[1 if plural else 0]
        adj = self.pick("thing_adjectives") if self.r.random() < 0.5 else ""
        head = f"{adj} {noun}".strip()
        if plural:
            det = self.r.choice(["the", "some", "my", "our", "those", self.pick("numbers")])
        else:
            det = self.r.choice(["the", "the", "my", "her", "his", "this", "that", self.article(head)])
        return f"{det} {head}"

    def person(self) -> str:
        """Subject: a name, a relative or a person noun phrase."""
        roll = self.r.random()
        if roll < 0.35:
            return self.pick("names")
        if roll < 0.6:
            return f"{self.r.choice(['my', 'her', 'his', 'our'])} {self.pick('relatives')}"
        adj = self.pick("people_adjectives") if self.r.random() < 0.4 else ""
        plural = self.r.random() < 0.25
        head = f"{adj} {self.pick('people')[1 if plural else 0]}".strip()
        return f"the {head}"

    def creature(self) -> str:
        """Subject of an intransitive verb: a person or an animal."""
        if self.r.random() < 0.3:
            adj = self.pick("people_adjectives") if self.r.random() < 0.4 else ""
            return f"the {adj} {self.pick('animals')[0]}".replace("  ", " ")
        return self.person()

    def modifier(self) -> str:
        roll = self.r.random()
        if roll < 0.4:
            return " " + self.pick("places")
        if roll < 0.7:
            return " " + self.pick("times")
        return ""

    def clause(self) -> str:
        if self.r.random() < 0.6:
            verb = self.pick("transitive_verbs")[1]
            return f"{self.person()} {verb} {self.thing(self.r.random() < 0.3)}{self.modifier()}"
        verb = self.pick("intransitive_verbs")[1]
        adverb = f" {self.pick('adverbs')}" if self.r.random() < 0.5 else ""
        return f"{self.creature()} {verb}{adverb}{self.modifier()}"

    # ------------------------------------------------------------------ sentence templates

    def statement(self) -> str:
        return f"{self.clause()}."

    def compound(self) -> str:
        joiner = self.r.choice(["and", "but", "so", "while"])
        return f"{self.clause()}, {joiner} {self.clause()}."

    def question(self) -> str:
        roll = self.r.random()
        if roll < 0.4:
            verb = self.pick("transitive_verbs")[0]
            return f"did {self.person()} {verb} {self.thing()}{self.modifier()}?"
        if roll < 0.7:
            wh = self.r.choice(["where", "when", "why", "how"])
            verb = self.pick("transitive_verbs")[0]
            return f"{wh} did {self.person()} {verb} {self.thing()}?"
        return f"is {self.thing()} {self.pick('thing_adjectives')}{self.modifier()}?"

    def request(self) -> str:
        verb = self.pick("transitive_verbs")[0]
        please = self.r.choice(["please ", "", "could you "])
        end = "?" if please == "could you " else "."
        return f"{please}{verb} {self.thing()}{self.modifier()}{end}"

    def description(self) -> str:
        adj = self.pick("thing_adjectives")
        return self.r.choice([
            f"{self.thing()} was {adj}{self.modifier()}.",
            f"{self.person()} was {self.pick('people_adjectives')}{self.modifier()}.",
            f"what {self.article(adj)} {adj} {self.pick('things')[0]} that was!",
            f"{self.pick('names')} said that {self.clause()}.",
        ])

    def sentence(self) -> str:
        templates: list[tuple[float, Callable[[], str]]] = [
            (0.35, self.statement), (0.2, self.compound), (0.2, self.question),
            (0.1, self.request), (0.15, self.description),
        ]
        roll, acc = self.r.random(), 0.0
        for weight, make in templates:
            acc += weight
            if roll < acc:
                break
        text = make()
        return text[0].upper() + text[1:]


def generate_sentences(n: int, seed: int) -> list[str]:
    """n distinct grammatical sentences of MIN_WORDS..MAX_WORDS words; deterministic in (n, seed)."""
    grammar = _Grammar(random.Random(seed))
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the grammar yields fewer than {n} distinct sentences (got {len(out)})")
        text = grammar.sentence()
        key = text_key(text)
        if key in seen or not MIN_WORDS <= len(key.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        out.append(text)
    return out
