"""The `harmonica-tts` model package: what a promotion stages, checks and logs for the registry.

`build_artifacts` stages EMA-only copies of the evaluated checkpoints, default voice prompts and the
settings; `stage_code` copies the harmonica package for code_paths; `smoke_test` loads the staged
model as the server would and says "hello"; `log_model` logs it into the promote run through
harmonica.tracking.models (models from code: model_code.py, nothing pickled). The served class is
harmonica.registry.pyfunc.HarmonicaTTS.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harmonica.registry.pyfunc import INPUTS, OUTPUTS
from harmonica.tracking import names
from harmonica.tracking.adapter import Run
from harmonica.tracking.models import LoggedModel, SignatureSpec, log_code_model

if TYPE_CHECKING:
    from harmonica.config.schema import HarmonicaConfig
    from harmonica.registry.evidence import Evidence

log = logging.getLogger(__name__)

MODEL_NAME = "harmonica-tts"
MODEL_CODE = Path(__file__).with_name("model_code.py")  # the models-from-code entry MLflow executes
EMA_FILES = (names.CKPT_META, names.CKPT_EMA)
# what inference imports (training-only deps such as optuna, faster-whisper stay out)
# espeakng-loader: the phoneme text frontend phonemises request texts in the serving process
INFERENCE_PACKAGES = ("torch", "numpy", "mlflow", "pydantic", "pyyaml", "soundfile", "soxr", "safetensors",
                      "einops", "pandas", "espeakng-loader")


def stage_ema_checkpoint(src: Path, dst: Path) -> Path:
    """Copy meta.json, ema.safetensors and codec/ of a checkpoint dir (nothing else)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in EMA_FILES:
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing: the registry serves EMA weights only")
        shutil.copy2(src / name, dst / name)
    if (src / "codec").is_dir():
        shutil.copytree(src / "codec", dst / "codec", dirs_exist_ok=True)
    return dst


def find_prompt_cache(nar_meta: dict[str, Any], workdir: Path | None, cfg: Any = None) -> Any:
    """The token cache the NAR was trained on (by fingerprint), else the project's cache when it
    was encoded by the same codec, else None."""
    if workdir is None:
        return None
    from harmonica.data.cache import cache_root, find_cache, is_complete, open_cache

    want = nar_meta.get("cache_fingerprint")
    root = cache_root(Path(workdir))
    for directory in sorted(root.glob("*")) if root.is_dir() else []:
        if directory.is_dir() and is_complete(directory):
            cache = open_cache(directory)
            if want and cache.fingerprint == want:
                return cache
    if cfg is not None:
        try:
            cache, _ = find_cache(cfg, Path(workdir), allow_mismatch=True)
        except (FileNotFoundError, ValueError, RuntimeError):
            return None
        if cache.contract.get("codec_fingerprint") == nar_meta["contract"].get("codec_fingerprint"):
            return cache
    return None


def default_prompts(cache: Any, prompt_frames: int) -> tuple[dict[str, Any], list[str]]:
    """Per speaker, the first prompt-split utterance (by id, as the evaluate stage picks it)."""
    if cache is None or "prompt" not in cache.splits():
        return {}, []
    tokens = cache.load_split("prompt")
    chosen: dict[str, Any] = {}
    for i in sorted(range(len(tokens)), key=lambda j: tokens.index[j]["id"]):
        _, codes, row = tokens.item(i)
        chosen.setdefault(row["speaker"], (row["id"], codes[:, :prompt_frames].to(dtype=codes.dtype).contiguous()))
    speakers = sorted(chosen)
    tensors = {f"prompt_{i}": chosen[s][1].clone() for i, s in enumerate(speakers)}
    return {"tensors": tensors, "ids": [chosen[s][0] for s in speakers]}, speakers


def write_prompts(directory: Path, cache: Any, prompt_frames: int) -> list[str]:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    found, speakers = default_prompts(cache, prompt_frames)
    index = {"speakers": speakers, "utterances": found.get("ids", []),
             "source": str(cache.directory) if cache is not None else None,
             "cache_fingerprint": cache.fingerprint if cache is not None else None}
    if speakers:
        save_file(found["tensors"], str(directory / "prompts.safetensors"))
    (directory / "speakers.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return speakers


def stage_code(directory: Path) -> Path:
    """A clean copy of the harmonica package (no caches, no bundled demo corpus) for code_paths."""
    import harmonica

    src = Path(harmonica.__file__).resolve().parent
    dst = Path(directory) / "harmonica"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "demo_corpus"))
    return dst


def pip_requirements(codec_name: str = "mel_rvq") -> list[str]:
    """Pinned like pyproject.toml (the installed harmonica's metadata), else the installed versions."""
    names = list(INFERENCE_PACKAGES) + (["encodec"] if codec_name == "encodec" else [])
    declared: dict[str, str] = {}
    try:
        for req in importlib.metadata.requires("harmonica") or []:
            if ";" in req:
                continue
            base = req.split("[")[0]
            for sep in ("==", ">=", "<=", "~=", ">", "<", "!="):
                base = base.split(sep)[0]
            declared[base.strip().lower()] = req.replace(" ", "")
    except importlib.metadata.PackageNotFoundError:
        pass
    out = []
    for name in names:
        if name in declared:
            out.append(declared[name])
            continue
        try:
            version = importlib.metadata.version(name).split("+")[0]
            out.append(f"{name}=={version}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def build_artifacts(ar_dir: Path, nar_dir: Path, out: Path, *, decode: dict[str, Any],
                    settings: dict[str, Any] | None = None, prompt_cache: Any = None) -> dict[str, str]:
    """Stage everything the model needs under `out`; -> the `artifacts` mapping for log_model."""
    from harmonica.inference.synthesize import pair_prompt_frames, pair_speaker_condition, read_checkpoint_meta

    out = Path(out)
    ar = stage_ema_checkpoint(ar_dir, out / "ar")
    nar = stage_ema_checkpoint(nar_dir, out / "nar")
    ar_meta, nar_meta = read_checkpoint_meta(ar), read_checkpoint_meta(nar)
    speakers = write_prompts(out / "prompts", prompt_cache, pair_prompt_frames(ar_meta, nar_meta))
    artifacts = {"ar": str(ar), "nar": str(nar), "prompts": str(out / "prompts")}
    codec_cfg = nar_meta.get("codec_config", {})
    if codec_cfg.get("name") == "encodec" and not any((nar / "codec").glob("*.safetensors")):
        from harmonica.codec.encodec_loading import hub_checkpoint_path

        hub = hub_checkpoint_path()
        if hub.is_file():
            (out / "encodec").mkdir(parents=True, exist_ok=True)
            shutil.copy2(hub, out / "encodec" / hub.name)
            artifacts["encodec"] = str(out / "encodec")
        else:
            log.warning("the EnCodec checkpoint is not in the torch hub cache (%s): the served model will need "
                        "it there (or network access)", hub)
    (out / "settings").mkdir(parents=True, exist_ok=True)
    full = {
        "decode": decode,
        "ar_contract": ar_meta["contract"],
        "nar_contract": nar_meta["contract"],
        "sample_rate": int(nar_meta["contract"]["sample_rate"]),
        "speaker_condition": pair_speaker_condition(ar_meta, nar_meta),
        "bundled_prompt_speakers": speakers,
        "ar_step": ar_meta.get("step"),
        "nar_step": nar_meta.get("step"),
        **(settings or {}),
    }
    (out / "settings" / "settings.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    artifacts["settings"] = str(out / "settings")
    return artifacts


def signature(default_temperature: float) -> SignatureSpec:
    return SignatureSpec(inputs=INPUTS, outputs=OUTPUTS,
                         params=(("seed", "long", 0), ("temperature", "double", default_temperature)))


def smoke_test(artifacts: dict[str, str]) -> tuple[float, int]:
    """Load the staged model as the server would and synthesise one short text -> (seconds, samples)."""
    import pandas as pd

    from harmonica.registry.pyfunc import HarmonicaTTS

    class _Ctx:
        def __init__(self, arts: dict[str, str]) -> None:
            self.artifacts = arts
            self.model_config: dict[str, Any] = {}

    started = time.perf_counter()
    model = HarmonicaTTS()
    model.load_context(_Ctx(artifacts))
    out = model.predict(None, pd.DataFrame({"text": ["hello"]}))
    return time.perf_counter() - started, round(float(out["duration_sec"].iloc[0]) * int(out["sample_rate"].iloc[0]))


def log_model(run: Run, name: str, artifacts: dict[str, str], *, decode: dict[str, Any], code_dir: Path,
              codec_name: str, metadata: dict[str, Any] | None = None) -> LoggedModel:
    """Log the staged model into `run` (the open promote run); -> its models:/<model id> URI and id."""
    temps = decode.get("temperature") or [1.0]
    return log_code_model(run, name, model_code=MODEL_CODE, artifacts=artifacts, code_paths=[str(code_dir)],
                          pip_requirements=pip_requirements(codec_name), signature=signature(float(temps[0])),
                          metadata=metadata)


def package_candidate(run: Run, ev: Evidence, cfg: HarmonicaConfig, workdir: Path, out: Path, *, model_name: str,
                      candidate_key: str, code: dict[str, str], smoke: bool, notes: list[str],
                      seconds: dict[str, float]) -> LoggedModel:
    """Stage the candidate under `out`, smoke-test it (optional) and log it into `run`; notes say what
    the package lacks or differs in."""
    decode, decode_source = ev.evaluated_decode, "the evaluate run's config.yaml"
    if decode is None:
        log.warning("cannot read the evaluate run's config.yaml (%s): using the project's eval.decode", ev.decode_problem)
        decode = cfg.eval.decode.model_dump(mode="json")
        decode_source = "the project's eval.decode (config.yaml unreadable)"
    from harmonica.inference.synthesize import pair_speaker_condition

    prompt_cache = find_prompt_cache(ev.nar_meta, workdir, cfg)
    if prompt_cache is None and pair_speaker_condition(ev.ar_meta, ev.nar_meta) == "prompt":
        notes.append("no token cache of this model's codec under the workdir: the model bundles no default "
                     "voice prompts, so requests must carry prompt_audio_b64")
    trained = {ev.tags.get(names.SOURCE_HASH)} | {
        r.tags.get(names.SOURCE_HASH) for r in (ev.ar_run, ev.nar_run) if r is not None}
    if code[names.SERVING_SOURCE_HASH] not in trained:
        notes.append(f"the packaged harmonica code (source hash {code[names.SERVING_SOURCE_HASH]}) is not "
                     f"the code the candidate was trained/evaluated with ({', '.join(sorted(t or '?' for t in trained))}): "
                     "the served model runs this checkout's inference code")
    settings = {"model_name": model_name, "evaluation_run_id": ev.evaluation_run_id, "decode_source": decode_source,
                "project": ev.project, "candidate_key": candidate_key, **code}
    artifacts = build_artifacts(ev.ar_dir, ev.nar_dir, out / "model", decode=decode, settings=settings,
                                prompt_cache=prompt_cache)
    code_dir = stage_code(out / "code")
    if smoke:
        smoke_s, samples = smoke_test(artifacts)
        seconds["smoke_test"] = smoke_s
        notes.append(f"smoke test: the packaged model loaded and said 'hello' ({samples} samples) in {smoke_s:.1f} s")
    return log_model(run, model_name, artifacts, decode=decode, code_dir=code_dir,
                     codec_name=ev.nar_meta.get("codec_config", {}).get("name", "mel_rvq"),
                     metadata={"harmonica_evaluation_run_id": ev.evaluation_run_id, "candidate_key": candidate_key})
