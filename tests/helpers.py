"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from pathlib import Path

# Obviously fake keys: they only ever reach the bundled simulator.
FAKE_SECRET_ID = "AKIDtestFAKEkeyNOTrealXXXXXXXXXXXX"
FAKE_SECRET_KEY = "testFAKEsecretKEYnotREAL00000000"
BUCKET = "faceid-test-1250000000"


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


def file_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def sim_config(control_url: str, **knobs) -> dict:
    """Change simulator knobs (POST /_sim/config); return all knobs."""
    import requests

    resp = requests.post(f"{control_url}/config", json=knobs, timeout=5)
    resp.raise_for_status()
    return resp.json()


def sim_calls(control_url: str) -> list[dict]:
    """The simulator's call log (every API call it answered, oldest first)."""
    import requests

    resp = requests.get(f"{control_url}/calls", timeout=5)
    resp.raise_for_status()
    return resp.json()


def sim_script(control_url: str, video_md5: str, responses: list) -> None:
    """Queue scripted answers for the calls about one video."""
    import requests

    requests.post(f"{control_url}/script", json={"video_md5": video_md5,
                                                 "responses": responses},
                  timeout=5).raise_for_status()


def accounts_env(monkeypatch, env: dict[str, str], redis_url: str, sim):  # type: ignore[no-untyped-def]
    """Put this process under ``env`` for a run with an accounts file (FACEID_SECRET_* unset,
    settings and per-process resources read afresh, Celery on ``redis_url``); yields
    ``(sim, env)`` and, after, drops what was read and stops ``sim``. For fixtures:
    ``yield from accounts_env(...)``."""
    from faceid_batch import worker as worker_mod
    from faceid_batch.settings import get_settings

    monkeypatch.delenv("FACEID_SECRET_ID", raising=False)
    monkeypatch.delenv("FACEID_SECRET_KEY", raising=False)
    env.pop("FACEID_SECRET_ID")
    env.pop("FACEID_SECRET_KEY")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    worker_mod.drop_resources()
    worker_mod.celery_app.conf.broker_url = redis_url
    yield sim, env
    get_settings.cache_clear()
    worker_mod.drop_resources()
    sim.stop()
