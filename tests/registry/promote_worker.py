"""A promotion in its own process, for race tests: waits for a start file, promotes, prints the decision.

python -m tests.registry.promote_worker --uri URI --workdir DIR --evaluation RUN_ID --corpus DIR --go FILE
The last stdout line is the decision as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--evaluation", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--go", required=True)
    ap.add_argument("--model-name", default="harmonica-tts")
    args = ap.parse_args()

    from harmonica.registry.promote import (
        promote,  # heavy imports before the start line
    )
    from tests.registry.fakes import TEST_GATES
    from tests.tiny import tiny_cfg

    cfg = tiny_cfg(Path(args.corpus), *TEST_GATES)
    Path(args.go + f".ready.{args.evaluation}").touch()
    deadline = time.monotonic() + 120
    while not Path(args.go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.01)
    started = time.time()
    decision = promote(args.evaluation, tracking_uri=args.uri, workdir=Path(args.workdir), cfg=cfg, smoke_test=False,
                       model_name=args.model_name)
    out = decision.as_dict()
    out["started"] = started
    out["finished"] = time.time()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
