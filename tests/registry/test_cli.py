"""`harmonica promote` / `harmonica registry ...` through click."""

from __future__ import annotations

from click.testing import CliRunner
import pytest

from harmonica.cli import main
from tests.registry.fakes import TEST_GATES, with_metrics



def test_the_commands_exist():  # a lost command fails here instead of skipping the tests below
    assert "promote" in main.commands and "registry" in main.commands
    assert {"list", "show", "rollback"} <= set(main.commands["registry"].commands)


@pytest.mark.slow
def test_cli_promote_list_show_rollback(store, ckpts):
    runner = CliRunner()
    wd = ["--workdir", str(store.workdir)]
    gates = list(TEST_GATES)  # explicit: the evaluate run's project (demo) has gates a test must not rely on
    first = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.3))
    out = runner.invoke(main, ["promote", "--evaluation", first, *gates, *wd])
    assert out.exit_code == 0, out.output
    assert "harmonica-tts v1: CHAMPION" in out.output and "PASS max_wer" in out.output
    better = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.1))
    assert runner.invoke(main, ["promote", "--evaluation", better, *gates, *wd]).exit_code == 0
    collapsed = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.05), nar_events=[{"step": 990}])
    out = runner.invoke(main, ["promote", "--evaluation", collapsed, *gates, *wd])
    assert out.exit_code == 0 and "candidate only (gates failed: collapse_free_tail)" in out.output
    dirty = store.candidate(ckpts, train_dirty="true")
    out = runner.invoke(main, ["promote", "--evaluation", dirty, *gates, *wd])
    assert out.exit_code == 1 and "REFUSED" in out.output and "--allow-dirty" in out.output
    out = runner.invoke(main, ["promote", "--evaluation", dirty, "--allow-dirty-if", "true",
                               *gates, "gates.max_wer.threshold=0.1", *wd])
    assert out.exit_code == 0 and "FAIL max_wer: eval/wer 0.2 > 0.1 (absolute); MISSED BY 0.1" in out.output
    # the 8 characters the logs print name the same evaluation: the same candidate, nothing to do
    out = runner.invoke(main, ["promote", "--evaluation", first[:8], *gates, *wd])
    assert out.exit_code == 0 and "nothing changed" in out.output and first in out.output
    out = runner.invoke(main, ["registry", "list", *wd])
    rows = {line.split()[0]: line.split()[1:3] for line in out.output.splitlines()[1:]}
    assert out.exit_code == 0 and rows["2"] == ["champion", "champion"] and rows["4"][0] == "candidate"
    out = runner.invoke(main, ["registry", "show", "champion", *wd])
    assert out.exit_code == 0 and "harmonica-tts v2" in out.output and "harmonica.git_commit" in out.output
    out = runner.invoke(main, ["registry", "rollback", "--to", "3", "--reason", "x", *wd])
    assert out.exit_code == 1 and "--force" in out.output
    out = runner.invoke(main, ["registry", "rollback", "--to", "1", "--reason", "listening test", *wd])
    assert out.exit_code == 0 and "champion v2 -> v1" in out.output
