"""Tenants: the upgrade from a single-tenant database, the commands, keys per tenant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from faceid_batch import tenants
from faceid_batch.admin import tokens
from faceid_batch.cli.main import app as cli_app
from faceid_batch.db import normalise_url, session_scope
from faceid_batch.intake.submit import JobSpec, insert_job
from faceid_batch.migrate import upgrade
from faceid_batch.models import DEFAULT_TENANT_ID, AdminToken, Batch, Job
from faceid_batch.settings import get_settings, load_settings


def cli(monkeypatch, url: str, *args: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli_app, list(args))
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_upgrade_from_0014_puts_every_row_in_the_default_tenant(tmp_path, backend,
                                                                    pg_url_fresh):
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else pg_url_fresh
    if url is None:
        pytest.skip("TEST_POSTGRES_URL not set")
    upgrade(url, "0014")
    engine = create_engine(normalise_url(url))
    t = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO batches (id, name, lane, state, created_at, updated_at, weight, "
            "rows_read, rows_accepted, rows_known, rows_bad) VALUES "
            "(1, 'old', 'backfill', 'active', '2026-03-02 09:15:00', '2026-03-02 09:15:00', "
            "1, 0, 0, 0, 0)")
        for i, batch in ((1, 1), (2, None)):
            conn.execute(Job.__table__.insert().values(
                idempotency_key=f"k{i}", lane="backfill", state="queued",
                liveness_type="SILENT", photo_source="/p", video_source="/v", attempts=0,
                created_at=t, updated_at=t, batch_id=batch))
        conn.exec_driver_sql(
            "INSERT INTO admin_tokens (name, token_sha256, scope, created_at) VALUES "
            "('producer', 'aa', 'submit', '2026-03-02 09:15:00'), "
            "('admin', 'bb', 'admin', '2026-03-02 09:15:00')")
    engine.dispose()
    upgrade(url)
    with session_scope(url) as s:
        assert set(s.execute(select(Job.idempotency_key, Job.tenant_id)).all()) == {
            ("k1", 1), ("k2", 1)}
        old = s.scalar(select(Job.id).where(Job.idempotency_key == "k1"))
        assert s.scalar(select(Batch.tenant_id)) == DEFAULT_TENANT_ID
        assert dict(s.execute(select(AdminToken.name, AdminToken.tenant_id)).all()) == {
            "producer": DEFAULT_TENANT_ID, "admin": None}
    assert [t.name for t in tenants.list_all(url)] == ["default"]
    # A key unique per tenant: the old key again in the default tenant is the old job, in
    # a new tenant (its id taken after the default one's on PostgreSQL too) a new job.
    settings = load_settings(database_url=url)
    other = tenants.add(url, "acme", ["ap-bangkok"])
    assert other.id == 2
    spec = JobSpec("k1", "/p", "/v", "SILENT", lane="backfill")
    assert insert_job(settings, spec) == (old, False)
    new_id, created = insert_job(settings, JobSpec(**{**spec.__dict__, "tenant_id": other.id}))
    assert created and new_id != old


def test_the_same_key_in_two_tenants_is_two_jobs(database_url):
    settings = load_settings(database_url=database_url)
    a = tenants.add(database_url, "tenant-a", None)
    b = tenants.add(database_url, "tenant-b", ["ap-bangkok", "ap-singapore"], ["th-1"])
    spec = JobSpec("signup-1", "/p", "/v", "SILENT", lane="backfill")
    in_a = insert_job(settings, JobSpec(**{**spec.__dict__, "tenant_id": a.id}))
    in_b = insert_job(settings, JobSpec(**{**spec.__dict__, "tenant_id": b.id}))
    again = insert_job(settings, JobSpec(**{**spec.__dict__, "tenant_id": a.id}))
    assert in_a[1] and in_b[1] and in_a[0] != in_b[0]
    assert again == (in_a[0], False)
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 2
    assert tenants.allowed(database_url, b.id) == tenants.Allowed(
        ("ap-bangkok", "ap-singapore"), ("th-1",))
    assert tenants.allowed(database_url, a.id) == tenants.Allowed(None, None)
    assert tenants.allowed(database_url, 999) == tenants.Allowed((), ())


def test_tenant_and_token_commands(database_url, monkeypatch):
    out = cli(monkeypatch, database_url, "tenant", "add", "thai-bank", "--regions",
              "ap-bangkok", "--max-calls-per-day", "5000")
    assert out.exit_code == 0, out.output
    for bad, says in ((["tenant", "add", "thai-bank"], "exists"),
                      (["tenant", "add", "Bad Name"], "refused"),
                      (["tenant", "add", "x", "--regions", "bangkok!"], "not a region"),
                      (["tenant", "add", "y", "--max-calls-per-day", "0"], "above 0"),
                      (["token", "add", "p1", "--scope", "submit", "--tenant", "nope"],
                       "no tenant named 'nope'")):
        out = cli(monkeypatch, database_url, *bad)
        assert out.exit_code == 2 and says in out.output, out.output
    out = cli(monkeypatch, database_url, "token", "add", "p1", "--scope", "submit",
              "--tenant", "thai-bank")
    assert out.exit_code == 0, out.output
    token = out.stdout.strip().splitlines()[-1]
    who = tokens.Authenticator(database_url, None).principal(token)
    assert who is not None and who.tenant == tenants.resolve(database_url, "thai-bank")
    listed = cli(monkeypatch, database_url, "token", "list").stdout
    assert "thai-bank" in listed
    shown = cli(monkeypatch, database_url, "tenant", "show", "thai-bank").stdout
    assert "ap-bangkok" in shown and "5000" in shown and "none" in shown
    listing = cli(monkeypatch, database_url, "tenant", "list").stdout
    assert "default" in listing and "WEBHOOK_SECRET" in listing
    assert cli(monkeypatch, database_url, "tenant", "show", "nope").exit_code == 1


def test_calls_are_counted_per_tenant_and_day_and_reports_filter_by_tenant(database_url):
    from faceid_batch.admin import cost, queries
    from faceid_batch.models import Attempt
    from faceid_batch.outcome import persist

    settings = load_settings(database_url=database_url)
    b = tenants.add(database_url, "tenant-b", None, max_calls_per_day=2)
    mine, _ = insert_job(settings, JobSpec("k", "/p", "/v", "SILENT", lane="backfill",
                                           tenant_id=b.id))
    default, _ = insert_job(settings, JobSpec("k", "/p", "/v", "SILENT", lane="backfill"))
    day = tenants.today()
    with session_scope(database_url) as s:
        for job in (mine, mine, default):
            s.execute(persist._COUNT_TENANT_CALL, {"job_id": job, "day": day})
            s.add(Attempt(job_id=job, number=1, code="Success", kind="success",
                          channel="result", billable=True))
    assert tenants.calls_on(database_url, b.id) == 2
    assert tenants.calls_on(database_url, DEFAULT_TENANT_ID) == 1
    assert tenants.over_quota(database_url, b.id) == (2, 2)
    assert tenants.over_quota(database_url, DEFAULT_TENANT_ID) is None  # no quota
    tenants.set_quota(database_url, "tenant-b", 3)
    assert tenants.over_quota(database_url, b.id) is None

    listed = queries.list_results(database_url, queries.Filters(tenant_id=b.id)).rows
    assert [r.id for r in listed] == [mine]
    assert cost.cost_report(settings, tenant="tenant-b").billable == 2
    assert cost.cost_report(settings).billable == 3
    with pytest.raises(cost.CostError, match="no tenant named"):
        cost.cost_report(settings, tenant="nope")
