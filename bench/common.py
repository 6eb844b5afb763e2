"""What the benchmarks share: the simulator's fake keys, percentiles, timestamps, printing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Obviously fake keys: they only ever reach the bundled simulator.
SECRET_ID = "AKIDbenchFAKEkeyNOTrealXXXXXXXXXXX"
SECRET_KEY = "benchFAKEsecretKEYnotREAL0000000"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def ts(when: datetime) -> float:
    """Unix seconds of a stored time (SQLite hands back naive datetimes, stored as UTC)."""
    return when.replace(tzinfo=when.tzinfo or UTC).timestamp()


def print_scenarios(results: list[dict[str, Any]], width: int = 58) -> None:
    """Each scenario's figures, one a line."""
    for r in results:
        print()
        for k, v in r.items():
            print(f"  {k:<{width}} {v}")


class LocalStack:
    """What a bench runs against, all on loopback: a redis-server, the simulator (lognormal
    latency, median 1.5 s / p99 5 s, 20 calls/s enforced), a migrated database (a new SQLite
    file unless ``database_url``) and the workers' environment pointing at them."""

    def __init__(self, base: Path, seed: int, appendonly: bool = False,
                 database_url: str | None = None, **env: str) -> None:
        from faceid_batch import migrate
        from faceid_batch.local.services import RedisServer, Simulator

        self.base = base
        self.server = RedisServer(base / "redis", appendonly=appendonly).start()
        self.sim = Simulator(base / "sim", SECRET_ID, SECRET_KEY, extra_args=[
            "--latency-median", "1.5", "--latency-p99", "5", "--rate-limit", "20",
            "--seed", str(seed)]).start()
        self.db_url = database_url or f"sqlite:///{base}/bench.db"
        migrate.upgrade(self.db_url)
        self.env = {"DATABASE_URL": self.db_url, "REDIS_URL": self.server.url,
                    "FACEID_SECRET_ID": SECRET_ID, "FACEID_SECRET_KEY": SECRET_KEY,
                    "FACEID_ENDPOINT": self.sim.api_url, "COS_BUCKET": "bench-1250000000",
                    "COS_DOMAIN": self.sim.cos_domain, "COS_SCHEME": "http",
                    "METRICS_PORT": "0",
                    # The simulator's best frames (and a bench's own servers) are on loopback.
                    "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32", **env,
                    "PYTHONPATH": str(ROOT)}
        # This process submits too, and sends the onboarding messages itself.
        os.environ.update(self.env)
        self.workers: list[Any] = []

    def settings(self) -> Any:
        from faceid_batch.settings import load_settings

        return load_settings(**{k.lower(): v for k, v in self.env.items()
                                if k != "PYTHONPATH"})

    def start_workers(self, n: int, concurrency: int, name: str) -> list[Any]:
        from faceid_batch.local.services import Worker

        self.workers = [Worker(env=self.env, logfile=self.base / f"{name}{i}.log",
                               concurrency=concurrency, name=f"{name}{i}").start()
                        for i in range(n)]
        return self.workers

    def calls(self) -> list[dict[str, Any]]:
        """The simulator's call log."""
        import requests

        return requests.get(f"{self.sim.control_url}/calls", timeout=30).json()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.sim.stop()
        self.server.stop()


def run_once(prefix: str, args: Any,
             run: Callable[[Any, Path], dict[str, Any]], title: str, width: int) -> int:
    """Run one scenario in a temporary folder (removed after) and print its figures."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("METRICS_PORT", "0")
    try:
        results = [run(args, base)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{title}")
    print_scenarios(results, width)
    return 0
