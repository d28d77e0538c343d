"""Two processes promoting at the same instant (SQLite store): one champion, the better one, and
decisions that agree with the final state; the same candidate twice registers once."""

from __future__ import annotations
import pytest

from tests.registry.fakes import with_metrics
from tests.registry.race import race

NAME = "harmonica-tts"


def check_two_candidates(client, decisions: list[dict], better_eval: str, name: str = NAME) -> None:
    by_eval = {d["evaluation_run_id"]: d for d in decisions}
    better = by_eval[better_eval]
    [worse] = [d for e, d in by_eval.items() if e != better_eval]
    versions = list(client.search_model_versions(f"name='{name}'"))
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    rm = client.get_registered_model(name)
    assert str(rm.aliases["champion"]) == better["version"]
    assert better["champion_moved"] and better["registered_new"] and worse["registered_new"]
    if worse["champion_moved"]:
        # the worse one won the race to the lock and was champion until the better one replaced it
        assert better["previous_champion"] == worse["version"]
        assert int(worse["version"]) < int(better["version"])
    else:
        assert worse["decision"] == "candidate"
        reasons = "\n".join(worse["reasons"])
        assert f"vs champion v{better['version']}" in reasons and "not better" in reasons
        assert int(better["version"]) < int(worse["version"])
    # the champion-move critical sections did not interleave
    tags = {str(v.version): v.tags for v in versions}
    assert tags[better["version"]]["harmonica.decision"] == "champion"
    assert not client.search_registered_models(f"name='{name}.promotion-lock'")


@pytest.mark.slow
def test_two_processes_two_candidates_one_champion(store, ckpts, tiny_corpus, tmp_path):
    good = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.25))
    best = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.10))
    decisions = race(store.tracking_uri, store.workdir, tiny_corpus, [good, best], tmp_path)
    check_two_candidates(store.client, decisions, best)


@pytest.mark.slow
def test_two_processes_same_candidate_register_once(store, ckpts, tiny_corpus, tmp_path):
    eid = store.candidate(ckpts)
    decisions = race(store.tracking_uri, store.workdir, tiny_corpus, [eid, eid], tmp_path)
    versions = list(store.client.search_model_versions(f"name='{NAME}'"))
    assert len(versions) == 1
    assert sorted(d["registered_new"] for d in decisions) == [False, True]
    assert {d["version"] for d in decisions} == {str(versions[0].version)}
    [twin] = [d for d in decisions if not d["registered_new"]]
    assert twin["decision"] in ("existing", "duplicate") and not twin["champion_moved"]
