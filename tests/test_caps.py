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
    sent = time.time()
    owners.hit("uin", UIN, sent)
    assert owners.cap("uin") == 28
    # HOLD has passed (the cut is moved back in time), but this call left before the cut:
    # its answer was only late (a slow call of the old budget).
    cut_at = int(r.hget(caps.KEY + "uin", "cut_at") or 0)
    r.hset(caps.KEY + "uin", "cut_at", cut_at - int(caps.HOLD * 1_000_000) - 1)
    owners.hit("uin", UIN, (cut_at - int(caps.HOLD * 1_000_000) - 2) / 1_000_000)
    assert owners.cap("uin") == 28
    # One sent after the cut is news: the cap is cut again. Unknown send time: news too.
    owners.hit("uin", UIN, time.time())
    assert owners.cap("uin") == 19
    r.hset(caps.KEY + "uin", "cut_at", 0)
    owners.hit("uin", UIN)
    assert owners.cap("uin") == 13
