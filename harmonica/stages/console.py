"""What the stages say on the terminal while they work (the CLI prints the summaries at the end)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def announce_run(run: Any, label: str) -> None:
    """The run's MLflow UI address, at its start, when the store is a tracking server (stderr; above
    any open progress bar)."""
    url = getattr(run, "ui_url", None)
    if url:
        tqdm.write(f"{label} run {run.run_id}: {url}", file=sys.stderr)
        sys.stderr.flush()
