"""Why a promotion is refused, as pure functions of the evidence (harmonica.registry.evidence) and the
override flags. A refusal registers nothing; an allowed override turns it into a note and is recorded
on the version.

* The evaluate run: FINISHED, scored EMA weights, its checkpoint directories still hold the evaluated
  steps and their EMA weights.
* Unfinished runs: a checkpoint from a training run whose status is not FINISHED (killed, still
  running, failed) is refused with that status; `allow_unfinished` turns the refusal into a note and
  the version records `harmonica.allow_unfinished=true` (the collapse gate then checks only what was
  trained).
* Coherent pairs: an AR and a NAR trained in different projects, or on different data / codec /
  text settings (the `data.*`, `codec.*`, `text.*` params of the two runs), are refused unless
  `allow_mixed_pair`; the version records both projects and both config hashes either way.
  Training-only settings (e.g. `training.nar.lr`) may differ: the pipeline retrains one model alone.
* The contract: `check_pair` on both meta.json contracts and the codec the NAR bundles.
* Provenance: the AR and NAR training runs and the evaluate run must come from a clean git tree
  (`harmonica.git_dirty == "false"`); dirty or unknown -> refused unless `allow_dirty`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harmonica.tracking import names
from harmonica.tracking.read import RunRecord

if TYPE_CHECKING:
    from harmonica.registry.evidence import Evidence

SHARED_SECTIONS = ("data.", "codec.", "text.")


@dataclass(frozen=True)
class Flags:
    """The overrides of a promotion (each is recorded on the version)."""

    allow_dirty: bool = False
    allow_unfinished: bool = False
    allow_mixed_pair: bool = False


def status_refusals(runs: Mapping[str, RunRecord | None], allow_unfinished: bool) -> tuple[list[str], list[str]]:
    """(refusals, notes) for training runs (label -> run or None) that are not FINISHED."""
    problems = []
    for label, run in runs.items():
        if run is None or run.status == "FINISHED":
            continue  # an unknown run is refused by the provenance check
        steps = run.tags.get(names.STEPS, "unknown")
        problems.append(f"{label} {run.run_id} is {run.status}, not FINISHED (executed steps: {steps}): "
                        "its checkpoint is not the model it was configured to train")
    if not problems:
        return [], []
    if allow_unfinished:
        return [], [f"unfinished run (allowed by --allow-unfinished, recorded as {names.ALLOW_UNFINISHED}): {p}"
                    for p in problems]
    return [f"unfinished: {p}" for p in problems] + [
        "unfinished: let the training finish (or resume it), or pass --allow-unfinished to promote the checkpoint "
        "anyway (recorded on the version; the collapse gate then checks only what was trained)"], []


def _project(run: RunRecord) -> str:
    return run.tags.get(names.PROJECT, "unknown")


def pair_refusals(ar_run: RunRecord | None, nar_run: RunRecord | None, allow_mixed: bool) -> tuple[list[str], list[str]]:
    """(refusals, notes) when the AR and NAR come from different projects or shared settings."""
    if ar_run is None or nar_run is None:
        return [], []
    problems = []
    if _project(ar_run) != _project(nar_run):
        problems.append(f"the AR run {ar_run.run_id} is from project '{_project(ar_run)}' but the NAR run "
                        f"{nar_run.run_id} from '{_project(nar_run)}'")
    a, n = ar_run.params, nar_run.params
    keys = sorted(k for k in set(a) | set(n) if k.startswith(SHARED_SECTIONS) and a.get(k) != n.get(k))
    if keys:
        shown = ", ".join(f"{k}: AR {a.get(k, '—')} vs NAR {n.get(k, '—')}" for k in keys[:5])
        more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
        problems.append(f"the AR and NAR were trained on different data/codec/text settings: {shown}{more}")
    if not problems:
        return [], []
    hashes = (f"config hashes AR {ar_run.tags.get(names.CONFIG_HASH, 'unknown')}, "
              f"NAR {nar_run.tags.get(names.CONFIG_HASH, 'unknown')}")
    if allow_mixed:
        return [], [f"mixed pair (allowed by --allow-mixed-pair, recorded as {names.ALLOW_MIXED_PAIR}): {p}; {hashes}"
                    for p in problems]
    return [f"mixed pair: {p}; {hashes}" for p in problems] + [
        "mixed pair: evaluate an AR and a NAR trained by the same project, or pass --allow-mixed-pair "
        "(recorded on the version)"], []


def checkpoint_refusals(ev: Evidence) -> list[str]:
    """EMA weights scored, the evaluated steps still in place, the contract (codec included)."""
    from harmonica.models.contract import check_pair

    refusals: list[str] = []
    tags, eid = ev.tags, ev.evaluation_run_id
    weights = tags.get(names.WEIGHTS, "unknown")
    if weights != "ema":
        refusals.append(f"evaluate run {eid} scored '{weights}' weights but the registry serves EMA weights: "
                        "re-run `harmonica evaluate --weights ema`")
    for kind in ("ar", "nar"):
        meta, directory = ev.meta(kind), ev.directory(kind)
        if not meta:
            refusals.append(f"the evaluated {kind.upper()} checkpoint cannot be found "
                            f"({tags.get(names.kind_checkpoint(kind), 'no path recorded')})")
            continue
        want = tags.get(names.kind_step(kind))
        if want not in (None, "", "None") and str(meta.get("step")) != want:
            refusals.append(f"{kind.upper()} checkpoint {directory} now holds step {meta.get('step')} but evaluate "
                            f"run {eid} scored step {want} (it was overwritten, e.g. by a resumed training): "
                            "evaluate it again")
        if not ev.ema_present.get(kind):
            refusals.append(f"{directory} has no ema.safetensors: the registry serves EMA weights only")
    if ev.ar_meta and ev.nar_meta:
        if ev.codec_problem:
            refusals.append(f"contract: {ev.codec_problem}")
        for m in check_pair(ev.ar_meta.get("contract", {}), ev.nar_meta.get("contract", {}), ev.codec_fingerprint):
            refusals.append(f"contract: {m.message}")
    return refusals


def provenance_refusals(ev: Evidence, allow_dirty: bool) -> tuple[list[str], list[str]]:
    """(refusals, notes) for runs from a dirty or unknown git tree, or unknown to the store."""
    dirty = []
    for label, run, run_id in (
        ("AR training run", ev.ar_run, ev.tags.get(names.AR_RUN_ID, "")),
        ("NAR training run", ev.nar_run, ev.tags.get(names.NAR_RUN_ID, "")),
        ("evaluate run", ev.eval_run, ev.evaluation_run_id),
    ):
        if run is None:
            dirty.append(f"{label} {run_id or '(none recorded)'} is unknown to the tracking server, so its code is unknown")
            continue
        t = run.tags
        state = t.get(names.GIT_DIRTY, "unknown")
        if state != "false":
            kind = "a dirty git tree" if state == "true" else "an unknown tree (no git metadata)"
            dirty.append(f"{label} {run.run_id} ran from {kind} (commit {t.get(names.GIT_COMMIT, 'unknown')[:12]}, "
                         f"source hash {t.get(names.SOURCE_HASH, 'unknown')})")
    if not dirty:
        return [], []
    if allow_dirty:
        return [], [f"provenance (allowed by --allow-dirty): {d}" for d in dirty]
    return [f"provenance: {d}" for d in dirty] + [
        "provenance: commit the code and retrain/re-evaluate, or pass --allow-dirty to promote "
        f"anyway (recorded on the version as {names.ALLOW_DIRTY}=true)"], []


def refusal_reasons(ev: Evidence, flags: Flags) -> tuple[list[str], list[str]]:
    """(refusals, notes), in the order they are reported: the evaluate run, unfinished training runs,
    mixed pairs, the checkpoints and the contract, provenance."""
    refusals: list[str] = []
    notes: list[str] = []
    if ev.eval_run.status != "FINISHED":
        refusals.append(f"evaluate run {ev.evaluation_run_id} is {ev.eval_run.status}, not FINISHED: its metrics "
                        "may be partial")
    for refused, noted in (status_refusals({"AR training run": ev.ar_run, "NAR training run": ev.nar_run},
                                           flags.allow_unfinished),
                           pair_refusals(ev.ar_run, ev.nar_run, flags.allow_mixed_pair)):
        refusals += refused
        notes += noted
    refusals += checkpoint_refusals(ev)
    refused, noted = provenance_refusals(ev, flags.allow_dirty)
    return refusals + refused, notes + noted
