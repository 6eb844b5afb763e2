"""The learned account-wide cap: an answer to a call sent before the last cut is the same
news again and cuts nothing, however late it comes; a call sent after it does."""

from __future__ import annotations

import time

import redis

from faceid_batch.call import caps
from faceid_batch.call.caps import OwnerCaps

UIN = "RequestLimitExceeded.UinLimitExceeded"


def test_answers_of_calls_sent_before_the_cut_cut_nothing(redis_server, monkeypatch):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    monkeypatch.setattr(caps, "REFRESH", 0.0)
    owners = OwnerCaps(r, {"uin": 40})
    owners.hit("uin", UIN, 0.05)
    assert owners.cap("uin") == 28
    # HOLD has passed (the cut is moved back by HOLD + 1 s), but this call left HOLD + 1.5 s
    # ago, before the cut: its answer was only late (a slow call of the old budget).
    cut_at = int(r.hget(caps.KEY + "uin", "cut_at") or 0)
    r.hset(caps.KEY + "uin", "cut_at", cut_at - int((caps.HOLD + 1) * 1_000_000))
    owners.hit("uin", UIN, caps.HOLD + 1.5)
    assert owners.cap("uin") == 28
    # One sent after the cut is news: the cap is cut again. Unknown latency: news too.
    owners.hit("uin", UIN, 0.05)
    assert owners.cap("uin") == 19
    r.hset(caps.KEY + "uin", "cut_at", 0)
    owners.hit("uin", UIN)
    assert owners.cap("uin") == 13


def test_a_host_clock_off_from_redis_does_not_change_what_a_hit_does(redis_server,
                                                                     monkeypatch):
    """The send time of a hit call is reckoned on Redis's clock (now - latency in the
    script), the one its last cut is on: a host clock 400 s behind or ahead changes
    nothing."""
    r = redis.Redis.from_url(redis_server.url)
    monkeypatch.setattr(caps, "REFRESH", 0.0)
    real = time.time
    for offset in (-400.0, 400.0):
        r.flushall()
        monkeypatch.setattr(time, "time", lambda off=offset: real() + off)
        owners = OwnerCaps(r, {"uin": 40})
        owners.hit("uin", UIN, 0.05)
        assert owners.cap("uin") == 28
        cut_at = int(r.hget(caps.KEY + "uin", "cut_at") or 0)
        r.hset(caps.KEY + "uin", "cut_at", cut_at - int((caps.HOLD + 1) * 1_000_000))
        owners.hit("uin", UIN, caps.HOLD + 2)  # sent before the cut: late news, no cut
        assert owners.cap("uin") == 28, offset
        owners.hit("uin", UIN, 0.2)  # sent after it: a cut
        assert owners.cap("uin") == 19, offset
