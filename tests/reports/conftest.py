import pytest

from tests.reports.store import Store, shared_store


@pytest.fixture(scope="session")
def report_store(tmp_path_factory, tiny_corpus, tiny_cache_workdir, tiny_checkpoints) -> Store:
    return shared_store(tmp_path_factory, tiny_corpus, tiny_cache_workdir, tiny_checkpoints)
