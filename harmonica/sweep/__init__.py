"""Optuna sweeps over the training knobs, tracked in MLflow (`harmonica sweep`).

space.py   the search-space file schema and its validation against the project config
study.py   storage, locking, the trial budget, sampler/pruner, one trial = one child training run
report.py  trials table, study plots, best trial, the best trial's ready project file
The stage runner is harmonica/stages/sweep.py. (Nothing is imported here: optuna and mlflow load lazily.)
"""
