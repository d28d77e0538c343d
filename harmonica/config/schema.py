"""The one configuration schema of harmonica.

Every section is a strict pydantic model (`extra="forbid"`): an unknown key is an error, never a
silently ignored knob. Step counts in `training.*` are *optimizer* steps (one step = one parameter
update = `grad_accum_steps` micro-batches); schedules, logging cadences and warmups all use that unit.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from harmonica.config.evaluation import (  # noqa: F401 -- re-exported: the one schema
    ASRConfig,
    DecodeConfig,
    EvalConfig,
    GateConfig,
    GatesConfig,
    SpeakerSimConfig,
)
from harmonica.config.strict import Strict

ENCODEC_BANDWIDTH_TO_NQ: dict[float, int] = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
ENCODEC_SAMPLE_RATE = 24_000
ENCODEC_FRAME_RATE = 75.0
ENCODEC_CODEBOOK_SIZE = 1024


# ----------------------------------------------------------------------------------------------- data


class QualityConfig(Strict):
    """Thresholds of the preprocessing quality filter (plan 3.2)."""

    enabled: bool = True
    max_silence_sec: float = Field(1.0, gt=0, description="longest internal silence allowed")
    silence_db: float = Field(-40.0, description="frame RMS below this (dBFS) counts as silence")
    max_clipping_ratio: float = Field(0.001, ge=0, le=1)
    clip_level: float = Field(0.999, gt=0, le=1)
    min_snr_db: float = Field(15.0, description="estimated speech-to-noise-floor ratio")
    min_chars_per_sec: float = Field(4.0, ge=0)
    max_chars_per_sec: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _rate_order(self) -> QualityConfig:
        if self.min_chars_per_sec >= self.max_chars_per_sec:
            raise ValueError("min_chars_per_sec must be < max_chars_per_sec")
        return self


class GeneratedCorpusConfig(Strict):
    """data.corpus_format=demo_generated: grammar sentences x espeak-ng voices, synthesised at
    preprocess and cached under <workdir>/corpora (harmonica/data/generated.py). Sentences come from
    a seeded grammar (data.split_seed); all distinct, so held-out sentences never reach train."""

    sentences: int = Field(3000, ge=8, description="distinct sentences (= train + val + eval + prompts)")
    voices: list[str] = Field(
        default_factory=lambda: ["en-us+m3:172:40", "en+m1:182:52", "en-gb-x-rp+m7:166:35",
                                 "en-us+f2:176:60", "en+f3:186:55", "en+f4:168:68"],
        min_length=2, description="espeak-ng 'voice[:words per minute[:pitch 0-99]]'")
    eval_sentences: int = Field(20, ge=1, description="held out, each spoken by two voices")
    eval_text: Literal["bundled", "grammar"] = Field(
        "bundled", description="bundled: the bundled demo corpus's 20 held-out sentences (natural text: "
        "whisper tiny.en reads espeak-ng speech of grammar sentences with ~3x the WER), grammar: new ones")
    val_sentences: int = Field(24, ge=1)
    prompts_per_speaker: int = Field(2, ge=1)


class DataConfig(Strict):
    corpus_format: Literal["demo", "demo_generated", "ljspeech", "vctk"] = "demo"
    corpus_dir: str | None = Field(None, description="None = the bundled demo corpus")
    min_duration: float = Field(0.5, ge=0)
    max_duration: float = Field(10.0, gt=0)
    trim_silence: bool = True
    trim_db: float = Field(-40.0, lt=0)
    normalize: Literal["none", "peak", "rms"] = "peak"
    normalize_level_db: float = Field(-1.0, le=0)
    val_fraction: float = Field(0.05, ge=0, lt=1, description="ljspeech/vctk: held-out share")
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    eval_speakers: list[str] = Field(default_factory=list, description="vctk: held-out speakers")
    split_seed: int = 1234
    workers: int = Field(1, ge=1)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    generated: GeneratedCorpusConfig = Field(default_factory=GeneratedCorpusConfig)

    @model_validator(mode="after")
    def _durations(self) -> DataConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError("min_duration must be < max_duration")
        if self.val_fraction + self.eval_fraction >= 1:
            raise ValueError("val_fraction + eval_fraction must be < 1")
        return self


# ---------------------------------------------------------------------------------------------- codec


class CodecConfig(Strict):
    name: Literal["mel_rvq", "encodec"] = "mel_rvq"
    sample_rate: int = Field(24_000, gt=0)
    # mel_rvq
    n_q: int = Field(8, ge=1, le=32, description="mel_rvq stages; encodec derives it from bandwidth")
    codebook_size: int = Field(256, ge=2, description="mel_rvq entries per stage; encodec is 1024")
    codebook_sizes: list[int] | None = Field(
        None, description="mel_rvq: entries per stage (n_q values, stage 0 the largest), e.g. "
        "[1024, 256, ...]; overrides codebook_size. The AR predicts stage 0 (vocab = its size); the NAR's "
        "tables and heads are stage 0's size, entries beyond a stage's own size are never produced")
    n_mels: int = Field(100, ge=8)
    n_fft: int = Field(1280, ge=64)
    hop_length: int = Field(320, ge=1)
    kmeans_iters: int = Field(20, ge=1)
    kmeans_max_frames: int = Field(200_000, ge=1_000, description="frames sampled to fit k-means")
    griffin_lim_iters: int = Field(48, ge=1)
    seed: int = 0
    # encodec
    bandwidth: float = Field(6.0, description="kbps; 1.5, 3, 6, 12 or 24")
    pretrained: bool = Field(True, description="encodec: try the published weights")
    weights_path: str | None = Field(None, description="encodec: local state-dict file")
    ladder_utterances: int = Field(
        0, ge=0, description="preprocess: resynthesis WER/CER of the first k stages, each k, on this "
        "many held-out utterances (codec/ladder/*); 0 = off. Needs the eval ASR; not a token setting")

    @model_validator(mode="after")
    def _codec_shape(self) -> CodecConfig:
        if self.name == "encodec":
            if self.bandwidth not in ENCODEC_BANDWIDTH_TO_NQ:
                raise ValueError(f"bandwidth must be one of {sorted(ENCODEC_BANDWIDTH_TO_NQ)}")
            if self.sample_rate != ENCODEC_SAMPLE_RATE:
                raise ValueError(f"encodec 24 kHz needs sample_rate={ENCODEC_SAMPLE_RATE}")
        if self.codebook_sizes is not None:
            sizes = self.codebook_sizes
            if self.name != "mel_rvq":
                raise ValueError("codebook_sizes is a mel_rvq setting (encodec has 1024 entries per stage)")
            if len(sizes) != self.n_q or min(sizes) < 2 or sizes[0] != max(sizes):
                raise ValueError(f"codebook_sizes={sizes} needs n_q={self.n_q} values >= 2 with stage 0 the "
                                 "largest (it sets the AR vocabulary and the NAR's table size)")
        if self.name == "mel_rvq" and self.hop_length > self.n_fft // 2:
            raise ValueError("mel_rvq needs hop_length <= n_fft // 2 (Griffin-Lim overlap)")
        return self

    @property
    def effective_n_q(self) -> int:
        return ENCODEC_BANDWIDTH_TO_NQ[self.bandwidth] if self.name == "encodec" else self.n_q

    @property
    def effective_codebook_size(self) -> int:
        return self.stage_sizes[0]

    @property
    def stage_sizes(self) -> list[int]:
        """Entries per stage (stage 0 first; it is the largest)."""
        if self.name == "encodec":
            return [ENCODEC_CODEBOOK_SIZE] * self.effective_n_q
        return list(self.codebook_sizes) if self.codebook_sizes else [self.codebook_size] * self.n_q

    @property
    def frame_rate(self) -> float:
        return ENCODEC_FRAME_RATE if self.name == "encodec" else self.sample_rate / self.hop_length


# ----------------------------------------------------------------------------------------------- text


class TextConfig(Strict):
    frontend: Literal["chars", "phonemes"] = Field(
        "chars", description="chars, or phonemes = espeak-ng IPA (fixed inventory, harmonica/data/phonemes.py)"
    )
    phoneme_voice: str = Field("en-us", description="phonemes: espeak-ng voice/language that reads the text")
    lowercase: bool = Field(True, description="chars only")
    max_text_len: int = Field(256, ge=8)


# --------------------------------------------------------------------------------------------- models


class TransformerConfig(Strict):
    d_model: int = Field(256, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    attn_dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout on the attention probabilities; None = `dropout`. On CPU any value "
        "> 0 makes torch leave its fused attention kernel for the explicit one (~5x slower forward + backward)")
    max_seq_len: int = Field(1024, ge=8, description="audio positions incl. the stop token")
    text_layers: int = Field(2, ge=0, description="non-causal text-encoder layers before the blocks")

    @model_validator(mode="after")
    def _heads(self) -> TransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        return self


class ARModelConfig(TransformerConfig):
    speaker_condition: Literal["none", "prompt"] = Field(
        "none", description="prompt: codebook 0 of another utterance of the speaker (a crop of <= prompt_frames) "
        "sits between the text and the audio, so the AR knows the voice it continues (VALL-E's enrolment)")
    prompt_frames: int = Field(75, ge=1, description="AR acoustic prompt length (frames)")
    frames_per_step: int = Field(1, ge=1, le=8, description="reduction factor r (Tacotron): each AR position reads "
                                 "the previous r frames and predicts the next r, so the audio sequence is r x "
                                 "shorter; 1 = one frame per position (VALL-E)")
    acoustic_dim: int = Field(0, ge=0, le=256, description="0 = off. > 0: the head also scores each codebook-0 "
                              "entry by -scale/2 x the squared distance between a point it predicts per frame and "
                              "the entry's codec embedding (its first acoustic_dim principal components, fitted "
                              "when training starts): entries that sound alike get alike logits from the start")
    acoustic_input: bool = Field(False, description="the acoustic head's codec table also feeds the input side: "
                                 "each input frame's embedding gains a learned projection of its entry's principal "
                                 "components (needs acoustic_dim > 0)")

    @model_validator(mode="after")
    def _acoustic_input_needs_table(self) -> ARModelConfig:
        if self.acoustic_input and not self.acoustic_dim:
            raise ValueError("acoustic_input needs acoustic_dim > 0 (the table it projects)")
        return self


class NARModelConfig(TransformerConfig):
    speaker_condition: Literal["prompt", "embedding", "none"] = "prompt"
    prompt_frames: int = Field(150, ge=1, description="acoustic prompt length (frames)")
    max_speakers: int = Field(1024, ge=1, description="table size for speaker_condition=embedding")
    count_prior: bool = Field(True, description="add log p(codebook k | codebook 0) of a count table fitted on "
                              "the training split to stage k's logits: the NAR learns a correction to the table")


class ModelConfig(Strict):
    ar: ARModelConfig = Field(default_factory=ARModelConfig)
    nar: NARModelConfig = Field(default_factory=NARModelConfig)


# ------------------------------------------------------------------------------------------- training


class ParamGroupConfig(Strict):
    """LR multiplier and weight decay for one parameter group (plan 4.2)."""

    lr_scale: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.01, ge=0)


class ParamGroups(Strict):
    embeddings: ParamGroupConfig = Field(default_factory=lambda: ParamGroupConfig(weight_decay=0.0))
    attention: ParamGroupConfig = Field(default_factory=ParamGroupConfig)
    output_heads: ParamGroupConfig = Field(default_factory=ParamGroupConfig)
    text_encoder: ParamGroupConfig = Field(default_factory=ParamGroupConfig)
    speaker_encoder: ParamGroupConfig = Field(default_factory=ParamGroupConfig)


class CollapseConfig(Strict):
    util_floor: float = Field(0.10, ge=0, le=1, description="predicted utilisation floor per codebook")
    attn_entropy_floor: float = Field(0.5, ge=0, description="nats, min over heads")
    grace_steps: int | None = Field(None, ge=0, description="no warnings before this step; None = the LR warmup "
                                    "(warmup_steps), whose utilisation reflects the initialisation, not a collapse")
    stop_on_collapse: bool = False
    early_stop_window: int = Field(0, ge=0, description="0 = off; val loss and util plateau window")
    spike_factor: float = Field(10.0, gt=1, description="grad norm > factor x running median")
    max_instability_events: int = Field(3, ge=1, description="events before the LR is reduced")
    lr_reduce_factor: float = Field(0.5, gt=0, lt=1)


class TrainingConfig(Strict):
    batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    total_steps: int = Field(1000, ge=1, description="optimizer steps")
    lr: float = Field(5e-5, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(200, ge=0)
    scheduler_type: Literal["cosine", "linear", "constant", "plateau"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.98)
    optimizer: Literal["adamw", "muon"] = Field("adamw", description="muon: Muon (momentum, orthogonalised "
                                                 "by Newton-Schulz) for the 2D weights of muon_groups, AdamW "
                                                 "for the rest")
    muon_lr: float = Field(0.02, gt=0, description="Muon's lr (scaled by the same schedule as lr)")
    muon_groups: list[Literal["attention", "text_encoder"]] = Field(
        default_factory=lambda: ["attention", "text_encoder"],
        description="optimizer=muon: the parameter groups whose 2D weights Muon steps")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    param_groups: ParamGroups = Field(default_factory=ParamGroups)
    label_smoothing: float = Field(0.05, ge=0, lt=1, description="start value")
    label_smoothing_end: float = Field(0.0, ge=0, lt=1)
    label_smoothing_decay_steps: int = Field(0, ge=0)
    codebook_entropy_weight: float = Field(0.02, ge=0)
    codebook_entropy_warmup_steps: int = Field(10_000, ge=0)
    usage_entropy_weight: float = Field(0.0, ge=0)
    usage_entropy_temperature: float = Field(1.0, gt=0, description="< 1 sharpens towards argmax usage")
    focal_gamma: float = Field(0.0, ge=0)
    scheduled_sampling: bool = False
    scheduled_sampling_start: int = Field(10_000, ge=0)
    scheduled_sampling_ratio_start: float = Field(0.95, ge=0, le=1, description="teacher-forcing")
    scheduled_sampling_ratio_end: float = Field(0.7, ge=0, le=1)
    token_noise: float = Field(0.0, ge=0, lt=1)
    token_noise_neighbours: int = Field(0, ge=0, description="AR: 0 = a noised input token is any codebook-0 "
                                        "entry; k > 0 = one of its k nearest entries in the codec's embedding "
                                        "space (the near-misses a free-running AR feeds itself)")
    neighbour_smoothing: float = Field(0.0, ge=0, lt=1, description="AR: target mass moved from the true "
                                       "codebook-0 entry to its nearest entries in the codec's embedding space "
                                       "(acoustic label smoothing: a near-miss costs less than a far miss)")
    neighbour_smoothing_k: int = Field(8, ge=1, description="AR: entries sharing neighbour_smoothing")
    embedding_regression_weight: float = Field(0.0, ge=0, description="AR: + this x the mean squared error "
                                               "between codebook 0's expected codec embedding under the AR's "
                                               "distribution and the target entry's (what ar_coarse=expected decodes)")
    text_dropout: float = Field(0.0, ge=0, lt=1, description="AR: share of utterances trained on the empty "
                                "text (BOS EOS), so classifier-free guidance (eval.decode.text_guidance) has "
                                "an unconditional model")
    nar_refine_train: bool = Field(False, description="NAR: 2-pass self-conditioned refinement")
    nar_stages_per_step: int = Field(0, ge=0, description="NAR stages trained per micro-batch; 0 = all")
    # AR guided attention (DCTTS): penalise audio->text attention far from the diagonal
    guided_attention_weight: float = Field(0.0, ge=0, description="AR; 0 = off (fused attention kernel)")
    guided_attention_sigma: float = Field(0.2, gt=0, description="width g of the diagonal band")
    guided_attention_decay_steps: int = Field(0, ge=0, description="linear decay to 0 over these steps; 0 = constant")
    guided_attention_layers: list[int] = Field(default_factory=list, description="AR blocks guided; [] = all")
    guided_attention_heads: int = Field(0, ge=0, description="first n heads of each guided layer; 0 = all")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(100, ge=1)
    sample_every: int = Field(500, ge=1)
    ckpt_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1)
    val_asr_utterances: int = Field(0, ge=0, description="val utterances synthesised + transcribed; 0 = off")
    val_asr_every: int = Field(0, ge=0, description="a multiple of val_every; 0 = at every validation")
    best_metric: str = "val_ema/loss"
    best_mode: Literal["min", "max"] = "min"
    collapse: CollapseConfig = Field(default_factory=CollapseConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # 1 by default: on 2 shared cores a second thread fighting another process made the demo AR step
    # 2.5x slower (0.70 s vs 0.28 s). On 2 quiet cores 2 threads gain ~6% for a small 8 x 256 step and
    # 1.3-1.5x for the phoneme / 1024-entry demo (projects/demo.yaml sets 2). 0 = torch's default.
    threads: int = Field(1, ge=0, description="intra-op CPU threads (torch.set_num_threads); 0 = torch default")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _steps(self) -> TrainingConfig:
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be < total_steps={self.total_steps} "
                "(both count optimizer steps, i.e. after grad_accum_steps)"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must be <= lr={self.lr}")
        if self.label_smoothing_decay_steps > self.total_steps:
            raise ValueError("label_smoothing_decay_steps must be <= total_steps (optimizer steps)")
        if self.scheduled_sampling and self.scheduled_sampling_start >= self.total_steps:
            raise ValueError(
                f"scheduled_sampling_start={self.scheduled_sampling_start} must be < total_steps="
                f"{self.total_steps} (optimizer steps)"
            )
        if self.val_asr_every % self.val_every:
            raise ValueError(f"val_asr_every={self.val_asr_every} must be a multiple of val_every={self.val_every}")
        for name in ("log_every", "val_every", "ckpt_every", "sample_every"):
            if getattr(self, name) > self.total_steps:
                raise ValueError(f"{name} must be <= total_steps={self.total_steps} (optimizer steps)")
        return self

    @property
    def micro_steps_total(self) -> int:
        return self.total_steps * self.grad_accum_steps


class TrainingSections(Strict):
    ar: TrainingConfig = Field(default_factory=TrainingConfig)
    nar: TrainingConfig = Field(default_factory=TrainingConfig)


# ------------------------------------------------------------------------------------- sweep/tracking


class SweepConfig(Strict):
    storage: str | None = Field(None, description="Optuna RDB URL; None = sqlite under the workdir")
    study_name: str | None = None
    sampler_seed: int = 0
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field(
        "median", description="used when the space file names no pruner")
    max_retries: int = Field(2, ge=0, description="times a trial whose worker died (stale heartbeat) is re-run "
                                                  "with the same parameters, as a new trial; 0 = never")
    heartbeat_interval: int = Field(20, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=2, description="seconds without a heartbeat after which a running trial "
                                                     "counts as dead (stale), is failed and retried")
    baseline_trial: bool = Field(True, description="enqueue the project's own values of the searched knobs as "
                                                   "trial 0 of a new study (the report says if the best beats it)")

    @model_validator(mode="after")
    def _grace_after_beats(self) -> SweepConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"sweep.grace_period ({self.grace_period} s) must exceed sweep.heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live trials count as dead")
        return self


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(None, description="None = sqlite:///<workdir>/mlflow.db")
    artifact_location: str | None = Field(None, description="None = <workdir>/mlartifacts")
    experiment_prefix: str = "harmonica"
    system_metrics: bool = True
    async_logging: bool = True
    health_timeout: float = Field(5.0, gt=0, le=60, description="seconds a tracking server has to answer at start")
    request_timeout: float = Field(10.0, gt=0, description="seconds per MLflow request to a server (then retried)")
    request_retries: int = Field(2, ge=0, le=10, description="MLflow retries per request before the server counts as lost")


# ------------------------------------------------------------------------------------------------ root


class HarmonicaConfig(Strict):
    project: str = "base"
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingSections = Field(default_factory=TrainingSections)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _audio_fits_positions(self) -> HarmonicaConfig:
        frames = math.ceil(self.data.max_duration * self.codec.frame_rate)
        for kind in ("ar", "nar"):
            limit = getattr(self.model, kind).max_seq_len - 1  # one position is the stop token
            if frames > limit:
                raise ValueError(
                    f"data.max_duration={self.data.max_duration}s is {frames} codec frames at "
                    f"{self.codec.frame_rate:g} Hz, more than model.{kind}.max_seq_len - 1 = {limit} "
                    "(one position is reserved for the stop token); lower data.max_duration or "
                    f"raise model.{kind}.max_seq_len"
                )
        if self.codec.sample_rate <= 0:
            raise ValueError("codec.sample_rate must be > 0")
        return self

    @property
    def max_audio_frames(self) -> int:
        return min(self.model.ar.max_seq_len, self.model.nar.max_seq_len) - 1
