"""Layered config loading: mlruns_config <- projects/base.yaml <- projects/<name>.yaml <- overrides.

Unknown keys fail before pydantic sees them, with the full dotted path and the closest valid key,
because a typo in a knob name is exactly the silent failure the schema exists to prevent.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from harmonica.config.schema import HarmonicaConfig

# Keys whose value cannot change a result (where it goes, how often it is logged, who runs it).
# They are left out of the config hash so that two runs differing only in them count as identical.
NON_RESULT_KEYS: tuple[str, ...] = (
    "project",
    "description",
    "tracking",
    "sweep",
    "data.workers",
    "training.ar.log_every",
    "training.nar.log_every",
    "training.ar.ckpt_every",
    "training.nar.ckpt_every",
    "training.ar.keep_last",
    "training.nar.keep_last",
    "training.ar.sample_every",
    "training.nar.sample_every",
)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key path and the fix."""


def find_root(start: Path | None = None) -> Path:
    """The directory holding `projects/` and `mlruns_config/`.

    `HARMONICA_ROOT` wins; otherwise the current directory or one of its parents; otherwise the
    checkout the package was installed from (editable installs).
    """
    env = os.environ.get("HARMONICA_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "projects" / "base.yaml").is_file():
            return candidate
    package_parent = Path(__file__).resolve().parents[2]
    if (package_parent / "projects" / "base.yaml").is_file():
        return package_parent
    raise ConfigError(
        "cannot find projects/base.yaml: run from the harmonica checkout or set HARMONICA_ROOT"
    )


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 4]!r}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check that it exists and is readable") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def check_keys(data: dict[str, Any], model: type[BaseModel], where: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key that the schema does not know."""
    fields = model.model_fields
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{path}'{hint} (valid here: {valid})")
        sub = _submodel(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, where, prefix=f"{path}.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.ar.lr=5e-5` -> (['training', 'ar', 'lr'], 5e-05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads 5e-5 as a string; numbers are what users mean
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return parts, value


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def project_path(project: str, root: Path) -> Path:
    candidate = Path(project)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = root / "projects" / f"{project}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (root / "projects").glob("*.yaml"))
        close = difflib.get_close_matches(project, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown project '{project}'{hint} (available: {', '.join(names)})")
    return path


def resolve_layers(project: str, overrides: list[str] | tuple[str, ...] = (), root: Path | None = None) -> dict[str, Any]:
    root = root or find_root()
    layers: list[tuple[str, dict[str, Any]]] = []
    tracking_file = root / "mlruns_config" / "tracking.yaml"
    if tracking_file.is_file():
        layers.append((str(tracking_file), {"tracking": read_yaml(tracking_file)}))
    gates_file = root / "mlruns_config" / "gates.yaml"
    if gates_file.is_file():
        layers.append((str(gates_file), {"gates": read_yaml(gates_file)}))
    layers.append((str(root / "projects" / "base.yaml"), read_yaml(root / "projects" / "base.yaml")))
    path = project_path(project, root)
    if path.stem != "base":
        layers.append((str(path), read_yaml(path)))
    for text in overrides:
        parts, value = parse_override(text)
        layers.append((f"override '{text}'", _nest(parts, value)))

    merged: dict[str, Any] = {}
    for where, layer in layers:
        check_keys(layer, HarmonicaConfig, where)
        merged = deep_merge(merged, layer)
    merged.setdefault("project", path.stem)
    return merged


def load_config(project: str, overrides: list[str] | tuple[str, ...] = (), root: Path | None = None) -> HarmonicaConfig:
    """Resolve the layers and validate; every error names the dotted key path."""
    merged = resolve_layers(project, overrides, root)
    try:
        return HarmonicaConfig.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(root)"
            lines.append(f"  {path}: {err['msg']}")
        raise ConfigError(f"invalid config for project '{project}':\n" + "\n".join(lines)) from None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _drop(flat: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in prefixes)}


def config_hash(cfg: HarmonicaConfig, sections: tuple[str, ...] | None = None) -> str:
    """A short stable hash of everything that can change a result.

    `sections` narrows it to the parts a stage depends on (e.g. preprocess: data, codec, text).
    """
    flat = _drop(flatten(cfg.model_dump(mode="json")), NON_RESULT_KEYS)
    if sections is not None:
        flat = {k: v for k, v in flat.items() if k.split(".")[0] in sections}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_yaml(cfg: HarmonicaConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
