from __future__ import annotations

import numpy as np
import pytest

from tests.codec.audio_factory import corpus, utterance


@pytest.fixture(scope="session")
def train_wavs() -> list[np.ndarray]:
    """20 utterances, 0.5-2 s (~25 s of audio)."""
    return corpus(20, seed=1)


@pytest.fixture(scope="session")
def test_wavs() -> list[np.ndarray]:
    """Held-out utterances (different seeds) for reconstruction checks."""
    return corpus(4, seed=99)


@pytest.fixture(scope="session")
def one_second() -> np.ndarray:
    return utterance(seed=7, duration=1.0)
