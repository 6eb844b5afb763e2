"""A tenant's allowed regions and accounts restrict its jobs: a region it may not use is
refused at submit (nothing stored), and a worker calls for its jobs only with the accounts it
may use. The end-to-end test runs two accounts of one region and a tenant that may use one."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import requests
from sqlalchemy import func, select

from faceid_batch import tenants
from faceid_batch.call.accounts import Account
from faceid_batch.call.breaker import BreakerState
from faceid_batch.call.routing import Caller, Router
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, SubmitError, check_region, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job
from faceid_batch.settings import get_settings, load_settings
from faceid_sim.runner import start as start_sim
from helpers import FAKE_SECRET_ID, FAKE_SECRET_KEY, accounts_env, wait_until

SG2_ID, SG2_KEY = "AKIDtestFAKEsingaporeNOTreal00002", "testFAKEsingaporeKEYnotREAL00002"
BKK_ID = "AKIDtestFAKEbangkokNOTreal0000001"
SG_BUCKET, BKK_BUCKET = "faceid-sg-1250000000", "faceid-bkk-1250000000"
ACCOUNTS = f"""
[accounts.sg-a]
secret_id = "{FAKE_SECRET_ID}"
secret_key_env = "TEST_FAKE_KEY_SG_A"
regions = ["ap-singapore"]

[accounts.sg-b]
secret_id = "{SG2_ID}"
secret_key_env = "TEST_FAKE_KEY_SG_B"
regions = ["ap-singapore"]

[accounts.bkk]
secret_id = "{BKK_ID}"
secret_key_env = "TEST_FAKE_KEY_BKK"
regions = ["ap-bangkok"]
"""


# -- the choice of an account ------------------------------------------------------------
@dataclass
class _Breaker:
    open: bool = False
    asked: list[float] = field(default_factory=list)

    def state(self, max_age: float = 0.0) -> BreakerState:
        return BreakerState(open=self.open)

    def before_call(self, max_age: float = 0.0) -> tuple[bool, float]:
        self.asked.append(max_age)
        return (not self.open, 7.0 if self.open else 0.0)


class _Limiter:
    def set_limit(self, limit: int) -> None:
        self.limit = limit


class _Caps:
    def share(self, owner: str, rate_limit: int) -> int:
        return rate_limit


def _router(*names: str) -> Router:
    callers = [Caller(Account(name=n, secret_id=f"AKIDfake{n}", regions=("ap-singapore",),
                              rate_limit=20, endpoint="http://127.0.0.1:9", owner="uin"),
                      None, _Limiter(), _Breaker())  # type: ignore[arg-type]
               for n in names]
    return Router(callers, _Caps())  # type: ignore[arg-type]


def test_a_tenants_jobs_are_called_only_by_the_accounts_it_may_use():
    router = _router("a", "b", "c")
    a, b, c = router.callers
    # No restriction: every account takes its share.
    anyone = [router.choose("ap-singapore")[0].name for _ in range(9)]
    assert sorted(anyone) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    # A tenant that may use b and c: a is never chosen, however idle it is.
    for caller in router.callers:
        caller.busy = 0
    only = [router.choose("ap-singapore", allowed=("b", "c"))[0].name for _ in range(8)]
    assert sorted(only) == ["b"] * 4 + ["c"] * 4
    # One allowed account: the single-account path (its breaker asked directly).
    caller, wait = router.choose("ap-singapore", max_age=1.0, allowed=("c",))
    assert caller is c and wait == 0.0 and c.breaker.asked[-1] == 1.0  # type: ignore[attr-defined]
    # Its account's breaker open: the job waits for it, though a and b may call.
    c.breaker.open = True  # type: ignore[attr-defined]
    assert router.choose("ap-singapore", allowed=("c",)) == (None, 7.0)
    assert router.others_may_call("ap-singapore", c) is True
    assert router.others_may_call("ap-singapore", c, allowed=("c",)) is False
    assert router.others_may_call("ap-singapore", "c", allowed=("b", "c")) is True
    # None of the accounts it may use serves the region: nothing to choose.
    assert router.serving("ap-singapore", allowed=("zz",)) == ()
    assert router.choose("ap-singapore", allowed=("zz",)) == (None, 60.0)
    assert router.choose("ap-singapore", allowed=()) == (None, 60.0)


# -- the check at submit -----------------------------------------------------------------
def _settings(tmp_path, url: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    return load_settings(database_url=url, cos_bucket=SG_BUCKET, faceid_accounts_file=str(path),
                         cos_buckets=f"ap-bangkok={BKK_BUCKET}")


def test_a_region_the_tenant_may_not_use_is_refused_at_submit(tmp_path, database_url,
                                                               monkeypatch):
    monkeypatch.setattr(tenants, "ALLOWED_CACHE_SECONDS", 0.0)
    s = _settings(tmp_path, database_url)
    thai = tenants.add(database_url, "thai", ["ap-bangkok"])
    narrow = tenants.add(database_url, "narrow", None, ["sg-b"])
    free = tenants.add(database_url, "free", None)
    assert check_region(s, "ap-bangkok", thai.id) == "ap-bangkok"
    with pytest.raises(SubmitError, match=r"region ap-singapore: this tenant may use only "
                                          r"ap-bangkok; name one of them"):
        check_region(s, None, thai.id)
    # Its accounts serve ap-singapore only.
    assert check_region(s, "ap-singapore", narrow.id) == "ap-singapore"
    with pytest.raises(SubmitError, match=r"region ap-bangkok: none of the accounts this "
                                          r"tenant may use \(sg-b\) serves it"):
        check_region(s, "ap-bangkok", narrow.id)
    # No restriction of its own, and the default tenant: as the deployment allows.
    for tenant_id in (free.id, tenants.DEFAULT_TENANT_ID, None):
        assert check_region(s, "ap-bangkok", tenant_id) == "ap-bangkok"
        assert check_region(s, None, tenant_id) is None
    # submit refuses it and stores nothing.
    photo, video = write_pair(tmp_path / "media", 1)
    with pytest.raises(SubmitError, match="this tenant may use only ap-bangkok") as err:
        submit(s, JobSpec("t-1", str(photo), str(video), "SILENT", tenant_id=thai.id))
    assert err.value.field == "region"
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_tenants_allowance_is_cached_a_few_seconds(database_url, monkeypatch):
    t = tenants.add(database_url, "cached", ["ap-bangkok"], ["bkk"])
    reads = []
    real = tenants.allowed

    def counted(url: str, tenant_id: int) -> tenants.Allowed:
        reads.append(tenant_id)
        return real(url, tenant_id)

    monkeypatch.setattr(tenants, "allowed", counted)
    clock = [1000.0]
    monkeypatch.setattr(tenants.time, "monotonic", lambda: clock[0])
    tenants._allowed_cache.clear()
    for _ in range(5):
        assert tenants.allowed_cached(database_url, t.id) == tenants.Allowed(
            ("ap-bangkok",), ("bkk",))
    assert reads == [t.id]
    clock[0] += tenants.ALLOWED_CACHE_SECONDS + 0.1
    tenants.allowed_cached(database_url, t.id)
    assert reads == [t.id, t.id]
    # An unknown tenant may use nothing.
    assert tenants.allowed_cached(database_url, 99999) == tenants.Allowed((), ())


# -- end to end --------------------------------------------------------------------------
@pytest.fixture
def two_accounts(redis_server, tmp_path, monkeypatch, app_env, database_url):
    """A simulator of its own with a second fake SecretId, and this process configured for
    two accounts of ap-singapore (sg-a, sg-b) and one of ap-bangkok."""
    sim = start_sim(secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                    extra_credentials={SG2_ID: SG2_KEY, BKK_ID: FAKE_SECRET_KEY},
                    bucket=SG_BUCKET, extra_buckets={BKK_BUCKET: "ap-bangkok"},
                    latency={"fixed": 0.1}, data_dir=tmp_path / "sim")
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    env = {**app_env, "DATABASE_URL": database_url, "FACEID_ENDPOINT": sim.api_url,
           "FACEID_ACCOUNTS_FILE": str(path), "TEST_FAKE_KEY_SG_A": FAKE_SECRET_KEY,
           "TEST_FAKE_KEY_SG_B": SG2_KEY, "TEST_FAKE_KEY_BKK": FAKE_SECRET_KEY,
           "COS_SECRET_ID": FAKE_SECRET_ID, "COS_SECRET_KEY": FAKE_SECRET_KEY,
           "COS_BUCKET": SG_BUCKET, "COS_BUCKETS": f"ap-bangkok={BKK_BUCKET}",
           "COS_DOMAIN": sim.cos_domains[SG_BUCKET],
           "COS_DOMAINS": f"ap-bangkok={sim.cos_domains[BKK_BUCKET]}"}
    yield from accounts_env(monkeypatch, env, app_env["REDIS_URL"], sim)


def _done(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and all(st in ("completed", "failed") for st in states)


def test_a_tenant_restricted_to_one_account_is_called_only_by_it(two_accounts, start_worker,
                                                                  tmp_path):
    sim, env = two_accounts
    settings = get_settings()
    url = settings.database_url
    narrow = tenants.add(url, "narrow", ["ap-singapore"], ["sg-b"])
    pairs = [write_pair(tmp_path / "media", i) for i in range(16)]
    start_worker(**env, FACEID_SECRET_ID="", FACEID_SECRET_KEY="")
    mine = [submit(settings, JobSpec(f"n-{i}", str(p), str(v), "SILENT",
                                     tenant_id=narrow.id))[0]
            for i, (p, v) in enumerate(pairs[:10])]
    others = [submit(settings, JobSpec(f"d-{i}", str(p), str(v), "SILENT"))[0]
              for i, (p, v) in enumerate(pairs[10:])]
    with pytest.raises(SubmitError, match="this tenant may use only ap-singapore"):
        submit(settings, JobSpec("n-bkk", str(pairs[0][0]), str(pairs[0][1]), "SILENT",
                                 tenant_id=narrow.id, region="ap-bangkok"))
    wait_until(lambda: _done(url, mine + others), 60, what="jobs to finish")
    with session_scope(url) as s:
        states = set(s.scalars(select(Job.state).where(Job.id.in_(mine + others))))
        attempts = s.execute(select(Attempt.job_id, Attempt.account)
                             .where(Attempt.job_id.in_(mine + others))).all()
    assert states == {"completed"}
    assert {acc for job, acc in attempts if job in mine} == {"sg-b"}
    # The default tenant's jobs may go to either account; the router spreads them.
    assert {acc for job, acc in attempts if job not in mine} <= {"sg-a", "sg-b"}
    # What the simulator saw: the tenant's media reached it only with sg-b's SecretId.
    calls = requests.get(f"{sim.control_url}/calls", timeout=5).json()
    assert len(calls) == len(mine) + len(others)
    by_sid: dict[str, int] = {}
    for call in calls:
        by_sid[call["secret_id"]] = by_sid.get(call["secret_id"], 0) + 1
    assert by_sid.get(SG2_ID, 0) >= len(mine)


# -- the idempotency fingerprint ---------------------------------------------------------
def test_a_retry_with_the_same_key_and_another_region_is_a_conflict(tmp_path, database_url):
    import warnings

    from faceid_batch.admin import tokens
    from faceid_batch.producer import app as producer_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    s = _settings(tmp_path, database_url)
    client = TestClient(producer_app.create_app(s), raise_server_exceptions=False)
    token = tokens.add(database_url, "producer-r", tokens.SUBMIT)

    def post(key: str, region: str | None):  # type: ignore[no-untyped-def]
        body = {"photo_url": "https://media.example/p.jpg",
                "video_url": "https://media.example/v.mp4", "liveness_type": "SILENT",
                "lane": "backfill"}
        if region is not None:
            body["region"] = region
        return client.post("/v1/verifications", json=body, headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": key})

    first = post("r-1", None)
    assert first.status_code == 202, first.text
    # The same region, named or left to FACEID_REGION: the same request.
    again = post("r-1", "ap-singapore")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = post("r-1", "ap-bangkok")
    assert other.status_code == 409, other.text
    assert other.json()["type"] == "/problems/idempotency-key-reused"
    assert other.json()["verification"] == f"/v1/verifications/{first.json()['id']}"
    # And the other way round: a job of ap-bangkok retried without its region.
    bkk = post("r-2", "ap-bangkok")
    assert bkk.status_code == 202, bkk.text
    assert post("r-2", "ap-bangkok").json()["id"] == bkk.json()["id"]
    assert post("r-2", None).status_code == 409
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2
