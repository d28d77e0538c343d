"""A tiny training run into a real MLflow store: the sample spectrograms and the utilisation heatmap are
stepped images (MLflow's images/ layout, read back with MlflowClient) at the sample / validation steps,
and the run report embeds the last heatmap."""

import re
from collections import defaultdict

import torch
from mlflow.tracking import MlflowClient
import pytest

from harmonica.codec import load_codec
from harmonica.data.cache import find_cache
from harmonica.reports import build_report
from harmonica.tracking.adapter import Run
from harmonica.training.trainer import Trainer
from tests.tiny import tiny_cfg, tiny_steps

IMAGE = re.compile(r"^images/(?P<key>[^+]+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")


@pytest.mark.slow
def test_training_logs_spectrograms_and_the_heatmap_with_their_steps(tiny_corpus, tiny_cache_workdir, tmp_path):
    kind = "nar"  # its samples always have audio (an AR sample that stops at once has neither wav nor picture)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "art"))
    rid = client.create_run(exp, tags={"harmonica.stage": f"train_{kind}", "harmonica.model_kind": kind}).info.run_id
    cfg = tiny_cfg(tiny_corpus, *tiny_steps(kind, sample_every=4))
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    trainer = Trainer(cfg, kind, cache, tmp_path / "ckpt", Run(client, rid, async_logging=False),
                      device=torch.device("cpu"), codec=load_codec(cfg.codec, cache.codec_dir))
    trainer.fit()
    client.set_terminated(rid)

    steps: dict[str, list[int]] = defaultdict(list)
    for a in client.list_artifacts(rid, "images"):
        if m := IMAGE.match(a.path):
            steps[m["key"].replace("~", "/")].append(int(m["step"]))
    validations = sorted(m.step for m in client.get_metric_history(rid, "val/loss"))
    assert validations == [4, 8]
    assert sorted(steps[f"{kind}/util_heatmap"]) == validations
    spectrograms = sorted(k for k in steps if k.endswith("/spectrogram"))
    assert spectrograms and all(sorted(steps[k]) == validations for k in spectrograms)  # sample_every = val_every
    assert all(steps[k.replace("/spectrogram", "/reference")] == [0] for k in spectrograms)
    assert not [a.path for a in client.list_artifacts(rid, "samples/step_000008") if a.path.endswith(".png")]
    assert [h["step"] for h in trainer.state.util_history] == validations

    rep = build_report(rid, tracking_uri=uri, out_dir=tmp_path / "report", log_to_run=False)
    md, html = rep.markdown.read_text(), rep.html.read_text()
    assert "### Per-codebook utilisation at each validation" in md
    assert re.search(rf"\(\.\./images/{kind}~util_heatmap\+step\+8\+timestamp\+\d+\+[0-9a-f-]+\.png\)", md)
    assert re.search(rf'<figure class="picture"><img alt="images/{kind}~util_heatmap\+step\+8[^"]*" '
                     r'src="data:image/png;base64,', html)
    assert html.count('<img class="spec" alt="images/samples~') == len(spectrograms)  # the samples' spectrograms
