"""Overview and config diff: what the run is, and which params differ from its baseline."""

from __future__ import annotations

from harmonica.reports.common import fmt_duration, fmt_time, is_dirty, truncate
from harmonica.reports.data import ReportData
from harmonica.reports.model import Alert, Code, Inline, Labelled, Note, Paragraph, Section, Table, run_ref
from harmonica.tracking import names


def overview(d: ReportData) -> Section:
    s = Section("Overview")
    run, tags = d.run, d.run.tags
    commit = tags.get(names.GIT_COMMIT, "")
    code = ", ".join(p for p in (
        f"git {commit[:12]}" if commit else "",
        f"source {tags.get(names.SOURCE_HASH)}" if tags.get(names.SOURCE_HASH) else "",
        f"harmonica {tags.get(names.VERSION)}" if tags.get(names.VERSION) else "",
    ) if p) or "unknown (no code-version tags)"
    duration = (fmt_duration(run.start_time, run.end_time) if run.end_time
                else "still running" if run.status == "RUNNING" else "—")
    rows: list[tuple[str, Inline]] = [
        ("Run", run.name),
        ("Run id", Code(run.run_id)),
        ("Experiment", d.experiment),
        ("Stage", d.stage),
        ("Project", tags.get(names.PROJECT, "unknown")),
        ("Status", run.status),
        ("Started", fmt_time(run.start_time)),
        ("Duration", duration),
        ("Config hash", tags.get(names.CONFIG_HASH, "—")),
        ("Code version", code),
        ("Git dirty", "yes" if is_dirty(run) else ("no" if tags.get(names.GIT_DIRTY) else "unknown")),
    ]
    if run.parent_run_id:
        rows.append(("Parent run", run.parent_run_id))
    rows.append(("Artifacts", run.artifact_uri))
    s.add(Table(["field", "value"], rows, cls="kv"))
    if is_dirty(run):
        s.add(Alert("Warning: this run was made from a working tree with uncommitted changes "
                    f"(git_dirty=true): commit {commit[:12] or '?'} does not fully describe the code; "
                    f"source hash {tags.get(names.SOURCE_HASH, '?')} does."))
    desc = run.note.strip()
    return s.add(Labelled("Description", desc) if desc else Note("no description"))


def config_diff(d: ReportData) -> Section:
    s = Section("Config diff")
    base = d.baseline
    if base is None:
        return s.add(Note(f"no baseline: no earlier finished '{d.stage}' run in this experiment "
                          "(pass a baseline run id to compare with one)"))
    how = "given baseline" if d.explicit_baseline else f"previous finished '{d.stage}' run"
    s.add(Paragraph(f"Baseline ({how}): {run_ref(base.name, base.run_id)}, stage "
                    f"`{base.tags.get(names.STAGE, 'unknown')}`, "
                    f"config hash `{base.tags.get(names.CONFIG_HASH, '—')}`."))
    mine, theirs = d.run.params, base.params
    keys = sorted(set(mine) | set(theirs))
    diff = [k for k in keys if mine.get(k) != theirs.get(k)]
    if not diff:
        return s.add(Note(f"no param differs from the baseline ({len(keys)} params compared)"))
    return s.add(Paragraph(f"{len(diff)} of {len(keys)} params differ:"),
                 Table(["param", "baseline", "this run"],
                       [(Code(k), truncate(theirs.get(k, "(absent)"), 200), truncate(mine.get(k, "(absent)"), 200))
                        for k in diff]))
