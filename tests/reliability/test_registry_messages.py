"""Case 6 (registry): promote-again and rollback messages say what actually happened."""

from click.testing import CliRunner
import pytest

from harmonica.cli import main
from tests.registry.conftest import ckpts, mlflow_db_template, reg_cfg, reg_workdir, store  # noqa: F401
from tests.registry.fakes import with_metrics


@pytest.mark.slow
def test_promote_again_with_looser_gates_and_a_first_rollback(store, ckpts):  # noqa: F811
    runner = CliRunner()
    wd = ["--workdir", str(store.workdir)]
    weak = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.6))
    out = runner.invoke(main, ["promote", "--evaluation", weak, "gates.max_wer.threshold=0.1", *wd])
    assert out.exit_code == 0 and "candidate only (gates failed: max_wer)" in out.output, out.output
    out = runner.invoke(main, ["promote", "--evaluation", weak, "gates.max_wer.threshold=0.9", *wd])
    assert out.exit_code == 0, out.output
    assert "already registered for evaluation" in out.output and "(as candidate); nothing changed" in out.output
    assert "for information only" in out.output and "PASS max_wer" in out.output
    assert "there is no champion yet" in out.output and "registry rollback --to 1 --force" in out.output
    out = runner.invoke(main, ["registry", "rollback", "--to", "1", "--force", "--reason", "ok by ear", *wd])
    assert out.exit_code == 0, out.output
    assert "champion set to v1; there was no champion before" in out.output and "v-" not in out.output
