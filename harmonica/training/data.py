"""Training data: examples from the token cache, a resumable length-bucketing sampler (plan 3.3),
AR/NAR collation and acoustic-prompt picking.

Everything random here is driven by explicit seeds or an explicit ``torch.Generator`` so that a
resumed run sees exactly the batches (and prompt crops) an uninterrupted run would have seen:
the sampler's state is (epoch, position) and each epoch's plan is recomputed from ``seed + epoch``;
`BatchStream` adds the collate generator's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harmonica.data.cache import SplitTokens

__all__ = [
    "UNKNOWN_SPEAKER", "BatchStream", "Example", "LengthBucketSampler", "PromptPicker", "collate_ar",
    "collate_nar", "load_examples", "prompt_kwargs", "speaker_table",
]

PAD_ID = 0  # text and audio padding; every consumer masks with the *_lens tensors anyway
UNKNOWN_SPEAKER = 0  # speaker index reserved for speakers absent from the table (see speaker_table)


@dataclass
class Example:
    id: str
    speaker: str
    text: Tensor  # [L] long
    codes: Tensor  # [n_q, T] long

    @property
    def frames(self) -> int:
        return int(self.codes.size(1))

    @property
    def length(self) -> int:
        """Text + audio positions: what drives attention cost, hence the bucketing key."""
        return int(self.text.numel()) + self.frames


def load_examples(split: SplitTokens, max_audio_frames: int) -> list[Example]:
    """All utterances of a split, codes capped to max_audio_frames frames.

    Preprocess already drops longer audio; the cap is belt and braces so a model whose table holds
    max_audio_frames + 1 positions (one for BOS/STOP) never sees an over-long item."""
    if max_audio_frames < 1:
        raise ValueError(f"max_audio_frames must be >= 1, got {max_audio_frames}")
    out = []
    for i in range(len(split)):
        text, codes, row = split.item(i)  # [L], [n_q, T]
        out.append(Example(id=str(row["id"]), speaker=str(row["speaker"]), text=text,
                           codes=codes[:, :max_audio_frames]))  # [n_q, <=max_audio_frames]
    return out


def speaker_table(examples: Sequence[Example]) -> dict[str, int]:
    """Sorted speaker names -> 1..S. Index 0 (UNKNOWN_SPEAKER) is reserved for speakers not in the
    table (e.g. held-out eval speakers): they never silently borrow a real speaker's embedding, and
    the row can later be trained on purpose (speaker dropout). The embedding needs S + 1 rows."""
    return {name: i + 1 for i, name in enumerate(sorted({e.speaker for e in examples}))}


# ----------------------------------------------------------------------------------------- sampler


class LengthBucketSampler:
    """Infinite, deterministic iterator of batches (lists of example indices), epoch after epoch.

    Plan of epoch e (everything from a generator seeded with seed + e):
      1. shuffle all indices;
      2. speaker interleave: order by (rank of the item within its speaker in the shuffled order,
         speaker's first appearance) -- a round robin across speakers, so each bucket window draws on
         all speakers as evenly as the data allows. It does not oversample: every item is seen once
         per epoch, so the epoch-level speaker mix is the corpus's own; large speakers fill the tail
         windows once the small ones are used up;
      3. cut into windows of bucket_batches * batch_size; in each window, sort every speaker's items
         by a jittered length (length * exp(u), u ~ U(-length_jitter, length_jitter), drawn anew
         each epoch) and order the window by (the item's quantile within its speaker, a per-epoch
         speaker order); cut into batches. Neighbours then have similar lengths (relative to their
         speaker) and come from different speakers, so each batch mixes the window's speakers;
         the jitter makes the batches differ from one epoch to the next. On the demo corpus (160
         utterances, 6 speakers, batch 8) a plain length sort of the window repeated 62% of the
         batches in the next epoch, with 4.4 speakers per batch and 1.2% padding; this plan repeats
         none, puts all 6 speakers in every batch, and pads 10% (jitter 0.1; 12% at 0.15). Only the
         epoch's last batch can be short (windows are multiples of batch_size);
      4. shuffle the batch order over the whole epoch (so no length curriculum inside an epoch);
      5. world_size > 1: drop the remainder of len(batches) % world_size, rank r takes batches
         r, r + world_size, ... -- every rank sees the same number of batches, disjoint from others.

    State is (epoch, position = batches already yielded this epoch); the plan is a pure function of
    the epoch, so `load_state_dict` resumes with exactly the batches an uninterrupted run would
    yield. Keep one live iterator at a time: iterators share (and advance) the sampler's state.
    """

    def __init__(self, lengths: Sequence[int], speakers: Sequence[str], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, bucket_batches: int = 50, length_jitter: float = 0.1) -> None:
        if len(lengths) != len(speakers):
            raise ValueError(f"{len(lengths)} lengths but {len(speakers)} speakers")
        if batch_size < 1 or bucket_batches < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler layout: batch_size={batch_size}, bucket_batches={bucket_batches}, "
                             f"rank={rank}, world_size={world_size}")
        if length_jitter < 0:
            raise ValueError(f"length_jitter must be >= 0, got {length_jitter}")
        self.lengths, self.speakers = [int(n) for n in lengths], list(speakers)
        self.batch_size, self.seed, self.bucket_batches = batch_size, seed, bucket_batches
        self.rank, self.world_size, self.length_jitter = rank, world_size, length_jitter
        total = -(-len(self.lengths) // batch_size)  # ceil: windows are multiples of batch_size
        if total // world_size == 0:
            raise ValueError(f"{len(self.lengths)} examples make {total} batches of {batch_size}: "
                             f"too few for world_size={world_size}")
        self._epoch_batches = total // world_size
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    @property
    def epoch_batches(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._epoch_batches

    def _layout(self) -> dict[str, Any]:
        return {"num_examples": len(self.lengths), "batch_size": self.batch_size, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "bucket_batches": self.bucket_batches,
                "length_jitter": self.length_jitter}

    def _interleave(self, part: list[int], noisy: list[float], speaker_rank: dict[str, int]) -> list[int]:
        """Step 3 on one window: within-speaker length quantiles, speakers interleaved."""
        groups: dict[str, list[int]] = {}
        for i in part:
            groups.setdefault(self.speakers[i], []).append(i)
        key: dict[int, tuple[float, int]] = {}
        for spk, items in groups.items():
            items.sort(key=noisy.__getitem__)  # stable
            for r, i in enumerate(items):
                key[i] = ((r + 0.5) / len(items), speaker_rank[spk])
        return sorted(part, key=key.__getitem__)

    def plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, in order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        depth: dict[str, int] = {}  # items of each speaker seen so far in the shuffled order
        first: dict[str, int] = {}  # speaker -> order of first appearance
        key = {}
        for i in order:
            s = self.speakers[i]
            first.setdefault(s, len(first))
            key[i] = (depth.get(s, 0), first[s])
            depth[s] = depth.get(s, 0) + 1
        order.sort(key=key.__getitem__)  # round robin across speakers
        u = (torch.rand(len(self.lengths), generator=g, dtype=torch.float64) * 2 - 1).tolist()
        noisy = [n * math.exp(self.length_jitter * x) for n, x in zip(self.lengths, u, strict=True)]
        window, bs = self.bucket_batches * self.batch_size, self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            part = self._interleave(order[start:start + window], noisy, first)
            batches += [part[j:j + bs] for j in range(0, len(part), bs)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[p] for p in perm]
        usable = len(batches) // self.world_size * self.world_size
        mine = batches[self.rank:usable:self.world_size]
        self._cached = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.plan(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1  # advance before yielding: state_dict() then points past it
                yield list(batch)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "layout": self._layout()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """strict: the data/layout must match (otherwise 'the same batches' is meaningless); with
        strict=False the epoch is kept and the position clamped to this layout's epoch length."""
        layout = state.get("layout")
        if strict and layout is not None and layout != self._layout():
            raise ValueError(f"sampler state was saved with layout {layout}, this sampler is {self._layout()}")
        position = int(state["position"])
        if strict and not 0 <= position <= self.epoch_batches:
            raise ValueError(f"position {position} outside 0..{self.epoch_batches}")
        self.epoch, self.position = int(state["epoch"]), min(max(position, 0), self.epoch_batches)


# ----------------------------------------------------------------------------------------- collate


def _pad_text(examples: Sequence[Example]) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([e.text.numel() for e in examples], dtype=torch.long)  # [B]
    text = torch.full((len(examples), int(lens.max())), PAD_ID, dtype=torch.long)  # [B, L]
    for b, e in enumerate(examples):
        text[b, : e.text.numel()] = e.text
    return text, lens


def _pad_codes(codes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """list of [n_q, T_b] -> ([B, n_q, T_max] padded with PAD_ID, lens [B])."""
    lens = torch.tensor([c.size(1) for c in codes], dtype=torch.long)  # [B]
    out = torch.full((len(codes), codes[0].size(0), int(lens.max())), PAD_ID, dtype=torch.long)  # [B, n_q, T]
    for b, c in enumerate(codes):
        out[b, :, : c.size(1)] = c
    return out, lens


def collate_ar(examples: Sequence[Example], *, prompt_picker: PromptPicker | None = None,
               generator: torch.Generator | None = None) -> dict[str, Any]:
    """-> text [B, L], text_lens [B], audio [B, T] (codebook 0), audio_lens [B], ids, speakers; with a
    picker also prompt [B, P] (codebook 0 of the picked crop), prompt_lens [B]."""
    text, text_lens = _pad_text(examples)
    codes, audio_lens = _pad_codes([e.codes[:1] for e in examples])  # [B, 1, T]
    out: dict[str, Any] = {"text": text, "text_lens": text_lens, "audio": codes[:, 0], "audio_lens": audio_lens,
                           "ids": [e.id for e in examples], "speakers": [e.speaker for e in examples]}
    if prompt_picker is not None:
        prompt, out["prompt_lens"] = _pad_codes([prompt_picker.pick(e, generator)[:1] for e in examples])
        out["prompt"] = prompt[:, 0]  # [B, P]
    return out


def prompt_kwargs(batch: dict[str, Any]) -> dict[str, Tensor]:
    """A collated batch's acoustic prompt as model keyword arguments ({} when it has none)."""
    return {k: batch[k] for k in ("prompt", "prompt_lens") if batch.get(k) is not None}


class PromptPicker:
    """Acoustic prompt for the NAR (and a prompted AR): a random crop (<= prompt_frames, all n_q
    codebooks) of ANOTHER utterance of the same speaker, so the model must use speaker identity
    rather than copy the target.

    Known leak: when the speaker has no other utterance in the pool (or is not in it at all), the
    crop comes from the example itself, i.e. the prompt contains target codes. Such speakers are
    listed in `fallback_speakers`, so the trainer can log or filter them.
    """

    def __init__(self, examples: Sequence[Example], prompt_frames: int, seed: int) -> None:
        if prompt_frames < 1:
            raise ValueError(f"prompt_frames must be >= 1, got {prompt_frames}")
        self.examples, self.prompt_frames = list(examples), prompt_frames
        self.by_speaker: dict[str, list[int]] = {}
        for i, e in enumerate(self.examples):
            self.by_speaker.setdefault(e.speaker, []).append(i)
        self.fallback_speakers = {s for s, idx in self.by_speaker.items() if len(idx) < 2}
        self._default = torch.Generator().manual_seed(seed)  # only when pick() gets no generator

    def pick(self, example: Example, generator: torch.Generator | None = None) -> Tensor:
        """-> prompt codes [n_q, P], 1 <= P <= prompt_frames (a view into the source's codes)."""
        g = self._default if generator is None else generator
        others = [i for i in self.by_speaker.get(example.speaker, []) if self.examples[i].id != example.id]
        if others:
            source = self.examples[others[int(torch.randint(len(others), (1,), generator=g))]].codes
        else:
            source = example.codes  # the documented leak
        P = min(self.prompt_frames, source.size(1))
        start = int(torch.randint(source.size(1) - P + 1, (1,), generator=g))
        return source[:, start:start + P]  # [n_q, P]


def collate_nar(examples: Sequence[Example], *, prompt_picker: PromptPicker | None,
                speaker_index: dict[str, int], generator: torch.Generator) -> dict[str, Any]:
    """-> text [B, L], text_lens [B], codes [B, n_q, T], audio_lens [B], speaker [B] (unknown ->
    UNKNOWN_SPEAKER), ids, speakers; with a picker also prompt [B, n_q, P], prompt_lens [B]."""
    text, text_lens = _pad_text(examples)
    codes, audio_lens = _pad_codes([e.codes for e in examples])  # [B, n_q, T]
    speaker = torch.tensor([speaker_index.get(e.speaker, UNKNOWN_SPEAKER) for e in examples],
                           dtype=torch.long)  # [B]
    out: dict[str, Any] = {"text": text, "text_lens": text_lens, "codes": codes, "audio_lens": audio_lens,
                           "speaker": speaker, "ids": [e.id for e in examples],
                           "speakers": [e.speaker for e in examples]}
    if prompt_picker is not None:
        out["prompt"], out["prompt_lens"] = _pad_codes([prompt_picker.pick(e, generator) for e in examples])
    return out


# ------------------------------------------------------------------------------------------ stream


class BatchStream:
    """Infinite iterator of collated batches with an exactly resumable position.

    collate(examples, generator) -> batch, e.g. ``lambda ex, g: collate_ar(ex)`` or
    ``functools.partial(collate_nar, prompt_picker=..., speaker_index=...)`` wrapped to pass
    ``generator=g``. The state (sampler + collate generator, the latter a uint8 tensor) is taken
    between batches, so a restored stream yields the same batches, prompt crops included. Under DDP
    give each rank its own seed (e.g. seed + rank) so prompt crops differ across ranks.
    """

    def __init__(self, examples: Sequence[Example], sampler: LengthBucketSampler,
                 collate: Callable[[list[Example], torch.Generator], dict[str, Any]], seed: int) -> None:
        self.examples, self.sampler, self.collate = list(examples), sampler, collate
        self.generator = torch.Generator().manual_seed(seed)
        self._it: Iterator[list[int]] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.sampler)
        indices = next(self._it)
        return self.collate([self.examples[i] for i in indices], self.generator)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        self._it = None  # restart from the restored (epoch, position)
