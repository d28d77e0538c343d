"""Shared fixtures: the bundled demo corpus (espeak-ng, 16 kHz) as (row, samples) pairs."""

import csv
from collections.abc import Callable

import numpy as np
import pytest

from harmonica.data.audio import read_audio
from harmonica.data.corpora import DEMO_CORPUS_DIR

SR = 16_000


@pytest.fixture(scope="session")
def demo_rows() -> dict[str, dict[str, str]]:
    with open(DEMO_CORPUS_DIR / "metadata.csv", newline="", encoding="utf-8") as fh:
        return {r["id"]: r for r in csv.DictReader(fh, delimiter="|")}


@pytest.fixture(scope="session")
def demo_wav(demo_rows) -> Callable[[str], np.ndarray]:
    """Loader of a demo utterance by id -> float32 samples at 16 kHz (the corpus rate)."""
    def load(utt_id: str) -> np.ndarray:
        row = demo_rows[utt_id]
        wav, sr = read_audio(DEMO_CORPUS_DIR / "wavs" / row["speaker"] / f"{utt_id}.flac")
        assert sr == SR
        return wav

    return load
