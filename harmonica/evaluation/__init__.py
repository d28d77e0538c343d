"""Evaluation metric backends: text normalisation + WER/CER, ASR, speaker similarity, failure
detectors and prosody. Plain classes and functions (no tracking); heavy models load lazily.

Importing this package does not import faster-whisper, resemblyzer or torch-heavy code.
"""

from harmonica.evaluation.asr import ASRError, WhisperASR, get_asr, resolve_asr_model
from harmonica.evaluation.failures import FAILURE_KINDS, FailureReport, detect_failures
from harmonica.evaluation.prosody import f0_track, prosody_compare, prosody_stats
from harmonica.evaluation.speaker import (
    EcapaEncoder,
    EmptyAudioError,
    ResemblyzerEncoder,
    SpeakerBackendError,
    SpeakerEncoder,
    build_speaker_encoder,
    cosine,
    speaker_similarity,
)
from harmonica.evaluation.text import cer, corpus_wer, normalize_text, wer

__all__ = [
    "FAILURE_KINDS",
    "ASRError",
    "EcapaEncoder",
    "EmptyAudioError",
    "FailureReport",
    "ResemblyzerEncoder",
    "SpeakerBackendError",
    "SpeakerEncoder",
    "WhisperASR",
    "build_speaker_encoder",
    "cer",
    "corpus_wer",
    "cosine",
    "detect_failures",
    "f0_track",
    "get_asr",
    "normalize_text",
    "prosody_compare",
    "prosody_stats",
    "resolve_asr_model",
    "speaker_similarity",
    "wer",
]
