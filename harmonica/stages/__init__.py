"""Stage runners: one function per CLI command / MLproject entry point.

A stage runner opens the MLflow run through the tracking adapter, calls the stage's pure work
function and logs what it returned. It is the only layer that knows both.
"""
