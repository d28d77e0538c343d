"""Case 1: two `harmonica preprocess` on one workdir at once, on a fresh and on an existing workdir."""

import re
import subprocess

import pytest

from harmonica.data import cache as cache_mod
from harmonica.data.preprocess import build_token_cache
from tests.reliability.helpers import cli_args, harmonica, run, runs_of
from tests.tiny import tiny_cfg


def _two_at_once(workdir, corpus, cwd) -> list[tuple[int, str, str]]:
    cmd = harmonica("preprocess", "--workdir", str(workdir), "--no-progress", *cli_args(corpus))
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        outs.append((p.returncode, out, err))
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_two_preprocess_processes_at_once_then_train(tmp_path, tiny_corpus, existing):
    workdir = tmp_path / "work"
    if existing:  # a workdir whose store exists and whose cache was built before
        first = run(harmonica("preprocess", "--workdir", str(workdir), "--no-progress", *cli_args(tiny_corpus)),
                    cwd=tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        [cache_dir] = [d for d in (workdir / "cache").iterdir() if d.is_dir()]
        (cache_dir / "codec" / "codec.json").unlink()  # and was damaged since: must be rebuilt

    outs = _two_at_once(workdir, tiny_corpus, tmp_path)
    for rc, out, err in outs:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err
    prints = [re.search(r"fingerprint\s+(\w+)", out).group(1) for _, out, _ in outs]
    assert prints[0] == prints[1]
    if existing:
        assert sum("lacks codec/codec.json: rebuilding it" in err for _, _, err in outs) == 1
    caches = [d for d in (workdir / "cache").iterdir() if d.is_dir()]
    [complete] = caches  # one cache, no leftover build directory
    assert cache_mod.is_complete(complete)
    assert cache_mod.missing_parts(complete) == [] and (complete / "codec" / "codec.json").is_file()
    _, pre = runs_of(workdir, "preprocess")
    assert {r.info.status for r in pre} == {"FINISHED"} and len(pre) == (3 if existing else 2)

    trained = run(harmonica("train", "--model-type", "ar", "--workdir", str(workdir),
                            *cli_args(tiny_corpus, "ar", "training.ar.total_steps=2", "training.ar.val_every=2",
                                      "training.ar.ckpt_every=2", "training.ar.sample_every=2")), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "train_ar finished: 2 steps" in trained.stdout


def test_a_cache_missing_a_part_is_reported_and_rebuilt(tmp_path, tiny_corpus, caplog):
    cfg = tiny_cfg(tiny_corpus)
    first = build_token_cache(cfg, tmp_path, progress=False)
    (first.cache.directory / "tokens_train.safetensors").unlink()
    with pytest.raises(cache_mod.DamagedCacheError, match="lacks tokens_train.safetensors"):
        cache_mod.find_cache(cfg, tmp_path)
    again = build_token_cache(cfg, tmp_path, progress=False)
    assert not again.reused and "lacks tokens_train.safetensors: rebuilding it" in caplog.text
    assert cache_mod.missing_parts(again.cache.directory) == []
    assert cache_mod.find_cache(cfg, tmp_path)[0].directory == first.cache.directory
    assert build_token_cache(cfg, tmp_path, progress=False).reused
