"""A batch's end-of-run report: the manifest's hash, the per-job CSV, the summary, the CLI.

SQL only: the rows are built with the models (or by a backfill whose Redis check is
stubbed), so nothing here starts Redis, the simulator or a worker.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from faceid_batch.admin import batch_report
from faceid_batch.admin.batch_report import (
    REPORT_FIELDS,
    ReportError,
    iter_report_csv,
    summary,
    write_report,
)
from faceid_batch.bulk import batches
from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.bulk.batches import BatchError
from faceid_batch.bulk.manifest import Manifest
from faceid_batch.db import session_scope
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Batch, BatchCalls, Job, JobState, Result
from faceid_batch.settings import load_settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MANIFEST_SHA = "ab" * 32
EVIL_KEY = "=HYPERLINK(\"http://evil\",\"x\")"


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


# -- the manifest's hash ------------------------------------------------------------------
def write_manifest(path, media, keys) -> None:
    lines = ["key,photo,video,liveness_type"]
    for i, key in enumerate(keys):
        photo, video = write_pair(media, i)
        lines.append(f"{key},{photo},{video},SILENT")
    path.write_text("\n".join(lines) + "\n")


def test_the_manifest_is_hashed_as_it_is_read(tmp_path):
    path = tmp_path / "m.csv"
    # A BOM and enough rows that the reader fills its buffer more than once.
    path.write_bytes(b"\xef\xbb\xbfkey,photo,video,liveness_type\n" + b"".join(
        f"k-{i},p{i}.jpg,v{i}.mp4,SILENT\n".encode() for i in range(20_000)))
    expected = sha256_of(path)
    assert Manifest(path).sha256() == expected  # no row read: the file is read here

    whole = Manifest(path)
    assert sum(1 for _ in whole.rows()) == 20_000
    assert whole.bytes_read == path.stat().st_size
    assert whole.sha256() == expected

    stopped = Manifest(path)
    rows = stopped.rows()
    assert next(rows).key == "k-0"
    assert 0 < stopped.bytes_read < path.stat().st_size
    assert stopped.sha256() == expected  # the rest read for the hash, once
    assert next(rows).key == "k-1"  # and the reader goes on where it was
    rows.close()


def test_a_backfill_stores_the_sha256_of_its_latest_manifest(database_url, tmp_path,
                                                             monkeypatch):
    # The backfill asks Redis whether its batch was paused or cancelled; say active.
    monkeypatch.setattr(batches, "control_state", lambda *args: "active")
    settings = load_settings(database_url=database_url)
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["h-1", "h-2", "h-3"])
    first = run_backfill(settings, manifest, chunk_size=2, report_path=tmp_path / "r.csv")
    assert first.accepted == 3
    first_sha = sha256_of(manifest)
    assert first.manifest_sha256 == first_sha
    with session_scope(database_url) as s:
        assert s.get(Batch, first.batch_id).manifest_sha256 == first_sha

    # The same batch name with an edited manifest: the batch keeps the latest run's hash.
    write_manifest(manifest, tmp_path / "media", ["h-1", "h-2", "h-3", "h-4"])
    again = run_backfill(settings, manifest, chunk_size=2, report_path=tmp_path / "r.csv")
    assert again.resumed and again.batch_id == first.batch_id and again.accepted == 1
    assert sha256_of(manifest) != first_sha
    with session_scope(database_url) as s:
        assert s.get(Batch, first.batch_id).manifest_sha256 == sha256_of(manifest)
    assert summary(settings, first.batch_id)["manifest_sha256"] == sha256_of(manifest)


# -- a finished batch ---------------------------------------------------------------------
def _job(s, batch_id: int | None, key: str, row: int, state: str, *, passed: bool | None = None,
         code: str | None = None, sim: float | None = None, attempts: int = 0,
         error: str | None = None, minutes: int = 0, finished: bool = True) -> Job:
    job = Job(idempotency_key=key, liveness_type="SILENT", photo_source="p.jpg",
              video_source="v.mp4", lane="backfill", batch_id=batch_id, batch_row=row,
              state=state, passed=passed, result_code=code, sim=sim, attempts=attempts,
              error_message=error, created_at=T0 + timedelta(minutes=minutes),
              finished_at=T0 + timedelta(minutes=minutes + 2) if finished else None)
    s.add(job)
    s.flush()
    return job


def _attempt(s, job: Job, number: int, code: str, request_id: str | None,
             billable: bool) -> None:
    s.add(Attempt(job_id=job.id, number=number, started_at=T0, code=code, kind="x",
                  channel="result", request_id=request_id, billable=billable))


@pytest.fixture
def finished_batch(database_url):
    """A batch of five jobs inserted out of manifest order: a pass, a fail verdict, a
    failure with a Local.* code, a refusal and a pass whose key is a formula."""
    with session_scope(database_url) as s:
        batch = Batch(name="audit-run", lane="backfill", manifest="/data/m.csv",
                      manifest_sha256=MANIFEST_SHA, enqueue_started_at=T0)
        s.add(batch)
        s.flush()
        bid = batch.id
        failed = _job(s, bid, "k-failed", 4, JobState.FAILED.value, code="Local.SourceTimeout",
                      attempts=2, error="-photo source did not answer", minutes=3)
        _attempt(s, failed, 1, "FailedOperation.DownLoadTimeoutError", "req-f1", True)
        _attempt(s, failed, 2, "ClientError.ReadTimeout", "req-f2", False)
        passed = _job(s, bid, "k-pass", 2, JobState.COMPLETED.value, passed=True,
                      code="Success", sim=92.5, attempts=1, minutes=0)
        _attempt(s, passed, 1, "Success", "req-p-attempt", True)
        s.add(Result(job_id=passed.id, result="Success", description="ok, same person",
                     sim=92.5, request_id="req-p", passed=True, threshold=70.0))
        verdict = _job(s, bid, "k-fail", 3, JobState.COMPLETED.value, passed=False,
                       code="FailedOperation.CompareLowSimilarity", sim=31.0, attempts=1,
                       minutes=1, error="not used: a result exists")
        _attempt(s, verdict, 1, "FailedOperation.CompareLowSimilarity", "req-v", True)
        s.add(Result(job_id=verdict.id, result="FailedOperation.CompareLowSimilarity",
                     description="similarity too low", sim=31.0, request_id="req-v",
                     passed=False, threshold=70.0))
        _job(s, bid, "k-refused", 5, JobState.REFUSED.value,
             code="FailedOperation.VideoDurationExceeded", error="video is 30 s long",
             minutes=4)
        evil = _job(s, bid, EVIL_KEY, 6, JobState.COMPLETED.value, passed=True,
                    code="Success", sim=88.0, attempts=1, minutes=5)
        _attempt(s, evil, 1, "Success", "req-e", True)
        s.add(Result(job_id=evil.id, result="Success", description="@SUM(A1)", sim=88.0,
                     request_id="req-e", passed=True, threshold=70.0))
        s.add_all([BatchCalls(batch_id=bid, minute=T0, code="Success", billable=True,
                              calls=2, waited_ms=150),
                   BatchCalls(batch_id=bid, minute=T0, code="ClientError.ReadTimeout",
                              billable=False, calls=1, waited_ms=50)])
        # Not of this batch: absent from its report.
        _job(s, None, "k-loose", 1, JobState.COMPLETED.value, passed=True, code="Success")
    settings = load_settings(database_url=database_url, faceid_price_per_call="0.25",
                             faceid_price_currency="EUR")
    return settings, bid


def test_report_rows_columns_and_decisions(finished_batch, tmp_path):
    settings, bid = finished_batch
    files = write_report(settings, bid, tmp_path / "out")
    assert files.csv_path == tmp_path / "out" / f"batch-{bid}-report.csv"
    raw = files.csv_path.read_bytes()
    assert raw.splitlines()[0].decode() == ",".join(REPORT_FIELDS)
    rows = read_csv(raw)
    assert files.rows == len(rows) == 5
    # Manifest order (batch_row), not insertion order; the loose job is not in it.
    assert [r["batch_row"] for r in rows] == ["2", "3", "4", "5", "6"]
    by_key = {r["key"]: r for r in rows}
    assert [r["decision"] for r in rows] == ["pass", "fail", "failed", "refused", "pass"]

    p = by_key["k-pass"]
    assert (p["sim"], p["code"], p["description"], p["request_id"], p["attempts"]) == (
        "92.5", "Success", "ok, same person", "req-p", "1")
    f = by_key["k-fail"]
    assert (f["code"], f["description"], f["request_id"]) == (
        "FailedOperation.CompareLowSimilarity", "similarity too low", "req-v")
    # No result: the job's error message (formula-safe) and the last attempt's request id.
    x = by_key["k-failed"]
    assert (x["code"], x["description"], x["request_id"], x["attempts"], x["sim"]) == (
        "Local.SourceTimeout", "'-photo source did not answer", "req-f2", "2", "")
    r = by_key["k-refused"]
    assert (r["code"], r["description"], r["request_id"], r["attempts"]) == (
        "FailedOperation.VideoDurationExceeded", "video is 30 s long", "", "0")
    assert all(row["region"] == "" and row["account"] == "" for row in rows)
    assert p["created_at"] == "2026-03-01T12:00:00+00:00"
    assert p["finished_at"] == "2026-03-01T12:02:00+00:00"


def test_formula_injection_is_neutralised(finished_batch, tmp_path):
    settings, bid = finished_batch
    rows = read_csv(write_report(settings, bid, tmp_path).csv_path.read_bytes())
    evil = rows[-1]
    assert evil["key"] == "'" + EVIL_KEY
    assert evil["description"] == "'@SUM(A1)"
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows
                   for cell in row.values())


def test_the_summary_names_both_hashes_and_the_figures(finished_batch, tmp_path):
    settings, bid = finished_batch
    files = write_report(settings, bid, tmp_path)
    assert files.summary_path == tmp_path / f"batch-{bid}-summary.json"
    data = json.loads(files.summary_path.read_text())
    assert data["report_sha256"] == sha256_of(files.csv_path) == files.report_sha256
    assert data["manifest_sha256"] == MANIFEST_SHA == files.manifest_sha256
    assert data["partial"] is False and data["ended"] is True
    assert (data["batch_id"], data["name"], data["manifest"]) == (bid, "audit-run",
                                                                   "/data/m.csv")
    assert data["jobs"] == data["report_rows"] == 5
    assert data["by_decision"] == {"pass": 2, "fail": 1, "failed": 1, "refused": 1}
    assert data["by_state"] == {"completed": 3, "failed": 1, "refused": 1}
    assert (data["passed"], data["with_verdict"], data["pass_rate"]) == (2, 3, 0.6667)
    assert data["error_mix"] == {"FailedOperation.CompareLowSimilarity": 1,
                                 "Local.SourceTimeout": 1}
    assert (data["attempts"], data["calls"], data["billable_calls"]) == (5, 5, 4)
    assert Decimal(data["estimated_amount"]) == Decimal("1.00") and data["currency"] == "EUR"
    assert data["cost"]["avoided_by_preflight"] == 1
    assert data["rate_limit_waited_ms"] == 200
    # First job created 12:00, last finished 12:07; five finished jobs in 420 s.
    assert data["duration_seconds"] == 420.0
    assert data["throughput_per_second"] == round(5 / 420, 3)
    assert data == files.summary


def test_the_csv_is_streamed_in_pieces(finished_batch, tmp_path, monkeypatch):
    settings, bid = finished_batch
    monkeypatch.setattr(batch_report, "REPORT_CHUNK", 2)
    pieces = list(iter_report_csv(settings.database_url, bid))
    assert len(pieces) == 3  # header and rows 1-2, rows 3-4, row 5
    files = write_report(settings, bid, tmp_path)
    assert b"".join(pieces) == files.csv_path.read_bytes()


def test_a_batch_not_ended_is_refused_unless_partial(finished_batch, tmp_path):
    settings, bid = finished_batch
    with session_scope(settings.database_url) as s:
        _job(s, bid, "k-queued", 7, JobState.QUEUED.value, finished=False)
        _job(s, bid, "k-paused", 8, JobState.PAUSED.value, finished=False)
        _job(s, bid, "k-running", 9, JobState.RUNNING.value, attempts=1, finished=False)
    with pytest.raises(ReportError, match="2 jobs waiting and 1 running"):
        write_report(settings, bid, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    files = write_report(settings, bid, tmp_path / "out", partial=True)
    data = json.loads(files.summary_path.read_text())
    assert data["partial"] is True and data["ended"] is False
    assert (data["waiting"], data["running"]) == (2, 1)
    decisions = [r["decision"] for r in read_csv(files.csv_path.read_bytes())]
    assert decisions[-3:] == ["queued", "paused", "running"]
    assert data["report_sha256"] == sha256_of(files.csv_path)


def test_an_unknown_batch_is_a_clear_error(database_url, tmp_path):
    settings = load_settings(database_url=database_url)
    with pytest.raises(BatchError, match="batch 999: no such batch"):
        iter_report_csv(database_url, 999)  # at the call, before any byte
    with pytest.raises(BatchError, match="batch 999: no such batch"):
        summary(settings, 999)
    with pytest.raises(BatchError, match="batch 999: no such batch"):
        write_report(settings, 999, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the command line -----------------------------------------------------------------------
def test_cli_batch_report(finished_batch, tmp_path, monkeypatch):
    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    settings, bid = finished_batch
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FACEID_PRICE_PER_CALL", "0.25")
    monkeypatch.setenv("FACEID_PRICE_CURRENCY", "EUR")
    get_settings.cache_clear()
    run = CliRunner().invoke
    out = tmp_path / "reports"
    try:
        done = run(app, ["batch", "report", str(bid), "--out", str(out)])
        missing = run(app, ["batch", "report", "999", "--out", str(out)])
        with session_scope(settings.database_url) as s:
            _job(s, bid, "k-late", 10, JobState.RETRYING.value, attempts=1, finished=False)
        refused = run(app, ["batch", "report", str(bid), "--out", str(tmp_path / "no")])
        partial = run(app, ["batch", "report", str(bid), "--out", str(tmp_path / "p"),
                            "--partial"])
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    csv_path, json_path = out / f"batch-{bid}-report.csv", out / f"batch-{bid}-summary.json"
    assert str(csv_path) in done.output and str(json_path) in done.output
    assert f"report sha256:   {sha256_of(csv_path)}" in done.output
    assert f"manifest sha256: {MANIFEST_SHA}" in done.output
    assert "pass rate: 66.67% (2 of 3 with a verdict)" in done.output
    assert "1.00 EUR" in done.output and "duration: 0:07:00" in done.output
    assert json.loads(json_path.read_text())["report_sha256"] == sha256_of(csv_path)

    assert missing.exit_code == 2 and "batch 999: no such batch" in missing.output
    assert refused.exit_code == 2
    assert "1 jobs waiting and 0 running" in refused.output
    assert not (tmp_path / "no").exists()
    assert partial.exit_code == 0, partial.output
    assert "(partial)" in partial.output and "1 waiting, 0 running" in partial.output
    assert "Traceback" not in done.output + missing.output + refused.output


def test_a_tenants_backfill_checks_each_row_against_that_tenants_regions(
        database_url, tmp_path, monkeypatch):
    """A row is the tenant's from its first check: a region the tenant may not use is a
    bad row, never a job (the default tenant may use every region)."""
    from faceid_batch import tenants

    monkeypatch.setattr(batches, "control_state", lambda *args: "active")
    settings = load_settings(database_url=database_url)
    thai = tenants.add(database_url, "thai", ["ap-bangkok"])
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, tmp_path / "media", ["t-1", "t-2"])  # FACEID_REGION rows
    result = run_backfill(settings, manifest, report_path=tmp_path / "r.csv",
                          tenant_id=thai.id)
    assert result.accepted == 0 and result.bad == 2
    assert "ap-bangkok" in (tmp_path / "r.csv").read_text()
    with session_scope(database_url) as s:
        assert s.query(Job).count() == 0
    # The same manifest for the default tenant is accepted.
    assert run_backfill(settings, manifest, report_path=tmp_path / "r2.csv",
                        name="default-run").accepted == 2
