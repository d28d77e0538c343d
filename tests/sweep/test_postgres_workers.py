"""Two sweep workers on one PostgreSQL-backed study: N trials in total, none duplicated or lost, each
with exactly one MLflow child run under the one parent run.

The test starts a throwaway PostgreSQL cluster (Debian's postgresql package: initdb + pg_ctl as the
`postgres` user, loopback only, trust auth, sockets in a tmp dir) and removes it afterwards.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep.conftest import write_space

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 4


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*cmd: str) -> list[str]:
    if os.geteuid() != 0:
        return list(cmd)  # already an unprivileged user: run as ourselves
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *cmd] if runuser else ["su", "postgres", "-c", " ".join(cmd)]


@pytest.fixture
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is missing: it is a harmonica dependency (pip install psycopg2-binary)")
    base = Path(tempfile.mkdtemp(prefix="harmonica-pg-"))  # not under pytest's root-only tmp dirs
    data, sock, logfile = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run(_as_postgres(*cmd), check=True, capture_output=True, text=True, timeout=120)
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


WORKER = """
import json, sys, time
from pathlib import Path
from harmonica.stages.sweep import run_sweep
from tests.tiny import tiny_cfg, tiny_steps

corpus, workdir, space, url, best_dir, barrier, me = sys.argv[1:8]
cfg = tiny_cfg(Path(corpus), *tiny_steps("nar"))
Path(barrier, me).touch()
deadline = time.time() + 120  # both workers start their sweep together
while len(list(Path(barrier).iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.05)
out = run_sweep(cfg, Path(workdir), Path(space), n_trials=N_TRIALS, study_name="pg-study", storage=url,
                best_config_dir=Path(best_dir))
print("RESULT " + json.dumps({"parent": out.parent_run_id, "trials": [[r.number, r.state, r.run_id] for r in out.trials]}))
""".replace("N_TRIALS", str(N_TRIALS))


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, postgres_url, tiny_corpus, sweep_workdir):
    import optuna

    space = write_space(tmp_path)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tiny_corpus), str(sweep_workdir), str(space), postgres_url,
                          str(tmp_path / "projects"), str(barrier), f"w{i}"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    results = [json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
               for out, _ in outputs]

    # Optuna: exactly N finished trials, numbered 0..N-1, split between the two workers without overlap
    study = optuna.load_study(study_name="pg-study", storage=postgres_url)
    assert len(study.trials) == N_TRIALS
    assert sorted(t.number for t in study.trials) == list(range(N_TRIALS))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    ran = [[t[0] for t in r["trials"]] for r in results]
    assert all(ran), f"each worker should have run trials: {ran}"
    assert sorted(ran[0] + ran[1]) == list(range(N_TRIALS))
    assert len({t.user_attrs["harmonica.worker"] for t in study.trials}) == 2
    assert optuna.study.get_all_study_names(postgres_url) == ["pg-study"]  # the lock study is gone

    # MLflow: one parent run for the study, exactly one child run per trial under it
    assert results[0]["parent"] == results[1]["parent"]
    parent_id = results[0]["parent"]
    client = MlflowClient(f"sqlite:///{sweep_workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harmonica/demo")
    parents = client.search_runs([exp.experiment_id], "tags.`harmonica.sweep_study` = 'pg-study'")
    assert [r.info.run_id for r in parents] == [parent_id]
    trial_runs = client.search_runs([exp.experiment_id], "tags.`optuna.study` = 'pg-study' and tags.`harmonica.stage` = 'train_nar'")
    assert len(trial_runs) == N_TRIALS
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == list(range(N_TRIALS))
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in trial_runs)
    by_number = {t.number: t for t in study.trials}
    for r in trial_runs:
        trial = by_number[int(r.data.tags["optuna.trial"])]
        assert trial.user_attrs["harmonica.mlflow_run_id"] == r.info.run_id
        assert r.data.tags["optuna.state"] == trial.state.name
        assert r.info.status == ("KILLED" if trial.state.name == "PRUNED" else "FINISHED")
    deadline = time.time() + 5
    while client.get_run(parent_id).info.status != "FINISHED" and time.time() < deadline:
        time.sleep(0.2)
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert client.get_run(parent_id).data.metrics["sweep/n_trials"] == N_TRIALS
