"""A tenant's daily quota of calls and the other per-tenant guards of a call: the quota is
checked where calls are made (not only at admission), counts the calls Tencent bills, and
an answer's next state considers only the accounts the job's tenant may use; `tenant add`
refuses a region or account the deployment does not have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, update
from test_routing_tenants import ACCOUNTS, _router
from test_tenants import cli

from faceid_batch import tenants
from faceid_batch.call import billing
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job
from faceid_batch.models import Attempt, Job, TenantCalls
from faceid_batch.outcome import persist, record
from faceid_batch.settings import load_settings

LEASE = "lease-test"


def _job(settings, key: str, tenant_id: int) -> int:  # type: ignore[no-untyped-def]
    job_id, _ = insert_job(settings, JobSpec(key, "/p", "/v", "SILENT", lane="backfill",
                                             tenant_id=tenant_id))
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state="running",
                                                               lease_id=LEASE))
    return job_id


def _calls_today(url: str, tenant_id: int) -> int:
    return tenants.calls_on(url, tenant_id)


# -- what the quota counts -----------------------------------------------------------------
def test_only_billable_calls_use_up_the_quota(database_url):
    settings = load_settings(database_url=database_url)
    t = tenants.add(database_url, "counted", None, max_calls_per_day=10)
    job_id = _job(settings, "k", t.id)
    bill = billing.table()
    now = datetime.now(UTC).timestamp()
    with session_scope(database_url) as s:
        # Throttled (someone else used the budget): recorded, free, not counted.
        assert persist.write_answer(s, job_id, LEASE, 0, Answer(
            "RequestLimitExceeded", "error", 200, "r1", started_at=now), {}, None, bill)
        # The timestamp re-sign (record_resigned's row) and a lost free answer: free.
        persist.record_lost_attempt(s, job_id, 0, Answer(
            "AuthFailure.SignatureExpire", "error", 200, "r2", started_at=now), bill)
        # A billed verdict, and a billed answer that came after the job was lost.
        assert persist.write_answer(s, job_id, LEASE, 0, Answer(
            "FailedOperation.CompareLowSimilarity", "error", 200, "r3", started_at=now),
            {}, None, bill)
        persist.record_lost_attempt(s, job_id, 1, Answer(
            "Success", "result", 200, "r4", sim=90.0, started_at=now), bill)
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(Attempt)) == 4
    assert _calls_today(database_url, t.id) == 2


# -- the quota where calls are made --------------------------------------------------------
def test_the_quota_is_read_cheaply_and_cached(database_url, monkeypatch):
    t = tenants.add(database_url, "cached-quota", None, max_calls_per_day=2)
    free = tenants.add(database_url, "no-quota", None)
    assert tenants.over_quota_cached(database_url, t.id) is None
    with session_scope(database_url) as s:
        s.add(TenantCalls(tenant_id=t.id, day=tenants.today(), calls=2))
    # Read at most once a second: the count read a moment ago still holds.
    assert tenants.over_quota_cached(database_url, t.id) is None
    monkeypatch.setattr(tenants, "CALLS_CACHE_SECONDS", 0.0)
    tenants._calls_cache.clear()
    assert tenants.over_quota_cached(database_url, t.id) == (2, 2)
    # A quota changed here is seen at once; elsewhere within ALLOWED_CACHE_SECONDS.
    tenants.set_quota(database_url, "cached-quota", 5)
    assert tenants.over_quota_cached(database_url, t.id) is None
    # No quota: its count is never read.
    reads: list[object] = []
    monkeypatch.setattr(tenants, "calls_on", lambda *a: reads.append(a) or 10**9)
    assert tenants.over_quota_cached(database_url, free.id) is None and reads == []
    assert tenants.over_quota_cached(database_url, t.id) == (10**9, 5) and reads
    assert 0 < tenants.until_midnight(86400 * 3 + 100) == 86300


def test_a_job_of_a_tenant_at_its_quota_is_not_called_until_midnight(configured,
                                                                     monkeypatch):
    from faceid_batch import pipeline
    from faceid_batch.worker import resources

    settings = configured
    url = settings.database_url
    capped = tenants.add(url, "capped", None, max_calls_per_day=100)
    with session_scope(url) as s:
        s.add(TenantCalls(tenant_id=capped.id, day=tenants.today(), calls=100))
    job_id, _ = insert_job(settings, JobSpec("over", "/p", "/v", "SILENT", lane="backfill",
                                             tenant_id=capped.id))

    def no_staging(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a job over its tenant's quota must not be staged or called")

    monkeypatch.setattr(pipeline, "_stage_media", no_staging)
    before = datetime.now(UTC)
    assert pipeline.run_job(resources(), job_id) == pipeline.Ran.QUEUED
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert (job.state, job.attempts, job.enqueued_at) == ("queued", 0, None)
        due = job.due_at.replace(tzinfo=UTC)
        assert s.scalar(select(func.count()).select_from(Attempt)) == 0
    midnight = datetime.combine(before.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert midnight <= due <= midnight + timedelta(seconds=5)
    assert _calls_today(url, capped.id) == 100  # nothing billed


# -- the next state after an account's refusal ---------------------------------------------
def test_an_account_refusal_waits_for_the_breaker_when_no_allowed_account_may_call(
        database_url, monkeypatch):
    settings = load_settings(database_url=database_url)
    narrow = tenants.add(database_url, "narrow", None, ["a"])
    wide = tenants.add(database_url, "wide", None)
    res = SimpleNamespace(settings=settings, lease=SimpleNamespace(id=LEASE),
                          router=_router("a", "b"), billing=billing.table(), redis=None)

    def due_in(tenant_id: int, key: str) -> float:
        job_id = _job(settings, key, tenant_id)
        answer = Answer("UnauthorizedOperation.Arrears", "error", 200, f"r-{key}",
                        account="a", region="ap-singapore")
        assert record.record_answer(res, job_id, answer) == "queued"  # type: ignore[arg-type]
        with session_scope(database_url) as s:
            due = s.scalar(select(Job.due_at).where(Job.id == job_id))
        return (due.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()

    # b may call for the wide tenant's job at once; the narrow tenant may use only a, whose
    # account cannot call: its job waits for a's breaker, not a moment.
    assert due_in(wide.id, "w") < 2.5
    assert due_in(narrow.id, "n") > settings.breaker_probe_after - 2


# -- tenant add checks regions and accounts against the deployment ------------------------
@pytest.mark.parametrize(("args", "says"), [
    (["--regions", "ap-tokyo"], "unknown region 'ap-tokyo'"),
    (["--regions", "ap-bangkok,eu-frankfurt"], "unknown region 'eu-frankfurt'"),
    (["--accounts", "sg-a,sg-z"], "unknown account 'sg-z'"),
])
def test_tenant_add_refuses_an_unknown_region_or_account(database_url, monkeypatch, tmp_path,
                                                         args, says):
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    monkeypatch.setenv("FACEID_ACCOUNTS_FILE", str(path))
    out = cli(monkeypatch, database_url, "tenant", "add", "t1", *args)
    assert out.exit_code == 2 and says in out.output, out.output
    assert tenants.get(database_url, "t1") is None
    ok = cli(monkeypatch, database_url, "tenant", "add", "t2", "--regions", "ap-bangkok",
             "--accounts", "bkk,sg-b")
    assert ok.exit_code == 0, ok.output
    assert tenants.allowed(database_url, tenants.resolve(database_url, "t2")).accounts == (
        "bkk", "sg-b")


def test_without_an_accounts_file_the_one_account_is_default(database_url, monkeypatch):
    monkeypatch.delenv("FACEID_ACCOUNTS_FILE", raising=False)
    out = cli(monkeypatch, database_url, "tenant", "add", "t1", "--accounts", "th-1")
    assert out.exit_code == 2 and "unknown account 'th-1'" in out.output, out.output
    assert "default" in out.output
    assert cli(monkeypatch, database_url, "tenant", "add", "t1", "--accounts",
               "default").exit_code == 0


# -- tenants' webhook secrets in the worker's logs -----------------------------------------
def test_the_tenants_webhook_secrets_are_redacted_from_the_worker_logs(database_url,
                                                                      monkeypatch):
    import io
    import logging

    from faceid_batch import worker
    from faceid_batch.settings import get_settings

    tenants.add(database_url, "signed", None)
    old = tenants.rotate_secret(database_url, "signed")
    new = tenants.rotate_secret(database_url, "signed")
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    stream = io.StringIO()
    logger = logging.getLogger("test-quota-redaction")
    logger.addHandler(logging.StreamHandler(stream))
    try:
        worker._setup_logging(logger)
        logger.warning("echoed by a receiver: %s and %s", new, old)
    finally:
        logger.handlers.clear()
        get_settings.cache_clear()
    out = stream.getvalue()
    assert "echoed by a receiver" in out
    assert new not in out and old not in out and new[len("whsec_"):] not in out
    # No database (or not upgraded) at start-up: no secrets of tenants, no error.
    monkeypatch.setenv("DATABASE_URL", "sqlite:////nonexistent-dir/x.db")
    get_settings.cache_clear()
    try:
        assert worker._tenant_secrets(get_settings()) == ()
    finally:
        get_settings.cache_clear()
