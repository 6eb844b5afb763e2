"""The account breaker's reads: what may be skipped, and what must never be."""

from __future__ import annotations

import redis

from faceid_batch.call.breaker import AccountBreaker


def _gets(r: redis.Redis) -> int:
    return r.info("commandstats").get("cmdstat_get", {}).get("calls", 0)


def test_an_ordinary_answer_is_recorded_without_a_redis_round_trip(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    breaker = AccountBreaker(r)
    breaker.close()
    before = _gets(r)
    for _ in range(5):
        breaker.record(None)  # not an account error, not the probe: changes nothing
    assert _gets(r) == before
    # An account error is recorded as always, and opens it for every worker.
    breaker.record("AuthFailure.SecretIdNotFound")
    assert AccountBreaker(r).state().open


def test_a_recent_closed_state_may_be_reused_but_never_hides_an_open_breaker(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    worker, other = AccountBreaker(r), AccountBreaker(r)
    worker.close()
    assert worker.before_call(max_age=1.0) == (True, 0.0)
    before = _gets(r)
    assert worker.before_call(max_age=1.0) == (True, 0.0)  # the closed state just read
    assert _gets(r) == before
    other.record("UnauthorizedOperation.Arrears")  # another worker opens it
    # The check right before a call reads afresh and stops at once...
    may_call, wait = worker.before_call()
    assert not may_call and wait > 0
    # ...and once it has seen it open, the cheap check does not reuse a stale "closed".
    assert worker.before_call(max_age=1.0)[0] is False
