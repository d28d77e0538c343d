"""The MLflow UI as users see it: `mlflow server` on loopback over a store of real tiny runs, driven
by headless Debian Chromium through Selenium (Debian's chromedriver, nothing downloaded).

Checks: the experiment page lists the runs; a training run's page lists per-codebook metrics and its
"Model metrics" tab charts them; the registered model page shows both aliases; an audio artifact of a
training run and of an evaluate run opens in MLflow's audio player (and actually loads); the
`harmonica report` of the run is listed among its artifacts. Screenshots of every page are kept under
`test-outputs/ui/` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harmonica.reports import SECTIONS, build_report
from tests.reports.store import Store, shared_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MODEL = "harmonica-tts"
ALIASES = ("candidate", "champion")
OUT = Path(__file__).resolve().parents[2] / "test-outputs" / "ui"
WAIT = 45  # seconds for any one page state; the UI is a large single-page app on 2 cores

# every audio/video element, shadow roots included (MLflow's player lives in one)
MEDIA = """
const out = [];
const walk = (root) => root.querySelectorAll('*').forEach(el => {
  if (el.tagName === 'AUDIO' || el.tagName === 'VIDEO') out.push(el);
  if (el.shadowRoot) walk(el.shadowRoot);
});
walk(document);
return out.map(a => ({tag: a.tagName, src: (a.currentSrc || a.src || '').slice(0, 200), ready: a.readyState,
                      duration: isFinite(a.duration) ? a.duration : -1, controls: a.controls}));
"""


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return (f"{' and '.join(missing)} not installed: run scripts/install_system_deps.sh "
                "(Debian packages chromium, chromium-driver)")
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_browser_missing() is not None,
                                                   reason=_browser_missing() or "")]


# ------------------------------------------------------------------------------ store and server


@pytest.fixture(scope="module")
def ui_store(tmp_path_factory, tiny_corpus, tiny_cache_workdir, tiny_checkpoints) -> Store:
    """Real tiny runs (tests.reports.store) + a registered model version with both aliases + a run report."""
    from mlflow.tracking import MlflowClient

    store = shared_store(tmp_path_factory, tiny_corpus, tiny_cache_workdir, tiny_checkpoints)  # as tests/reports
    client = MlflowClient(store.tracking_uri)
    client.log_text(store.evaluate, "harmonica tiny TTS model (UI test placeholder)\n", "model/README.txt")
    if client.search_registered_models(f"name = '{MODEL}'"):
        client.delete_registered_model(MODEL)
    client.create_registered_model(MODEL, description="harmonica TTS (UI test)")
    mv = client.create_model_version(MODEL, source=f"runs:/{store.evaluate}/model", run_id=store.evaluate)
    for alias in ALIASES:
        client.set_registered_model_alias(MODEL, alias, mv.version)
    # the run report, so the UI shows it among the run's artifacts
    build_report(store.nar_b, tracking_uri=store.tracking_uri, out_dir=store.workdir / "report")
    return store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ui_store: Store) -> Iterator[str]:
    store = ui_store
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    db = store.tracking_uri  # sqlite:////abs/path/mlflow.db
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
           "--default-artifact-root", str(store.workdir / "mlartifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (OUT / "mlflow-server.log").open("w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}; see {OUT / 'mlflow-server.log'}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 90 s; see {OUT / 'mlflow-server.log'}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


# ------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # the closed network refuses anything but loopback: no first-run, sync, update or QUIC traffic
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1600,1000", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # the SPA replaced the body between lookup and read
        return ""


def _wait(driver: Any, what: str, cond: Callable[[Any], Any], timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(cond)
    except TimeoutException:
        name = "FAILED-" + "".join(c if c.isalnum() else "_" for c in what)[:60] + ".png"
        driver.save_screenshot(str(OUT / name))
        pytest.fail(f"UI: timed out after {timeout} s waiting for {what} at {driver.current_url}; "
                    f"screenshot {OUT / name}; page text:\n{_text(driver)[:2000]}")


def _wait_text(driver: Any, *needles: str, timeout: float = WAIT) -> str:
    _wait(driver, " + ".join(needles), lambda d: all(n in _text(d) for n in needles), timeout)
    return _text(driver)


def _click_text(driver: Any, label: str, *, exact: bool = True, scroll_only: bool = False) -> None:
    """Click (or only scroll to the top of the view) the innermost visible element showing `label`."""
    from selenium.webdriver.common.by import By

    xpath = (f"//*[normalize-space(text())='{label}']" if exact else f"//*[contains(text(), '{label}')]")

    def find(d: Any) -> Any:
        els = [e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed()]
        return els[-1] if els else False

    from selenium.common.exceptions import ElementClickInterceptedException

    el = _wait(driver, f"'{label}' to click", find)
    if scroll_only:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", el)
        return
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    try:
        el.click()  # a real mouse click (tabs react to mousedown, not to a synthetic click)
    except ElementClickInterceptedException:
        # an onboarding popover lies over it: a user would dismiss it; a DOM click does the same job
        driver.execute_script("arguments[0].click();", el)


def _type_into(driver: Any, placeholder: str, text: str) -> None:
    """Type into the visible input whose placeholder is exactly `placeholder`."""
    from selenium.webdriver.common.by import By

    box = _wait(driver, f"the '{placeholder}' box", lambda d: next(
        (e for e in d.find_elements(By.CSS_SELECTOR, f"input[placeholder='{placeholder}']") if e.is_displayed()),
        False))
    box.click()
    box.send_keys(text)


def _close_assistant(driver: Any) -> None:
    """Close MLflow's assistant side panel (best effort: it only narrows the screenshots)."""
    driver.execute_script("""
        for (const b of document.querySelectorAll('button[aria-label="Close"]')) {
          let p = b; for (let i = 0; i < 6 && p; i++) p = p.parentElement;
          if (p && p.innerText && p.innerText.includes('MLflow Assistant')) { b.click(); return; }
        }""")


def _shot(driver: Any, name: str) -> Path:
    time.sleep(1.0)  # let charts and fonts settle
    path = OUT / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"screenshot {path} looks empty"
    return path


def _audio_loaded(driver: Any) -> list[dict[str, Any]] | bool:
    media = driver.execute_script(MEDIA)
    loaded = [m for m in media if m["tag"] == "AUDIO" and m["ready"] >= 1 and m["duration"] > 0]
    return loaded or False


# ------------------------------------------------------------------------------ the test


def test_mlflow_ui_shows_runs_metrics_registry_and_audio(ui_store, server, browser):
    store = ui_store
    d = browser
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(store.tracking_uri)
    names = {rid: client.get_run(rid).info.run_name for rid in (store.nar_a, store.nar_b, store.evaluate)}
    exp = store.experiment_id
    shots: list[Path] = []

    # 1. experiment page: MLflow 3 opens an experiment without an experiment kind on its GenAI
    #    overview; a user switches to "Model training" to see the runs table
    d.get(f"{server}/#/experiments/{exp}")
    _wait(d, "the experiment page", lambda dr: "harmonica/demo" in _text(dr))
    if not all(n in _text(d) for n in names.values()):
        _click_text(d, "Model training")
    _wait_text(d, *names.values())
    _close_assistant(d)
    shots.append(_shot(d, "01_experiment_runs.png"))

    # 2. run page of the collapsing NAR run: per-codebook metrics in its metrics table (searched for
    #    "util_pred" as a user would: the table holds ~70 metrics) ...
    d.get(f"{server}/#/experiments/{exp}/runs/{store.nar_b}")
    _wait_text(d, names[store.nar_b], "Metrics (")
    _type_into(d, "Search metrics", "util_pred")
    _wait_text(d, "nar/cb1/util_pred", "nar/cb2/util_pred", "val/cb1/util_pred")
    shots.append(_shot(d, "02_run_overview_per_codebook_metrics.png"))

    # ... and charted in its "Model metrics" tab (filtered to the per-codebook utilisation)
    _click_text(d, "Model metrics")
    _type_into(d, "Search metric charts", "util_pred")
    _wait_text(d, "(nar/cb1/util_pred)")
    # charts render when scrolled into view: bring the second codebook's section up
    _click_text(d, "nar/cb2", scroll_only=True)
    _wait_text(d, "(nar/cb2/util_pred)")
    _click_text(d, "nar/cb1", scroll_only=True)
    assert d.current_url.endswith("/model-metrics")
    shots.append(_shot(d, "03_run_model_metrics_per_codebook.png"))

    # 3. the registered model with both aliases
    d.get(f"{server}/#/models/{MODEL}")
    text = _wait_text(d, MODEL, "Version 1", *ALIASES)
    shots.append(_shot(d, "04_registered_model_aliases.png"))

    # 4. an audio artifact of the training run, reached by clicks: Artifacts tab > samples > step > file
    d.get(f"{server}/#/experiments/{exp}/runs/{store.nar_b}")
    _wait_text(d, names[store.nar_b])
    _click_text(d, "Artifacts")
    _wait_text(d, "samples", "report", "collapse_events.jsonl")  # the harmonica report is logged too
    _click_text(d, "samples")
    _click_text(d, "step_000008")
    sample = sorted(a.path for a in client.list_artifacts(store.nar_b, "samples/step_000008")
                    if a.path.endswith(".wav"))[0]
    _click_text(d, Path(sample).name)
    _wait_text(d, sample)
    media = _wait(d, f"the audio player of {sample} to load", _audio_loaded)
    assert media[0]["controls"] and media[0]["duration"] > 0.1
    shots.append(_shot(d, "05_artifact_training_sample_audio.png"))

    # 5. an evaluate run's generated audio, by its artifact URL
    wav = sorted(a.path for a in client.list_artifacts(store.evaluate, "audio"))[0]
    d.get(f"{server}/#/experiments/{exp}/runs/{store.evaluate}/artifacts/{wav}")
    _wait_text(d, names[store.evaluate], wav)
    _wait(d, f"the audio player of {wav} to load", _audio_loaded)
    shots.append(_shot(d, "06_artifact_evaluate_audio.png"))

    # 6. the harmonica run report among the run's artifacts, rendered by MLflow's HTML viewer
    d.get(f"{server}/#/experiments/{exp}/runs/{store.nar_b}")
    _wait_text(d, names[store.nar_b])
    _click_text(d, "Artifacts")
    _click_text(d, "report")
    _click_text(d, "report.html")
    _wait_text(d, "report/report.html")
    frame = _wait(d, "the report's iframe", lambda dr: next(iter(dr.find_elements(By.TAG_NAME, "iframe")), False))
    d.switch_to.frame(frame)
    try:
        text = _wait_text(d, f"Run report: {names[store.nar_b]}", "Failure reasons")
        assert all(title in text for title in SECTIONS)
        _wait(d, "the report's plotly figures",
              lambda dr: len(dr.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 4)
        d.execute_script("document.getElementById('key-curves').scrollIntoView()")
    finally:
        d.switch_to.default_content()
    shots.append(_shot(d, "07_artifact_run_report.png"))

    assert [p.name for p in shots] == sorted(p.name for p in shots)
    print("\nscreenshots:\n  " + "\n  ".join(str(p) for p in shots))
