"""The worker's Prometheus endpoint: the counters move after a small batch."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.local.services import free_port
from faceid_batch.models import Job
from helpers import file_md5, sim_script, wait_until


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_move_after_a_batch(configured, sim_control, start_worker, tmp_path):
    settings = configured
    port = free_port()
    start_worker(METRICS_PORT=str(port), METRICS_ADDR="127.0.0.1")
    before = wait_until(lambda: _try_scrape(port), 20, what="the metrics endpoint")
    assert before.get(("faceid_calls_total", (("code", "Success"), ("kind", "success")))) is None

    pairs = [write_pair(tmp_path / "media", 60 + i) for i in range(3)]
    sim_script(sim_control, file_md5(pairs[1][1]), ["FailedOperation.DownLoadTimeoutError"])
    ids = [submit(settings, JobSpec(f"m-{i}", str(p), str(v), "SILENT"))[0]
           for i, (p, v) in enumerate(pairs)]

    def done() -> bool:
        with session_scope(settings.database_url) as s:
            got = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
        return all(st == "completed" for st in got)

    wait_until(done, 60, what="the batch to end")
    # Gauges read at scrape time are cached for metrics.REFRESH seconds.
    wait_until(lambda: (_try_scrape(port) or {}).get(
        ("faceid_jobs", (("state", "completed"),))) == 3, 15, what="jobs gauge")
    after = scrape(port)
    assert after[("faceid_calls_total", (("code", "Success"), ("kind", "success")))] == 3
    assert after[("faceid_calls_total", (("code", "FailedOperation.DownLoadTimeoutError"),
                                         ("kind", "transient")))] == 1
    assert after[("faceid_call_latency_seconds_count", ())] == 4
    assert after[("faceid_rate_limit_wait_seconds_count", ())] == 4
    assert after[("faceid_rate_limit_late_seconds_count", ())] == 4
    assert after[("faceid_jobs_finished_total", (("state", "completed"),))] == 3
    assert after[("faceid_jobs", (("state", "queued"),))] == 0
    assert after[("faceid_breaker_open", (("account", "default"),))] == 0
    for lane in ("onboarding", "backfill"):
        assert after[("faceid_queue_depth", (("lane", lane),))] >= 0


def _try_scrape(port: int):  # type: ignore[no-untyped-def]
    try:
        return scrape(port)
    except requests.RequestException:
        return None
