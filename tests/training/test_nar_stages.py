import pytest
import torch

from harmonica.config.schema import TrainingConfig
from harmonica.data.cache import find_cache
from harmonica.training.steps import NARTask
from harmonica.training.trainer import Trainer
from tests.models.tiny import N_Q, batch, nar_model
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


def _batch() -> dict:
    b = batch()
    return {**b, "codes": b["codes"].clamp_min(0)}


@pytest.mark.parametrize("per_step,expected", [(0, [1, 2, 3]), (2, None), (9, [1, 2, 3])])
def test_nar_trains_the_configured_number_of_stages(per_step, expected) -> None:
    task = NARTask(TrainingConfig(nar_stages_per_step=per_step, warmup_steps=0, total_steps=1000), 16, N_Q)
    model = nar_model().train()
    out = task.train_step(model, _batch(), 0, torch.Generator().manual_seed(0), False)
    stages = sorted(u.codebook for u in out.usage)
    assert stages == expected if expected else (len(stages) == per_step and len(set(stages)) == per_step)
    assert float(out.terms["stages_per_step"]) == len(stages)
    out.loss.backward()
    for k in range(1, N_Q):  # exactly the trained stages' heads get a gradient
        grad = model.heads[k - 1].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == (k in stages), k


def test_nar_loss_is_the_mean_of_the_per_stage_objectives() -> None:
    cfg = TrainingConfig(warmup_steps=0, total_steps=1000, label_smoothing=0.0, codebook_entropy_weight=0.0)
    task, model, b = NARTask(cfg, 16, N_Q), nar_model(), _batch()
    out = task.train_step(model, b, 0, torch.Generator().manual_seed(0), False)
    per_stage = [model(b["text"], b["text_lens"], b["codes"], b["audio_lens"], k,
                       prompt=b["prompt"], prompt_lens=b["prompt_lens"])[1] for k in (1, 2, 3)]
    torch.testing.assert_close(out.loss, torch.stack(per_stage).mean(), atol=1e-5, rtol=0)
    val = task.val_step(model, b)
    torch.testing.assert_close(val.loss, torch.stack(per_stage).mean(), atol=1e-5, rtol=0)


def test_nar_run_logs_the_count_table_and_its_margin(tiny_corpus, tiny_cache_workdir, tmp_path) -> None:
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("nar"))
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    sink = RecordingSink()
    Trainer(cfg, "nar", cache, tmp_path / "ckpt", sink, device=torch.device("cpu")).fit()
    for k in (1, 2):
        table = sink.metrics[f"val/cb{k}/ce_count_table"]
        assert sorted(table) == [4, 8] and 0 < table[4] == table[8]
        for step in (4, 8):
            model_ce = sink.metrics[f"val_ema/cb{k}/ce"][step]
            assert sink.metrics[f"val_ema/cb{k}/ce_margin"][step] == pytest.approx(table[step] - model_ce, rel=1e-6)
    assert 8 in sink.metrics["val_ema/ce_margin"] and 8 in sink.metrics["val/ce_count_table"]
    assert sink.metrics["nar/stages_per_step"][8] == 2
