"""Configuration of evaluation (ASR, speaker similarity, decoding) and of the promotion gates: part of
the one schema (`harmonica.config.schema` re-exports every class)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harmonica.config.strict import Strict


class ASRConfig(Strict):
    model: str = Field("bundled:tiny.en", description="hub name, local dir, or bundled:tiny.en")
    compute_type: str = "int8"
    language: str = "en"
    beam_size: int = Field(1, ge=1)
    # whisper tiny at temperature 0 turns some babble into a repetition loop ("no, no, no, ..." x 100):
    # one such utterance of 16 added ~1.1 to a corpus WER. A transcript cannot hold more than a speaker
    # could say in the audio's duration: decoding stops at max_tokens_base + rate x seconds tokens
    # (real speech is ~3 tokens/s, so a correct transcript is never cut).
    max_tokens_per_second: float = Field(10.0, ge=0, description="transcript length bound; 0 = none")
    max_tokens_base: int = Field(10, ge=1)


class SpeakerSimConfig(Strict):
    backend: Literal["auto", "ecapa", "resemblyzer"] = "auto"
    ecapa_source: str = "speechbrain/spkrec-ecapa-voxceleb"


class DecodeConfig(Strict):
    # per codebook, entry 0 = the AR's first codebook; a short list repeats its last entry.
    # The NAR codebooks default to argmax (temperature 0).
    temperature: list[float] = Field(default_factory=lambda: [1.0, 0.0], description="per codebook")
    top_k: list[int] = Field(default_factory=lambda: [0])
    top_p: list[float] = Field(default_factory=lambda: [0.9, 1.0])
    repetition_penalty: float = Field(1.1, ge=1)
    text_guidance: float = Field(1.0, ge=0, description="AR classifier-free guidance scale on the text: logits = "
                                 "empty + s * (text - empty); 1 = off; needs an AR trained with text_dropout > 0")
    text_window: int = Field(0, ge=0, description="monotonic text window at AR decoding (DCTTS forcibly incremental "
                             "attention): the windowed heads see only the text keys c-1 .. c+text_window around "
                             "each item's text position c, which follows their attention and never moves back; 0 = off")
    text_window_heads: int = Field(0, ge=0, description="the first n heads of every AR block are windowed "
                                   "(the guided-attention heads, training.guided_attention_heads); 0 = all")
    ar_candidates: int = Field(1, ge=1, description="codebook-0 sequences the AR samples per utterance (one batch); "
                               "the one it is surest of is kept: the highest mean log-probability of its own tokens "
                               "among those that neither looped nor hit the length bound. 1 = a single sample")
    max_length_per_char: float = Field(0.25, gt=0, description="seconds of audio per text char")
    nar_refine_steps: int = Field(1, ge=1)
    nar_residual: Literal["sampled", "expected"] = Field(
        "sampled", description="what the codec decodes for codebooks 1..: the NAR's sampled (argmax at temperature "
        "0) entries, or `expected`: the probability-weighted mean of each stage's codec embeddings (the "
        "minimum-mean-square-error residual; an unsure argmax adds a wrong residual vector instead)")
    ar_coarse: Literal["sampled", "expected"] = Field(
        "sampled", description="what the codec decodes for codebook 0: the AR's sampled entries, or `expected`: "
        "the mean of codebook 0's embeddings under the AR's distribution at each output frame (at "
        "ar_coarse_temperature, STOP left out); the AR and the NAR still read the sampled entries")
    ar_coarse_temperature: float = Field(1.0, gt=0, description="temperature of the AR distribution that "
                                         "ar_coarse=expected averages over (< 1 sharpens it towards the argmax)")
    latent_smoothing: list[float] = Field(default_factory=list, description="a kernel (odd length, e.g. "
                                          "[1, 2, 1]) the decoded latent -- the sum of the stages' embeddings -- is "
                                          "convolved with along time before the codec's decoder, for the model's "
                                          "output and the codec baselines alike; [] = off")
    # the corpus is peak-normalised to data.normalize_level_db (-1 dBFS by default): decoded audio is
    # attenuated (never amplified) to the same ceiling, so nothing leaves the decoder past full scale
    peak_ceiling_db: float = Field(-1.0, le=0, description="max peak of decoded audio in dBFS (attenuate only)")

    @model_validator(mode="after")
    def _kernel(self) -> DecodeConfig:
        k = self.latent_smoothing
        if len(k) > 1 and (len(k) % 2 == 0 or min(k) < 0 or sum(k) <= 0):
            raise ValueError(f"latent_smoothing={k}: a kernel of odd length with non-negative taps and a positive "
                             "sum, e.g. [1, 2, 1]")
        return self


class EvalConfig(Strict):
    split: Literal["eval", "val"] = "eval"
    max_utterances: int = Field(0, ge=0, description="0 = whole slice")
    asr: ASRConfig = Field(default_factory=ASRConfig)
    speaker: SpeakerSimConfig = Field(default_factory=SpeakerSimConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    seed: int = Field(0, description="with the utterance id, derives every utterance's decoding seed")
    num_seeds: int = Field(1, ge=1, description="decodings per utterance (seeds); intervals over utterances and seeds")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the AR and NAR decode (the ASR and "
                                                   "speaker models run on CPU); auto = the first CUDA GPU when one "
                                                   "is visible, else CPU. Seeds draw the same on either")
    threads: int = Field(1, ge=0, description="intra-op CPU threads while evaluating (torch.set_num_threads), "
                         "fixed so verdicts do not depend on machine load; 0 = torch default")
    bootstrap_samples: int = Field(1000, ge=0, description="resamples for 95% intervals over utterances; 0 = none")
    oracle: bool = Field(True, description="also score ground-truth codebook 0 + the model's NAR (oracle/gt_coarse)")
    oracle_teacher_forced: bool = Field(False, description="also score the AR's teacher-forced argmax codebook 0 "
                                        "(each frame predicted from the true frames before it) + the model's NAR "
                                        "(oracle/tf_coarse; codebook 0 decoded as the model's is, decode.ar_coarse): splits the "
                                        "AR's share into per-frame prediction and drift")
    oracle_stages: list[int] = Field([1], description="also score the resynthesis of the first k codebooks "
                                     "(oracle/resynthesis_k<k>); [] = none")


class GateConfig(Strict):
    threshold: float
    relative_to: Literal["absolute", "ground_truth", "resynthesis"] = "absolute"
    enabled: bool = True
    bound: float | None = Field(None, description="loosest effective threshold a relative gate may reach "
                                "(max gates: min(relative, bound); min gates: max(relative, bound))")


class GatesConfig(Strict):
    max_wer: GateConfig = Field(default_factory=lambda: GateConfig(threshold=0.5))
    min_sim: GateConfig = Field(default_factory=lambda: GateConfig(threshold=0.5))
    max_failure_rate: GateConfig = Field(default_factory=lambda: GateConfig(threshold=0.2))
    collapse_free_tail: float = Field(0.2, ge=0, le=1, description="last share of training")
    checkpoint_utilisation: bool = Field(True, description="the checkpoints' own val utilisation >= collapse floor")
    primary_metric: str = "eval/wer"
    primary_mode: Literal["min", "max"] = "min"
    champion_confidence: float = Field(0.95, ge=0, lt=1, description="paired-bootstrap confidence that a "
                                       "candidate beats the champion; 0 = compare point estimates")
