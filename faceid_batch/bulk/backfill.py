"""A backfill: a manifest read a thousand rows at a time into jobs of one batch.

For each chunk: read and shape the rows, drop duplicate keys, look the keys up in the
database (one query), check the new rows for free (``manifest.check_row``), insert them due
(one statement, committed). Nothing is sent from here: the feeder (feeder.py) sends due
jobs in their turn, a few seconds of work at a time, so a manifest of millions costs the
database its rows and Redis nothing. Bad rows go to the report; the run goes on.

Dedupe and resume, without holding the manifest's keys in memory: a key already in the
database is not enqueued again. A key inserted earlier in this same run, by this batch, is
a duplicate row of the file: a bad row. A key repeated inside one chunk is caught before
the lookup. Each job keeps its batch and manifest line. A re-run with the same batch name
(by default the manifest's absolute path) resumes the batch: it inserts what the earlier
run did not reach.

The batch keeps the SHA-256 of the manifest of its latest run (``batches.manifest_sha256``),
hashed as the file is read, for its end-of-run report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select

from faceid_batch.bulk import batches
from faceid_batch.bulk.manifest import (
    Manifest,
    RawRow,
    Report,
    RowError,
    check_row,
    default_report_path,
)
from faceid_batch.db import get_engine, session_scope
from faceid_batch.intake.submit import JobSpec, spec_columns
from faceid_batch.models import (
    DEFAULT_TENANT_ID,
    Batch,
    BatchState,
    DedupeHit,
    Job,
    JobState,
    Lane,
)
from faceid_batch.scheduling import schedule
from faceid_batch.scheduling.schedule import CHUNK, insert_jobs
from faceid_batch.settings import Settings
from faceid_batch.stage import preflight
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)
SAVE_EVERY = 10  # chunks between writes of the running figures to the batch row


@dataclass
class BackfillResult:
    """What one run of a manifest did."""

    batch_id: int
    resumed: bool  # the batch existed (same name): this run continued it
    report_path: Path
    read: int = 0  # data rows read
    accepted: int = 0  # new jobs inserted (due: the feeder sends them in their turn)
    known: int = 0  # keys already in the database: not enqueued again
    bad: int = 0  # rows in the report
    refused: int = 0  # of those, rows refused by preflight: stored as refused jobs, not sent
    parked: int = 0  # of the accepted, jobs parked because the batch is paused
    stopped: str | None = None  # why the run stopped early (the batch was cancelled)
    manifest_sha256: str | None = None  # of the file's bytes; None if it could not be read
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int, BackfillResult], None]


def _chunks(rows: Iterator[RawRow], size: int) -> Iterator[list[RawRow]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def open_batch(settings: Settings, manifest: Path, name: str | None,
               lane: str, weight: float | None = None,
               tenant_id: int = DEFAULT_TENANT_ID) -> tuple[int, str, str, bool]:
    """Find the batch to resume (same name and tenant, not cancelled) or create one.

    Return (id, lane, state, resumed). A resumed batch keeps its own lane, and its weight
    unless ``weight`` is given.
    """
    name = name or str(manifest.resolve())
    with session_scope(settings.database_url) as session:
        batch = session.scalars(
            select(Batch).where(Batch.name == name, Batch.tenant_id == tenant_id,
                                Batch.state != BatchState.CANCELLED.value)
            .order_by(Batch.id.desc()).limit(1)
        ).first()
        resumed = batch is not None
        if batch is None:
            batch = Batch(name=name, lane=lane, state=BatchState.ACTIVE.value,
                          tenant_id=tenant_id)
            session.add(batch)
        if weight is not None:
            batch.weight = weight
        batch.manifest = str(manifest.resolve())
        batch.enqueue_started_at = utcnow()
        batch.enqueue_finished_at = None
        batch.manifest_sha256 = None  # this run's, stored when it ends
        session.flush()
        return batch.id, batch.lane, batch.state, resumed


def run_backfill(
    settings: Settings,
    manifest_path: str | Path,
    *,
    report_path: str | Path | None = None,
    lane: str = Lane.BACKFILL.value,
    name: str | None = None,
    weight: float | None = None,
    on_start: Callable[[int, bool, str], None] | None = None,
    on_progress: Progress | None = None,
    chunk_size: int = CHUNK,
    tenant_id: int = DEFAULT_TENANT_ID,
) -> BackfillResult:
    """Read, check, dedupe, insert and enqueue every row of a manifest into one batch of
    ``tenant_id`` (its keys are deduplicated against that tenant's).

    Raises ManifestError before anything is stored if the file is not a usable manifest.
    ``on_start(batch id, resumed, batch state)`` is called once the batch exists;
    ``on_progress(bytes read, file size, figures so far)`` after each chunk.
    """
    manifest = Manifest(manifest_path)  # refuses a non-manifest before a batch exists
    if lane not in (Lane.ONBOARDING.value, Lane.BACKFILL.value):
        raise ValueError(f"lane {lane!r}: must be onboarding or backfill")
    if weight is not None:
        batches.check_weight(weight)
    # Opened first: an unwritable report path fails before a batch exists.
    report = Report(report_path or default_report_path(manifest.path))
    try:
        batch_id, lane, state, resumed = open_batch(settings, manifest.path, name, lane, weight,
                                                     tenant_id)
    except BaseException:
        report.close()
        raise
    if on_start is not None:
        on_start(batch_id, resumed, state)
    result = BackfillResult(batch_id, resumed, report.path)
    client = redis.Redis.from_url(settings.redis_url)
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        # Jobs with a larger id were inserted by this run (ids only grow).
        first_new_id = conn.scalar(select(func.max(Job.id))) or 0
    started = time.monotonic()
    try:
        with report:
            for number, chunk in enumerate(_chunks(manifest.rows(), chunk_size), start=1):
                control = batches.control_state(client, settings.database_url, batch_id)
                if control == BatchState.CANCELLED.value:
                    result.stopped = f"batch {batch_id} was cancelled"
                    break
                _run_chunk(settings, engine, manifest, chunk, batch_id, lane,
                           paused=control == BatchState.PAUSED.value, tenant_id=tenant_id,
                           report=report, result=result, first_new_id=first_new_id)
                report.flush()
                result.seconds = time.monotonic() - started
                if on_progress is not None:
                    on_progress(manifest.bytes_read, manifest.size, result)
                if number % SAVE_EVERY == 0:
                    _save_figures(settings, result, finished=False)
    finally:
        result.seconds = time.monotonic() - started
        try:
            result.manifest_sha256 = manifest.sha256()
        except OSError:
            log.warning("batch %s: could not hash manifest %s", batch_id, manifest.path)
        _save_figures(settings, result, finished=True)
        client.close()
    return result


def _run_chunk(settings: Settings, engine: Any, manifest: Manifest, chunk: list[RawRow],
               batch_id: int, lane: str, *, paused: bool, report: Report,
               result: BackfillResult, first_new_id: int,
               tenant_id: int = DEFAULT_TENANT_ID) -> None:
    # 1. Shape each row; catch a key repeated inside the chunk.
    candidates: list[tuple[int, JobSpec]] = []
    first_line: dict[str, int] = {}
    for row in chunk:
        result.read += 1
        try:
            spec = manifest.to_spec(row, lane)
        except RowError as exc:
            _bad(report, result, row.line, row.key, str(exc))
            continue
        seen = first_line.get(spec.idempotency_key)
        if seen is not None:
            _bad(report, result, row.line, spec.idempotency_key,
                 f"duplicate key: already on row {seen}")
            continue
        first_line[spec.idempotency_key] = row.line
        candidates.append((row.line, spec))

    # 2. Keys the database knows.
    with engine.connect() as conn:
        known = {
            key: (job_id, b_id, b_row, state)
            for key, job_id, b_id, b_row, state in conn.execute(
                select(Job.idempotency_key, Job.id, Job.batch_id, Job.batch_row, Job.state)
                .where(Job.tenant_id == tenant_id,
                       Job.idempotency_key.in_([s.idempotency_key for _, s in candidates]))
            )
        } if candidates else {}
    new: list[tuple[int, JobSpec]] = []
    refused_before: dict[str, int] = {}  # key -> job id of a refused job: checked again
    for line, spec in candidates:
        hit = known.get(spec.idempotency_key)
        if hit is None:
            new.append((line, spec))
            continue
        if hit[3] == JobState.REFUSED.value:
            # A refusal cost nothing: the row is checked again, as if new.
            refused_before[spec.idempotency_key] = hit[0]
            new.append((line, spec))
            continue
        job_id, b_id, b_row, state = hit
        if b_id == batch_id and job_id > first_new_id:
            # Inserted by this run, so from an earlier row of this file.
            _bad(report, result, line, spec.idempotency_key,
                 f"duplicate key: already on row {b_row}")
        else:
            result.known += 1

    # 3. Free checks of the new rows: nothing is stored or sent for a bad one. A row that
    # preflight refuses is reported like a bad row and stored as a refused job, never sent.
    rows: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    # Due now (the feeder sends them in their turn), or parked until the batch resumes.
    now = utcnow()
    for line, spec in new:
        try:
            # Checked as the tenant's row (its regions, accounts and callback secret).
            spec = check_row(replace(spec, tenant_id=tenant_id), settings.cos_bucket,
                             settings)
        except RowError as exc:
            _bad(report, result, line, spec.idempotency_key, str(exc))
            continue
        columns = spec_columns(spec)
        # A bulk INSERT names the table's columns: the metadata column, not the attribute.
        columns["metadata"] = columns.pop("meta")
        # A manifest row names no callback and no producer token: both stay NULL, and a
        # thousand-row INSERT carries two columns fewer per row.
        del columns["callback_url"], columns["submitted_by"]
        values = {**columns, "idempotency_key": spec.idempotency_key, "lane": lane,
                  "batch_id": batch_id, "batch_row": line, "tenant_id": tenant_id}
        if spec.refusal is not None:
            _bad(report, result, line, spec.idempotency_key, preflight.describe(spec.refusal))
            result.refused += 1
            refused.append({**values, **spec.refused_values()})
        else:
            rows.append({**values,
                         **schedule.waiting_columns(out=False, paused=paused, now=now)})

    # 4. Insert and commit: the rows are the queue.
    with engine.begin() as conn:
        passed_again = _rewrite_refused(conn, rows, refused, refused_before)
        fresh = [r for r in rows if r["idempotency_key"] not in refused_before]
        inserted = insert_jobs(conn, fresh)
        insert_jobs(conn, [r for r in refused if r["idempotency_key"] not in refused_before])
    result.accepted += len(inserted) + len(passed_again)
    result.known += len(fresh) - len(inserted)  # inserted meanwhile by another producer
    if paused:
        result.parked += len(inserted) + len(passed_again)


def _rewrite_refused(conn: Any, rows: list[dict[str, Any]], refused: list[dict[str, Any]],
                     refused_before: dict[str, int]) -> dict[str, int]:
    """Update jobs refused by an earlier run from this run's rows; return {key: id} of
    those that now pass (due, like new rows). Only rows still refused are touched."""
    passed: dict[str, int] = {}
    for row, now_refused in [*((r, False) for r in rows), *((r, True) for r in refused)]:
        job_id = refused_before.get(row["idempotency_key"])
        if job_id is None:
            continue
        values = {k: v for k, v in row.items() if k != "idempotency_key"}
        values["meta"] = values.pop("metadata")
        if not now_refused:
            values.update(schedule.OUTCOME_CLEARED)
        changed = schedule.recheck_refused(conn, job_id, values)
        if changed and not now_refused:
            passed[row["idempotency_key"]] = job_id
    return passed


def _bad(report: Report, result: BackfillResult, line: int, key: str, reason: str) -> None:
    report.add(line, key, reason)
    result.bad += 1


def _save_figures(settings: Settings, result: BackfillResult, finished: bool) -> None:
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, result.batch_id)
        if batch is None:
            return
        batch.rows_read = result.read
        batch.rows_accepted = result.accepted
        batch.rows_known = result.known
        batch.rows_bad = result.bad
        if finished:
            batch.enqueue_finished_at = utcnow()
            batch.manifest_sha256 = result.manifest_sha256
            if result.known:
                # One row for the run, not one per known key (cost accounting).
                session.add(DedupeHit(source="backfill", count=result.known,
                                      batch_id=result.batch_id))
