"""Corpus recipes (lhotse style): a corpus directory in, `CorpusManifests` out.

Recipes read transcripts and audio *headers* only (no sample decoding), so they are cheap to run on
a full corpus. Every input that cannot become an utterance is returned as a `Rejection` with a
machine-readable reason; recipes never crash on a bad file and never drop one silently.
Sample-level problems (NaN/inf) only surface when the audio is loaded (`audio.AudioError`).

Split assignment is by a seeded hash rank of ids, not a shuffle of the list: adding or removing one
utterance moves at most the items at a split boundary, instead of reshuffling the whole corpus.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from harmonica.config.schema import DataConfig
from harmonica.data.audio import AudioError, audio_info
from harmonica.data.manifest import CorpusManifests, Rejection, Utterance

logger = logging.getLogger(__name__)

DEMO_CORPUS_DIR = Path(__file__).resolve().parent / "demo_corpus"
LJSPEECH_SPEAKER = "LJ"
LJSPEECH_PROMPTS = 4  # single speaker: a handful of held-out utterances serve as acoustic prompts
VCTK_PROMPTS_PER_SPEAKER = 2


class CorpusError(Exception):
    """The corpus directory is missing or does not have the expected layout."""


# ------------------------------------------------------------------------------------------- helpers


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _seeded_order(keys: Sequence[str], seed: int) -> list[str]:
    return sorted(keys, key=lambda k: (_rank(seed, k), k))


def _n_of(fraction: float, n: int) -> int:
    """round(fraction * n), but at least one item whenever the fraction is positive and n > 1."""
    if fraction <= 0 or n <= 1:
        return 0
    return max(1, int(round(fraction * n)))


def _check_dir(corpus_dir: str | Path | None, fmt: str, expected: str) -> Path:
    if corpus_dir is None:
        raise CorpusError(f"{fmt}: no corpus_dir given (expected a directory with {expected})")
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise CorpusError(f"{fmt}: corpus directory {root} does not exist (expected {expected})")
    return root


def _decode_text(raw: bytes) -> str | None:
    """UTF-8 text (BOM stripped, whitespace collapsed) or None when the bytes are not UTF-8."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return " ".join(text.split())


def _probe(
    utt_id: str, speaker: str, text: str, path: Path, split: str
) -> Utterance | Rejection:
    """Header-check `path` and build an Utterance, or a Rejection carrying the AudioError reason."""
    try:
        duration, sr, _channels = audio_info(path)
    except AudioError as e:
        return Rejection(utt_id, str(path), e.reason, e.message, speaker)
    return Utterance(utt_id, speaker, text, str(path.resolve()), duration, sr, split)


def _finish(fmt: str, utts: list[Utterance], rejected: list[Rejection]) -> CorpusManifests:
    out = CorpusManifests(sorted(utts, key=lambda u: u.id), rejected)
    if rejected:
        reasons: dict[str, int] = defaultdict(int)
        for r in rejected:
            reasons[r.reason] += 1
        logger.warning("%s: %d inputs rejected %s", fmt, len(rejected), dict(reasons))
    logger.info("%s: %s utterances, %d speakers", fmt, out.split_counts(), len(out.speakers))
    return out


def _text_key(text: str) -> str:
    # Held-out sentences must stay held out even if the same words appear with other punctuation.
    return re.sub(r"[^\w ]+", "", text.lower()).strip()


# ------------------------------------------------------------------------------------------ LJSpeech


def prepare_ljspeech(
    corpus_dir: str | Path, *, val_fraction: float = 0.05, eval_fraction: float = 0.05,
    seed: int = 1234,
) -> CorpusManifests:
    """LJSpeech-1.1: `metadata.csv` rows `id|text|normalized_text`, audio `wavs/<id>.wav`.

    Splits (seeded, over the usable utterances): eval = eval_fraction, val = val_fraction,
    prompt = LJSPEECH_PROMPTS (4) utterances, train = the rest. Malformed rows (no `|`) are
    rejected as `malformed_row`, repeated ids as `duplicate_id`.
    """
    root = _check_dir(corpus_dir, "ljspeech", "metadata.csv and wavs/<id>.wav")
    meta = root / "metadata.csv"
    if not meta.is_file() or not (root / "wavs").is_dir():
        raise CorpusError(
            f"ljspeech: {root} is not an LJSpeech layout; expected {meta} (id|text|normalized_text"
            f" rows) and a {root / 'wavs'} directory with <id>.wav files"
        )
    rejected: list[Rejection] = []
    rows: dict[str, tuple[str, Path]] = {}
    # Rows are decoded one by one so a single bad byte rejects one utterance, not the corpus.
    for lineno, raw in enumerate(meta.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        raw_id, sep, rest = raw.partition(b"|")
        utt_id = raw_id.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        wav = root / "wavs" / f"{utt_id}.wav"
        if not sep or not utt_id:
            rejected.append(Rejection(utt_id or f"line{lineno}", str(meta), "malformed_row",
                                      f"line {lineno}: expected id|text|normalized_text"))
            continue
        if utt_id in rows:
            rejected.append(Rejection(utt_id, str(wav), "duplicate_id", f"line {lineno}",
                                      LJSPEECH_SPEAKER))
            continue
        fields = rest.split(b"|")
        if len(fields) > 2:  # a stray "|" would silently pick the wrong column as the text
            rejected.append(Rejection(utt_id, str(wav), "malformed_row", f"line {lineno}: {len(fields) + 1} columns, "
                                      "expected id|text|normalized_text", LJSPEECH_SPEAKER))
            continue
        decoded = [_decode_text(f) for f in fields]
        if any(d is None for d in decoded):
            rejected.append(Rejection(utt_id, str(wav), "non_utf8_text",
                                      f"line {lineno} of {meta} is not valid UTF-8", LJSPEECH_SPEAKER))
            continue
        text = decoded[1] if len(decoded) > 1 and decoded[1] else decoded[0]
        if not text:
            rejected.append(Rejection(utt_id, str(wav), "empty_text", f"line {lineno}",
                                      LJSPEECH_SPEAKER))
            continue
        rows[utt_id] = (text, wav)

    probed = [_probe(i, LJSPEECH_SPEAKER, t, p, "train") for i, (t, p) in rows.items()]
    rejected += [r for r in probed if isinstance(r, Rejection)]
    good = {u.id: u for u in probed if isinstance(u, Utterance)}

    order = _seeded_order(list(good), seed)
    n = len(order)
    n_eval, n_val = _n_of(eval_fraction, n), _n_of(val_fraction, n)
    n_prompt = min(LJSPEECH_PROMPTS, max(0, n - n_eval - n_val - 1))
    bounds = [("eval", n_eval), ("val", n_val), ("prompt", n_prompt)]
    split_of: dict[str, str] = {}
    i = 0
    for split, k in bounds:
        for utt_id in order[i:i + k]:
            split_of[utt_id] = split
        i += k
    utts = [_with_split(u, split_of.get(u.id, "train")) for u in good.values()]
    return _finish("ljspeech", utts, rejected)


def _with_split(u: Utterance, split: str) -> Utterance:
    return Utterance(u.id, u.speaker, u.text, u.path, u.duration, u.sample_rate, split)


# ---------------------------------------------------------------------------------------------- VCTK

_VCTK_TXT = re.compile(r"^(?P<spk>[A-Za-z0-9]+)_(?P<num>\d+)\.txt$")
_VCTK_NEW, _VCTK_OLD = "wav48_silence_trimmed", "wav48"


def _vctk_audio(root: Path, spk: str, utt_id: str) -> Path:
    """Prefer the 0.92 mic1 FLAC; fall back to the old 0.80 wav; else the path that was expected."""
    new = root / _VCTK_NEW / spk / f"{utt_id}_mic1.flac"
    old = root / _VCTK_OLD / spk / f"{utt_id}.wav"
    if new.exists() or not old.exists() and (root / _VCTK_NEW).is_dir():
        return new
    return old


def prepare_vctk(
    corpus_dir: str | Path, *, val_fraction: float = 0.05, eval_fraction: float = 0.05,
    eval_speakers: Sequence[str] = (), seed: int = 1234,
) -> CorpusManifests:
    """VCTK 0.92 (`wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac`) or 0.80 (`wav48/<spk>/
    <spk>_<nnn>.wav`), transcripts `txt/<spk>/<spk>_<nnn>.txt`.

    Splits, in this order:
      eval   - a seeded eval_fraction of the sentence numbers <nnn>, held out for every speaker.
               Any other utterance whose text equals a held-out sentence joins eval too, so eval
               texts never occur in train.
      prompt - 2 utterances per speaker outside eval (acoustic prompts / similarity references).
      val    - a seeded val_fraction of the rest (training speakers only).
      train  - everything else.
    Speakers in `eval_speakers` never reach train/val: they contribute their eval-sentence
    utterances and prompts; their other utterances are returned as `unused_held_out_speaker`
    rejections so the count stays explainable.
    Audio files without a transcript are rejected as `missing_transcript`.
    """
    root = _check_dir(corpus_dir, "vctk", f"txt/ and {_VCTK_NEW}/ or {_VCTK_OLD}/")
    txt_dir = root / "txt"
    if not txt_dir.is_dir() or not ((root / _VCTK_NEW).is_dir() or (root / _VCTK_OLD).is_dir()):
        raise CorpusError(
            f"vctk: {root} is not a VCTK layout; expected {txt_dir}/<spk>/<spk>_<nnn>.txt and audio "
            f"in {root / _VCTK_NEW}/<spk>/<spk>_<nnn>_mic1.flac (0.92) or "
            f"{root / _VCTK_OLD}/<spk>/<spk>_<nnn>.wav (0.80)"
        )
    held_spk = set(eval_speakers)
    rejected: list[Rejection] = []
    entries: list[tuple[str, str, str, str, Path]] = []  # id, speaker, sentence number, text, audio
    for txt in sorted(txt_dir.glob("*/*.txt")):
        m = _VCTK_TXT.match(txt.name)
        if not m:
            logger.debug("vctk: skipping unexpected transcript name %s", txt)
            continue
        spk, num = m["spk"], m["num"]
        utt_id = f"{spk}_{num}"
        audio = _vctk_audio(root, spk, utt_id)
        text = _decode_text(txt.read_bytes())
        if text is None:
            rejected.append(Rejection(utt_id, str(audio), "non_utf8_text", f"{txt} is not UTF-8", spk))
        elif not text:
            rejected.append(Rejection(utt_id, str(audio), "empty_text", f"{txt} is empty", spk))
        else:
            entries.append((utt_id, spk, num, text, audio))
    known = {e[0] for e in entries} | {r.id for r in rejected}
    rejected += _vctk_orphans(root, known)

    probed = [(_probe(i, spk, text, audio, "train"), num) for i, spk, num, text, audio in entries]
    rejected += [r for r, _ in probed if isinstance(r, Rejection)]
    good = [(u, num) for u, num in probed if isinstance(u, Utterance)]

    numbers = sorted({num for _, num in good})
    held_nums = set(_seeded_order(numbers, seed)[: _n_of(eval_fraction, len(numbers))])
    held_texts = {_text_key(u.text) for u, num in good if num in held_nums}
    split_of = {u.id: "eval" for u, num in good if num in held_nums or _text_key(u.text) in held_texts}

    by_spk: dict[str, list[str]] = defaultdict(list)
    for u, _ in good:
        if u.id not in split_of:
            by_spk[u.speaker].append(u.id)
    rest: list[str] = []
    for spk, ids in by_spk.items():
        ordered = _seeded_order(ids, seed)
        for utt_id in ordered[:VCTK_PROMPTS_PER_SPEAKER]:
            split_of[utt_id] = "prompt"
        rest += ordered[VCTK_PROMPTS_PER_SPEAKER:] if spk not in held_spk else []
    val_ids = _seeded_order(rest, seed)[: _n_of(val_fraction, len(rest))]
    split_of.update(dict.fromkeys(val_ids, "val"))

    utts = []
    for u, _ in good:
        split = split_of.get(u.id, "train")
        if u.speaker in held_spk and split == "train":
            rejected.append(Rejection(u.id, u.path, "unused_held_out_speaker",
                                      "speaker in eval_speakers; sentence not held out", u.speaker))
            continue
        utts.append(_with_split(u, split))
    return _finish("vctk", utts, rejected)


def _vctk_orphans(root: Path, known: set[str]) -> list[Rejection]:
    """Audio files that no transcript refers to (e.g. p315 in VCTK 0.92)."""
    out = []
    seen: set[str] = set()
    for pattern, suffix in ((f"{_VCTK_NEW}/*/*_mic1.flac", "_mic1.flac"), (f"{_VCTK_OLD}/*/*.wav", ".wav")):
        for p in sorted(root.glob(pattern)):
            utt_id = p.name[: -len(suffix)]
            if utt_id not in known and utt_id not in seen:
                seen.add(utt_id)
                out.append(Rejection(utt_id, str(p), "missing_transcript",
                                     f"no txt/{p.parent.name}/{utt_id}.txt", p.parent.name))
    return out


# ---------------------------------------------------------------------------------------------- demo


def prepare_demo(corpus_dir: str | Path | None = None) -> CorpusManifests:
    """The bundled espeak-ng corpus: `metadata.csv` (`id|speaker|split|text`, fixed splits) and
    `wavs/<speaker>/<id>.flac`. `corpus_dir=None` uses the copy shipped inside the package."""
    root = _check_dir(corpus_dir if corpus_dir is not None else DEMO_CORPUS_DIR, "demo",
                      "metadata.csv and wavs/<speaker>/<id>.flac")
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise CorpusError(f"demo: expected {meta} with an id|speaker|split|text header")
    lines = meta.read_bytes().splitlines()
    header = lines[0].decode("utf-8-sig", errors="replace").strip() if lines else ""
    if header != "id|speaker|split|text":
        raise CorpusError(f"demo: {meta} must start with the header 'id|speaker|split|text', got {header!r}")
    utts: list[Utterance] = []
    rejected: list[Rejection] = []
    for lineno, raw in enumerate(lines[1:], 2):
        if not raw.strip():
            continue
        parts = raw.split(b"|", 3)
        utt_id = parts[0].decode("utf-8", errors="replace").strip()
        if len(parts) != 4:
            rejected.append(Rejection(utt_id or f"line{lineno}", str(meta), "malformed_row",
                                      f"line {lineno}: expected id|speaker|split|text"))
            continue
        spk = parts[1].decode("utf-8", errors="replace").strip()
        split = parts[2].decode("utf-8", errors="replace").strip()
        audio = root / "wavs" / spk / f"{utt_id}.flac"
        text = _decode_text(parts[3])
        if split not in ("train", "val", "eval", "prompt"):
            rejected.append(Rejection(utt_id, str(audio), "malformed_row",
                                      f"line {lineno}: unknown split {split!r}", spk))
        elif text is None:
            rejected.append(Rejection(utt_id, str(audio), "non_utf8_text", f"line {lineno}", spk))
        elif not text:
            rejected.append(Rejection(utt_id, str(audio), "empty_text", f"line {lineno}", spk))
        else:
            r = _probe(utt_id, spk, text, audio, split)
            (utts if isinstance(r, Utterance) else rejected).append(r)  # type: ignore[arg-type]
    return _finish("demo", utts, rejected)


# ------------------------------------------------------------------------------------------ dispatch

CORPUS_FORMATS: tuple[str, ...] = ("demo", "demo_generated", "ljspeech", "vctk")


def prepare_corpus(fmt: str, corpus_dir: str | Path | None, data_cfg: DataConfig) -> CorpusManifests:
    """Run the recipe for `fmt` with the split settings of `data_cfg`."""
    if fmt == "demo":
        return prepare_demo(corpus_dir)
    if fmt == "demo_generated":  # a demo-layout directory; generated.ensure_generated_corpus makes it
        return prepare_demo(_check_dir(corpus_dir, fmt, "a generated corpus (metadata.csv, wavs/)"))
    if fmt == "ljspeech":
        return prepare_ljspeech(corpus_dir, val_fraction=data_cfg.val_fraction,  # type: ignore[arg-type]
                                eval_fraction=data_cfg.eval_fraction, seed=data_cfg.split_seed)
    if fmt == "vctk":
        return prepare_vctk(corpus_dir, val_fraction=data_cfg.val_fraction,  # type: ignore[arg-type]
                            eval_fraction=data_cfg.eval_fraction,
                            eval_speakers=data_cfg.eval_speakers, seed=data_cfg.split_seed)
    raise CorpusError(f"unknown corpus format {fmt!r}; expected one of {CORPUS_FORMATS}")
