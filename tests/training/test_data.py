"""Training data: sampler determinism/resume/partition/bucketing, collation, prompt picking, stream."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from harmonica.data.cache import SplitTokens
from harmonica.training.data import (
    UNKNOWN_SPEAKER, BatchStream, Example, LengthBucketSampler, PromptPicker, collate_ar, collate_nar,
    load_examples, speaker_table,
)
from tests.models import tiny

N_Q = 4


def make_examples(n: int = 60, n_speakers: int = 3, seed: int = 0, max_frames: int = 20) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(2, 12, (1,), generator=g))
        T = int(torch.randint(3, max_frames + 1, (1,), generator=g))
        out.append(Example(id=f"u{i:03d}", speaker=f"spk{i % n_speakers}",
                           text=torch.randint(1, tiny.TEXT_VOCAB, (L,), generator=g),  # [L]
                           codes=torch.randint(0, tiny.CODEBOOK, (N_Q, T), generator=g)))  # [n_q, T]
    return out


def sampler_for(examples: list[Example], **kw) -> LengthBucketSampler:
    kw = {"batch_size": 4, "seed": 7, "bucket_batches": 3, **kw}
    return LengthBucketSampler([e.length for e in examples], [e.speaker for e in examples], **kw)


def test_load_examples_caps_frames():
    ex = make_examples(3, max_frames=8)
    lens = [e.frames for e in ex]
    split = SplitTokens(
        codes=torch.cat([e.codes for e in ex], dim=1).short(),  # [n_q, sum T]
        code_offsets=torch.tensor([0, *itertools.accumulate(lens)]),
        text=torch.cat([e.text for e in ex]).short(),
        text_offsets=torch.tensor([0, *itertools.accumulate(e.text.numel() for e in ex)]),
        index=[{"id": e.id, "speaker": e.speaker, "text": "x", "frames": e.frames, "duration": 1.0} for e in ex])
    loaded = load_examples(split, max_audio_frames=5)
    assert [e.id for e in loaded] == [e.id for e in ex]
    for got, want in zip(loaded, ex, strict=True):
        assert got.codes.dtype == torch.long and got.frames == min(5, want.frames)
        assert torch.equal(got.codes, want.codes[:, :5]) and torch.equal(got.text, want.text)


def test_sampler_is_deterministic_and_epochs_differ():
    ex = make_examples()
    a, b = sampler_for(ex), sampler_for(ex)
    n = a.epoch_batches
    first = list(itertools.islice(iter(a), 2 * n))
    assert first == list(itertools.islice(iter(b), 2 * n))
    assert first[:n] != first[n:]  # epoch 1 is reshuffled


def test_every_example_once_per_epoch():
    ex = make_examples(61)
    s = sampler_for(ex)
    assert s.epoch_batches == 16  # ceil(61 / 4)
    epoch = list(itertools.islice(iter(s), s.epoch_batches))
    flat = [i for b in epoch for i in b]
    assert sorted(flat) == list(range(61))
    assert sum(len(b) < 4 for b in epoch) == 1  # only the epoch's last window has a short batch


def test_ranks_partition_batches():
    ex = make_examples(61)
    r0, r1 = sampler_for(ex, rank=0, world_size=2), sampler_for(ex, rank=1, world_size=2)
    assert r0.epoch_batches == r1.epoch_batches == 8  # 16 batches, none dropped
    b0 = list(itertools.islice(iter(r0), 8))
    b1 = list(itertools.islice(iter(r1), 8))
    s0, s1 = {i for b in b0 for i in b}, {i for b in b1 for i in b}
    assert not s0 & s1 and len(s0) + len(s1) == 61
    r3 = [sampler_for(ex, rank=r, world_size=3) for r in range(3)]
    assert {s.epoch_batches for s in r3} == {5}  # 16 batches -> 15 used, the remainder dropped
    seen = [{i for b in itertools.islice(iter(s), 5) for i in b} for s in r3]
    assert all(not (x & y) for x, y in itertools.combinations(seen, 2))


def test_resume_gives_exactly_the_uninterrupted_batches():
    ex = make_examples()
    ref = list(itertools.islice(iter(sampler_for(ex)), 45))
    for k in (0, 5, 15, 16, 23):  # 15/16: around the epoch boundary (epoch_batches = 15)
        s = sampler_for(ex)
        it = iter(s)
        assert list(itertools.islice(it, k)) == ref[:k]
        state = s.state_dict()
        fresh = sampler_for(ex)
        fresh.load_state_dict(state)
        assert list(itertools.islice(iter(fresh), 20)) == ref[k:k + 20], k


def test_resume_with_other_layout_is_refused():
    ex = make_examples()
    s = sampler_for(ex)
    next(iter(s))
    with pytest.raises(ValueError, match="layout"):
        sampler_for(ex, batch_size=5).load_state_dict(s.state_dict())


def test_length_bucketing_reduces_padding():
    ex = make_examples(400, max_frames=200)
    lengths = [e.length for e in ex]

    def padding(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    s = sampler_for(ex, batch_size=8, bucket_batches=10)
    bucketed = list(itertools.islice(iter(s), s.epoch_batches))
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()
    random = [perm[i:i + 8] for i in range(0, 400, 8)]
    assert padding(bucketed) < 0.3 * padding(random)


def test_speaker_round_robin_spreads_speakers():
    # one speaker with many short items, two with a few long ones: windows still mix speakers
    ex = make_examples(40, n_speakers=1) + [
        Example(f"x{i}", f"s{i % 2}", torch.ones(3, dtype=torch.long), torch.zeros(N_Q, 50, dtype=torch.long))
        for i in range(8)]
    s = sampler_for(ex, batch_size=4, bucket_batches=1)  # a window = one batch, sorted by length
    batches = list(itertools.islice(iter(s), s.epoch_batches))
    speakers = [{ex[i].speaker for i in b} for b in batches]
    with_minority = [sp for sp in speakers if sp & {"s0", "s1"}]
    # round robin: the 8 minority items fill the first 3 windows next to spk0 (a plain shuffle
    # would scatter them over ~7 batches, mostly without the other minority speaker)
    assert len(with_minority) == 3 and all(len(sp) == 3 for sp in with_minority)


def test_collate_ar_shapes_and_padding():
    ex = make_examples(5)
    batch = collate_ar(ex)
    B, T = len(ex), max(e.frames for e in ex)
    assert batch["text"].shape == (B, max(e.text.numel() for e in ex)) and batch["audio"].shape == (B, T)
    for b, e in enumerate(ex):
        assert torch.equal(batch["audio"][b, : e.frames], e.codes[0])
        assert int(batch["audio"][b, e.frames:].abs().sum()) == 0
        assert int(batch["text"][b, e.text.numel():].abs().sum()) == 0
    assert batch["audio_lens"].tolist() == [e.frames for e in ex] and batch["ids"] == [e.id for e in ex]
    _, loss, _ = tiny.ar_model()(batch["text"], batch["text_lens"], batch["audio"], batch["audio_lens"])
    assert torch.isfinite(loss)


def test_collate_ar_with_a_picker_adds_codebook0_of_another_utterance_of_the_speaker():
    ex = make_examples(6, n_speakers=2)
    picker = PromptPicker(ex, prompt_frames=5, seed=0)
    batch = collate_ar(ex, prompt_picker=picker, generator=torch.Generator().manual_seed(0))
    assert batch["prompt"].shape == (len(ex), int(batch["prompt_lens"].max())) and int(batch["prompt_lens"].max()) <= 5
    for b, e in enumerate(ex):
        p = batch["prompt"][b, : batch["prompt_lens"][b]]
        assert any(o.speaker == e.speaker and o.id != e.id and
                   any(torch.equal(o.codes[0, s:s + p.numel()], p) for s in range(o.frames)) for o in ex)
    m = tiny.ar_model(speaker_condition="prompt", prompt_frames=5, max_seq_len=48)
    _, loss, _ = m(batch["text"], batch["text_lens"], batch["audio"], batch["audio_lens"],
                   prompt=batch["prompt"], prompt_lens=batch["prompt_lens"])
    assert torch.isfinite(loss) and "prompt" not in collate_ar(ex)


def test_prompt_from_same_speaker_other_utterance():
    ex = make_examples(12, n_speakers=3) + [
        Example("solo", "lonely", torch.ones(4, dtype=torch.long), torch.arange(40).repeat(N_Q, 1))]
    picker = PromptPicker(ex, prompt_frames=6, seed=0)
    assert picker.fallback_speakers == {"lonely"}
    g = torch.Generator().manual_seed(3)
    for e in ex[:12]:
        for _ in range(5):
            p = picker.pick(e, g)  # [n_q, P]
            assert p.size(0) == N_Q and 1 <= p.size(1) <= 6
            sources = [o for o in ex if o.speaker == e.speaker and o.id != e.id
                       and any(torch.equal(o.codes[:, s:s + p.size(1)], p) for s in range(o.frames))]
            assert sources, "prompt must be a crop of another utterance of the same speaker"
    p = picker.pick(ex[-1], g)  # fallback: a crop of itself (the documented leak)
    assert p.shape == (N_Q, 6) and torch.equal(p, ex[-1].codes[:, int(p[0, 0]):int(p[0, 0]) + 6])


def test_collate_nar_prompt_speaker_and_model_forward():
    ex = make_examples(6, n_speakers=2)
    table = speaker_table(ex)
    assert table == {"spk0": 1, "spk1": 2}  # 0 is reserved
    picker = PromptPicker(ex, prompt_frames=tiny.nar_model().cfg.prompt_frames, seed=0)
    extra = Example("new", "unseen", torch.ones(3, dtype=torch.long), torch.zeros(N_Q, 4, dtype=torch.long))
    batch = collate_nar(ex + [extra], prompt_picker=picker, speaker_index=table,
                        generator=torch.Generator().manual_seed(0))
    B = len(ex) + 1
    assert batch["codes"].shape == (B, N_Q, max(e.frames for e in ex + [extra]))
    assert batch["prompt"].shape[:2] == (B, N_Q) and batch["prompt"].size(2) <= 6
    assert (batch["prompt_lens"] <= 6).all() and (batch["prompt_lens"] >= 1).all()
    assert batch["speaker"].tolist() == [table[e.speaker] for e in ex] + [UNKNOWN_SPEAKER]
    for b in range(B):
        assert int(batch["prompt"][b, :, batch["prompt_lens"][b]:].abs().sum()) == 0
    kw = {k: batch[k] for k in ("prompt", "prompt_lens")}
    _, loss, _ = tiny.nar_model()(batch["text"], batch["text_lens"], batch["codes"], batch["audio_lens"], 1, **kw)
    assert torch.isfinite(loss)
    no_prompt = collate_nar(ex, prompt_picker=None, speaker_index=table, generator=torch.Generator())
    assert "prompt" not in no_prompt


def test_batch_stream_resume_includes_prompt_crops():
    ex = make_examples(30, n_speakers=3)
    picker, table = PromptPicker(ex, prompt_frames=5, seed=0), speaker_table(ex)

    def collate(batch: list[Example], g: torch.Generator) -> dict:
        return collate_nar(batch, prompt_picker=picker, speaker_index=table, generator=g)

    def stream() -> BatchStream:
        return BatchStream(ex, sampler_for(ex), collate, seed=11)

    ref = list(itertools.islice(stream(), 12))
    s = stream()
    list(itertools.islice(s, 5))
    state = s.state_dict()
    assert isinstance(state["generator"], torch.Tensor)
    resumed = stream()
    resumed.load_state_dict(state)
    for got, want in zip(itertools.islice(resumed, 7), ref[5:], strict=True):
        assert got["ids"] == want["ids"] and torch.equal(got["prompt"], want["prompt"])
    ar = BatchStream(ex, sampler_for(ex), functools.partial(lambda b, g: collate_ar(b)), seed=0)
    assert next(ar)["audio"].dim() == 2


def _epochs(s: LengthBucketSampler, n_epochs: int) -> list[list[list[int]]]:
    n = s.epoch_batches
    flat = list(itertools.islice(iter(s), n_epochs * n))
    return [flat[i * n:(i + 1) * n] for i in range(n_epochs)]


def test_consecutive_epochs_share_almost_no_batch():
    # the whole corpus in one window, as on the demo: a plain length sort repeats most batches
    ex = make_examples(160, n_speakers=6, max_frames=300)
    epochs = _epochs(sampler_for(ex, batch_size=8, bucket_batches=50), 4)
    for a, b in itertools.pairwise(epochs):
        repeated = {frozenset(x) for x in a} & {frozenset(x) for x in b}
        assert len(repeated) <= 1, len(repeated)
    still = _epochs(sampler_for(ex, batch_size=8, bucket_batches=50, length_jitter=0.0), 2)
    assert len({frozenset(x) for x in still[0]} & {frozenset(x) for x in still[1]}) > len(repeated)


def test_batches_mix_speakers_even_when_their_lengths_differ():
    # 4 speakers of 24 items; speaker k's utterances are about k times longer than speaker 0's
    ex = [Example(f"u{k}_{i}", f"s{k}", torch.ones(2, dtype=torch.long),
                  torch.zeros(N_Q, 10 * (k + 1) + i, dtype=torch.long)) for k in range(4) for i in range(24)]
    s = sampler_for(ex, batch_size=8, bucket_batches=12)
    for epoch in _epochs(s, 2):
        for b in epoch:
            counts = [sum(ex[i].speaker == f"s{k}" for i in b) for k in range(4)]
            assert counts == [2, 2, 2, 2], counts  # every batch: each speaker's equal share
    # and within a speaker, a batch holds neighbouring lengths (its items sit at one quantile)
    s0 = [[ex[i].frames for i in b if ex[i].speaker == "s0"] for b in _epochs(s, 1)[0]]
    spread = [max(f) - min(f) for f in s0]
    assert max(spread) <= 7 and sum(spread) / len(spread) <= 3  # two random items: 8 on average
