"""espeak-ng in-process, through the `espeakng-loader` wheel (libespeak-ng.so + espeak-ng-data).

Two uses: IPA phonemes for the `phonemes` text frontend, and waveform synthesis for the generated demo
corpus. libespeak-ng is a process-global C library with one current voice and one synthesis callback,
so every call goes through one lock and the library is initialised once per process (worker processes
initialise their own copy on first use). Output is deterministic for given text, voice and parameters.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import POINTER, byref, c_char_p, c_int, c_short, c_void_p
from typing import Any

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_CHARS_UTF8 = 1
PHONEMES_IPA = 0x02
# espeak_PARAMETER
RATE, VOLUME, PITCH = 1, 2, 3
RAND_SEED = 0
INSTALL_HINT = "pip install espeakng-loader==0.2.4 (bundles libespeak-ng and its data; no apt needed)"

_SYNTH_CB = ctypes.CFUNCTYPE(c_int, POINTER(c_short), c_int, c_void_p)
_LOCK = threading.RLock()
_STATE: dict[str, Any] = {}


class EspeakError(RuntimeError):
    """espeak-ng cannot be loaded or refused a request; the message says how to fix it."""


def _library() -> tuple[ctypes.CDLL, int]:
    """(lib, sample_rate), initialising espeak-ng on first use in this process."""
    if "lib" in _STATE:
        return _STATE["lib"], _STATE["sample_rate"]
    try:
        import espeakng_loader
    except ImportError as e:
        raise EspeakError(f"espeak-ng is needed (phoneme frontend / generated corpus) but the "
                          f"espeakng-loader package is not installed: {INSTALL_HINT}") from e
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
    except OSError as e:
        raise EspeakError(f"could not load libespeak-ng from espeakng-loader ({e}); reinstall it: "
                          f"{INSTALL_HINT}") from e
    lib.espeak_Initialize.restype = c_int
    lib.espeak_TextToPhonemes.restype = c_char_p
    lib.espeak_TextToPhonemes.argtypes = [POINTER(c_char_p), c_int, c_int]
    lib.espeak_Info.restype = c_char_p
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0)
    if sample_rate <= 0:
        raise EspeakError(f"espeak_Initialize failed (returned {sample_rate}) with data at {data}; "
                          f"reinstall: {INSTALL_HINT}")
    chunks: list[np.ndarray] = []

    def _collect(wav: Any, n: int, _events: Any) -> int:
        if wav and n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _SYNTH_CB(_collect)  # kept referenced in _STATE: ctypes must not free it
    lib.espeak_SetSynthCallback(callback)
    _STATE.update(lib=lib, sample_rate=sample_rate, callback=callback, chunks=chunks, voice=None)
    return lib, sample_rate


def version() -> str:
    """espeak-ng version string, e.g. '1.52-dev'."""
    with _LOCK:
        lib, _ = _library()
        return (lib.espeak_Info(None) or b"?").decode()


def _set_voice(lib: ctypes.CDLL, voice: str) -> None:
    if _STATE.get("voice") == voice:
        return
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise EspeakError(f"espeak-ng has no voice {voice!r} (e.g. 'en-us', 'en-us+f3', 'en-gb-x-rp+m7')")
    _STATE["voice"] = voice


def phonemize(text: str, voice: str = "en-us") -> list[tuple[str, str]]:
    """`text` as espeak clauses: (IPA, the source text the clause consumed, punctuation included).

    espeak drops punctuation from the IPA; the consumed text lets the caller keep clause boundaries.
    """
    with _LOCK:
        lib, _ = _library()
        _set_voice(lib, voice)
        raw = text.encode("utf-8")
        buf = ctypes.create_string_buffer(raw)
        start = ctypes.addressof(buf)
        ptr = c_char_p(start)
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(raw):
            ipa = lib.espeak_TextToPhonemes(byref(ptr), ESPEAK_CHARS_UTF8, PHONEMES_IPA)
            addr = ctypes.cast(ptr, c_void_p).value
            end = len(raw) if not addr else min(len(raw), max(pos, addr - start))
            out.append(((ipa or b"").decode("utf-8"), raw[pos:end].decode("utf-8", errors="replace")))
            if end == pos:
                break
            pos = end
        return out


def _synth_in_process(text: str, voice: str, rate: int, pitch: int, volume: int) -> np.ndarray:
    lib, _ = _library()
    _set_voice(lib, voice)
    for param, value in ((RATE, rate), (PITCH, pitch), (VOLUME, volume)):
        lib.espeak_SetParameter(param, int(value), 0)
    lib.espeak_ng_SetRandSeed(RAND_SEED)  # voices with breath/flutter draw random numbers
    chunks: list[np.ndarray] = _STATE["chunks"]
    chunks.clear()
    raw = text.encode("utf-8")
    err = lib.espeak_Synth(raw, len(raw) + 1, 0, 0, 0, ESPEAK_CHARS_UTF8, None, None)
    if err != 0:
        raise EspeakError(f"espeak_Synth failed with code {err} for {text[:40]!r}")
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    chunks.clear()
    return pcm.astype(np.float32) / 32768.0


Request = tuple[str, str, int, int, int]  # text, voice, rate, pitch, volume


def synthesize_many(requests: list[Request]) -> list[np.ndarray]:
    """float32 mono waveforms in [-1, 1] at `sample_rate()` (22050 Hz), one per request, in order.

    libespeak-ng's wave generator keeps state from one utterance to the next (the same text comes out
    a few samples longer or shorter, with other sample values, depending on what was said before), and
    neither re-initialising nor reseeding resets it. So each call runs its requests, in order, in a
    forked child of this process, which starts from the same post-initialisation state every time:
    equal request lists give equal audio, whatever ran before. Batching amortises the fork (~20 ms).
    Call it from a light process (the corpus generator's spawned workers), not one running torch
    threads.
    """
    with _LOCK:
        _library()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise, send lengths + samples, exit without parent cleanup
            status = 0
            try:
                os.close(read_fd)
                wavs = [_synth_in_process(*req) for req in requests]
                with os.fdopen(write_fd, "wb") as fh:
                    fh.write(np.asarray([len(w) for w in wavs], dtype=np.int64).tobytes())
                    for w in wavs:
                        fh.write(w.tobytes())
            except BaseException:  # noqa: BLE001 - any failure is reported through the exit status
                status = 1
            os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
    if status != 0:
        voices = sorted({r[1] for r in requests})
        raise EspeakError(f"espeak-ng synthesis failed (voices {voices}, first text {requests[0][0][:40]!r}); "
                          "check the voice names, e.g. 'en-us+f3'")
    n = len(requests)
    lengths = np.frombuffer(data[: 8 * n], dtype=np.int64)
    ends = np.cumsum(lengths)
    samples = np.frombuffer(data[8 * n:], dtype=np.float32)
    return [samples[e - k:e].copy() for k, e in zip(lengths, ends, strict=True)]


def synthesize(text: str, voice: str, rate: int = 175, pitch: int = 50, volume: int = 70) -> tuple[np.ndarray, int]:
    """One utterance: (float32 waveform, 22050). rate: words per minute; pitch 0-99; volume 0-200
    (espeak's default 100 hard-clips some loud vowels: 70 keeps every sample in range). Deterministic
    in its arguments (see `synthesize_many`)."""
    return synthesize_many([(text, voice, rate, pitch, volume)])[0], sample_rate()


def sample_rate() -> int:
    with _LOCK:
        return _library()[1]
