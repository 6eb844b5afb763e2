"""Prometheus metrics of a worker process, served on ``METRICS_PORT`` (0: off).

Counters and histograms move on the call path (pipeline.py); jobs by state, each account's
breaker and queue depth per lane are read when Prometheus scrapes (at most every ``REFRESH``
seconds: one GROUP BY on the jobs table, one LLEN per lane, one GET per account), so an idle
worker costs nothing.
The threads pool runs every call in the worker's main process, which serves the endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from faceid_batch.call import clock
from faceid_batch.call.ratelimit import STALE_AFTER
from faceid_batch.db import session_scope
from faceid_batch.messages import lane_depths
from faceid_batch.models import Job, JobState, Lane
from faceid_batch.parts import FeederParts

log = logging.getLogger(__name__)

CALLS = Counter("faceid_calls", "FaceID API calls by answer code and kind", ["code", "kind"])
CALL_LATENCY = Histogram(
    "faceid_call_latency_seconds", "Time from sending a FaceID call to its answer",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60),
)
RATE_LIMIT_WAIT = Histogram(
    "faceid_rate_limit_wait_seconds", "Time a call slept for its slot of the global rate limit",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10),
)
RATE_LIMIT_LATE = Histogram(
    "faceid_rate_limit_late_seconds", "How late a call started after its reserved slot",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
RATE_LIMIT_TOO_LATE = Counter(
    "faceid_rate_limit_too_late", "Calls not sent on their slot: the thread got to the write "
    f"more than {STALE_AFTER * 1000:.0f} ms after it; the slot was given back and a new one "
    "reserved",
)
JOBS_FINISHED = Counter("faceid_jobs_finished", "Jobs this process brought to an end",
                        ["state"])

REFRESH = 5.0  # seconds a scrape reuses the figures of the previous one


class StateCollector(Collector):
    """Jobs by state, each account's breaker open or not, queue depth per lane — read at
    scrape time."""

    def __init__(self, resources_fn: Callable[[], FeederParts]) -> None:
        self._resources = resources_fn
        self._guard = threading.Lock()
        self._at = 0.0
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._guard:
            if time.monotonic() - self._at >= REFRESH:
                self._families = self._read()
                self._at = time.monotonic()
            yield from self._families

    def _read(self) -> list[GaugeMetricFamily]:
        res = self._resources()
        out: list[GaugeMetricFamily] = []
        try:
            with session_scope(res.settings.database_url) as session:
                counts = dict(session.execute(
                    select(Job.state, func.count()).group_by(Job.state)).all())
            jobs = GaugeMetricFamily("faceid_jobs", "Jobs in the database by state",
                                     labels=["state"])
            for state in JobState:
                jobs.add_metric([state.value], counts.get(state, 0))
            out.append(jobs)
        except Exception as exc:  # a scrape must never fail because the database is away
            log.warning("metrics: jobs by state unavailable (%s)", type(exc).__name__)
        try:
            depths = lane_depths(res.redis)
            queue = GaugeMetricFamily("faceid_queue_depth",
                                      "Task messages waiting in each lane's Redis lists",
                                      labels=["lane"])
            for lane in Lane:
                queue.add_metric([lane.value], depths[lane.value])
            out.append(queue)
            breaker = GaugeMetricFamily("faceid_breaker_open",
                                        "1 while an account's breaker stops its calls",
                                        labels=["account"])
            for b in res.breakers:
                breaker.add_metric([b.account], 1 if b.state().open else 0)
            margin = GaugeMetricFamily(
                "faceid_rate_limit_margin_seconds", "How much longer than one second each "
                "account's rate-limit window is: RATE_LIMIT_MARGIN_MS plus what the API's "
                "RequestLimitExceeded answers taught (call/margins.py)", labels=["account"])
            base = res.settings.rate_limit_margin_ms / 1000
            for b in res.breakers:
                margin.add_metric([b.account], base + res.margins.extra(b.account))
            out.append(breaker)
            out.append(margin)
        except Exception as exc:
            log.warning("metrics: Redis figures unavailable (%s)", type(exc).__name__)
        return out


class ClockCollector(Collector):
    """The offset of each endpoint's clock from this host's, as this process learned it
    from the endpoint's answers (call/clock.py); an endpoint appears once it has answered."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "faceid_clock_offset_seconds", "Seconds an endpoint's clock is ahead of this "
            "host's (negative: behind), learned from its answers' Date; requests and "
            "presigned URLs are signed with it", labels=["endpoint"])
        for name, offset in sorted(clock.offsets().items()):
            family.add_metric([name], offset)
        yield family


REGISTRY.register(ClockCollector())

_started: dict[str, int] = {}


def start(port: int, addr: str, resources_fn: Callable[[], FeederParts]) -> bool:
    """Serve /metrics on ``addr:port`` (once per process); False if it could not bind."""
    if port == 0 or "port" in _started:
        return False
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        # Another worker on this host has the port; this one runs on without an endpoint.
        log.warning("metrics endpoint not started on port %s: %s", port, exc.strerror)
        return False
    REGISTRY.register(StateCollector(resources_fn))
    _started["port"] = port
    log.info("metrics endpoint on port %s", port)
    return True


def observe_call(code: str, kind: str, latency_ms: float, late: float) -> None:
    """One answered call: its code, latency, and how late it left after its slot."""
    CALLS.labels(code=code, kind=str(kind)).inc()
    CALL_LATENCY.observe(latency_ms / 1000)
    RATE_LIMIT_LATE.observe(max(0.0, late))
