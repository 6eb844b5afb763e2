"""Acting on a filtered subset of a batch, dry run first: retry failed jobs by code, resend
completion callbacks by code and verdict.

SQL only: the rows are built with the models (no Redis, no worker). The property every test
leans on: the plan counts exactly the jobs its action then touches, and nothing else moves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from faceid_batch.bulk import batches
from faceid_batch.db import session_scope
from faceid_batch.models import (
    Batch,
    BatchAction,
    BatchCalls,
    BatchState,
    Job,
    JobState,
    WebhookMessage,
)
from faceid_batch.settings import load_settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUT = "FailedOperation.DownLoadTimeoutError"
SOURCE = "Local.SourceTimeout"
HOOK = "https://receiver.example/hook"

# key: (state, result_code, passed, attempts, callback URL)
ALPHA: dict[str, tuple[str, str | None, bool | None, int, str | None]] = {
    "t1": ("failed", TIMEOUT, None, 6, HOOK),
    "t2": ("failed", TIMEOUT, None, 6, None),
    "s1": ("failed", SOURCE, None, 0, HOOK),
    "i1": ("failed", "InvalidParameter", None, 1, None),
    "x1": ("failed", batches.CANCELLED_CODE, None, 0, HOOK),
    "ok": ("completed", "Success", True, 1, HOOK),
    "fake": ("completed", "FailedOperation.LivessDetectFake", False, 1, HOOK),
    "low": ("completed", "FailedOperation.CompareLowSimilarity", False, 1, None),
    "ref": ("refused", "FailedOperation.SilentTooShort", None, 0, HOOK),
    "q1": ("queued", None, None, 0, HOOK),
}
BETA = {
    "b-t1": ("failed", TIMEOUT, None, 6, HOOK),
    "b-ok": ("completed", "Success", True, 1, HOOK),
}


def _add_jobs(session, batch_id: int, rows: dict[str, tuple]) -> None:
    for key, (state, code, passed, attempts, url) in rows.items():
        final = state in JobState.final()
        session.add(Job(idempotency_key=key, batch_id=batch_id, liveness_type="SILENT",
                        photo_source="p.jpg", video_source="v.mp4", state=state,
                        result_code=code, passed=passed, attempts=attempts,
                        callback_url=url, created_at=T0, updated_at=T0,
                        started_at=T0 if attempts else None,
                        finished_at=T0 if final else None,
                        due_at=None if final else T0,
                        error_message="gave up" if state == "failed" else None))


@pytest.fixture
def two_batches(database_url):
    """Batch alpha: failed jobs of four codes (one closed by a cancel), verdicts, a refusal,
    a queued job; 6 of its jobs had a call, and it paid 15 calls (4 more were free).
    Batch beta: a failed job and a passed one, no call tallied."""
    with session_scope(database_url) as s:
        alpha, beta = Batch(name="alpha"), Batch(name="beta")
        s.add_all([alpha, beta])
        s.flush()
        _add_jobs(s, alpha.id, ALPHA)
        _add_jobs(s, beta.id, BETA)
        s.add_all([
            BatchCalls(batch_id=alpha.id, minute=T0, code="Success", billable=True,
                       calls=3, waited_ms=0),
            BatchCalls(batch_id=alpha.id, minute=T0, code=TIMEOUT, billable=True,
                       calls=12, waited_ms=0),
            BatchCalls(batch_id=alpha.id, minute=T0, code="InvalidParameter",
                       billable=False, calls=4, waited_ms=0),
        ])
    return database_url, alpha.id, beta.id


def _settings(url: str, price: str = "0") -> Any:
    return load_settings(database_url=url, faceid_price_per_call=price,
                         faceid_price_currency="EUR")


def _jobs(url: str) -> dict[str, dict[str, Any]]:
    """Every job row, every column, by key."""
    with session_scope(url) as s:
        rows = s.execute(select(Job.__table__)).mappings().all()
    return {r["idempotency_key"]: dict(r) for r in rows}


def _changed(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> set[str]:
    return {key for key in before if before[key] != after[key]}


def _actions(url: str) -> list[BatchAction]:
    with session_scope(url) as s:
        return list(s.scalars(select(BatchAction).order_by(BatchAction.id)))


def _messages(url: str) -> list[tuple[str, str]]:
    """(job key, state) of every webhook message, in id order."""
    with session_scope(url) as s:
        return [tuple(r) for r in s.execute(
            select(Job.idempotency_key, WebhookMessage.state)
            .join(Job, Job.id == WebhookMessage.job_id).order_by(WebhookMessage.id))]


# -- retry --------------------------------------------------------------------------------
def test_retry_plan_counts_exactly_the_jobs_retry_restarts(two_batches):
    url, alpha, _ = two_batches
    settings = _settings(url)
    plan = batches.retry_plan(settings, alpha, TIMEOUT)
    assert (plan.jobs, plan.by_code, plan.not_called) == (2, {TIMEOUT: 2}, 0)
    before = _jobs(url)
    assert batches.retry(settings, alpha, TIMEOUT, actor="cli:ops@host",
                         expect=plan.jobs) == 2
    after = _jobs(url)
    # The two that failed with the code run again from their first attempt; nothing else
    # moved: other codes, the cancelled one, verdicts, the refusal, the queued job, beta.
    assert _changed(before, after) == {"t1", "t2"}
    for key in ("t1", "t2"):
        job = after[key]
        assert (job["state"], job["attempts"], job["result_code"], job["finished_at"],
                job["error_message"]) == ("queued", 0, None, None, None)
        assert job["due_at"] is not None and job["enqueued_at"] is None
    assert batches.retry_plan(settings, alpha, TIMEOUT).jobs == 0

    # Without a code: every failed job but the one closed by a cancel.
    plan = batches.retry_plan(settings, alpha)
    assert plan.by_code == {SOURCE: 1, "InvalidParameter": 1}
    before = _jobs(url)
    assert batches.retry(settings, alpha, actor="cli:ops@host") == plan.jobs == 2
    assert _changed(before, _jobs(url)) == {"s1", "i1"}
    assert _jobs(url)["x1"]["state"] == "failed"

    actions = _actions(url)
    assert [(a.batch_id, a.action, a.surface, a.actor) for a in actions] == [
        (alpha, "retry", "cli", "cli:ops@host")] * 2
    assert TIMEOUT in (actions[0].detail or "") and "2" in (actions[0].detail or "")


def test_retry_failed_is_retry_with_no_code(two_batches):
    url, alpha, beta = two_batches
    settings = _settings(url)
    before = _jobs(url)
    assert batches.retry_failed(settings, alpha) == 4
    assert _changed(before, _jobs(url)) == {"t1", "t2", "s1", "i1"}
    assert _actions(url) == []  # the old command writes no action row


def test_estimate_uses_the_observed_billable_ratio_and_the_price(two_batches):
    url, alpha, beta = two_batches
    plan = batches.retry_plan(_settings(url, "0.0125"), alpha)
    # 15 billable calls over the 6 jobs that had a call: 2.5 each (the 4 free calls do not
    # count); 4 jobs to retry -> 10 calls, 0.125 EUR.
    assert plan.observed and plan.calls_per_job == pytest.approx(2.5)
    assert (plan.jobs, plan.calls, plan.amount) == (4, 10, Decimal("0.1250"))
    assert plan.by_code == {TIMEOUT: 2, SOURCE: 1, "InvalidParameter": 1}
    # A job that failed before any call is counted as calling: an upper bound, said so.
    assert plan.not_called == 1 and plan.upper_bound
    text = plan.describe()
    assert "0.1250 EUR" in text and "upper bound" in text
    data = plan.as_dict()
    assert data["estimated_amount"] == "0.1250" and data["currency"] == "EUR"
    assert (data["estimated_calls"], data["upper_bound"]) == (10, True)
    # Rounded up: 3 jobs × 2.5 = 7.5 -> 8.
    assert batches.retry_plan(_settings(url, "1"), alpha, TIMEOUT).calls == 5
    with session_scope(url) as s:
        s.add(Job(idempotency_key="t3", batch_id=alpha, liveness_type="SILENT",
                  photo_source="p", video_source="v", state="failed", result_code=TIMEOUT))
    assert batches.retry_plan(_settings(url, "1"), alpha, TIMEOUT).calls == 8

    # No call observed in beta: one call per job; no price: no amount, and it says so.
    plan = batches.retry_plan(_settings(url), beta)
    assert (plan.jobs, plan.calls, plan.observed, plan.amount) == (1, 1, False, None)
    assert not plan.upper_bound
    assert "not estimated" in plan.describe() and "0 EUR" not in plan.describe()
    assert plan.as_dict()["estimated_amount"] is None


def test_expect_mismatch_refuses_and_changes_nothing(two_batches):
    url, alpha, _ = two_batches
    settings = _settings(url)
    plan = batches.retry_plan(settings, alpha, TIMEOUT)
    with session_scope(url) as s:  # one more job fails with the code after the dry run
        s.add(Job(idempotency_key="late", batch_id=alpha, liveness_type="SILENT",
                  photo_source="p", video_source="v", state="failed", result_code=TIMEOUT))
    before = _jobs(url)
    with pytest.raises(batches.BatchError, match="dry run counted 2 .* 3 now"):
        batches.retry(settings, alpha, TIMEOUT, actor="web-token", surface="web",
                      expect=plan.jobs)
    assert _changed(before, _jobs(url)) == set() and _actions(url) == []
    assert batches.retry(settings, alpha, TIMEOUT, actor="web-token", surface="web",
                         expect=3) == 3


def test_retry_in_a_paused_batch_parks_and_a_cancelled_batch_refuses(two_batches):
    url, alpha, beta = two_batches
    settings = _settings(url)
    with session_scope(url) as s:
        s.get(Batch, alpha).state = BatchState.PAUSED.value
        s.get(Batch, beta).state = BatchState.CANCELLED.value
    plan = batches.retry_plan(settings, alpha, SOURCE)
    assert plan.paused and "parked" in plan.describe()
    assert batches.retry(settings, alpha, SOURCE, actor="a", expect=1) == 1
    job = _jobs(url)["s1"]
    assert (job["state"], job["due_at"], job["enqueued_at"]) == ("paused", None, None)
    before = _jobs(url)
    with pytest.raises(batches.BatchError, match="cancelled"):
        batches.retry(settings, beta, actor="a")
    with pytest.raises(batches.BatchError, match="no such batch"):
        batches.retry_plan(settings, 999_999)
    with pytest.raises(ValueError, match="surface"):
        batches.retry(settings, alpha, actor="a", surface="phone")
    assert _changed(before, _jobs(url)) == set()


# -- resend callbacks ---------------------------------------------------------------------
def test_resend_queues_one_callback_per_selected_job_with_a_url(two_batches):
    url, alpha, _ = two_batches
    settings = _settings(url)
    plan = batches.resend_plan(settings, alpha, verdict=False)
    # Fail verdicts: "fake" has a URL, "low" has none.
    assert (plan.jobs, plan.by_code, plan.without_url) == (
        1, {"FailedOperation.LivessDetectFake": 1}, 1)
    before = _jobs(url)
    assert batches.resend_callbacks(settings, alpha, verdict=False, actor="a",
                                    expect=plan.jobs) == 1
    assert _messages(url) == [("fake", "pending")]
    assert _changed(before, _jobs(url)) == set()  # no job moves: no call, no cost

    # Every finished job: those with a URL, except "fake" whose callback is pending now;
    # the queued job and beta's jobs get nothing.
    plan = batches.resend_plan(settings, alpha)
    assert plan.by_code == {TIMEOUT: 1, SOURCE: 1, batches.CANCELLED_CODE: 1, "Success": 1,
                            "FailedOperation.SilentTooShort": 1}
    assert (plan.jobs, plan.pending, plan.without_url) == (5, 1, 3)
    assert batches.resend_callbacks(settings, alpha, actor="a", expect=5) == 5
    keys = [k for k, _ in _messages(url)]
    assert sorted(keys) == sorted(["fake", "t1", "s1", "x1", "ok", "ref"])
    with session_scope(url) as s:
        rows = s.scalars(select(WebhookMessage)).all()
        assert all(m.due_at is not None and m.attempts == 0 and m.claim is None
                   for m in rows)
    assert batches.resend_plan(settings, alpha).jobs == 0
    assert [a.action for a in _actions(url)] == ["resend-callbacks"] * 2


def test_resend_filters_by_code_and_verdict_and_expect_refuses(two_batches):
    url, alpha, _ = two_batches
    settings = _settings(url)
    assert batches.resend_plan(settings, alpha, "Success", True).jobs == 1
    assert batches.resend_plan(settings, alpha, "Success", False).jobs == 0
    assert batches.resend_plan(settings, alpha, TIMEOUT).jobs == 1  # t2 has no URL
    assert batches.resend_plan(settings, alpha, verdict=True).by_code == {"Success": 1}
    with pytest.raises(batches.BatchError, match="nothing was done"):
        batches.resend_callbacks(settings, alpha, "Success", actor="a", expect=2)
    assert _messages(url) == [] and _actions(url) == []
    assert batches.resend_plan(settings, alpha, "Success").as_dict() == {
        "batch_id": alpha, "code": "Success", "verdict": None, "jobs": 1,
        "by_code": {"Success": 1}, "without_url": 0, "pending": 0}


# -- the commands ---------------------------------------------------------------------------
@pytest.fixture
def cli(two_batches, monkeypatch):
    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    url = two_batches[0]
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FACEID_PRICE_PER_CALL", "2")
    get_settings.cache_clear()

    def run(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(app, ["batch", *args], input=input)

    yield run
    get_settings.cache_clear()


def test_cli_retry_dry_run_changes_nothing_and_yes_acts(two_batches, cli):
    url, alpha, _ = two_batches
    before = _jobs(url)
    dry = cli("retry", str(alpha), "--code", TIMEOUT, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"2 failed jobs (code {TIMEOUT})" in dry.output
    assert "10 USD (5 x 2 USD)" in dry.output
    assert "dry run: nothing changed" in dry.output
    refused = cli("retry", str(alpha), "--code", TIMEOUT, input="n\n")
    assert refused.exit_code == 1 and "nothing changed" in refused.output
    assert _changed(before, _jobs(url)) == set() and _actions(url) == []

    done = cli("retry", str(alpha), "--code", TIMEOUT, "--yes")
    assert done.exit_code == 0, done.output
    assert "2 failed jobs queued again" in done.output
    assert _changed(before, _jobs(url)) == {"t1", "t2"}
    (action,) = _actions(url)
    assert action.surface == "cli" and action.actor.startswith("cli:")

    confirmed = cli("retry", str(alpha), input="y\n")
    assert confirmed.exit_code == 0 and "2 failed jobs queued again" in confirmed.output
    assert cli("retry", "999999", "--dry-run").exit_code == 2


def test_cli_resend_callbacks(two_batches, cli):
    url, alpha, _ = two_batches
    dry = cli("resend-callbacks", str(alpha), "--verdict", "fail", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "1 finished jobs (fail-verdict)" in dry.output and "no callback URL" in dry.output
    assert _messages(url) == []
    done = cli("resend-callbacks", str(alpha), "--verdict", "fail", "--yes")
    assert done.exit_code == 0 and "1 callbacks queued again" in done.output
    assert _messages(url) == [("fake", "pending")]
    bad = cli("resend-callbacks", str(alpha), "--verdict", "maybe")
    assert bad.exit_code == 2 and "--verdict" in bad.output
