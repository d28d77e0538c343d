import pytest
import torch

from harmonica.config import load_config
from harmonica.data.cache import find_cache
from harmonica.training.threads import apply_threads
from harmonica.training.trainer import Trainer
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_threads_sets_and_zero_keeps_default(restore_threads):
    assert apply_threads(2) == 2 and torch.get_num_threads() == 2
    assert apply_threads(0) == 2  # 0 leaves whatever is in effect
    assert apply_threads(1) == 1
    with pytest.raises(ValueError, match=">= 0"):
        apply_threads(-1)


def test_threads_default_is_one_and_negative_is_rejected():
    base = load_config("demo_collapse", [])  # a project that does not set threads: the schema default
    assert base.training.ar.threads == 1 and base.training.nar.threads == 1
    cfg = load_config("demo", [])  # the demo asks for both of its 2 quiet cores (projects/demo.yaml)
    assert cfg.training.ar.threads == 2 and cfg.training.nar.threads == 2 and cfg.eval.threads == 2
    with pytest.raises(Exception, match="threads"):
        load_config("demo", ["training.ar.threads=-1"])


def test_trainer_applies_threads_and_tags_them(tiny_corpus, tiny_cache_workdir, tmp_path, restore_threads):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"), "training.ar.threads=2")
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    sink = RecordingSink()
    Trainer(cfg, "ar", cache, tmp_path / "ckpt", sink, device=torch.device("cpu"))
    assert torch.get_num_threads() == 2
    assert sink.tags["harmonica.threads"] == "2"
