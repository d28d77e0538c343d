"""`mlflow run . -e train_nar -P project=demo` exactly as users type it — no `--env-manager` — on a clean copy
of the repository (git-tracked files only) and a PATH without conda: MLflow builds the virtualenv that
python_env.yaml describes (pyenv's Python 3.11.7 + pip) and the training runs in it.

MLflow caches that environment under MLFLOW_ENV_ROOT (default ~/.mlflow/envs), keyed by python_env.yaml's
content, and this test leaves it there as a user's run would: the first run on a machine builds it (7.5
minutes measured on the shared 2-core box), later runs reuse it (the whole test then took 91 s under heavy
load, the `mlflow run` itself 54 s, as long as the same run with `--env-manager local`)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.tiny import TINY, tiny_steps

CONDA_NAMES = ("conda", "mamba", "micromamba")


def _clean_copy(root: Path, dst: Path) -> Path:
    """The git-tracked files of `root` (as they are in the working tree), nothing else."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = root / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _path_without_conda() -> str:
    """PATH minus any directory holding a conda-like executable, with the mlflow CLI and pyenv on it."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.access(os.path.join(d, n), os.X_OK) for n in CONDA_NAMES)]
    dirs.insert(0, str(Path(sys.executable).parent))  # the `mlflow` CLI the user runs
    if shutil.which("pyenv", path=os.pathsep.join(dirs)) is None:  # the README: pyenv's bin on PATH
        pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
        dirs.append(str(Path(pyenv_root) / "bin"))
    return os.pathsep.join(dirs)


@pytest.mark.slow
def test_mlflow_run_train_nar_as_typed_builds_and_uses_the_project_virtualenv(root: Path, tmp_path, tiny_corpus):
    project = _clean_copy(root, tmp_path / "project")
    assert (project / "python_env.yaml").is_file() and not (project / ".venv").exists()
    work = tmp_path / "work"
    path = _path_without_conda()
    env = {k: v for k, v in os.environ.items() if k != "HARMONICA_ROOT"}  # projects/ from the copy, as typed
    env |= {"PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "MLFLOW_EXPERIMENT_NAME": "harmonica/demo"}
    assert shutil.which("conda", path=path) is None and shutil.which("pyenv", path=path) is not None

    # train_nar needs only the token cache: preprocess through the harmonica CLI
    data = [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={tiny_corpus}"]
    pre = subprocess.run([sys.executable, "-m", "harmonica.cli", "preprocess", "--workdir", str(work),
                          "--no-progress", *data], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert pre.returncode == 0, pre.stderr[-3000:]

    overrides = " ".join([*data, *tiny_steps("nar")])
    proc = subprocess.run(
        ["mlflow", "run", ".", "-e", "train_nar", "-P", "project=demo", "-P", f"workdir={work}",
         "-P", f"overrides={overrides}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    # MLflow ran the entry point inside its own virtualenv, not the interpreter running these tests
    command = re.search(r"=== Running command 'source (\S+)/bin/activate && (python -m harmonica\.cli [^']*)'",
                        proc.stderr)
    assert command, proc.stderr[-3000:]
    env_dir = Path(command.group(1))
    assert command.group(2).startswith("python -m harmonica.cli train --model-type nar --project demo")
    probe = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c",
         "import sys, torch, mlflow; print(sys.prefix, '%d.%d.%d' % sys.version_info[:3], torch.__version__, "
         "mlflow.__version__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    prefix, version, torch_version, mlflow_version = probe.stdout.split()
    assert Path(prefix).resolve() == env_dir.resolve() != Path(sys.prefix).resolve()
    assert (version, torch_version.split("+")[0], mlflow_version) == ("3.11.7", "2.13.0", "3.17.2")

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("harmonica/demo")
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.project.entryPoint` = 'train_nar'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.project.env"] == "virtualenv"
    assert tags["mlflow.project.entryPoint"] == "train_nar"
    assert tags["harmonica.stage"] == "train_nar"
    assert "val_ema/loss" in run.data.metrics
