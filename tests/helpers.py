"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from pathlib import Path


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_log(tmp_path: Path, name: str = "w1") -> str:
    p = tmp_path / f"{name}.log"
    return p.read_text() if p.exists() else ""
