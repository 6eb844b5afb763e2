"""Read results back for people: the ``results`` table."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.models import Job, Result
from faceid_batch.settings import Settings


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    lane: str
    state: str
    attempts: int
    code: str | None
    sim: float | None
    passed: bool | None
    request_id: str | None
    error: str | None


def load_results(settings: Settings, limit: int = 50, state: str | None = None) -> list[Row]:
    """Jobs with their result (if any), newest first."""
    query = (
        select(Job, Result)
        .outerjoin(Result, Result.job_id == Job.id)
        .order_by(Job.id.desc())
        .limit(limit)
    )
    if state:
        query = query.where(Job.state == state)
    with session_scope(settings.database_url) as session:
        return [
            Row(job.id, job.idempotency_key, job.lane, job.state, job.attempts,
                job.result_code, result.sim if result else None, job.passed,
                result.request_id if result else None, job.error_message)
            for job, result in session.execute(query)
        ]


def format_results_table(rows: list[Row]) -> str:
    """A plain-text table, one job a line."""
    header = ("ID", "KEY", "LANE", "STATE", "TRIES", "RESULT", "SIM", "PASS", "REQUEST ID")
    lines = [header]
    for r in rows:
        verdict = {True: "pass", False: "fail", None: "-"}[r.passed]
        lines.append((
            str(r.id), r.key, r.lane, r.state, str(r.attempts), r.code or "-",
            f"{r.sim:.2f}" if r.sim is not None else "-", verdict, r.request_id or "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    errors = [f"  job {r.id}: {r.error}" for r in rows if r.error]
    if errors:
        out += ["", "errors:", *errors]
    return "\n".join(out)
