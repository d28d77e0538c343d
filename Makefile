# Two commands set up a fresh machine and run things:
#   make demo   -> the main job end to end on the embedded default (SQLite MLflow store, generated demo corpus)
#   make test   -> the test suite (what CI runs via .ci/run)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.harmonica-installed
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	# encodec's only extra requirement is torchaudio, which has no CPU build next to torch 2.13;
	# harmonica never needs it, so encodec goes in without its dependencies.
	$(PY) -m pip install -q --no-deps encodec==0.1.1
	touch $(STAMP)

.PHONY: install demo test test-fast
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/harmonica pipeline --project demo

test: $(STAMP)
	bash scripts/install_system_deps.sh
	# two workers, one test file each at a time (module fixtures stay shared): the suite is mostly
	# single-threaded subprocess work, so 2 cores halve it; the 25 slowest tests end the log
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow"
