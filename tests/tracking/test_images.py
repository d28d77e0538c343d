"""Stepped images: `Run.log_image(key, image, step)` writes MLflow's images/ layout (the UI's image grid
with a step slider), `TrackingReader` lists them per key and step and downloads one, and a run whose
server is lost spools them and sends the same images after the sync."""

import json

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image
import pytest

from harmonica.tracking import names
from harmonica.tracking.adapter import Run
from harmonica.tracking.read import LoggedImage, TrackingReader, parse_image_path
from harmonica.tracking.spool import Spool


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(12, 20, 4), dtype=np.uint8)


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("t", artifact_location=str(tmp_path / "art"))


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"))


@pytest.mark.slow
def test_logged_images_have_mlflows_stepped_layout_and_read_back_by_key_and_step(tmp_path):
    uri, client, exp = _store(tmp_path)
    rid = client.create_run(exp).info.run_id
    run = Run(client, rid, async_logging=False)
    spec, heat = names.sample_spectrogram("LJ001-0011"), names.util_heatmap("ar")
    assert (spec, heat) == ("samples/LJ001-0011/spectrogram", "ar/util_heatmap")
    for step in (4, 8):
        run.log_image(spec, _image(step), step)
    run.log_image(heat, _image(1), 4)

    files = [a.path for a in client.list_artifacts(rid, "images")]
    assert len(files) == 6  # a full-resolution PNG and a compressed thumbnail per image
    assert sum(f.startswith("images/samples~LJ001-0011~spectrogram+step+8+timestamp+") and f.endswith(".png")
               for f in files) == 1
    assert client.get_run(rid).data.tags["mlflow.loggedImages"] == "True"
    assert run.image_steps() == {spec: [4, 8], heat: [4]}  # what a resumed run must not log again

    reader = TrackingReader(uri)
    assert [i.step for i in reader.logged_images(rid, spec)] == [4, 8]
    assert [(i.key, i.step) for i in reader.logged_images(rid)] == [(heat, 4), (spec, 4), (spec, 8)]
    latest = reader.latest_image(rid, spec)
    assert isinstance(latest, LoggedImage) and latest.step == 8 and latest.timestamp > 0
    assert reader.latest_image(rid, "samples/other/spectrogram") is None
    local = reader.download_image(rid, latest, tmp_path / "dl")
    np.testing.assert_array_equal(_pixels(local), _image(8))  # lossless


def test_image_paths_parse_and_keys_are_valid_mlflow_image_keys():
    got = parse_image_path("images/samples~u1~spectrogram+step+8+timestamp+1700000000000+"
                           "0f1e2d3c-4b5a-6978-8a9b-abcdefabcdef.png")
    assert got == LoggedImage("samples/u1/spectrogram", 8, 1700000000000,
                              "images/samples~u1~spectrogram+step+8+timestamp+1700000000000+"
                              "0f1e2d3c-4b5a-6978-8a9b-abcdefabcdef.png")
    old = parse_image_path("images/ar#util_heatmap%step%4%timestamp%17%0f1e2d3c-4b5a-6978-8a9b-abcdefabcdef.png")
    assert old is not None and (old.key, old.step) == ("ar/util_heatmap", 4)  # MLflow 2.x names
    for other in ("images/ar~util_heatmap+step+4+timestamp+17+0f1e2d3c-4b5a-6978-8a9b-abcdefabcdef+compressed.webp",
                  "samples/step_000008/u1.png", "images/notes.png"):
        assert parse_image_path(other) is None
    assert names.sample_spectrogram("p225/001 a+b") == "samples/p225_001_a_b/spectrogram"


def test_an_image_logged_during_an_outage_arrives_with_its_step_and_time_after_sync(tmp_path):
    uri, client, exp = _store(tmp_path)
    rid = client.create_run(exp).info.run_id
    spool = Spool(tmp_path / "spool")
    run = Run(client, rid, async_logging=False, spool=spool, uri="http://127.0.0.1:1")
    run.lost, run._next_probe = "server gone", float("inf")  # as after a failed request and a dead health probe
    run.log_image(names.util_heatmap("nar"), _image(3), 12)
    assert spool.pending and client.list_artifacts(rid) == []  # nothing reached the store, nothing was dropped
    [op] = [json.loads(line) for line in (spool.directory / "ops.jsonl").read_text().splitlines()]
    assert op["op"] == "image" and op["step"] == 12

    assert spool.replay(client, rid) == 1 and not spool.pending
    reader = TrackingReader(uri)
    [image] = reader.logged_images(rid)
    assert (image.key, image.step) == ("nar/util_heatmap", 12)
    assert image.timestamp == op["timestamp"]  # when it was logged, not when it was sent
    np.testing.assert_array_equal(_pixels(reader.download_image(rid, image, tmp_path / "dl")), _image(3))
