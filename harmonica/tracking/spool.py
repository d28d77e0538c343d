"""A local spool for what could not reach a lost tracking server, replayed when it is back.

`<dir>/ops.jsonl` holds one operation a line, in logging order: metrics (key, value, timestamp,
step), params, tags, artifacts (copied into `<dir>/files/<n>/` at spool time, hard-linked where the
filesystem allows), stepped images (a PNG under `<dir>/files/<n>/` with its key, step and timestamp)
checkpoints to publish as LoggedModels (their local directory) and the run's end status. `replay` sends them in order through an MlflowClient
and removes what was sent, so an interrupted replay resumes where it stopped and nothing is sent twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking.multimedia import convert_to_pil_image
from mlflow.tracking import MlflowClient

from harmonica.config.schema import TrackingConfig
from harmonica.tracking.checkpoints import CheckpointModels, delete_models, publish_checkpoint
from harmonica.tracking.names import CKPT_META

log = logging.getLogger(__name__)

OPS = "ops.jsonl"
BATCH = 1000


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def pending(self) -> bool:
        f = self.directory / OPS
        return f.is_file() and f.stat().st_size > 0

    def _files(self) -> Path:
        n = sum(1 for _ in (self.directory / "files").glob("*")) if (self.directory / "files").is_dir() else 0
        dest = self.directory / "files" / str(n)
        dest.mkdir(parents=True)
        return dest

    def _append(self, op: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / OPS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(op) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def metrics(self, items: list[Metric]) -> None:
        rows = [[m.key, m.value, m.timestamp, m.step, m.model_id, m.dataset_name, m.dataset_digest] for m in items]
        self._append({"op": "metrics", "items": rows})

    def checkpoint(self, directory: Path, *, kind: str, step: int, params: dict[str, Any],
                   tags: dict[str, str]) -> None:
        """A checkpoint to publish as LoggedModels once the server is back (if still on disk then)."""
        self._append({"op": "checkpoint", "directory": str(Path(directory).resolve()), "kind": kind, "step": step,
                      "params": {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)
                                 for k, v in params.items()}, "tags": dict(tags)})

    def prune(self, keep_steps: set[int]) -> None:
        self._append({"op": "prune", "keep_steps": sorted(keep_steps)})

    def params(self, params: dict[str, str]) -> None:
        self._append({"op": "params", "items": params})

    def tags(self, tags: dict[str, str]) -> None:
        self._append({"op": "tags", "items": tags})

    def artifact(self, source: Path, artifact_path: str | None, text: str | None = None) -> None:
        dest = self._files()
        if text is not None:  # log_text: source is the artifact file name
            (dest / Path(source).name).write_text(text, encoding="utf-8")
            local = dest / Path(source).name
        elif Path(source).is_dir():
            shutil.copytree(source, dest / "d", copy_function=_link_or_copy)
            local = dest / "d"
        else:
            local = dest / Path(source).name
            _link_or_copy(str(source), str(local))
        self._append({"op": "artifact", "local": str(local.relative_to(self.directory)), "path": artifact_path,
                      "dir": local.is_dir()})

    def image(self, key: str, image: Any, step: int, timestamp: int) -> None:
        """A `log_image(key=, step=)` image (numpy array or PIL image), kept as a lossless PNG."""
        local = self._files() / "image.png"
        (convert_to_pil_image(image) if isinstance(image, np.ndarray) else image).save(local)
        self._append({"op": "image", "local": str(local.relative_to(self.directory)), "key": key, "step": step,
                      "timestamp": timestamp})

    def end(self, status: str) -> None:
        self._append({"op": "end", "status": status})

    def replay(self, client: MlflowClient, run_id: str) -> int:
        """Send every spooled operation in order; returns how many were sent. Raises (and keeps the
        unsent rest) when the server fails again."""
        f = self.directory / OPS
        if not f.is_file():
            return 0
        ops = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        sent = 0
        try:
            for op in ops:
                _send(client, run_id, self.directory, op)
                sent += 1
        finally:
            rest = ops[sent:]
            tmp = f.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(o) + "\n" for o in rest), encoding="utf-8")
            os.replace(tmp, f)
            if not rest:
                shutil.rmtree(self.directory / "files", ignore_errors=True)
        return sent


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _send(client: MlflowClient, run_id: str, root: Path, op: dict[str, Any]) -> None:
    kind = op["op"]
    if kind == "metrics":
        items = [Metric(k, v, ts, step, *linked) for k, v, ts, step, *linked in op["items"]]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, metrics=items[i : i + BATCH], synchronous=True)
    elif kind == "params":
        existing = client.get_run(run_id).data.params
        params = [Param(k, v) for k, v in op["items"].items() if k not in existing]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
    elif kind == "tags":
        tags = [RunTag(k, v) for k, v in op["items"].items()]
        for i in range(0, len(tags), 100):
            client.log_batch(run_id, tags=tags[i : i + 100])
    elif kind == "artifact":
        local = root / op["local"]
        if op["dir"]:
            client.log_artifacts(run_id, str(local), op["path"])
        else:
            client.log_artifact(run_id, str(local), op["path"])
    elif kind == "image":
        from PIL import Image

        with Image.open(root / op["local"]) as img:
            client.log_image(run_id, img.copy(), key=op["key"], step=op["step"], timestamp=op["timestamp"],
                             synchronous=True)
    elif kind == "checkpoint":
        directory = Path(op["directory"])
        if not (directory / CKPT_META).is_file():  # pruned by keep_last meanwhile: not kept, not published
            log.info("checkpoint %s is no longer on disk; not published as a model", directory)
            return
        publish_checkpoint(client, run_id, directory, kind=op["kind"], step=op["step"], params=op["params"],
                           tags=op["tags"])
    elif kind == "prune":
        models = CheckpointModels("", client).of_run(run_id)
        delete_models(client, [m.model_id for m in models if m.step not in set(op["keep_steps"])])
    elif kind == "end":
        client.set_terminated(run_id, op["status"])


def find_spool(workdir: Path, run_id: str) -> Spool | None:
    """The spool of a run: next to its checkpoints, or under <workdir>/spool for other stages."""
    candidates = [Path(workdir) / "spool" / run_id,
                  *(Path(workdir) / "checkpoints").glob(f"*/*/{run_id}/spool")]
    found = [Spool(c) for c in candidates if (c / OPS).is_file()]
    return found[0] if found else None


@dataclass(frozen=True)
class SyncResult:
    sent: int
    spool: Path | None  # None: nothing was pending


def sync_run(tracking: TrackingConfig, tracking_uri: str, workdir: Path, run_id: str) -> SyncResult:
    """Send what `run_id` kept in its local spool while the server was away (`harmonica sync`)."""
    from harmonica.tracking.health import bound_requests, check_server, is_server

    spool = find_spool(workdir, run_id)
    if spool is None or not spool.pending:
        return SyncResult(0, None)
    if is_server(tracking_uri):
        bound_requests(tracking.request_timeout, tracking.request_retries)
        check_server(tracking_uri, tracking.health_timeout)
    return SyncResult(spool.replay(MlflowClient(tracking_uri), run_id), spool.directory)
