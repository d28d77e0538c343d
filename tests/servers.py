"""Throwaway servers on loopback for tests: a PostgreSQL cluster and an MLflow tracking server.

Fixtures (import them into a conftest or test module: `from tests.servers import postgres_url, mlflow_server`):

* ``postgres_url`` (module scope): a SQLAlchemy URL ``postgresql+psycopg2://postgres@127.0.0.1:<port>/harmonica``
  (the driver is explicit: SQLAlchemy 2.1 defaults to psycopg 3, which is not installed; MLflow
  and Optuna RDB storages both take this URL; `libpq_url(url)` gives the plain form). A fresh cluster
  is initdb'ed in a temp dir (as the ``postgres`` OS user when run as root: PostgreSQL refuses to
  run as root), started with ``pg_ctl`` listening on 127.0.0.1 only (trust auth, unix socket in
  the temp dir), a database is created; at teardown the server is stopped (fast mode) and the
  directory removed. Skipped with a clear reason when no ``/usr/lib/postgresql/*/bin/initdb`` (or
  ``initdb`` on PATH) exists, when we are root without a ``postgres`` user, or psycopg2 is missing.
  ``new_database(url, name)`` creates another database on the same cluster.
* ``postgres_db`` (function scope): a fresh empty database per test on that cluster (e.g. an
  Optuna storage that must start empty).
* ``mlflow_server`` (module scope): starts ``mlflow server`` with the PostgreSQL backend store
  (``--backend-store-uri`` = a database of ``postgres_url``), artifacts proxied from a temp dir
  (``--artifacts-destination``), ``--host 127.0.0.1 --port <free> --workers 1``, without the job
  runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: its huey consumers are not needed); waits up to 90 s
  for ``/health``; yields ``http://127.0.0.1:<port>``; terminates the process group at teardown
  (kill after 8 s). The server's log is in ``<tmp>/mlflow-server.log`` (tail shown on failure).

``postgres_url`` and ``mlflow_server`` are module-scoped because startup costs seconds; tests
sharing them must use their own experiment / model names (or their own database: ``postgres_db``).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/bin/", path)
        return int(match.group(1)) if match else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user via runuser."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *cmd]
    return cmd


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kw)


def libpq_url(url: str) -> str:
    """`postgresql+psycopg2://...` -> `postgresql://...` (for psycopg2.connect / psql)."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def new_database(url: str, name: str) -> str:
    """CREATE DATABASE name on the cluster of `url`; -> its URL (same driver prefix)."""
    import psycopg2

    conn = psycopg2.connect(libpq_url(url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


class PostgresCluster:
    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.log = root / "postgres.log"
        self.port = free_port()

    def start(self) -> str:
        self.sock.mkdir(parents=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            for path in (self.root, self.sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        init = _run(_as_pg_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust",
                                 "-E", "UTF8", "--no-sync"]))
        if init.returncode:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        start = _run(_as_pg_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                                  "-w", "-t", "60", "start"]))
        if start.returncode:
            raise RuntimeError(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{self._log_tail()}")
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.data.exists():
            _run(_as_pg_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]))


def _skip_reason() -> str | None:
    if find_pg_bin() is None:
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="harmonica-pg-"))
    cluster = PostgresCluster(find_pg_bin(), root)  # type: ignore[arg-type]
    try:
        base = cluster.start()
        yield new_database(base, "harmonica")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """A fresh, empty database per test on the module's cluster (same URL form as postgres_url)."""
    import uuid

    return new_database(postgres_url, f"t_{uuid.uuid4().hex[:12]}")


def _wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout:g} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop_process_group(proc: subprocess.Popen, grace: float = 8.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(postgres_url: str) -> Iterator[str]:
    backend = new_database(postgres_url, "mlflow")
    root = Path(tempfile.mkdtemp(prefix="harmonica-mlflow-server-"))
    artifacts = root / "artifacts"
    artifacts.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "mlflow-server.log"
    # no job runner: it forks seven huey consumers (for GenAI jobs) that slow start-up and shutdown
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        _wait_health(url, proc, log)
        yield url
    finally:
        stop_process_group(proc)
        shutil.rmtree(root, ignore_errors=True)
