"""The environment files `mlflow run` and conda users read: valid, and the same dependencies as pyproject.toml."""

import tomllib

import pytest
import yaml
from mlflow.projects._project_spec import load_project
from mlflow.utils.environment import _PythonEnv
from packaging.requirements import InvalidRequirement, Requirement

from harmonica import cli
from tests.conftest import ROOT

DEPS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_mlproject_runs_in_the_python_env_and_every_entry_point_is_a_harmonica_command():
    project = load_project(str(ROOT))
    assert project.env_type == "python_env"
    assert project.env_config_path == str(ROOT / "python_env.yaml")
    for name, entry in project._entry_points.items():
        prefix = "python -m harmonica.cli "
        assert entry.command.startswith(prefix), name
        assert entry.command[len(prefix):].split()[0] in cli.main.commands, name


def test_python_env_pins_python_and_lists_pyproject_dependencies():
    env = _PythonEnv.from_yaml(str(ROOT / "python_env.yaml"))
    assert env.python == "3.11.7"
    assert env.dependencies == DEPS
    for dep in env.dependencies:
        Requirement(dep)


def test_conda_yaml_is_valid_and_mirrors_pyproject():
    spec = yaml.safe_load((ROOT / "conda.yaml").read_text())
    conda_deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert "python=3.11.7" in conda_deps and "pip" in conda_deps
    [pip] = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    assert pip == [*DEPS, "-e ."]
    for dep in pip[:-1]:
        Requirement(dep)  # a pip requirements line: no per-package options such as --no-deps


def test_a_requirement_with_options_is_rejected():  # what the check above relies on
    with pytest.raises(InvalidRequirement):
        Requirement("encodec==0.1.1 --no-deps")
