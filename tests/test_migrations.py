"""Models and Alembic migrations agree, on SQLite and (when configured) PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from faceid_batch.db import normalise_url
from faceid_batch.migrate import current, upgrade
from faceid_batch.models import Base


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_head_matches_models(tmp_path, backend, pg_url_fresh):
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else pg_url_fresh
    if url is None:
        pytest.skip("TEST_POSTGRES_URL not set")
    upgrade(url)
    assert current(url) is not None
    engine = create_engine(normalise_url(url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"jobs", "attempts", "results", "best_frames"} <= tables


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_upgrade_counts_existing_calls_and_sims(tmp_path, backend, pg_url_fresh):
    """Revision 0012 gives existing jobs their Sim and existing batches their calls by
    minute, in the form new rows take (the dashboard reads both alike)."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from faceid_batch.admin import dashboard
    from faceid_batch.db import session_scope
    from faceid_batch.models import Attempt, Batch, Job, Result

    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else pg_url_fresh
    if url is None:
        pytest.skip("TEST_POSTGRES_URL not set")
    upgrade(url, "0011")
    engine = create_engine(normalise_url(url))
    t = datetime(2026, 3, 2, 9, 15, 42, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(Batch.__table__.insert().values(
            id=1, name="old", lane="backfill", state="active", created_at=t, updated_at=t,
            weight=1.0, rows_read=0, rows_accepted=0, rows_known=0, rows_bad=0))
        for i, batch in ((1, 1), (2, 1), (3, None)):
            conn.execute(Job.__table__.insert().values(
                id=i, idempotency_key=f"k{i}", lane="backfill", state="completed",
                liveness_type="SILENT", photo_source="/p", video_source="/v", attempts=1,
                created_at=t, updated_at=t, batch_id=batch, result_code="Success",
                passed=True))
            conn.execute(Result.__table__.insert().values(
                job_id=i, result="Success", sim=80.0 + i, passed=True, threshold=70.0,
                created_at=t))
            for n, code in enumerate(("FailedOperation.DownLoadTimeoutError", "Success"), 1):
                conn.execute(Attempt.__table__.insert().values(
                    job_id=i, number=n, started_at=t, latency_ms=1, code=code, kind="x",
                    channel="result", counted=True, billable=code == "Success"))
    engine.dispose()
    upgrade(url)
    with session_scope(url) as s:
        assert dict(s.execute(select(Job.id, Job.sim)).all()) == {1: 81.0, 2: 82.0, 3: 83.0}
    minutes = dashboard.calls_by_minute(url, 1, since=t.replace(second=0))
    assert sorted((m.code, m.billable, m.calls) for m in minutes) == [
        ("FailedOperation.DownLoadTimeoutError", False, 2), ("Success", True, 2)]
    assert {m.minute for m in minutes} == {t.replace(second=0)}
    assert dashboard.call_totals(url, 1) == dashboard.CallTotals(4, 2, 0)
