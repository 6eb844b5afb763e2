"""The learned margin: an account's window widens when the API says a sliding second of its
own held more than the limit, and narrows again when it stays quiet."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from sqlalchemy import select
from test_ratelimit import send_on_time

from faceid_batch.call import margins
from faceid_batch.call.margins import LearnedMargins
from faceid_batch.call.ratelimit import GlobalRateLimiter, max_starts_in_window
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job
from faceid_batch.settings import get_settings
from helpers import sim_calls, sim_config, wait_until

RLE = margins.OWN_LIMIT


@pytest.fixture
def r(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


def _stored(r: redis.Redis, account: str) -> float:
    return int(r.hget(margins.KEY + account, "extra") or 0) / 1_000_000


def test_a_refusal_widens_the_window_once_per_hold_doubling_to_the_most(r):
    learned = LearnedMargins(r, hold=0.3)
    assert learned.extra("a") == 0.0
    learned.hit("a", latency=0.0)
    assert _stored(r, "a") == pytest.approx(margins.STEP)
    learned.hit("a", latency=0.0)  # within the hold: the same news
    assert _stored(r, "a") == pytest.approx(margins.STEP)
    seen = []
    for _ in range(4):
        time.sleep(0.35)
        learned.hit("a", latency=0.0)
        seen.append(round(_stored(r, "a"), 3))
    assert seen == [0.02, 0.04, 0.05, 0.05]  # doubling, to MAX
    assert _stored(r, "b") == 0.0  # per account


def test_a_refusal_of_a_call_sent_before_the_last_widening_widens_nothing(r):
    learned = LearnedMargins(r, hold=0.1)
    learned.hit("a", latency=0.0)
    time.sleep(0.2)
    learned.hit("a", latency=5.0)  # sent 5 s ago, on the old window
    assert _stored(r, "a") == pytest.approx(margins.STEP)
    learned.hit("a", latency=0.05)  # sent after the widening
    assert _stored(r, "a") == pytest.approx(2 * margins.STEP)


def test_quiet_periods_narrow_it_back_until_it_is_gone(r):
    learned = LearnedMargins(r, hold=0.0, recover_every=1.0)
    learned.hit("a")
    time.sleep(0.02)
    learned.hit("a")
    learned._seen.clear()
    assert learned.extra("a") == pytest.approx(0.02)
    time.sleep(2.5)  # two quiet periods (a stall of up to 0.5 s changes nothing): 2 x DECAY
    learned._seen.clear()
    assert learned.extra("a") == pytest.approx(0.02 - 2 * margins.DECAY)
    time.sleep(2.0)
    learned._seen.clear()
    assert learned.extra("a") == 0.0
    assert not r.exists(margins.KEY + "a")  # gone, not kept at zero


def test_the_limiter_keeps_its_starts_a_widened_window_apart(r):
    limiter = GlobalRateLimiter(r, 10, window=1.0, key="rl-widened")
    limiter.set_extra_margin(0.08)
    starts: list[float] = []
    unsent: list[None] = []

    def caller() -> None:
        began = time.monotonic()
        while time.monotonic() < began + 2.5:
            sent = limiter.call("backfill", send_on_time)
            if sent is None:
                unsent.append(None)
            else:
                starts.append(sent.result)

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(starts) >= 20 and not unsent
    # No 1.08 s holds more than 10 starts (a plain 1 s window lets the 11th in at 1.0 s).
    assert max_starts_in_window(starts, 1.08) <= 10
    limiter.set_extra_margin(0.0)
    assert limiter.window_us == 1_000_000


def _completed(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and set(states) == {"completed"}


def test_jitter_beyond_the_default_margin_is_learned_then_kept_to(
        configured, sim_control, start_worker, tmp_path, monkeypatch):
    """The API counts each call up to 40 ms after it arrived, at random (a network's jitter):
    beyond the default 10 ms margin, so some of its seconds hold more than the limit. The
    first refusals (free, retried) widen the window until they stop; every job is answered,
    and after the last refusal no second of the API's holds more than the limit."""
    limit = 10
    sim_config(sim_control, rate_limit=limit, arrival_jitter=0.04, latency={"fixed": 0.1})
    monkeypatch.setenv("FACEID_RATE_LIMIT", str(limit))
    get_settings.cache_clear()
    settings = get_settings()
    start_worker(concurrency=16, FACEID_RATE_LIMIT=str(limit))
    pairs = [write_pair(tmp_path / "media", i) for i in range(3)]
    ids = [submit(settings, JobSpec(f"m-{i}", str(pairs[i % 3][0]), str(pairs[i % 3][1]),
                                    "SILENT", lane="backfill"))[0] for i in range(260)]
    wait_until(lambda: _completed(settings.database_url, ids), 120, what="the jobs")
    with session_scope(settings.database_url) as s:
        codes = s.scalars(select(Attempt.code).where(Attempt.job_id.in_(ids))).all()
    widened = _stored(redis.Redis.from_url(settings.redis_url), "default")
    assert codes.count("Success") == len(ids)
    calls = sim_calls(sim_control)
    refused = [c["t_start"] for c in calls if c["code"] == RLE]
    assert 1 <= len(refused) <= 12, len(refused)  # a few, then none
    assert widened >= 0.02, widened
    after = [c["t_start"] for c in calls
             if c["code"] != RLE and c["t_start"] > max(refused) + 1.0]
    # The refusals stopped early: most of the run came after the last one (with the
    # widening switched off they went on to the end: 2 calls after the last of 20).
    assert len(after) >= 50, len(after)


def test_refusals_at_the_widest_window_are_named_once_a_minute(r, caplog):
    learned = LearnedMargins(r, hold=0.0)
    for _ in range(8):
        learned.hit("a")
        time.sleep(0.01)
    assert _stored(r, "a") == pytest.approx(margins.MAX)
    named = [m for m in caplog.messages if "already" in m and "SecretId" in m]
    assert len(named) == 1, caplog.messages
