"""Every MLflow name that more than one module uses: tag keys, artifact paths, metric families.

Runs are read back by these names (the report, promote, the pipeline's step reuse, resume), so a
key is defined once here and imported everywhere; tests/tracking/test_name_set.py pins the whole set a
pipeline writes, and tests/tracking/test_boundary.py fails on a `harmonica.*` tag literal elsewhere.
"""

from __future__ import annotations

import re
from functools import partial


# --- tags: What a run is (every stage)
STAGE = "harmonica.stage"
PROJECT = "harmonica.project"
CONFIG_HASH = "harmonica.config_hash"
GIT_COMMIT = "harmonica.git_commit"
GIT_DIRTY = "harmonica.git_dirty"
SOURCE_HASH = "harmonica.source_hash"
VERSION = "harmonica.version"
STEP_KEY = "harmonica.step_key"
DEVICE = "harmonica.device"
WORLD_SIZE = "harmonica.world_size"
THREADS = "harmonica.threads"

# --- tags: Preprocess: the token cache
CACHE_DIR = "harmonica.cache_dir"
CACHE_FINGERPRINT = "harmonica.cache_fingerprint"
CACHE_REUSED = "harmonica.cache_reused"
CACHE_MISMATCH = "harmonica.cache_mismatch"
CACHE_MISMATCH_FIELDS = "harmonica.cache_mismatch_fields"
DATASET_UNLOGGED = "harmonica.dataset_unlogged"

# --- tags: Training: progress, checkpoints, collapse, resume
MODEL_KIND = "harmonica.model_kind"
STEPS = "harmonica.steps"
BEST_STEP = "harmonica.best_step"
BEST_VALUE = "harmonica.best_value"
BEST_METRIC = "harmonica.best_metric"  # the validation metric "best" is chosen by, and its mode
BEST_MODE = "harmonica.best_mode"
BEST_MODEL_ID = "harmonica.best_model_id"  # the EMA checkpoint model that is best so far
CKPT_STEP_TAG = "harmonica.checkpoint_step"  # on a checkpoint LoggedModel: the optimizer step it was saved at
CHECKPOINT_DIR = "harmonica.checkpoint_dir"
EARLY_STOP = "harmonica.early_stop"
STOP_REASON = "harmonica.stop_reason"
COLLAPSE = "harmonica.collapse"
COLLAPSE_FIRST_STEP = "harmonica.collapse_first_step"
COLLAPSE_LAST_STEP = "harmonica.collapse_last_step"
INSTABILITY = "harmonica.instability"
NONFINITE_WEIGHTS_STEP = "harmonica.nonfinite_weights_step"
RESUMED_FROM = "harmonica.resumed_from"
RESUME_REWOUND = "harmonica.resume_rewound"
RESUME_SKIPPED = "harmonica.resume_skipped"
RESUME_PREFIX = "harmonica.resume_"

# --- tags: Evaluate: which checkpoints were scored
AR_RUN_ID = "harmonica.ar_run_id"
NAR_RUN_ID = "harmonica.nar_run_id"
AR_CHECKPOINT = "harmonica.ar_checkpoint"
NAR_CHECKPOINT = "harmonica.nar_checkpoint"
AR_MODEL_ID = "harmonica.ar_model_id"  # the checkpoint LoggedModels that were scored (kind_model_id)
NAR_MODEL_ID = "harmonica.nar_model_id"
AR_STEP = "harmonica.ar_step"
NAR_STEP = "harmonica.nar_step"
WEIGHTS = "harmonica.weights"
EVAL_SPLIT = "harmonica.eval_split"
EVAL_THREADS = "harmonica.eval_threads"

# --- tags: Promote: the decision, on the promote run and on the registered version
EVALUATION_RUN_ID = "harmonica.evaluation_run_id"
PROMOTE_RUN_ID = "harmonica.promote_run_id"
DECISION = "harmonica.decision"
DECISION_REASONS = "harmonica.decision_reasons"
FAILING_GATES = "harmonica.failing_gates"
GATES_PASSED = "harmonica.gates_passed"
PRIMARY_METRIC = "harmonica.primary_metric"
PRIMARY_MODE = "harmonica.primary_mode"
PRIMARY_VALUE = "harmonica.primary_value"
PREVIOUS_CHAMPION = "harmonica.previous_champion"
CHAMPION_MOVED = "harmonica.champion_moved"
CANDIDATE_KEY = "harmonica.candidate_key"
WEIGHTS_KEY = "harmonica.weights_key"
MODEL_ID = "harmonica.model_id"
MODEL_NAME = "harmonica.model_name"
MODEL_VERSION = "harmonica.model_version"
DUPLICATE_OF = "harmonica.duplicate_of"
SUPERSEDED_BY = "harmonica.superseded_by"
PROMOTED_AT = "harmonica.promoted_at"
PROMOTED_BY = "harmonica.promoted_by"
PROMOTION_COMPLETE = "harmonica.promotion_complete"
SERVING_SOURCE_HASH = "harmonica.serving_source_hash"
ALLOW_DIRTY = "harmonica.allow_dirty"
ALLOW_UNFINISHED = "harmonica.allow_unfinished"
ALLOW_MIXED_PAIR = "harmonica.allow_mixed_pair"
AR_PROJECT = "harmonica.ar_project"
NAR_PROJECT = "harmonica.nar_project"
AR_CONFIG_HASH = "harmonica.ar_config_hash"
NAR_CONFIG_HASH = "harmonica.nar_config_hash"
AR_RUN_STATUS = "harmonica.ar_run_status"
NAR_RUN_STATUS = "harmonica.nar_run_status"
CODE_SERVING = "harmonica.code.serving"

# --- tags: Registry: the registered model and rollbacks
MANAGED_BY = "harmonica.managed_by"
CHAMPION = "harmonica.champion"
CHAMPION_HISTORY = "harmonica.champion_history"
ROLLBACK_REASON = "harmonica.rollback_reason"
ROLLBACK_FORCED = "harmonica.rollback_forced"
ROLLED_BACK_AT = "harmonica.rolled_back_at"
ROLLED_BACK_BY = "harmonica.rolled_back_by"
ROLLED_BACK_FROM = "harmonica.rolled_back_from"
ROLLED_BACK_TO = "harmonica.rolled_back_to"

# --- registry aliases of the served model
CANDIDATE_ALIAS = "candidate"  # the latest registered version
CHAMPION_ALIAS = "champion"  # the version to serve

# --- tags: Sweep: the study's parent run and Optuna user attributes
SWEEP_STUDY = "harmonica.sweep_study"
SWEEP_SPACE = "harmonica.sweep_space"
SWEEP_OBJECTIVE = "harmonica.sweep_objective"
SWEEP_WORKER = "harmonica.sweep_worker"
SWEEP_WORKER_OF = "harmonica.sweep_worker_of"
SWEEP_PARENT_RUN_ID = "harmonica.sweep_parent_run_id"
SWEEP_N_FINISHED = "harmonica.sweep_n_finished"
SWEEP_BEST_TRIAL = "harmonica.sweep_best_trial"
SWEEP_BEST_RUN_ID = "harmonica.sweep_best_run_id"
SWEEP_BEST_CONFIG = "harmonica.sweep_best_config"
SWEEP_BEST_FEASIBLE = "harmonica.sweep_best_feasible"
SWEEP_BASELINE_TRIAL = "harmonica.sweep_baseline_trial"  # parent: the trial that ran the project's own config
SWEEP_BEATS_BASELINE = "harmonica.sweep_beats_baseline"  # parent: true/false/unknown
# a trial whose worker died (stale heartbeat): set on its child run by the worker that failed it
SWEEP_RETRIED_AS = "harmonica.sweep_retried_as"  # the number of the trial that retries it ("none": no retry left)
SWEEP_FAILED_BY = "harmonica.sweep_failed_by"  # the worker that found it stale
SWEEP_RETRY_OF = "harmonica.sweep_retry_of"  # on a retry's child run: the number of the trial it retries
MLFLOW_PARENT_RUN_ID = "harmonica.mlflow_parent_run_id"
MLFLOW_RUN_ID = "harmonica.mlflow_run_id"
MLFLOW_TRACKING_URI = "harmonica.mlflow_tracking_uri"


def kind_tag(kind: str, field: str) -> str:
    """`harmonica.<ar|nar>_<field>` on an evaluate run (and a registered version), for the AR or NAR checkpoint it
    scored: `run_id` the training run it came from, `checkpoint` its local directory, `step` its optimizer
    step, `model_id` its checkpoint LoggedModel."""
    return f"harmonica.{kind}_{field}"


kind_run_id = partial(kind_tag, field="run_id")
kind_checkpoint = partial(kind_tag, field="checkpoint")
kind_step = partial(kind_tag, field="step")
kind_model_id = partial(kind_tag, field="model_id")


def code_of(part: str) -> str:
    """`harmonica.code.<part>` on a registered version: the code provenance of its ar/nar/evaluate run."""
    return f"harmonica.code.{part}"


def resume_changes(n: int) -> str:
    return f"{RESUME_PREFIX}{n}.changes"


def resume_step(n: int) -> str:
    return f"{RESUME_PREFIX}{n}.step"


# Optuna user attributes of a sweep trial/study carry the same prefix as tags
ATTR_PREFIX = "harmonica."
BASELINE_ATTR = "harmonica.baseline"  # trial user attr: the trial runs the project's config (trial 0)
BASELINE_OFF_SPACE_ATTR = "harmonica.baseline_off_space"  # knobs whose project value lies outside the space


# --- artifacts: paths inside a run that one module writes and another reads (the report, promote)
COLLAPSE_EVENTS = "collapse_events.jsonl"  # training runs: the collapse monitor's events, one JSON object a line
INSTABILITY_EVENTS = "instability_events.jsonl"  # training runs: skipped optimizer steps
EVAL_TABLE = "eval_table.json"  # evaluate runs: one row per utterance (an MLflow table)
REPORT_DIR = "report"  # `harmonica report`: report.md and report.html

# --- a checkpoint directory (step_*/, checkpoints/best, checkpoints/last): written by training, read by
# resume, evaluate, synthesize and promote
CKPT_META = "meta.json"  # step, kind, contract, config: the checkpoint's identity
CKPT_MODEL = "model.safetensors"  # raw weights
CKPT_EMA = "ema.safetensors"  # EMA weights (what evaluate and promote use by default)
BEST_CHECKPOINT = "checkpoints/best"  # artifact paths on training runs made before checkpoints were
LAST_CHECKPOINT = "checkpoints/last"  # LoggedModels (still resolved by run id)

# --- logged images: keys of `Run.log_image` (MLflow keeps them under images/ with their step; the UI's image
# charts show each key with a step slider). Training runs write them, the report reads them.
IMAGES_DIR = "images"


def image_key_part(name: str) -> str:
    """A name (an utterance id) as one segment of an image key: MLflow allows only [A-Za-z0-9_-. /] there."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


def sample_spectrogram(utt_id: str) -> str:
    """`samples/<utt id>/spectrogram`: the sample's log-magnitude STFT at every sample step."""
    return f"samples/{image_key_part(utt_id)}/spectrogram"


def reference_spectrogram(utt_id: str) -> str:
    """`samples/<utt id>/reference`: the codec resynthesis the sample approaches, logged once at step 0."""
    return f"samples/{image_key_part(utt_id)}/reference"


def util_heatmap(kind: str) -> str:
    """`<kind>/util_heatmap`: per-codebook validation utilisation at every validation so far (rows =
    codebooks, columns = validation steps), logged at each validation."""
    return f"{kind}/util_heatmap"
