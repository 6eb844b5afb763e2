"""A batch's dashboard: the calls counted with each attempt, the panels read from the
database, the ETA from the batch's fair share, one read per batch however many look."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from faceid_batch.admin import dashboard
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
from faceid_batch.models import Batch, BatchCalls, BatchState, Job, JobState, Lane
from faceid_batch.outcome import record
from faceid_batch.scheduling import schedule
from faceid_batch.settings import load_settings
from faceid_batch.times import utcnow
from faceid_batch.worker import Resources
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY


@pytest.fixture
def res(database_url):
    settings = load_settings(
        database_url=database_url, faceid_secret_id=FAKE_SECRET_ID,
        faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET, cos_domain="127.0.0.1:9",
        cos_scheme="http", egress_allow_networks="127.0.0.1/32")
    res = Resources(settings)
    res.__dict__["lease"] = SimpleNamespace(id="test-lease")  # no Redis heartbeat needed
    return res


def _batch(url: str, name: str, *, weight: float = 1.0,
           state: BatchState = BatchState.ACTIVE) -> int:
    with session_scope(url) as s:
        batch = Batch(name=name, lane=Lane.BACKFILL, state=state, weight=weight)
        s.add(batch)
        s.flush()
        return batch.id


def _claimed_job(res: Resources, tmp_path, key: str, batch_id: int | None) -> int:
    photo, video = tmp_path / f"{key}.jpg", tmp_path / f"{key}.mp4"
    photo.write_bytes(jpeg_bytes(22, 20_000))
    video.write_bytes(mp4_bytes(23, 200_000))
    spec = validate_spec(JobSpec(key, str(photo), str(video), "SILENT"), res.settings)
    job_id = insert_job(res.settings, spec)[0]
    with session_scope(res.settings.database_url) as s:
        s.get(Job, job_id).batch_id = batch_id
    with session_scope(res.settings.database_url) as s:
        assert schedule.claim(s, job_id, res.lease.id)
    return job_id


def test_each_call_of_a_batch_is_counted_in_its_minute(res, tmp_path):
    url = res.settings.database_url
    batch_id = _batch(url, "counted")
    first = _claimed_job(res, tmp_path, "c-1", batch_id)
    second = _claimed_job(res, tmp_path, "c-2", batch_id)
    alone = _claimed_job(res, tmp_path, "c-3", None)
    t0 = utcnow().replace(second=10, microsecond=0).timestamp()
    transient = Answer("FailedOperation.DownLoadTimeoutError", "error", 200, "r-1",
                       started_at=t0, waited_ms=400)
    assert record.record_answer(res, first, transient) == JobState.RETRYING.value
    with session_scope(url) as s:
        s.get(Job, first).due_at = utcnow() - timedelta(seconds=1)  # its backoff over
    with session_scope(url) as s:
        assert schedule.claim(s, first, res.lease.id)
    record.record_answer(res, first, Answer("Success", "result", 200, "r-2", sim=88.0,
                                            started_at=t0 + 5, waited_ms=100))
    record.record_answer(res, second, Answer("Success", "result", 200, "r-3", sim=41.0,
                                             started_at=t0 + 6, waited_ms=50))
    record.record_answer(res, alone, Answer("Success", "result", 200, "r-4", sim=90.0,
                                            started_at=t0 + 7))
    with session_scope(url) as s:
        rows = {(r.code, r.billable): (r.calls, r.waited_ms, r.minute.second)
                for r in s.scalars(select(BatchCalls))}
        sims = dict(s.execute(select(Job.id, Job.sim)).all())
    # The job of no batch adds nothing; the two Success calls share their minute's row.
    billed = res.billing.billable("FailedOperation.DownLoadTimeoutError")
    assert rows == {("FailedOperation.DownLoadTimeoutError", billed): (1, 400, 0),
                    ("Success", True): (2, 150, 0)}
    assert sims == {first: 88.0, second: 41.0, alone: 90.0}

    board = dashboard.panels(url, batch_id, budget=20, threshold=70, price=Decimal("0.05"))
    assert board.by_state == {JobState.COMPLETED.value: 2}
    assert board.outcomes.passed == 1 and board.outcomes.failed_verdict == {"Success": 1}
    assert board.calls == 3 and board.billable_calls == 2 + billed
    assert board.cost == Decimal("0.05") * (2 + billed)
    assert board.attempts == {1: 1, 2: 1}
    assert board.waited_per_call()[0][1] == pytest.approx(550 / 3 / 1000)
    hist = {lo: n for lo, _hi, n in board.sim_histogram}
    assert hist[85.0] == 1 and hist[40.0] == 1 and sum(hist.values()) == 2
    assert board.eta_seconds == 0.0


def _add_jobs(url: str, batch_id: int, rows: list[tuple[JobState, str | None, bool | None,
                                                         int, float | None, bool]]) -> None:
    """Jobs of a batch as (state, code, passed, attempts, sim, due)."""
    now = utcnow()
    with session_scope(url) as s:
        n = s.query(Job).count()
        for i, (state, code, passed, attempts, sim, due) in enumerate(rows):
            s.add(Job(idempotency_key=f"b{batch_id}-{n + i}", lane=Lane.BACKFILL, state=state,
                      liveness_type="SILENT", photo_source="/p.jpg", video_source="/v.mp4",
                      result_code=code, passed=passed, attempts=attempts, sim=sim,
                      batch_id=batch_id, due_at=now if due else None))


def test_panels_count_outcomes_and_the_eta_follows_the_fair_share(database_url):
    url = database_url
    big = _batch(url, "big", weight=3.0)
    small = _batch(url, "small", weight=1.0)
    paused = _batch(url, "paused", state=BatchState.PAUSED)
    _add_jobs(url, big, [
        (JobState.COMPLETED, "Success", True, 1, 91.2, False),
        (JobState.COMPLETED, "Success", True, 2, 70.0, False),
        (JobState.COMPLETED, "Success", False, 1, 69.9, False),
        (JobState.COMPLETED, "FailedOperation.LivessDetectFake", False, 1, None, False),
        (JobState.REFUSED, "FailedOperation.SilentTooShort", None, 0, None, False),
        (JobState.FAILED, "Local.SourceTimeout", None, 0, None, False),
        (JobState.FAILED, "Local.BatchCancelled", None, 0, None, False),
        (JobState.FAILED, "InvalidParameterValue", None, 1, None, False),
        *[(JobState.QUEUED, None, None, 0, None, True)] * 12,
    ])
    _add_jobs(url, small, [(JobState.QUEUED, None, None, 0, None, True)] * 3)
    _add_jobs(url, paused, [(JobState.PAUSED, None, None, 0, None, False)] * 3)

    board = dashboard.panels(url, big, budget=20, threshold=70)
    assert board.total == 20 and board.done == 8 and board.remaining == 12
    o = board.outcomes
    assert (o.passed, o.refused, o.cancelled) == (2, 1, 1)
    assert o.failed_verdict == {"Success": 1, "FailedOperation.LivessDetectFake": 1}
    assert o.local == {"Local.SourceTimeout": 1}
    assert o.failed == {"InvalidParameterValue": 1}
    hist = {lo: n for lo, _hi, n in board.sim_histogram}
    assert (hist[90.0], hist[70.0], hist[65.0]) == (1, 1, 1)
    assert board.attempts == {0: 3, 1: 4, 2: 1}
    # Budget 20, no onboarding: the big batch (weight 3) gets 15/s beside the small one
    # (weight 1); the paused batch has nothing due and takes no share.
    assert board.share.batches == 2
    assert board.share.calls_per_second == pytest.approx(15.0)
    assert board.eta_seconds == pytest.approx(12 / 15.0)

    # Paused, it gets nothing: no ETA (not an ETA from an old rate).
    with session_scope(url) as s:
        s.get(Batch, big).state = BatchState.PAUSED
    assert dashboard.panels(url, big, budget=20, threshold=70).eta_seconds is None
    with pytest.raises(dashboard.DashboardError, match="no such batch"):
        dashboard.panels(url, 9999, budget=20, threshold=70)


def test_many_viewers_cost_one_read_per_batch_and_ttl():
    now = [0.0]
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def read(batch_id: int):  # type: ignore[no-untyped-def]
        calls.append(batch_id)
        started.set()
        release.wait(5)
        return SimpleNamespace(batch_id=batch_id, n=len(calls))

    cache = dashboard.Panels(read, ttl=3.0, clock=lambda: now[0])  # type: ignore[arg-type]
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(7))) for _ in range(20)]
    for t in threads:
        t.start()
    assert started.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == [7] and len(got) == 20 and all(g is got[0] for g in got)
    now[0] = 2.9
    assert cache.get(7) is got[0] and calls == [7]
    now[0] = 3.1
    assert cache.get(7) is not got[0] and calls == [7, 7]
    cache.forget(7)
    cache.get(7)
    assert calls == [7, 7, 7] and cache.reads == 3


def test_calls_by_minute_since(database_url):
    url = database_url
    batch_id = _batch(url, "minutes")
    t = utcnow().replace(second=0, microsecond=0)
    with session_scope(url) as s:
        for i in range(5):
            s.add(BatchCalls(batch_id=batch_id, minute=t - timedelta(minutes=i), code="Success",
                             billable=True, calls=10 + i, waited_ms=0))
    got = dashboard.calls_by_minute(url, batch_id, since=t - timedelta(minutes=2))
    assert [m.calls for m in got] == [12, 11, 10]
    assert got[0].minute < got[-1].minute


def test_the_series_is_the_last_hours_and_the_totals_the_whole_life(database_url):
    url = database_url
    batch_id = _batch(url, "long")
    last = utcnow().replace(second=0, microsecond=0) - timedelta(hours=5)
    with session_scope(url) as s:
        for i in range(6 * 60):  # six hours, the newest five hours ago
            s.add(BatchCalls(batch_id=batch_id, minute=last - timedelta(minutes=i),
                             code="Success", billable=i % 2 == 0, calls=1, waited_ms=10))
    series = dashboard.calls_by_minute(url, batch_id)
    assert len(series) == 181 and series[-1].minute == last
    assert series[0].minute == last - dashboard.SERIES_WINDOW
    assert dashboard.call_totals(url, batch_id) == dashboard.CallTotals(360, 180, 3600)
    assert dashboard.calls_by_minute(url, _batch(url, "none")) == []


def test_an_upserted_minute_meets_the_orm_row_of_the_same_minute(res, tmp_path):
    url = res.settings.database_url
    batch_id = _batch(url, "formats")
    job = _claimed_job(res, tmp_path, "f-1", batch_id)
    minute = utcnow().replace(second=0, microsecond=0)
    with session_scope(url) as s:
        s.add(BatchCalls(batch_id=batch_id, minute=minute, code="Success", billable=True,
                         calls=5, waited_ms=0))
    record.record_answer(res, job, Answer("Success", "result", 200, "r-f", sim=80.0,
                                          started_at=minute.timestamp() + 30))
    with session_scope(url) as s:
        # One row: the upsert's minute is stored exactly as the ORM stores it.
        assert [r.calls for r in s.scalars(select(BatchCalls))] == [6]
    assert [m.calls for m in dashboard.calls_by_minute(url, batch_id, since=minute)] == [6]


def test_each_account_has_its_line_against_the_budget(database_url):
    from faceid_batch.admin import dashboard_pages

    url = database_url
    batch_id = _batch(url, "two accounts")
    t = utcnow().replace(second=0, microsecond=0)
    with session_scope(url) as s:
        for i in range(3):
            for account, calls in (("sg-a", 1200), ("sg-b", 600)):
                s.add(BatchCalls(batch_id=batch_id, minute=t - timedelta(minutes=i),
                                 code="Success", billable=True, account=account,
                                 calls=calls, waited_ms=0))
    board = dashboard.panels(url, batch_id, budget=40, threshold=70,
                             budgets={"sg-a": 20.0, "sg-b": 20.0})
    lines = board.per_account()
    assert set(lines) == {"sg-a", "sg-b"}
    assert [v for _, v in lines["sg-a"]] == [20.0] * 3
    assert [v for _, v in lines["sg-b"]] == [10.0] * 3
    assert board.calls == 3 * 1800
    html = dashboard_pages.panels(board)
    assert "sg-a (20/s)" in html and "sg-b (20/s)" in html and "budget 40/s" in html
