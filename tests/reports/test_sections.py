"""Report sections as pure functions of hand-built ReportData: no store, no rendering."""

from __future__ import annotations

import math

from harmonica.reports.data import HISTORIES, ReportData, TrainingRun
from harmonica.reports.model import (
    Alert, ArtifactLink, Audio, Bullets, Code, Figure, Heading, Labelled, Note, NotLogged, Paragraph, Series,
    Spectrogram, Table,
)
from harmonica.reports.sections import SECTIONS, build_sections
from harmonica.reports.sections.evaluation import EMPTY_AUDIO, MAX_SAMPLES, audio_samples, eval_summary, worst
from harmonica.reports.sections.failures import collapse_events, failure_reasons, gate_rows
from harmonica.reports.sections.run import config_diff, overview
from harmonica.reports.sections.training import best_checkpoint, key_curves
from harmonica.tracking import names
from harmonica.tracking.read import ArtifactEntry, LoggedImage, RunRecord

A, B, C = "a" * 32, "b" * 32, "c" * 32


def run(run_id: str = A, stage: str = "train_nar", name: str = "r", status: str = "FINISHED", tags=None,
        params=None, metrics=None) -> RunRecord:
    return RunRecord(run_id, "1", name, status, 1_700_000_000_000, 1_700_000_090_000, f"file:///x/{run_id}",
                     {names.STAGE: stage, **(tags or {})}, params or {}, metrics or {})


def files(*paths: str) -> tuple[ArtifactEntry, ...]:
    return tuple(ArtifactEntry(p, not p.rsplit("/", 1)[-1].count("."), 1) for p in paths)


def data(r: RunRecord, **kw) -> ReportData:
    listings = {"": (), "checkpoints": (), "samples": (), "audio": (), "plots": ()}
    listings.update(kw.pop("listings", {}))
    return ReportData(run=r, experiment="harmonica/demo", listings=listings, **kw)


def kinds(section) -> list[str]:
    return [type(b).__name__ for b in section.blocks]


def test_overview_of_a_dirty_run_warns_and_shows_its_description():
    r = run(tags={names.GIT_DIRTY: "true", names.GIT_COMMIT: "0123456789abcdef", names.SOURCE_HASH: "feed",
                  "mlflow.note.content": "two\n  lines | here", "mlflow.parentRunId": B})
    s = overview(data(r))
    table = dict(s.blocks[0].rows)
    assert table["Run id"] == Code(A) and table["Git dirty"] == "yes" and table["Parent run"] == B
    assert table["Code version"] == "git 0123456789ab, source feed" and table["Duration"] == "1 min 30 s"
    assert s.blocks[1] == Alert("Warning: this run was made from a working tree with uncommitted changes "
                                "(git_dirty=true): commit 0123456789ab does not fully describe the code; "
                                "source hash feed does.")
    assert s.blocks[2] == Labelled("Description", "two\n  lines | here")
    clean = overview(data(run(status="RUNNING", tags={names.GIT_DIRTY: "false"})))
    assert kinds(clean) == ["Table", "Note"] and dict(clean.blocks[0].rows)["Git dirty"] == "no"


def test_config_diff_lists_only_differing_params():
    assert "no baseline" in config_diff(data(run())).blocks[0].text
    mine = run(params={"x": "1", "y": "2", "only_mine": "z"})
    base = run(B, name="base | line", params={"x": "1", "y": "3"})
    s = config_diff(data(mine, baseline=base, explicit_baseline=True))
    assert s.blocks[0].md.startswith(f"Baseline (given baseline): base \\| line (`{B}`), stage `train_nar`")
    assert s.blocks[1] == Paragraph("2 of 3 params differ:")
    assert s.blocks[2].rows == [(Code("only_mine"), "(absent)", "z"), (Code("y"), "3", "2")]
    same = config_diff(data(mine, baseline=run(B, params=dict(mine.params))))
    assert same.blocks[-1] == Note("no param differs from the baseline (3 params compared)")


def test_key_curves_figures_with_collapse_marks_and_numbers():
    r = run(params={"training.nar.collapse.util_floor": "0.5"},
            metrics={"nar/loss": 1.0, "nar/cb1/util_pred": 0.4, "grad_norm/total": 2.0})
    hist = {"nar/loss": Series("nar/loss", (2, 4, 6), (3.0, math.nan, 1.5)),
            "nar/cb1/util_pred": Series("nar/cb1/util_pred", (2, 4), (0.9, 0.4)),
            "grad_norm/total": Series("grad_norm/total", (), ())}
    events = ({"step": 4, "kind": "codebook"}, {"step": 4, "kind": "attention"}, {"step": "?", "kind": "codebook"})
    s = key_curves(data(r, histories=hist, collapse_events=events))
    assert s.blocks[0].html == "" and "report.html#key-curves" in s.blocks[0].md  # the plots are the HTML itself
    assert kinds(s) == ["Paragraph", "Heading", "Figure", "Heading", "Figure"]  # no figure without history
    loss, util = s.blocks[2], s.blocks[4]
    assert loss.floor is None and loss.table.rows == [
        (Code("nar/loss"), 3, "3 @ 2", "1.5 @ 6", "1.5 @ 6", "3 @ 2")]  # NaN is no min/max
    assert util.title == "Per-codebook predicted utilisation" and util.floor == 0.5 and list(util.events) == [4]
    empty = key_curves(data(run(metrics={"nar/loss": 1.0}), histories={}))
    assert empty.blocks[-1] == Note("the curve metrics have no history")
    assert "no training curves" in key_curves(data(run(stage="evaluate"))).blocks[0].text


HEATMAP = LoggedImage("nar/util_heatmap", 8, 17, "images/nar~util_heatmap+step+8+timestamp+17+u.png")


def test_key_curves_show_the_last_utilisation_heatmap_after_the_utilisation_figure():
    r = run(tags={names.MODEL_KIND: "nar"}, metrics={"nar/loss": 1.0, "nar/cb1/util_pred": 0.4})
    hist = {"nar/loss": Series("nar/loss", (2, 4), (3.0, 1.5)),
            "nar/cb1/util_pred": Series("nar/cb1/util_pred", (2, 4), (0.9, 0.4))}
    other = LoggedImage("ar/util_heatmap", 8, 17, "images/ar~util_heatmap+step+8+timestamp+17+u.png")
    s = key_curves(data(r, histories=hist, images={HEATMAP.key: HEATMAP, other.key: other}))
    assert kinds(s) == ["Paragraph", "Heading", "Figure", "Heading", "Figure", "Heading", "Picture"]
    assert s.blocks[3].text == "Per-codebook predicted utilisation"
    assert s.blocks[6].path == HEATMAP.path and "`nar/util_heatmap` at step 8" in s.blocks[6].caption
    assert list(s.media()) == [HEATMAP.path]
    assert "Picture" not in kinds(key_curves(data(r, histories=hist)))  # none logged: nothing shown


def test_best_checkpoint_per_run_kind():
    r = run(tags={names.BEST_STEP: "8", names.CHECKPOINT_DIR: "/w/ck", names.STEPS: "10"},
            params={"training.nar.best_metric": "val/loss", "training.nar.best_mode": "min"},
            metrics={"nar/loss": 1.0})
    s = best_checkpoint(data(r, best_meta={"best_value": 0.1234567, "saved_at": "t"},
                             listings={"checkpoints": files("checkpoints/best", "checkpoints/last")}))
    rows = dict(s.blocks[0].rows)
    assert rows["metric"] == "val/loss (min)" and rows["step"] == "8" and rows["value"] == "0.123457"
    assert rows["artifact"] == ArtifactLink("checkpoints/best") and rows["model reference"] == Code(
        f"runs:/{A}/checkpoints/best")
    assert rows["local directory"] == "/w/ck/ckpt/step_0000008" and rows["saved at"] == "t" and "code version" not in rows
    assert s.blocks[1] == Paragraph("Last checkpoint: [checkpoints/last](../checkpoints/last) (step 10).")
    assert "no best checkpoint recorded" in best_checkpoint(data(run())).blocks[0].text
    ev = best_checkpoint(data(run(stage="evaluate", tags={names.NAR_RUN_ID: B, names.NAR_STEP: "8"})))
    assert ev.blocks[1].rows == [("AR", "—", "—", "—"), ("NAR", B, "8", "—")]
    promote = best_checkpoint(data(run(stage="promote", tags={names.MODEL_NAME: "m", names.MODEL_VERSION: "3"})))
    assert promote.blocks == [Paragraph("Model `m` version 3 (decision: unknown).")]
    assert best_checkpoint(data(run(stage="preprocess"))).blocks == [
        Note("no checkpoint: 'preprocess' runs do not train a model")]


def test_best_checkpoint_of_a_run_with_checkpoint_models():
    from harmonica.tracking.checkpoints import CheckpointModel

    m8 = CheckpointModel(model_id="m-" + "8" * 32, name="ar-ema-step0000008", run_id=A, kind="ar", weights="ema",
                         step=8, status="READY", metrics={"val_ema/loss": 1.5})
    m4 = CheckpointModel(model_id="m-" + "4" * 32, name="ar-ema-step0000004", run_id=A, kind="ar", weights="ema",
                         step=4, status="READY", metrics={"val_ema/loss": 2.0})
    r = run(tags={names.BEST_STEP: "8", names.BEST_VALUE: "1.5", names.BEST_MODEL_ID: m8.model_id,
                  names.CHECKPOINT_DIR: "/w/ck"},
            params={"training.ar.best_metric": "val_ema/loss", "training.ar.best_mode": "min"}, metrics={"ar/loss": 1.0})
    s = best_checkpoint(data(r, checkpoint_models=(m8, m4), best_meta={"saved_at": "t", "code_version": "abc"}))
    rows = dict(s.blocks[0].rows)
    assert rows["model"] == "ar-ema-step0000008" and rows["model reference"] == Code(f"models:/{m8.model_id}")
    assert rows["local directory"] == "/w/ck/ckpt/step_0000008" and "artifact" not in rows
    assert "best first by val_ema/loss" in s.blocks[1].md
    assert s.blocks[2].rows == [("ar-ema-step0000008", "8", "1.5", Code(m8.uri)),
                                ("ar-ema-step0000004", "4", "2", Code(m4.uri))]


def test_worst_utterances_order_and_audio_cells():
    rows = ({"id": "u1", "model_wer": 0.5, "model_sim": 0.9, "audio": "audio/u1.wav"},
            {"id": "u2", "model_wer": 1.0, "model_sim": 0.8, "audio": "audio/u2.wav", "seed_index": 1},
            {"id": "u3", "model_wer": 1.0, "model_sim": 0.7, "audio": "", "model_fail_silence": True},
            {"id": "u4", "model_wer": math.nan, "model_sim": None, "audio": "audio/u4.wav"})
    assert [r["id"] for r in worst(rows, 3)] == ["u3", "u2", "u1"]  # WER, then failures, then SIM
    r = run(stage="evaluate", tags={names.EVAL_SPLIT: "val"}, metrics={"eval/wer": 1.0, "eval/utterances": 4})
    s = eval_summary(data(r, eval_rows=rows, listings={"audio": files("audio/u1.wav", "audio/u2.wav")}))
    assert s.blocks[0].md.startswith("4 utterances of split `val`, ? weights")
    table = s.blocks[-1]
    assert [row[0] for row in table.rows] == ["u3", "u2 (seed #1)", "u1", "u4"]
    assert [row[-1] for row in table.rows] == [EMPTY_AUDIO, Audio("audio/u2.wav"), Audio("audio/u1.wav"),
                                               NotLogged("audio/u4.wav")]
    assert table.rows[0][5] == "silence" and table.rows[0][2] == "(empty)"
    assert any("WER by decoding seed" in b.md for b in s.blocks if hasattr(b, "md"))  # u2 is a second seed
    assert eval_summary(data(r)).blocks[-1] == Note("no per-utterance table (eval_table.json) logged")


def test_an_evaluate_run_is_paired_with_its_evaluate_baseline():
    """Same utterances, every one one word worse: the report says so with an interval; a baseline without
    a table (or of another stage) adds nothing."""
    mine = tuple({"id": f"u{i}", "text": "a b c d", "model_hypothesis": "a b c x", "model_wer": 0.25,
                  "model_cer": 0.1, "model_sim": 0.8} for i in range(20))
    theirs = tuple({**row, "model_hypothesis": "a b c d", "model_wer": 0.0, "model_cer": 0.0} for row in mine)
    r = run(stage="evaluate", metrics={"eval/wer": 0.25, "eval/utterances": 20})
    base = run(B, stage="evaluate", name="evaluate-before", metrics={"eval/wer": 0.0})
    s = eval_summary(data(r, eval_rows=mine, baseline=base, baseline_rows=theirs))
    table = next(b for b in s.blocks if isinstance(b, Table) and b.headers[1] == "baseline")
    wer = next(row for row in table.rows if row[0] == "eval/wer")
    assert wer[1:3] == ("0", "0.25") and wer[3].startswith("+0.2500 [+0.2500, +0.2500]") and wer[4] == "worse"
    assert next(row for row in table.rows if row[0] == "eval/sim")[4] == "~"
    assert any("paired over the 20 utterances both scored" in b.md for b in s.blocks if isinstance(b, Paragraph))
    lone = eval_summary(data(r, eval_rows=mine, baseline=base))
    assert not any(isinstance(b, Table) and b.headers[1] == "baseline" for b in lone.blocks)


def test_eval_summary_of_promote_and_training_runs():
    promote = run(stage="promote", tags={names.EVALUATION_RUN_ID: B})
    assert eval_summary(data(promote)).blocks == [Note(f"evaluate run {B} not found")]
    ev = run(B, stage="evaluate", name="ev", metrics={"eval/wer": 0.3, "baseline/resynthesis/wer": 0.1})
    s = eval_summary(data(promote, evaluation=ev))
    assert s.blocks[0] == Paragraph(f"Evaluate run ev (`{B}`):") and isinstance(s.blocks[1], Table)
    assert "no evaluation" in eval_summary(data(run())).blocks[0].text
    trained = eval_summary(data(run(), scored_by=(ev,)))
    assert trained.blocks[1].rows == [("ev", Code(B), 0.3, None, None, None, 0.1)]


def test_audio_samples_pick_the_latest_step_and_link_references():
    wavs = [f"samples/step_000010/u{i}.wav" for i in range(MAX_SAMPLES + 2)]
    listings = {"samples": files("samples/step_000008", "samples/step_000010", "samples/reference"),
                "samples/step_000010": files(*wavs, "samples/step_000010/u0.png"),
                "samples/reference": files("samples/reference/u0.wav")}
    s = audio_samples(data(run(), listings=listings))
    assert "step 10" in s.blocks[0].md and "playable" not in s.blocks[0].html_text
    rows = s.blocks[1].rows
    assert len(rows) == MAX_SAMPLES and rows[0] == ("u0", Audio(wavs[0]), Audio("samples/reference/u0.wav"),
                                                    Spectrogram("samples/step_000010/u0.png"))
    assert rows[1][2:] == ("—", "—")
    assert s.blocks[2] == Note("2 more samples under samples/step_000010")
    assert list(s.media())[:3] == [wavs[0], "samples/reference/u0.wav", "samples/step_000010/u0.png"]
    image = LoggedImage("samples/u1/spectrogram", 10, 17, "images/samples~u1~spectrogram+step+10+timestamp+17+u.png")
    stepped = audio_samples(data(run(), listings=listings, images={image.key: image}))
    assert stepped.blocks[1].rows[0][3] == Spectrogram("samples/step_000010/u0.png")  # an older run's file
    assert stepped.blocks[1].rows[1][3] == Spectrogram(image.path)  # the stepped image of u1
    listed = {"audio": files("audio/b.wav", "audio/a.wav", "audio/x.txt")}
    ev = audio_samples(data(run(stage="evaluate"), listings=listed))
    assert ev.blocks[1] == Bullets([ArtifactLink("audio/a.wav"), ArtifactLink("audio/b.wav")])
    assert "no audio artifacts" in audio_samples(data(run())).blocks[0].text


def test_collapse_events_of_this_run_and_of_referred_runs():
    events = tuple({"step": i, "kind": "codebook", "name": "nar/cb1", "value": 0.1, "floor": 0.5, "message": "m"}
                   for i in range(205))
    own = collapse_events(data(run(), training=(TrainingRun(run(), events),)))
    assert own.blocks[0].md.startswith("this run: 205 collapse event(s), first at step 0, affecting nar/cb1")
    assert len(own.blocks[1].rows) == 200 and own.blocks[2] == Note("5 more events in collapse_events.jsonl")
    tagged = run(B, name="t", tags={names.COLLAPSE: "true", names.COLLAPSE_FIRST_STEP: "3"})
    ev = collapse_events(data(run(stage="evaluate"), training=(TrainingRun(tagged),), unknown_training=("AR /ck",)))
    assert ev.blocks == [Note("collapse events unknown for AR /ck: not a run of this tracking store"),
                         Note(f"training run t ({B}): collapse tagged (first at step 3) but collapse_events.jsonl "
                              "is missing")]
    assert "trains nothing" in collapse_events(data(run(stage="preprocess"))).blocks[0].text


def test_failure_reasons_gather_every_cause():
    gate_tags = {"gate.max_wer.passed": "false", "gate.max_wer.value": "0.9", "gate.max_wer.reason": "too high",
                 "gate.min_sim.skipped": "true", names.DECISION: "refused", names.FAILING_GATES: "max_wer",
                 "mlflow.note.content": "no"}
    promote = run(C, stage="promote", name="p", tags=gate_tags)
    collapsed = run(B, name="t", tags={names.COLLAPSE: "true", names.COLLAPSE_FIRST_STEP: "5"})
    ev = run(stage="evaluate", status="FAILED", metrics={"eval/fail/any": 0.5, "eval/fail/looping": 0.25,
                                                         "eval/loop_cut_rate": 0.1})
    s = failure_reasons(data(ev, training=(TrainingRun(collapsed),), promotions=(run(stage="promote"), promote)))
    assert s.blocks[0].items == [
        "run status FAILED", f"the evaluated training run t ({B}) collapsed (first at step 5); see Collapse events",
        "eval failure detectors fired on 50% of the utterances: looping 25%",
        "AR loops were cut on 10% of the utterances",
        f"promotion gates failed (promote run p ({C})): max_wer", f"promotion refused (promote run p ({C})): no"]
    assert [b.text for b in s.blocks if isinstance(b, Heading)] == [
        "Failing eval detectors (share of utterances)", f"Gate results (promote run p ({C}))"]
    assert gate_rows(gate_tags) == [("max_wer", "FAIL", "0.9", "—", "—", "too high"),
                                    ("min_sim", "SKIP", "—", "—", "—", "")]
    clean = failure_reasons(data(run(stage="evaluate")))
    assert kinds(clean) == ["Note", "Note"] and "no gate results" in clean.blocks[1].text
    unstable = failure_reasons(data(run(metrics={"instability/events": 2}),
                                    instability_events=({"step": 3, "reason": "spike", "lr_reduced": True},)))
    assert unstable.blocks[0].items == ["2 instability event(s) (skipped optimizer steps, LR reduced)"]
    assert unstable.blocks[2].rows == [(3, "spike", "true")]


def test_a_section_whose_data_failed_or_is_malformed_says_so():
    r = run(metrics={"nar/loss": 1.0})
    sections = build_sections(data(r, errors={HISTORIES: "MlflowException: boom"}, best_meta={"best_step": 3},
                                   collapse_events=({"step": 1},)))
    assert [s.title for s in sections] == list(SECTIONS)
    by_title = {s.title: s for s in sections}
    assert by_title["Key curves"].blocks == [Note("could not be built: MlflowException: boom")]
    broken = build_sections(ReportData(run=run(), experiment="e"))  # no artifact listing read: KeyErrors
    assert [b.text.split(":")[0] for s in broken if s.title == "Audio samples" for b in s.blocks] == [
        "could not be built"]
    assert not any(isinstance(b, Figure) for s in sections for b in s.blocks)
