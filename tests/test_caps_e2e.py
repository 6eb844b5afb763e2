"""The learned account-wide cap end to end: two accounts of one owner (5 calls/s each) on a
simulator that caps the owner at 6 calls/s (``owner_limits``, answering
``RequestLimitExceeded.UinLimitExceeded`` above it). The product learns the cap from a few
such answers, then stays under it with every job answered; once the simulator lifts the cap
and the learned one has recovered, the owner's whole budget is used again."""

from __future__ import annotations

import pytest
import redis
import requests
from sqlalchemy import select

from faceid_batch.call import caps
from faceid_batch.call.ratelimit import max_starts_in_window
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job
from faceid_batch.settings import get_settings
from faceid_sim.runner import start as start_sim
from helpers import FAKE_SECRET_ID, FAKE_SECRET_KEY, accounts_env, wait_until

SECOND_ID, SECOND_KEY = "AKIDtestFAKEcapsNOTreal000000002", "testFAKEcapsKEYnotREAL0000000002"
BUCKET = "faceid-caps-1250000000"
OWNER, CAP, RATE = "uin-caps", 6, 5
UIN = "RequestLimitExceeded.UinLimitExceeded"
ACCOUNTS = f"""
[accounts.one]
secret_id = "{FAKE_SECRET_ID}"
secret_key_env = "TEST_FAKE_KEY_ONE"
regions = ["ap-singapore"]
rate_limit = {RATE}
owner = "{OWNER}"

[accounts.two]
secret_id = "{SECOND_ID}"
secret_key_env = "TEST_FAKE_KEY_TWO"
regions = ["ap-singapore"]
rate_limit = {RATE}
owner = "{OWNER}"
"""


@pytest.fixture
def capped(redis_server, tmp_path, monkeypatch, app_env, database_url):
    sim = start_sim(secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                    extra_credentials={SECOND_ID: SECOND_KEY}, bucket=BUCKET,
                    latency={"fixed": 0.1}, data_dir=tmp_path / "sim")
    sim.sim.configure({"owner_limits": [{"secret_ids": [FAKE_SECRET_ID, SECOND_ID],
                                         "limit": CAP}]})
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    env = {**app_env, "DATABASE_URL": database_url, "FACEID_ENDPOINT": sim.api_url,
           "FACEID_ACCOUNTS_FILE": str(path), "TEST_FAKE_KEY_ONE": FAKE_SECRET_KEY,
           "TEST_FAKE_KEY_TWO": SECOND_KEY, "COS_SECRET_ID": FAKE_SECRET_ID,
           "COS_SECRET_KEY": FAKE_SECRET_KEY, "COS_BUCKET": BUCKET,
           "COS_DOMAIN": sim.cos_domains[BUCKET]}
    yield from accounts_env(monkeypatch, env, app_env["REDIS_URL"], sim)


def _all_completed(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and set(states) == {"completed"}


def test_the_owner_cap_is_learned_kept_to_and_recovered(capped, start_worker, tmp_path):
    sim, env = capped
    settings = get_settings()
    url = settings.database_url
    r = redis.Redis.from_url(env["REDIS_URL"])
    pairs = [write_pair(tmp_path / "media", i) for i in range(90)]
    start_worker(**env, FACEID_SECRET_ID="", FACEID_SECRET_KEY="")
    first = [submit(settings, JobSpec(f"c-{i}", str(p), str(v), "SILENT", lane="backfill"))[0]
             for i, (p, v) in enumerate(pairs[:60])]
    wait_until(lambda: _all_completed(url, first), 60, what="the capped jobs")
    with session_scope(url) as s:
        codes = s.scalars(select(Attempt.code).where(Attempt.job_id.in_(first))).all()
    hits = codes.count(UIN)
    # Learned from a few answers (the calls in flight when the first came), then kept to.
    assert 1 <= hits <= 8, codes
    assert codes.count("Success") == len(first)
    learned = int(r.hget(caps.KEY + OWNER, "cap") or 0)
    assert learned == int(2 * RATE * caps.CUT)  # 7: each account runs at 3/s
    calls = requests.get(f"{sim.control_url}/calls", timeout=5).json()
    last_hit = max(c["t_start"] for c in calls if c["code"] == UIN)
    after = [c["t_start"] for c in calls if c["t_start"] > last_hit + 1.0]
    assert len(after) > 30 and max_starts_in_window(after) <= CAP
    assert not any(c["code"] == UIN for c in calls if c["t_start"] > last_hit + 1.0)

    # The cap lifted, and the learned one grown back whole (as RECOVER_EVERY periods later).
    sim.sim.configure({"owner_limits": []})
    r.hset(caps.KEY + OWNER, "at", int((r.time()[0] - 20 * caps.RECOVER_EVERY) * 1_000_000))
    seen = len(calls)
    more = [submit(settings, JobSpec(f"d-{i}", str(p), str(v), "SILENT", lane="backfill"))[0]
            for i, (p, v) in enumerate(pairs[60:])]
    wait_until(lambda: _all_completed(url, more), 60, what="the jobs after the lift")
    assert not r.exists(caps.KEY + OWNER)  # whole again: the key is gone
    calls = requests.get(f"{sim.control_url}/calls", timeout=5).json()[seen:]
    assert {c["code"] for c in calls} == {"Success"}
    # The whole budget (5/s + 5/s) is used again: more than the old cap in one second.
    assert max_starts_in_window([c["t_start"] for c in calls]) > CAP + 1
