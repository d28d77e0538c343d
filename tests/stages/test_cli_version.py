"""`harmonica --version` names the installed package version (what a bug report needs first)."""

from importlib.metadata import version

from click.testing import CliRunner

from harmonica.cli import main


def test_version_flag_prints_the_installed_version():
    out = CliRunner().invoke(main, ["--version"], prog_name="harmonica")
    assert out.exit_code == 0 and out.output.strip() == f"harmonica {version('harmonica')}"
