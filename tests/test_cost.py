"""Cost accounting: the billing table, the attempt rows, `faceid-batch cost`.

The end-to-end test runs a batch with scripted transient and non-billed answers, a duplicate
key and a video preflight refuses through a real worker, and checks the report against the
simulator's own call log, which marks each call it would charge for (``charged``: its
engine answered Success or FailedOperation.*).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from faceid_batch.admin.cost import Scope, compute, cost_report
from faceid_batch.call import billing
from faceid_batch.call.errors import EXACT, PREFIXES, Kind, classify
from faceid_batch.call.faceid_client import Answer
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import mp4_bytes, write_pair
from faceid_batch.models import Attempt, Batch, DedupeHit, Job, JobState
from faceid_batch.outcome.persist import attempt_columns
from faceid_batch.settings import SettingsError, load_settings
from faceid_sim.liveness import Outcome
from helpers import file_md5, sim_calls, sim_script, wait_until

# A copy of ../shared/seed/000_c33f264b792dbe5a.txt (the API contract).
SEED = Path(__file__).resolve().parents[1] / "docs" / "api-contract.txt"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def seed_codes() -> list[str]:
    return re.findall(r"^\| ((?:FailedOperation|Invalid|Unauthorized|Unsupported)[\w.]*) \|",
                      SEED.read_text(), flags=re.M)


# -- the billing table ----------------------------------------------------------------------
def test_every_known_code_has_an_explicit_billing_decision():
    """Each code of the error table, each family and each seed code is decided by a row of
    the table, never by the fallback for unknown codes."""
    table = billing.table()
    codes = set(EXACT) | set(seed_codes()) | {p for p, _ in PREFIXES} | {
        p + ".SomethingNew" for p, _ in PREFIXES}
    assert len(seed_codes()) >= 50
    undecided = sorted(c for c in codes if table.decide(c) is billing.UNKNOWN)
    assert undecided == []
    for code in codes:
        assert table.decide(code).why  # every decision says why


@pytest.mark.parametrize("code,billable", [
    ("Success", True),
    ("FailedOperation.LivessDetectFake", True),
    ("FailedOperation.DownLoadTimeoutError", True),  # transient, but the service answered
    ("FailedOperation.UnKnown", True),
    ("InvalidParameter", False),
    ("InvalidParameterValue", False),
    ("InvalidParameterValue.NewThing", False),
    ("InternalError", False),
    ("UnauthorizedOperation.Arrears", False),
    ("AuthFailure.SignatureFailure", False),
    ("RequestLimitExceeded", False),
    ("MissingParameter", False),
    ("UnsupportedOperation", False),
    ("ResourceUnavailable", False),
    ("ClientError.ReadTimeout", False),
    ("ClientError.ConnectTimeout", False),
    ("Brand.NewCode", True),  # unknown: counted as billed, the estimate errs high
])
def test_default_decisions(code, billable):
    assert billing.table().billable(code) is billable


def test_defaults_agree_with_the_simulators_charge_for_every_tencent_code():
    """The simulator (a separate package) charges what its engine answered; our table must
    say the same for every Tencent code it can answer (ClientError.* are ours, not answers)."""
    table = billing.table()
    for code in set(EXACT) | set(seed_codes()):
        if code.startswith("ClientError."):
            continue
        charged = Outcome(code, "error", "", 0.0, None, scripted=False).charged
        assert table.billable(code) is charged, code


def test_overrides_come_first_and_first_match_wins():
    table = billing.table("InternalError=billable, FailedOperation.Lip*=free,"
                          "FailedOperation.LipVoiceLow=billable")
    assert table.billable("InternalError") is True
    assert table.billable("InternalError.DbError") is False  # exact, not a prefix
    assert table.billable("FailedOperation.LipMoveSmall") is False
    assert table.billable("FailedOperation.LipVoiceLow") is False  # the earlier prefix won
    assert table.billable("FailedOperation.SilentTooShort") is True
    assert table.decide("InternalError").why == "BILLING_OVERRIDES override"
    assert billing.table("").rules == billing.DEFAULT_RULES


@pytest.mark.parametrize("bad", ["InternalError", "InternalError=maybe", "Bad Code=free",
                                 "*=free", "A**=free", "=billable"])
def test_a_bad_override_names_the_setting(bad):
    with pytest.raises(billing.BillingError, match="^BILLING_OVERRIDES: "):
        billing.parse_overrides(bad)
    with pytest.raises(SettingsError, match="BILLING_OVERRIDES"):
        load_settings(billing_overrides=bad)


def test_bad_price_settings_name_the_variable():
    with pytest.raises(SettingsError, match="FACEID_PRICE_PER_CALL"):
        load_settings(faceid_price_per_call="-0.01")
    with pytest.raises(SettingsError, match="FACEID_PRICE_PER_CALL"):
        load_settings(faceid_price_per_call="ten")
    with pytest.raises(SettingsError, match="FACEID_PRICE_CURRENCY"):
        load_settings(faceid_price_currency="dollars")
    assert load_settings(faceid_price_per_call="0.0125").faceid_price_per_call == Decimal(
        "0.0125")


def test_cli_refuses_a_bad_override(monkeypatch, tmp_path):
    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("BILLING_OVERRIDES", "InternalError=sometimes")
    get_settings.cache_clear()
    try:
        run = CliRunner().invoke(app, ["cost"])
    finally:
        get_settings.cache_clear()
    assert run.exit_code == 2
    assert "BILLING_OVERRIDES" in run.output and "Traceback" not in run.output


# -- attempt rows ---------------------------------------------------------------------------
def _job(session, key: str, batch_id: int | None = None, state: str = "completed",
         created_at: datetime = T0) -> Job:
    job = Job(idempotency_key=key, liveness_type="SILENT", photo_source="p.jpg",
              video_source="v.mp4", batch_id=batch_id, state=state, created_at=created_at)
    session.add(job)
    session.flush()
    return job


def test_attempt_rows_store_billable(database_url):
    with session_scope(database_url) as s:
        job = _job(s, "rec-1")
        for code, channel in (("Success", "result"), ("FailedOperation.DownLoadError", "result"),
                              ("InvalidParameterValue", "error"), ("InternalError", "error"),
                              ("ClientError.ReadTimeout", "transport")):
            s.add(Attempt(**attempt_columns(job.id, 0, Answer(code, channel), billing.table())))
        s.add(Attempt(**attempt_columns(job.id, 0, Answer("InternalError", "error"),
                                        billing.table("InternalError=billable"))))
    with session_scope(database_url) as s:
        rows = s.execute(select(Attempt.code, Attempt.billable).order_by(Attempt.id)).all()
    assert [tuple(r) for r in rows] == [
        ("Success", True), ("FailedOperation.DownLoadError", True),
        ("InvalidParameterValue", False), ("InternalError", False),
        ("ClientError.ReadTimeout", False), ("InternalError", True)]


# -- the report -----------------------------------------------------------------------------
def _attempt(session, job: Job, code: str, at: datetime, billable: bool | None) -> None:
    session.add(Attempt(job_id=job.id, number=1, started_at=at, code=code,
                        kind=classify(code).kind.value, channel="result", billable=billable))


@pytest.fixture
def ledger(database_url):
    """Two batches and loose jobs, calls on two days, old rows without ``billable``."""
    day2 = T0 + timedelta(days=1)
    with session_scope(database_url) as s:
        alpha, beta = Batch(name="alpha"), Batch(name="beta")
        s.add_all([alpha, beta])
        s.flush()
        a1, a2 = _job(s, "a1", alpha.id), _job(s, "a2", alpha.id)
        b1, loose = _job(s, "b1", beta.id), _job(s, "loose")
        # alpha, day 1: 2 billable (1 transient), 1 free, plus 2 old rows mapped by code
        _attempt(s, a1, "FailedOperation.DownLoadTimeoutError", T0, True)
        _attempt(s, a1, "Success", T0 + timedelta(minutes=1), True)
        _attempt(s, a2, "InvalidParameterValue", T0, False)
        _attempt(s, a2, "FailedOperation.LipNetFailed", T0, None)  # old: billable, transient
        _attempt(s, a2, "InternalError", T0, None)  # old: free
        # beta, day 2: 1 billable, 1 free; loose job, day 2: 1 billable verdict
        _attempt(s, b1, "Success", day2, True)
        _attempt(s, b1, "RequestLimitExceeded", day2, False)
        _attempt(s, loose, "FailedOperation.LivessDetectFake", day2, True)
        _job(s, "ra", alpha.id, JobState.REFUSED.value, T0)
        _job(s, "rb", beta.id, JobState.REFUSED.value, day2)
        _job(s, "rl", None, JobState.REFUSED.value, day2)
        _job(s, "fa", alpha.id, JobState.FAILED.value, T0)  # not a refusal
        s.add_all([DedupeHit(at=T0, source="backfill", count=40, batch_id=alpha.id),
                   DedupeHit(at=day2, source="submit", count=1, batch_id=None),
                   DedupeHit(at=day2, source="backfill", count=5, batch_id=beta.id)])
    return database_url, alpha.id, beta.id


def _counts(report) -> tuple[int, int, int, int, int]:
    return (report.billable, report.non_billable, report.transient_retries,
            report.avoided_by_preflight, report.avoided_by_dedupe)


def test_scopes_batch_period_and_both(ledger):
    url, alpha, beta = ledger
    table = billing.table()
    day2 = T0 + timedelta(days=1)
    with session_scope(url) as s:
        everything = compute(s, Scope(), table)
        assert _counts(everything) == (5, 3, 2, 3, 46)
        assert everything.mapped_at_report == 2 and everything.calls == 8
        assert _counts(compute(s, Scope((alpha,)), table)) == (3, 2, 2, 1, 40)
        assert _counts(compute(s, Scope((beta,)), table)) == (1, 1, 0, 1, 5)
        assert _counts(compute(s, Scope((alpha, beta)), table)) == (4, 3, 2, 2, 45)
        assert _counts(compute(s, Scope(since=day2), table)) == (2, 1, 0, 2, 6)
        assert _counts(compute(s, Scope(until=day2), table)) == (3, 2, 2, 1, 40)
        # Until is exclusive: a call at exactly T0 + 1 min is left out.
        assert compute(s, Scope(until=T0 + timedelta(minutes=1)), table).billable == 2
        assert _counts(compute(s, Scope((beta,), since=T0, until=day2), table)) == (
            0, 0, 0, 0, 0)
        # Old rows follow the table in force when the report runs.
        assert compute(s, Scope((alpha,)), billing.table("InternalError*=billable")).billable == 4
        by_code = {c.code: (c.calls, c.billable) for c in everything.codes}
        assert by_code["InternalError"] == (1, 0) and by_code["Success"] == (2, 2)


def test_price_is_decimal_and_exact(ledger):
    url, alpha, _ = ledger
    settings = load_settings(database_url=url, faceid_price_per_call="0.0125",
                             faceid_price_currency="EUR")
    report = cost_report(settings)
    assert report.amount == Decimal("0.0625")  # 5 × 0.0125, exactly
    assert report.avoided_amount == Decimal("0.6125")  # (3 + 46) × 0.0125
    data = report.to_json()
    assert data["estimated_amount"] == "0.0625" and data["currency"] == "EUR"
    assert "0.0625 EUR" in report.describe()
    assert cost_report(load_settings(database_url=url)).amount == Decimal(0)
    assert "FACEID_PRICE_PER_CALL" in cost_report(load_settings(database_url=url)).describe()


def test_cli_by_batch_name_or_id_and_period(ledger, monkeypatch):
    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    url, alpha, _ = ledger
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FACEID_PRICE_PER_CALL", "2.50")
    get_settings.cache_clear()
    run = CliRunner().invoke
    try:
        by_name = run(app, ["cost", "--batch", "alpha", "--format", "json"])
        by_id = run(app, ["cost", "--batch", str(alpha), "--format", "json"])
        day2 = run(app, ["cost", "--since", "2026-03-02T00:00:00+00:00", "--format", "json"])
        text = run(app, ["cost", "--batch", "alpha"])
        missing = run(app, ["cost", "--batch", "nope"])
        bad_time = run(app, ["cost", "--since", "yesterday"])
        backwards = run(app, ["cost", "--since", "2026-03-02", "--until", "2026-03-01"])
        bad_format = run(app, ["cost", "--format", "xml"])
    finally:
        get_settings.cache_clear()
    assert by_name.exit_code == 0, by_name.output
    data = json.loads(by_name.output)
    assert data == json.loads(by_id.output)
    assert (data["billable_calls"], data["non_billable_calls"], data["transient_retry_calls"],
            data["avoided_by_preflight"], data["avoided_by_dedupe"]) == (3, 2, 2, 1, 40)
    assert data["estimated_amount"] == "7.50" and data["scope"]["batch_ids"] == [alpha]
    assert json.loads(day2.output)["billable_calls"] == 2
    assert text.exit_code == 0 and "7.50 USD" in text.output
    assert re.search(r"avoided by dedupe\s+40", text.output)
    for failed, words in ((missing, "no batch with id or name 'nope'"),
                          (bad_time, "not an ISO 8601 time"), (backwards, "--until"),
                          (bad_format, "--format")):
        assert failed.exit_code == 2 and words in failed.output, failed.output


# -- end to end -----------------------------------------------------------------------------
DOWNLOAD_TIMEOUT = "FailedOperation.DownLoadTimeoutError"


def _final(url: str, ids: list[int]) -> bool:
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and all(st in JobState.final() for st in states)


def test_cost_matches_the_simulators_call_log(configured, sim_control, start_worker, tmp_path,
                                              monkeypatch):
    settings = configured
    started = datetime.now(UTC) - timedelta(seconds=1)
    pairs = [write_pair(tmp_path / "media", i) for i in range(6)]
    scripts = {
        1: [DOWNLOAD_TIMEOUT],  # paid twice: 1 transient retry
        2: [DOWNLOAD_TIMEOUT, DOWNLOAD_TIMEOUT],  # paid three times: 2 transient retries
        3: ["InvalidParameterValue"],  # not billed, final
        4: ["InternalError"],  # not billed, retried, then a billed Success
        5: ["FailedOperation.LivessDetectFake"],  # a billed verdict
    }
    for i, answers in scripts.items():
        sim_script(sim_control, file_md5(pairs[i][1]), answers)
    start_worker()
    ids = [submit(settings, JobSpec(f"cost-{i}", str(p), str(v), "SILENT"))[0]
           for i, (p, v) in enumerate(pairs)]
    # The same key again: answered by job cost-0 (a dedupe_hits row), no call.
    again, created = submit(settings, JobSpec("cost-0", str(pairs[0][0]), str(pairs[0][1]),
                                              "SILENT"))
    assert again == ids[0] and not created
    # A 1.2 s video: preflight refuses it (SilentTooShort), no call.
    short = tmp_path / "short.mp4"
    short.write_bytes(mp4_bytes(99, 60_000, duration_s=1.2))
    refused, created = submit(settings, JobSpec("cost-short", str(pairs[0][0]), str(short),
                                                "SILENT"))
    assert not created
    wait_until(lambda: _final(settings.database_url, ids), 90, what="jobs to finish")
    with session_scope(settings.database_url) as s:
        assert s.get(Job, refused).state == JobState.REFUSED.value
        assert s.scalar(select(func.count()).select_from(DedupeHit)) == 1

    calls = sim_calls(sim_control)
    charged = [c for c in calls if c["charged"]]
    expected_transient = sum(1 for c in charged if classify(c["code"]).kind == Kind.TRANSIENT)
    assert (len(charged), len(calls) - len(charged), expected_transient) == (8, 2, 3)
    # No call for the duplicate (cost-0's video was called once), none for the refused job.
    assert sum(1 for c in calls if c["video_md5"] == file_md5(pairs[0][1])) == 1
    assert not any(c["video_md5"] == file_md5(short) for c in calls)

    report = cost_report(settings, since=started)
    assert report.billable == len(charged)
    assert report.non_billable == len(calls) - len(charged)
    assert report.transient_retries == expected_transient
    assert report.avoided_by_dedupe == 1 and report.avoided_by_preflight == 1
    assert report.mapped_at_report == 0
    with session_scope(settings.database_url) as s:
        stored = dict(s.execute(select(Attempt.request_id, Attempt.billable)).all())
    assert stored == {c["request_id"]: c["charged"] for c in calls}  # call by call

    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    monkeypatch.setenv("FACEID_PRICE_PER_CALL", "0.30")
    get_settings.cache_clear()
    run = CliRunner().invoke(app, ["cost", "--format", "json"])
    earlier = CliRunner().invoke(app, ["cost", "--until", started.isoformat(),
                                       "--format", "json"])
    assert run.exit_code == 0, run.output
    data = json.loads(run.output)
    assert (data["billable_calls"], data["non_billable_calls"], data["transient_retry_calls"],
            data["avoided_by_dedupe"], data["avoided_by_preflight"],
            data["estimated_amount"]) == (
        len(charged), len(calls) - len(charged), expected_transient, 1, 1, "2.40")
    assert json.loads(earlier.output)["calls"] == 0


def test_cost_of_a_backfill_batch_by_name(configured, sim_control, start_worker, tmp_path):
    """Batch scope: only the batch's calls, refusals and dedupe; a job outside it is not."""
    settings = configured
    from faceid_batch.bulk.backfill import run_backfill

    pairs = [write_pair(tmp_path / "media", i) for i in range(4)]
    short = tmp_path / "short.mp4"
    short.write_bytes(mp4_bytes(98, 60_000, duration_s=1.2))
    sim_script(sim_control, file_md5(pairs[0][1]), [DOWNLOAD_TIMEOUT])
    sim_script(sim_control, file_md5(pairs[2][1]), ["InvalidParameterValue"])
    start_worker()
    loose, _ = submit(settings, JobSpec("loose", str(pairs[3][0]), str(pairs[3][1]), "SILENT"))
    rows = [("b-0", *pairs[0]), ("b-1", *pairs[1]), ("b-2", *pairs[2]),
            ("b-short", pairs[1][0], short), ("loose", *pairs[3])]  # "loose" is known
    manifest = tmp_path / "kyc.csv"
    manifest.write_text("key,photo,video,liveness_type\n" + "".join(
        f"{k},{p},{v},SILENT\n" for k, p, v in rows))
    result = run_backfill(settings, manifest, name="kyc-cost")
    assert result.known == 1
    with session_scope(settings.database_url) as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == result.batch_id)))
    wait_until(lambda: _final(settings.database_url, [*ids, loose]), 90, what="jobs to finish")

    batch_videos = {file_md5(pairs[i][1]) for i in range(3)}
    calls = [c for c in sim_calls(sim_control) if c["video_md5"] in batch_videos]
    charged = [c for c in calls if c["charged"]]
    assert (len(charged), len(calls) - len(charged)) == (3, 1)  # b-0 twice, b-1; b-2 free
    report = cost_report(settings, batch="kyc-cost")
    assert report.scope.batch_ids == (result.batch_id,)
    assert (report.billable, report.non_billable, report.transient_retries) == (
        len(charged), len(calls) - len(charged), 1)
    assert (report.avoided_by_preflight, report.avoided_by_dedupe) == (1, 1)
    everything = cost_report(settings)
    assert everything.billable == report.billable + 1  # the loose job's Success
