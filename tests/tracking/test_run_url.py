"""The run's MLflow UI address: returned by the tracking layer for a tracking server (none for a local
store), printed by the stages at the start of each run."""

import urllib.request

import pytest

from harmonica.config import load_config
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import Tracker, run_ui_url
from tests.servers import free_port


def test_only_a_server_has_a_ui_address():
    assert run_ui_url("http://mlflow.lab:5000/", "3", "abc") == "http://mlflow.lab:5000/#/experiments/3/runs/abc"
    assert run_ui_url("https://x.org/mlflow", "0", "r") == "https://x.org/mlflow/#/experiments/0/runs/r"
    assert run_ui_url("sqlite:////tmp/mlflow.db", "1", "r") is None
    assert run_ui_url("file:///tmp/mlruns", "1", "r") is None


class _Run:
    def __init__(self, ui_url):
        self.run_id, self.ui_url = "abc123", ui_url


def test_announce_prints_the_address_on_stderr_and_nothing_without_one(capsys):
    announce_run(_Run("http://h:5000/#/experiments/1/runs/abc123"), "train_ar")
    announce_run(_Run(None), "preprocess")
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "train_ar run abc123: http://h:5000/#/experiments/1/runs/abc123\n"


def _cfg():
    return load_config("demo", ["tracking.system_metrics=false"])


def test_an_embedded_store_gives_no_address(tmp_path):
    with Tracker(_cfg(), tmp_path).run("preprocess", "r") as run:
        assert run.ui_url is None


@pytest.mark.slow
def test_a_server_run_gives_its_ui_address(tmp_path):
    from tests.reliability.test_tracking_server_loss import _start_server, _stop

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        tracker = Tracker(_cfg(), tmp_path / "work", uri)
        with tracker.run("preprocess", "r") as run:
            url = run.ui_url
            run_id = run.run_id
        assert url == f"{uri}/#/experiments/{tracker.experiment_id()}/runs/{run_id}"
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as page:  # the UI itself answers there
            assert page.status == 200 and b"<html" in page.read(2000).lower()
    finally:
        _stop(server)
