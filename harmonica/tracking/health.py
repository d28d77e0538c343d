"""A bounded look at a tracking server before anything is logged, and the bounds on every request.

MLflow's own client retries a refused or silent server for minutes (7 retries, 120 s timeout each).
`check_server` answers in `timeout` seconds; `bound_requests` caps MLflow's per-request retries and
timeout for this process. MLflow reads those limits only from its environment variables, so that is
where they go (set only when the user has not set them).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message names the URI and the fix."""


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float) -> None:
    """GET <uri>/health within `timeout` seconds, or raise TrackingUnavailable."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            if resp.status == 200:
                return
            problem = f"answered HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        problem = f"answered HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        problem = "did not answer within %gs" % timeout if "timed out" in str(reason) else f"is unreachable ({reason})"
    raise TrackingUnavailable(
        f"the MLflow tracking server {uri} {problem}. Start it (e.g. `mlflow server --host 127.0.0.1 --port "
        "<port>`), fix MLFLOW_TRACKING_URI / tracking.tracking_uri, or unset them to use the embedded store "
        "in the workdir; tracking.health_timeout sets how long to wait"
    )


def bound_requests(timeout: float, retries: int) -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def server_answers(uri: str, timeout: float) -> bool:
    try:
        check_server(uri, timeout)
    except TrackingUnavailable:
        return False
    return True
