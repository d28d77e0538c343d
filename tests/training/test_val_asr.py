import pytest
import torch

from harmonica.codec import load_codec
from harmonica.data.cache import find_cache
from harmonica.training.trainer import Trainer
from harmonica.training.val_asr import asr_due
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


def test_asr_cadence_and_its_validation() -> None:
    assert [s for s in (4, 8, 12, 16, 18) if asr_due(s, 18, 8)] == [8, 16, 18]  # and the last step
    assert all(asr_due(s, 18, 0) for s in (4, 8))
    with pytest.raises(Exception, match="multiple of val_every"):
        tiny_cfg("/tmp", *tiny_steps("ar"), "training.ar.val_asr_every=6")


@pytest.mark.parametrize("kind", ["ar", pytest.param("nar", marks=pytest.mark.slow)])
def test_free_running_check_is_logged_on_its_cadence_and_selects(kind, tiny_corpus, tiny_cache_workdir, tmp_path):
    cfg = tiny_cfg(tiny_corpus, *tiny_steps(kind, total=12), f"training.{kind}.val_asr_utterances=2",
                   f"training.{kind}.val_asr_every=8", f"training.{kind}.best_metric=val/asr_wer",
                   "eval.decode.max_length_per_char=0.03")  # short free-running audio: a fast test
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    codec = load_codec(cfg.codec, cache.codec_dir)
    sink = RecordingSink()
    trainer = Trainer(cfg, kind, cache, tmp_path / "ckpt", sink, device=torch.device("cpu"), codec=codec)
    trainer.fit()
    wer = sink.metrics["val/asr_wer"]
    assert sorted(wer) == [8, 12] and all(v >= 0 for v in wer.values())  # not at step 4
    ref = sink.metrics["val/asr_wer_reference"]
    assert ref[8] == ref[12] >= 0  # the ground truth is transcribed once
    assert trainer.state.best_step == min(wer, key=wer.get) and trainer.state.best_value == min(wer.values())
