"""Case 4: damaged checkpoints end in one harmonica error naming the file; --resume falls back."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from harmonica.data.cache import find_cache
from harmonica.training import checkpoint as ckpt
from harmonica.training import ckpt_check
from harmonica.training.ckpt_check import CheckpointInvalid
from harmonica.training.resume import select_checkpoint
from harmonica.training.trainer import Trainer
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


class _Boom:
    """Unpickling this writes a file: proof that a pickle was (not) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def _truncate(path: Path, name: str) -> None:
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])


def _pickle_as_ema(path: Path, name: str) -> None:
    (path / name).write_bytes(pickle.dumps(_Boom(str(path.parent / "UNPICKLED")), protocol=4))


def _drop_contract(path: Path, name: str) -> None:
    meta = json.loads((path / name).read_text())
    del meta["contract"]
    (path / name).write_text(json.dumps(meta))


def _shrink_weight(path: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / name))
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(path / name))


DAMAGE = {
    "truncated_model": (_truncate, "model.safetensors", "not a readable safetensors file"),
    "truncated_meta": (_truncate, "meta.json", "is not valid JSON"),
    "pickle_as_ema": (_pickle_as_ema, "ema.safetensors", "pickle"),
    "missing_contract": (_drop_contract, "meta.json", "lacks the key(s) ['contract']"),
    "size_mismatch": (_shrink_weight, "model.safetensors", "does not fit the model of this config"),
    "truncated_optimizer_json": (_truncate, "optimizer.json", "is not valid JSON"),
}


def _trainer(corpus, workdir, root):
    cfg = tiny_cfg(corpus, *tiny_steps("ar"))
    cache, _ = find_cache(cfg, workdir)
    return Trainer(cfg, "ar", cache, root, RecordingSink(), device=torch.device("cpu"))


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_each_damage_is_one_harmonica_error_naming_the_file(case, tmp_path, tiny_corpus, tiny_cache_workdir,
                                                            tiny_checkpoints):
    damage, name, says = DAMAGE[case]
    path = shutil.copytree(tiny_checkpoints["ar"], tmp_path / "ckpt" / "step_0000008")
    damage(path, name)
    trainer = _trainer(tiny_corpus, tiny_cache_workdir, tmp_path / "ckpt")
    before = {k: v.clone() for k, v in trainer.core.state_dict().items()}
    with pytest.raises(CheckpointInvalid) as err:
        trainer.load(path)
    assert name in str(err.value) and says in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "ckpt" / "UNPICKLED").exists()
    assert trainer.state.step == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.core.state_dict().items())  # nothing half-loaded


def test_resume_falls_back_to_the_newest_valid_checkpoint_and_says_why(tmp_path, tiny_checkpoints):
    ckpt_root = tmp_path / "checkpoints" / "demo" / "ar" / "run1" / "ckpt"
    for step in (4, 8):
        shutil.copytree(tiny_checkpoints["ar"], ckpt_root / f"step_{step:07d}")
        meta = json.loads((ckpt_root / f"step_{step:07d}" / "meta.json").read_text())
        (ckpt_root / f"step_{step:07d}" / "meta.json").write_text(json.dumps({**meta, "step": step}))
    _truncate(ckpt_root / "step_0000008", "model.safetensors")
    runs_root = ckpt_root.parent.parent
    target = select_checkpoint(runs_root, "ar", "demo")
    assert target.path.name == "step_0000004" and target.run_id == "run1"
    [(skipped, why)] = target.skipped
    assert skipped.name == "step_0000008" and "model.safetensors" in why
    assert select_checkpoint(runs_root, "ar", "demo", "4").path.name == "step_0000004"
    with pytest.raises(CheckpointInvalid, match="step_0000008: model.safetensors"):
        select_checkpoint(runs_root, "ar", "demo", str(ckpt_root / "step_0000008"))
    with pytest.raises(FileNotFoundError, match=r"checkpoints at steps \[4, 8\]"):
        select_checkpoint(runs_root, "ar", "demo", "6")
    _truncate(ckpt_root / "step_0000004", "meta.json")
    with pytest.raises(CheckpointInvalid, match="all damaged"):
        select_checkpoint(runs_root, "ar", "demo")


def test_checkpoint_modules_never_unpickle():
    for mod in (ckpt, ckpt_check):
        src = Path(mod.__file__).read_text()
        assert "torch.load" not in src and "import pickle" not in src and "pickle.load" not in src
