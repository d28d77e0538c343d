"""eval.oracle_teacher_forced: the AR's teacher-forced argmax codebook 0 (oracle/tf_coarse) splits the AR's
share of the WER into per-frame prediction and free-running drift."""

from __future__ import annotations

import numpy as np
import torch

from harmonica.inference.synthesize import Synthesizer
from harmonica.reports.decomposition import columns, reading


def test_each_frame_is_predicted_from_the_true_frames_before_it(tiny_checkpoints, tiny_corpus) -> None:
    synth = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"])
    torch.manual_seed(0)
    with torch.no_grad():  # an 8-step AR barely reads its inputs yet: jolt it so every input shows
        for p in synth.ar.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    prompt = synth.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    V = synth.codec.stage_sizes[0]
    cb0 = torch.randint(0, V, (24,), generator=torch.Generator().manual_seed(0))  # [T]
    hat = synth.teacher_forced_coarse("a quiet river", cb0, prompt=prompt)  # [T]
    assert hat.shape == (24,) and hat.dtype == torch.long and 0 <= int(hat.min()) and int(hat.max()) < V
    r, read = synth.ar.frames_per_step, 0
    for k in range(23):  # change frame k alone: no prediction of frame k or its group may move
        changed = cb0.clone()
        changed[k] = (changed[k] + 1 + k % (V - 1)) % V
        again = synth.teacher_forced_coarse("a quiet river", changed, prompt=prompt)
        sees = (k // r + 1) * r  # the first frame predicted after frame k's group was read
        assert torch.equal(again[:sees], hat[:sees]), k
        read += int(not torch.equal(again[sees:], hat[sees:]))
    assert read > 0  # later frames do read the true past
    other = synth.teacher_forced_coarse("a loud bell rang twice", cb0, prompt=prompt)
    assert not torch.equal(other, hat)  # and the text


def test_its_frames_can_be_decoded_as_free_running_ones_are(tiny_checkpoints, tiny_corpus) -> None:
    """With decode.ar_coarse=expected the model's codebook 0 is decoded as the expectation of the AR's
    distribution, so the oracle hands the same distribution (per true-past frame) to the codec."""
    from harmonica.config.schema import DecodeConfig

    synth = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"],
                        decode=DecodeConfig(ar_coarse="expected", ar_coarse_temperature=0.5))
    prompt = synth.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    V = synth.codec.stage_sizes[0]
    cb0 = torch.randint(0, V, (20,), generator=torch.Generator().manual_seed(1))  # [T]
    probs: dict[int, torch.Tensor] = {}
    hat = synth.teacher_forced_coarse("a quiet river", cb0, prompt=prompt, probs_out=probs)  # [T]
    assert probs[0].shape == (20, V)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(20))
    assert torch.equal(probs[0].argmax(-1), hat)  # the same frames, sharpened, not another prediction
    hard = synth.complete("a quiet river", hat, prompt=prompt, seed=3)
    soft = synth.complete("a quiet river", hat, prompt=prompt, seed=3, coarse=probs)
    assert hard.shape == soft.shape and not np.allclose(hard, soft)


def test_the_report_splits_the_ar_share_when_tf_coarse_was_scored() -> None:
    m = {"eval/wer": 0.9, "baseline/resynthesis/wer": 0.45, "oracle/gt_coarse/wer": 0.65}
    assert "per-frame" not in reading(m)
    m["oracle/tf_coarse/wer"] = 0.8
    text = reading(m)
    assert "AR +0.250" in text and "per-frame prediction +0.150" in text and "drift +0.100" in text
    heads = [h for h, _ in columns(m)]
    assert heads.index("gt codebook 0 + model NAR") < heads.index("AR teacher-forced codebook 0 + NAR") \
        < heads.index("model (AR + NAR)")
