"""The search-space file of `harmonica sweep` (projects/sweeps/*.yaml): strict schema and validation.

A space file says which model a trial trains (`kind`), what a trial is scored on (`objective`), which
config keys are searched and over what ranges (`params`), and what every trial fixes (`fixed`):

    kind: nar
    objective:                                   # or {type: multi, metrics: [{name, direction}, ...]}
      type: single
      metric: val_ema/loss
      direction: minimize
      constraint: {metric: val/util_pred_median, min: 0.1}
    params:
      training.nar.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      training.nar.warmup_steps: {type: int, low: 5, high: 20, step: 5}
      training.nar.scheduler_type: {type: categorical, choices: [cosine, linear]}
    fixed: {training.nar.total_steps: 60, training.nar.val_every: 15}
    pruner: {type: median, n_startup_trials: 2}  # or just `median`; default: sweep.pruner of the config
    sampler: {type: tpe, n_startup_trials: 4}    # default: tpe (single) / nsga2 (multi)
    trials_default: 6

Which keys may be searched (a deliberate choice, checked before any trial runs):
  * any leaf under `training.<kind>.*` (the trained model's optimisation and anti-collapse knobs,
    including `collapse.*` and `param_groups.*`), except pure bookkeeping (`log_every`, `val_every`,
    `sample_every`, `ckpt_every`, `keep_last`, `best_metric`, `best_mode`, `device`) - those may be
    set under `fixed`;
  * the architecture of the trained model, `model.<kind>.{d_model, n_layers, n_heads, ff_mult,
    dropout, text_layers}` (not `max_seq_len`: it is part of the token-cache contract);
  * nothing else: `data.*`, `codec.*` and `text.*` change the token cache (a sweep trains on one cache),
    and the other model's blocks are not used by a trial.
`fixed` takes any config key (it is validated like a command-line override).

Objective metrics are validation metrics (`val/...` raw weights, `val_ema/...` EMA weights) because those
are what a trial reports at every validation step (the pruner's input) and at its end (the value).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harmonica.config.load import ConfigError, check_keys, deep_merge, read_yaml
from harmonica.config.schema import HarmonicaConfig

ANTI_COLLAPSE_KNOBS: tuple[str, ...] = (
    "codebook_entropy_weight", "codebook_entropy_warmup_steps", "usage_entropy_weight",
    "usage_entropy_temperature", "lr", "min_lr", "warmup_steps", "label_smoothing", "label_smoothing_end",
    "label_smoothing_decay_steps", "scheduled_sampling_start", "scheduled_sampling_ratio_start",
    "scheduled_sampling_ratio_end", "token_noise", "ema_decay", "focal_gamma", "grad_clip",
)  # the RCA ladder; documentation only: every training.<kind>.* knob is allowed (see module doc)
BOOKKEEPING_KEYS: frozenset[str] = frozenset(
    {"log_every", "val_every", "sample_every", "ckpt_every", "keep_last", "best_metric", "best_mode", "device"}
)
MODEL_KEYS: frozenset[str] = frozenset({"d_model", "n_layers", "n_heads", "ff_mult", "dropout", "text_layers"})
METRIC_RE = re.compile(
    r"^(val|val_ema)/(loss|util_pred_median|cb(?P<k>\d+)/(util_pred|util_target|usage_entropy|perplexity|ce|acc))$"
)
METRIC_HELP = ("val/loss, val_ema/loss, val/util_pred_median, val_ema/util_pred_median or "
               "val[_ema]/cb<k>/{util_pred,util_target,usage_entropy,perplexity,ce,acc}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ParamSpec(_Strict):
    """One searched key: a float/int range (optionally log-scaled or stepped) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical param takes only `choices` (no low/high/log/step)")
            if not self.choices:
                raise ValueError("a categorical param needs a non-empty `choices` list")
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} contain duplicates")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} param takes low/high, not `choices` (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} param needs both `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"empty range: low={self.low:g} must be < high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low:g} (and high={self.high:g})")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step:g}")
            if self.log and not (self.type == "int" and self.step == 1):
                raise ValueError("`log` and `step` cannot be combined (Optuna samples a log range continuously)")
            if self.step > self.high - self.low:
                raise ValueError(f"step={self.step:g} is larger than the range [{self.low:g}, {self.high:g}]")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and float(value) != int(value):
                    raise ValueError(f"an int param needs an integer {name}, got {value}")
        return self

    def extremes(self) -> list[Any]:
        """The values a dry run checks against the config schema."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [float(self.low), float(self.high)]  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this range / one of the choices (Optuna could have drawn it)."""
        if self.type == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and float(value) != int(value):
            return False
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        if not low <= float(value) <= high:
            return False
        if self.step is None:
            return True
        k = (float(value) - low) / self.step
        return abs(k - round(k)) < 1e-9

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)  # type: ignore[arg-type]


class Constraint(_Strict):
    """Feasibility: metric >= min and/or metric <= max, at the end of the trial."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Constraint:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs `min` and/or `max`")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"constraint min={self.min:g} > max={self.max:g}")
        return self

    @property
    def key(self) -> str:
        parts = [f"{self.metric}>={self.min:g}" if self.min is not None else "",
                 f"{self.metric}<={self.max:g}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible; the amount of violation otherwise."""
        out = -float("inf")
        if self.min is not None:
            out = max(out, self.min - value)
        if self.max is not None:
            out = max(out, value - self.max)
        return float(out)


class MetricSpec(_Strict):
    name: str
    direction: Literal["minimize", "maximize"] = "minimize"


class SingleObjective(_Strict):
    type: Literal["single"]
    metric: str = "val_ema/loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    constraint: Constraint | None = None

    @property
    def metrics(self) -> list[MetricSpec]:
        return [MetricSpec(name=self.metric, direction=self.direction)]


class MultiObjective(_Strict):
    type: Literal["multi"]
    metrics: list[MetricSpec] = Field(min_length=2)
    constraint: Constraint | None = None

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"objective metrics must be distinct, got {names}")
        return value


class PrunerSpec(_Strict):
    """median: prune a trial whose value at a validation step is worse than the median of the earlier
    trials at that step; successive_halving: at rungs min_resource * reduction_factor^k steps, keep only
    the best 1/reduction_factor of the trials that reached the rung (the best so far while fewer than
    reduction_factor have); hyperband: several successive-halving brackets; none: never prune."""

    type: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0, description="median: trials that are never pruned")
    n_warmup_steps: int | None = Field(
        None, ge=0, description="median: first step a trial may be pruned at; successive_halving/hyperband: "
                                "the first rung (min_resource); None = the first validation step")
    reduction_factor: int = Field(3, ge=2, description="hyperband, successive_halving")
    constraint_aware: bool = Field(
        True, description="a validation at which the objective's constraint is violated (e.g. utilisation under "
                          "the collapse floor) is reported to the pruner as the worst value, so collapsed trials are "
                          "the first stopped; the logged metric is unchanged")


class SamplerSpec(_Strict):
    type: Literal["tpe", "nsga2", "random"] | None = Field(None, description="None = tpe (single) / nsga2 (multi)")
    n_startup_trials: int | None = Field(None, ge=0, description="tpe: random trials first (Optuna default 10)")
    population_size: int | None = Field(None, ge=2, description="nsga2 (Optuna default 50)")


class SweepSpace(_Strict):
    kind: Literal["ar", "nar"]
    description: str = ""
    objective: Annotated[SingleObjective | MultiObjective, Field(discriminator="type")]
    params: dict[str, ParamSpec] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    pruner: PrunerSpec | None = None
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    trials_default: int | None = Field(None, ge=1)

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    # ----------------------------------------------------------------------------------- helpers
    @property
    def multi(self) -> bool:
        return self.objective.type == "multi"

    @property
    def metrics(self) -> list[MetricSpec]:
        return self.objective.metrics

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self.metrics]

    def digest(self) -> str:
        """What makes two space files the same search (a study is tied to one)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"description", "trials_default"}), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {name: spec.suggest(trial, name) for name, spec in self.params.items()}


# ------------------------------------------------------------------------------------- overrides


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"training.nar.lr": 1e-3} -> {"training": {"nar": {"lr": 1e-3}}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = [p for p in key.split(".") if p]
        if not parts:
            raise ConfigError(f"empty config key {key!r}")
        out = deep_merge(out, _nest_one(parts, value))
    return out


def _nest_one(parts: list[str], value: Any) -> dict[str, Any]:
    node: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        node = {part: node}
    return node


def apply_overrides(cfg: HarmonicaConfig, overrides: dict[str, Any], where: str) -> HarmonicaConfig:
    """cfg with dotted-key overrides applied as the last layer (like `key.path=value` on the CLI);
    an unknown key or an invalid value raises ConfigError naming `where` and the key path."""
    layer = nest(overrides)
    check_keys(layer, HarmonicaConfig, where)
    merged = deep_merge(cfg.model_dump(mode="python"), layer)
    try:
        return HarmonicaConfig.model_validate(merged)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid config:\n" + "\n".join(lines)) from None


def _resolve(cfg: HarmonicaConfig, path: str) -> Any:
    node: Any = cfg
    for i, part in enumerate(path.split(".")):
        if not isinstance(node, BaseModel):
            parent = ".".join(path.split(".")[:i])
            raise ConfigError(f"'{path}': '{parent}' is a value ({node!r}), it has no key '{part}'")
        node = getattr(node, part)
    return node


# ------------------------------------------------------------------------------------ load + check


def _format(exc: ValidationError, where: Path) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # pydantic puts the discriminated-union tag ("single"/"multi") into the path; it names no key
        loc = [p for i, p in enumerate(loc) if not (i == 1 and loc[0] == "objective" and p in ("single", "multi"))]
        if loc and loc[0] == "params" and len(loc) > 1:
            path = f"params '{loc[1]}'" + (f" .{'.'.join(loc[2:])}" if len(loc) > 2 else "")
        else:
            path = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {msg}")
    return f"{where}: invalid sweep space:\n" + "\n".join(lines)


def read_space(path: Path | str) -> SweepSpace:
    """Parse and schema-check a space file (no config check yet: see `check_space`)."""
    path = Path(path)
    if not path.is_file():
        sweeps = path.parent if path.parent.is_dir() else None
        names = sorted(p.name for p in sweeps.glob("*.yaml")) if sweeps else []
        close = difflib.get_close_matches(path.name, names, n=1)
        hint = f"; did you mean '{path.parent / close[0]}'?" if close else ""
        raise ConfigError(f"sweep space file {path} does not exist{hint}")
    data = read_yaml(path)
    try:
        return SweepSpace.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, path)) from None


def _check_metric(name: str, kind: str, n_q: int, where: str) -> None:
    m = METRIC_RE.match(name)
    if m is None:
        raise ConfigError(f"{where}: '{name}' is not a validation metric a trial reports; use {METRIC_HELP}")
    if m.group("k") is not None:
        k = int(m.group("k"))
        valid = [0] if kind == "ar" else list(range(1, n_q))
        if k not in valid:
            raise ConfigError(f"{where}: '{name}': the {kind.upper()} predicts codebooks {valid}, not cb{k}")


def check_param_key(path: str, kind: str, cfg: HarmonicaConfig, where: str) -> None:
    """Raise ConfigError unless `path` is a searchable knob (see the module doc)."""
    check_keys(nest({path: 0}), HarmonicaConfig, where)  # unknown key: error with the closest valid one
    try:
        value = _resolve(cfg, path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if isinstance(value, BaseModel):
        fields = ", ".join(sorted(type(value).model_fields))
        raise ConfigError(f"{where}: '{path}' is a section, not a knob; search one of its keys ({fields})")
    parts = path.split(".")
    other = "nar" if kind == "ar" else "ar"
    if parts[0] == "training" and parts[1] == kind:
        if len(parts) == 3 and parts[2] in BOOKKEEPING_KEYS:
            raise ConfigError(f"{where}: '{path}' is bookkeeping, not a knob to search; set it under `fixed`")
        return
    if parts[0] == "model" and parts[1] == kind and len(parts) == 3 and parts[2] in MODEL_KEYS:
        return
    if parts[1:2] == [other] and parts[0] in ("training", "model"):
        reason = f"a `kind: {kind}` sweep trains the {kind.upper()} only; did you mean '{parts[0]}.{kind}.{'.'.join(parts[2:])}'?"
    elif parts[0] in ("data", "codec", "text") or path == f"model.{kind}.max_seq_len":
        reason = "it changes the token cache, and a sweep trains every trial on one cache"
    else:
        reason = "it is not a training knob"
    raise ConfigError(
        f"{where}: '{path}' cannot be searched: {reason} (searchable: training.{kind}.*, "
        f"model.{kind}.{{{', '.join(sorted(MODEL_KEYS))}}})"
    )


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def check_space(space: SweepSpace, cfg: HarmonicaConfig, where: Path | str) -> None:
    """Validate a parsed space against a project config: keys, scopes, metric names, and a dry run of
    each range end / choice (with the fixed overrides) through the config schema."""
    where = str(where)
    n_q = cfg.codec.effective_n_q
    for m in space.metrics:
        _check_metric(m.name, space.kind, n_q, f"{where}: objective")
    if space.objective.constraint is not None:
        _check_metric(space.objective.constraint.metric, space.kind, n_q, f"{where}: objective.constraint")
    for key in space.fixed:
        check_keys(nest({key: 0}), HarmonicaConfig, f"{where}: fixed")
    try:
        base = apply_overrides(cfg, space.fixed, f"{where}: fixed")
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n  (the project config with the fixed overrides must be valid on its own; "
                          "each trial's searched values are applied on top)") from None
    for path, spec in space.params.items():
        p_where = f"{where}: params '{path}'"
        check_param_key(path, space.kind, cfg, p_where)
        current = _resolve(base, path)
        if spec.type != "categorical" and isinstance(current, bool | str):
            raise ConfigError(f"{p_where}: the key holds {current!r}; search it with type: categorical")
        if spec.type == "float" and isinstance(current, int) and not isinstance(current, bool):
            raise ConfigError(f"{p_where}: the key is an integer ({current}); use type: int")
        for value in spec.extremes():
            try:
                apply_overrides(base, {path: value}, f"{p_where} = {_yaml_value(value)}")
            except ConfigError as exc:
                raise ConfigError(f"{exc}\n  (the range/choices of params '{path}' must be valid with the fixed overrides)") from None
    if space.pruner is not None and space.pruner.type != "none" and space.multi:
        raise ConfigError(
            f"{where}: pruner '{space.pruner.type}' with a multi-objective study: Optuna cannot prune "
            "multi-objective trials (Trial.report is single-objective only); use `pruner: none`"
        )
    tcfg = getattr(base.training, space.kind)
    if tcfg.val_every > tcfg.total_steps:
        raise ConfigError(f"{where}: no validation before the end of a trial (val_every > total_steps)")


def baseline_values(space: SweepSpace, cfg: HarmonicaConfig) -> tuple[dict[str, Any], list[str]]:
    """The project's own values of the searched knobs (cfg with the space's fixed overrides applied),
    and the knobs whose value is not a point of the space (left to the sampler in the baseline trial)."""
    base = apply_overrides(cfg, space.fixed, "fixed")
    values, off = {}, []
    for path, spec in space.params.items():
        value = _resolve(base, path)
        if spec.contains(value):
            values[path] = value
        else:
            off.append(path)
    return values, off


def load_space(path: Path | str, cfg: HarmonicaConfig) -> SweepSpace:
    space = read_space(path)
    check_space(space, cfg, path)
    return space


def format_value(value: Any) -> str:
    return _yaml_value(value)
