"""The trainer on a tiny cache: metric families, resume equivalence, instability guard, checkpoints."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonica.data.cache import find_cache
from harmonica.training import checkpoint as ckpt
from harmonica.training.ckpt_check import CheckpointInvalid
from harmonica.training.metric_buffer import ResumeDedupMetrics
from harmonica.training.trainer import Trainer
from harmonica.tracking import names
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


def _trainer(corpus, workdir, out: Path, kind: str, sink, *extra: str, codec=None) -> Trainer:
    cfg = tiny_cfg(corpus, *tiny_steps(kind), *extra)
    cache, _ = find_cache(cfg, workdir)
    return Trainer(cfg, kind, cache, out, sink, device=torch.device("cpu"), codec=codec)


@pytest.mark.parametrize("kind", ["ar", "nar"])
@pytest.mark.slow
def test_every_metric_family_is_logged(kind, tiny_corpus, tiny_cache_workdir, tmp_path):
    sink = RecordingSink()
    from harmonica.codec import load_codec

    cfg = tiny_cfg(tiny_corpus, *tiny_steps(kind))
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    codec = load_codec(cfg.codec, cache.codec_dir)
    trainer = Trainer(cfg, kind, cache, tmp_path / "ckpt", sink, device=torch.device("cpu"), codec=codec)
    result = trainer.fit()
    names = set(sink.metrics)
    cb = "cb0" if kind == "ar" else "cb1"
    for family in ("util_pred", "util_target", "usage_entropy", "perplexity", "ce", "acc"):
        assert f"{kind}/{cb}/{family}" in names, family
    assert f"{kind}/util_pred_median" in names
    assert f"{kind}/attn_entropy/layer0" in names and f"{kind}/attn_entropy/layer1_min" in names
    groups = {"embeddings", "attention", "output_heads", "text_encoder"}
    assert {f"grad_norm/{g}" for g in groups | {"total"}} <= names
    assert {f"update_ratio/{g}" for g in groups} <= names
    assert {f"lr/{g}" for g in groups} <= names
    assert "throughput/tokens_per_sec" in names
    assert {"val/loss", "val_ema/loss", f"val/{cb}/util_pred"} <= names
    assert sorted(sink.metrics[f"{kind}/loss"]) == [2, 4, 6, 8]  # the log_every cadence
    # samples: reference + the sample step as wav artifacts, their spectrograms as stepped images
    sample_dirs = [a for _, a in sink.artifacts if a and a.startswith("samples/")]
    assert "samples/reference" in sample_dirs and "samples/step_000008" in sample_dirs
    wavs = list((tmp_path / "samples" / "step_000008").glob("*.wav"))
    assert wavs and not list((tmp_path / "samples").rglob("*.png"))
    for w in wavs:
        image = sink.images[f"samples/{w.stem}/spectrogram"][8]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 4
        assert set(sink.images[f"samples/{w.stem}/reference"]) == {0}
    assert sorted(sink.images[f"{kind}/util_heatmap"]) == sorted(sink.metrics["val/loss"]) == [4, 8]
    assert [h["step"] for h in result.state.util_history] == [4, 8]
    # checkpoints: safetensors for raw and EMA + the contract in meta.json
    assert result.best_checkpoint is not None
    meta = json.loads((result.last_checkpoint / "meta.json").read_text())
    for key in ("max_seq_len", "n_q", "codebook_size", "frame_rate", "codec_fingerprint", "text_vocab_hash",
                "bos_id", "eos_id", "d_model", "n_layers"):
        assert key in meta["contract"], key
    assert meta["contract"]["kind"] == kind
    assert {p.name for p in result.last_checkpoint.glob("*.safetensors")} >= {"model.safetensors", "ema.safetensors"}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_matches_an_uninterrupted_run(tiny_corpus, tiny_cache_workdir, tmp_path, optimizer):
    opts = ("training.nar.token_noise=0.1", f"training.nar.optimizer={optimizer}")
    whole = RecordingSink()
    a = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "a", "nar", whole, *opts)
    a.fit()
    assert any(g["name"] == "attention/muon" for g in a.optimizer.param_groups) == (optimizer == "muon")

    killed = RecordingSink(fail_at_step=6)  # dies after the step-4 checkpoint, before step 8
    b = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "b", "nar", killed, *opts)
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    latest = ckpt.latest_checkpoint(tmp_path / "b")
    assert ckpt.read_meta(latest)["step"] == 4

    resumed = RecordingSink()
    c = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "b", "nar", resumed, *opts)
    c.fit(resume_from=latest)
    assert sorted(resumed.metrics["nar/loss"]) == [6, 8]  # continuous numbering
    for key in ("nar/loss", "nar/cb1/util_pred", "grad_norm/total"):
        for step in (6, 8):
            if step in whole.metrics.get(key, {}):
                assert resumed.metrics[key][step] == pytest.approx(whole.metrics[key][step], rel=1e-5, abs=1e-7), key
    for name, p in a.core.state_dict().items():
        assert torch.allclose(p, c.core.state_dict()[name], atol=1e-6), name


def test_nan_loss_is_skipped_logged_and_never_checkpointed(tiny_corpus, tiny_cache_workdir, tmp_path, monkeypatch):
    sink = RecordingSink()
    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt", "ar", sink,
                       "training.ar.collapse.max_instability_events=2")
    real_step = trainer.task.train_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (3, 5):  # two poisoned updates
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.task, "train_step", poisoned)
    result = trainer.fit()
    assert len(result.state.instability_events) == 2
    assert result.state.instability_events[1]["lr_reduced"] is True
    assert sink.tags["harmonica.instability"] == "true"
    assert max(sink.metrics["instability/events"].values()) == 2
    assert sink.metrics["instability/lr_scale"][5] == 0.5  # second event halved the LR
    for path in ckpt.list_checkpoints(tmp_path / "ckpt"):
        c = ckpt.load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in c.model.values())
    assert all(math.isfinite(v) for v in sink.metrics["ar/loss"].values())


def test_non_finite_weights_are_never_written(tiny_corpus, tiny_cache_workdir, tmp_path):
    sink = RecordingSink()
    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt", "ar", sink)
    with torch.no_grad():
        next(trainer.core.parameters()).fill_(float("inf"))
    assert trainer.save() is None
    assert ckpt.list_checkpoints(tmp_path / "ckpt") == []
    assert "harmonica.nonfinite_weights_step" in sink.tags


def test_collapse_is_warned_tagged_and_can_stop(tiny_corpus, tiny_cache_workdir, tmp_path, caplog):
    sink = RecordingSink()
    # a floor nothing can reach (attention entropy <= log(keys) << 100 nats): every layer "collapses" at
    # the first log step. (A utilisation floor of 1.0 is reachable: with all NAR stages per step a
    # 16-entry codebook is fully predicted within one window.)
    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt", "nar", sink,
                       "training.nar.collapse.attn_entropy_floor=100", "training.nar.collapse.stop_on_collapse=true")
    result = trainer.fit()
    assert result.state.collapse_events and result.state.stop_reason.startswith("collapse at step 2")
    assert sink.tags["harmonica.collapse"] == "true" and sink.tags["harmonica.collapse_first_step"] == "2"
    events = [json.loads(line) for line in sink.texts["collapse_events.jsonl"].splitlines()]
    assert events[0]["kind"] == "attention" and events[0]["step"] == 2
    assert "COLLAPSE" in caplog.text
    assert ckpt.read_meta(result.last_checkpoint)["step"] == 2  # stopped runs still checkpoint


def test_early_stop_when_nothing_improves(tiny_corpus, tiny_cache_workdir, tmp_path):
    sink = RecordingSink()
    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt", "ar", sink,
                       "training.ar.lr=1e-9", "training.ar.muon_lr=1e-9", "training.ar.min_lr=1e-9", "training.ar.val_every=1",
                       "training.ar.collapse.early_stop_window=2")
    # with lr (AdamW and Muon) 1e-9 neither the (eval-mode) validation loss nor utilisation can improve
    result = trainer.fit()
    assert result.state.stop_reason and result.state.stop_reason.startswith("early stop")
    assert result.state.step < 8


class _KilledBeforeValidationRecord(RecordingSink):
    """Dies right after the step's checkpoint is written and published, before its validation is logged."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.kill_step = step

    def log_metrics(self, metrics, step=None, model_ids=None, dataset=None):
        if step == self.kill_step and "val/loss" in metrics:
            raise KeyboardInterrupt("simulated kill")
        super().log_metrics(metrics, step, model_ids, dataset)


def test_a_kill_between_checkpoint_and_validation_record_loses_nothing(tiny_corpus, tiny_cache_workdir, tmp_path):
    """Found by CI: the validation of a checkpointed step was logged after the checkpoint; a SIGKILL in between
    lost that step's val/* for good, since the resumed run starts after it."""
    extra = ("training.ar.collapse.early_stop_window=4",)
    whole = RecordingSink()
    a = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "a", "ar", whole, *extra)
    a.fit()

    killed = _KilledBeforeValidationRecord(step=4)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "b", "ar", killed, *extra).fit()
    latest = ckpt.latest_checkpoint(tmp_path / "b")
    assert ckpt.read_meta(latest)["step"] == 4 and 4 not in killed.metrics.get("val/loss", {})

    resumed = RecordingSink()
    sink = ResumeDedupMetrics(resumed, lambda key: sorted(killed.metrics.get(key, {}).items()))
    c = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "b", "ar", sink, *extra)
    c.fit(resume_from=latest)
    for key in ("val/loss", "val_ema/loss", "val/util_pred_median"):
        logged = sorted([*killed.metrics.get(key, {}).items(), *resumed.metrics[key].items()])
        assert [s for s, _ in logged] == sorted(whole.metrics[key]), key
        assert dict(logged) == pytest.approx(whole.metrics[key], rel=1e-5), key
    assert resumed.links[("val_ema/loss", 4)][0] == "m-ar-ema-4"  # linked to the checkpoint model of its step
    assert resumed.tags[names.BEST_STEP] == whole.tags[names.BEST_STEP]
    assert c.early.state_dict() == a.early.state_dict()  # the step-4 validation reached the early stopper once


def test_the_nar_trains_with_the_count_table_of_its_training_split(tiny_corpus, tiny_cache_workdir, tmp_path):
    from safetensors.torch import load_file

    from harmonica.training.count_table import fit_table

    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt", "nar", RecordingSink(),
                       "model.nar.count_prior=true", "training.nar.total_steps=4", "training.nar.sample_every=4")
    table = fit_table([e.codes for e in trainer.train_examples], trainer.cache.contract["codebook_size"])
    assert torch.equal(trainer.core.count_prior, table[1:])
    result = trainer.fit()
    for weights in ("model.safetensors", "ema.safetensors"):  # a constant: the EMA copy is the table too
        assert torch.equal(load_file(str(result.last_checkpoint / weights))["count_prior"], table[1:]), weights
    assert ckpt.read_meta(result.last_checkpoint)["contract"]["count_prior"] is True


def test_the_ar_noises_its_inputs_towards_codec_neighbours(tiny_corpus, tiny_cache_workdir, tmp_path):
    from harmonica.codec import load_codec

    t = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ar", "ar", RecordingSink(),
                 "training.ar.token_noise=0.4", "training.ar.token_noise_neighbours=3")
    table = load_codec(t.cfg.codec, t.cache.codec_dir).stage_embeddings(0)  # [V, D]
    near = t.task.neighbours  # [V, 3]
    assert near.shape == (table.size(0), 3)
    d = torch.cdist(table, table)  # [V, V]
    for v in range(table.size(0)):  # each entry's 3 neighbours are as near as any other entries
        others = torch.cat([d[v, :v], d[v, v + 1:]])
        assert d[v, near[v]].max() <= others.sort().values[2] + 1e-6
    assert math.isfinite(t.fit().final_metrics.get("ar/loss", float("nan")))


def test_the_ar_smooths_its_targets_over_codec_neighbours(tiny_corpus, tiny_cache_workdir, tmp_path):
    from harmonica.codec import load_codec

    t = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ar", "ar", RecordingSink(),
                 "training.ar.neighbour_smoothing=0.3", "training.ar.neighbour_smoothing_k=2")
    table = load_codec(t.cfg.codec, t.cache.codec_dir).stage_embeddings(0)  # [V, D]
    near = t.task.target_neighbours  # [V, 2]
    assert near.shape == (table.size(0), 2) and t.task.neighbours is None
    d = torch.cdist(table, table)  # [V, V]
    for v in range(table.size(0)):
        others = torch.cat([d[v, :v], d[v, v + 1:]])
        assert d[v, near[v]].max() <= others.sort().values[1] + 1e-6
    assert math.isfinite(t.fit().final_metrics["ar/ce"])


def test_the_ar_regresses_its_expected_embedding_and_logs_it(tiny_corpus, tiny_cache_workdir, tmp_path):
    t = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ar", "ar", RecordingSink(),
                 "training.ar.embedding_regression_weight=0.5")
    assert t.task.table is not None and t.task.table.shape[0] == t.cache.contract["codebook_size"]
    metrics = t.fit().final_metrics
    assert math.isfinite(metrics["ar/embedding_mse"]) and metrics["ar/embedding_mse"] > 0


def test_the_ar_head_knows_the_codec_and_the_checkpoint_keeps_it(tiny_corpus, tiny_cache_workdir, tmp_path):
    from safetensors.torch import load_file

    from harmonica.codec import load_codec
    from harmonica.inference.synthesize import load_model
    from harmonica.models.acoustic_head import acoustic_table

    t = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ar", "ar", RecordingSink(), "model.ar.acoustic_dim=4")
    expected = acoustic_table(load_codec(t.cfg.codec, t.cache.codec_dir).stage_embeddings(0), 4)  # [V, 4]
    torch.testing.assert_close(t.core.acoustic.table, expected)
    result = t.fit()
    for weights in ("model.safetensors", "ema.safetensors"):  # a constant, in the EMA copy too
        torch.testing.assert_close(load_file(str(result.last_checkpoint / weights))["acoustic.table"], expected)
    model, meta = load_model(result.last_checkpoint)  # what evaluate and synthesize build
    torch.testing.assert_close(model.acoustic.table, expected)
    assert meta["contract"]["acoustic_dim"] == 4


def test_how_often_it_validates_and_checkpoints_does_not_change_what_it_trains(tiny_corpus, tiny_cache_workdir,
                                                                              tmp_path):
    """Validation, checkpoints and samples draw from their own generators: the demo can validate less
    often (to save time) and train the very same model."""
    often = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "often", "ar", RecordingSink(),
                     "training.ar.val_every=2", "training.ar.ckpt_every=2", "training.ar.sample_every=2",
                     "model.ar.dropout=0.1")  # dropout: a validation drawing from torch's global stream would show
    often.fit()
    rarely = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "rarely", "ar", RecordingSink(),
                      "training.ar.val_every=8", "training.ar.ckpt_every=8", "training.ar.sample_every=8",
                      "model.ar.dropout=0.1")
    rarely.fit()
    assert often.tcfg.total_steps == rarely.tcfg.total_steps == 8
    for name, p in often.core.state_dict().items():
        assert torch.equal(p, rarely.core.state_dict()[name]), name


@pytest.mark.slow
def test_a_checkpoint_of_the_other_optimizer_is_refused(tiny_corpus, tiny_cache_workdir, tmp_path):
    """A Muon checkpoint resumed under AdamW (and the reverse) is a CheckpointInvalid naming the optimizer
    state -- never a traceback, never an optimizer that silently starts from nothing."""
    for saved, resumed in (("muon", "adamw"), ("adamw", "muon")):
        a = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / saved, "nar", RecordingSink(),
                     f"training.nar.optimizer={saved}", *tiny_steps("nar", 4))
        a.fit()
        b = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / f"{saved}-b", "nar", RecordingSink(),
                     f"training.nar.optimizer={resumed}", *tiny_steps("nar", 4))
        with pytest.raises(CheckpointInvalid, match="optimizer/trainer state"):
            b.load(ckpt.latest_checkpoint(tmp_path / saved))
