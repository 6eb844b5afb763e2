"""Write what happened to the database: attempts, results, final states, best frames."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, bindparam, select, text
from sqlalchemy.orm import Session

from faceid_batch.call import billing
from faceid_batch.call.faceid_client import Answer, BestFrameInfo
from faceid_batch.egress import Egress, EgressError, EgressRefused
from faceid_batch.models import Attempt, BestFrame, Job, Result, table
from faceid_batch.ops.logs import redact
from faceid_batch.scheduling import schedule
from faceid_batch.times import utcnow

log = logging.getLogger(__name__)

# The statements of a call's answer, built once on the tables (not the ORM entities): the
# columns of an INSERT and the SET clause of an UPDATE come from the parameters, so each set
# of columns is compiled once per process, and a statement is not rebuilt, re-coerced and
# re-keyed for the cache on every answer (that was most of the CPU of writing one).
_ATTEMPTS, _RESULTS, _JOBS, _FRAMES = (table(Attempt), table(Result), table(Job),
                                       table(BestFrame))
_INSERT_ATTEMPT = _ATTEMPTS.insert()
_INSERT_RESULT = _RESULTS.insert()
_INSERT_FRAME = _FRAMES.insert()
_RESULT_OF = select(_RESULTS.c.id).where(_RESULTS.c.job_id == bindparam("of_job"))
_FRAME_OF = select(_FRAMES.c.id).where(_FRAMES.c.job_id == bindparam("of_job"))


# A call of a batch's job is added to its minute of batch_calls (the dashboard's calls over
# time, codes and time held back by the limiter), in the transaction of its attempt row.
# Plain SQL: INSERT ... SELECT ... ON CONFLICT reads the same on SQLite and PostgreSQL.
_COUNT_CALL = text(
    "INSERT INTO batch_calls (batch_id, minute, code, billable, account, calls, waited_ms) "
    "SELECT batch_id, :minute, :code, :billable, :account, 1, :waited_ms FROM jobs "
    "WHERE id = :job_id AND batch_id IS NOT NULL "
    "ON CONFLICT (batch_id, minute, code, billable, account) DO UPDATE SET "
    "calls = batch_calls.calls + 1, "
    "waited_ms = batch_calls.waited_ms + excluded.waited_ms",
).bindparams(bindparam("minute", type_=DateTime(timezone=True)))  # stored as the ORM stores it


# A billable call is also added to its tenant's calls of the day (tenants.py: the daily
# quota reads this one row): the quota is of the calls Tencent bills (the billing table,
# BILLING_OVERRIDES included), so a free answer (throttled, the timestamp re-sign, an
# outage) never uses it up.
_COUNT_TENANT_CALL = text(
    "INSERT INTO tenant_calls (tenant_id, day, calls) "
    "SELECT tenant_id, :day, 1 FROM jobs WHERE id = :job_id "
    "ON CONFLICT (tenant_id, day) DO UPDATE SET calls = tenant_calls.calls + 1")


def call_tally(attempt: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """The parameters of _COUNT_CALL for one call's attempt row."""
    started: datetime = attempt["started_at"]
    return {"job_id": attempt["job_id"], "minute": started.replace(second=0, microsecond=0),
            "code": attempt["code"], "billable": bool(attempt["billable"]),
            "account": attempt.get("account") or "default", "waited_ms": answer.waited_ms}


def attempt_number(attempts_before: int, answer: Answer) -> int:
    """The job's attempt count once ``answer`` is recorded: throttled and account answers
    (someone else used the budget; the account is in arrears) do not use up an attempt."""
    return attempts_before + (1 if answer.rule.counts_attempt else 0)


def attempt_columns(job_id: int, attempts_before: int, answer: Answer,
                    bill: billing.BillingTable) -> dict[str, Any]:
    """The attempt row of one call (see attempt_number for what counts as an attempt).

    Every call's row is built here (parked answers too), so every row says whether Tencent
    bills it: ``bill`` (the table of BILLING_OVERRIDES, Resources.billing) maps its code.
    """
    number = attempt_number(attempts_before, answer)
    return {
        "job_id": job_id,
        "number": number,
        "started_at": (datetime.fromtimestamp(answer.started_at, UTC) if answer.started_at
                       else utcnow()),
        "latency_ms": answer.latency_ms,
        "http_status": answer.http_status,
        "request_id": answer.request_id,
        "code": answer.code,
        "kind": answer.rule.kind.value,
        "channel": answer.channel,
        # Stored as received but without URL signatures or tokens, should an answer echo one.
        "message": redact(answer.message) or None,
        "counted": number > attempts_before,
        "billable": bill.billable(answer.code),
        "account": answer.account,
        "region": answer.region,
    }


def decide(answer: Answer, threshold: float) -> bool:
    """Pass only on Success with Sim at or above the threshold."""
    return answer.code == "Success" and answer.sim is not None and answer.sim >= threshold


def result_columns(job_id: int, answer: Answer, threshold: float) -> dict[str, Any]:
    """The result row of FaceID's final answer for a job."""
    return {
        "job_id": job_id,
        "result": answer.code,
        "description": answer.description or answer.message or None,
        "sim": answer.sim,
        "request_id": answer.request_id,
        "passed": decide(answer, threshold),
        "threshold": threshold,
    }


def write_answer(session: Session, job_id: int, lease_id: str, attempts_before: int,
                 answer: Answer, job_columns: dict[str, Any], threshold: float | None,
                 bill: billing.BillingTable) -> bool:
    """One call's rows in one go, without loading the job: ``job_columns`` on the job with
    its new attempt count, if ``lease_id`` still holds it; then its attempt, and its result
    when ``threshold`` is given (once per job). False, with nothing written, if the lease no
    longer holds the job (the caller records the call with ``record_lost_attempt``).
    """
    attempt = attempt_columns(job_id, attempts_before, answer, bill)
    columns = {**job_columns, "attempts": attempt["number"]}
    result = None
    if threshold is not None and session.scalar(_RESULT_OF, {"of_job": job_id}) is None:
        result = result_columns(job_id, answer, threshold)
        columns.update(schedule.completed_columns(answer.code, result["passed"],
                                                  result["sim"]))
    if not schedule.write(session, job_id, lease_id, columns):
        return False
    session.execute(_INSERT_ATTEMPT, attempt)
    session.execute(_COUNT_CALL, call_tally(attempt, answer))
    _count_for_tenant(session, attempt)
    if result is not None:
        session.execute(_INSERT_RESULT, result)
    return True


_ATTEMPT_OF = select(_ATTEMPTS.c.id).where(_ATTEMPTS.c.job_id == bindparam("of_job"),
                                           _ATTEMPTS.c.request_id == bindparam("request_id"))


def record_lost_attempt(session: Session, job_id: int, attempts_before: int, answer: Answer,
                        bill: billing.BillingTable) -> None:
    """The attempt row of a paid call whose worker no longer held its job: it was paid, so
    it is recorded (and costed), but not counted against the job (``counted`` False). A
    call already recorded (the same RequestId) is not recorded twice."""
    if answer.request_id and session.scalar(
            _ATTEMPT_OF, {"of_job": job_id, "request_id": answer.request_id}) is not None:
        return
    attempt = attempt_columns(job_id, attempts_before, answer, bill)
    session.execute(_INSERT_ATTEMPT, {**attempt, "number": attempts_before, "counted": False})
    session.execute(_COUNT_CALL, call_tally(attempt, answer))
    _count_for_tenant(session, attempt)


def _count_for_tenant(session: Session, attempt: dict[str, Any]) -> None:
    """Add a billable call to its tenant's calls of its day (see _COUNT_TENANT_CALL)."""
    if attempt["billable"]:
        session.execute(_COUNT_TENANT_CALL, {
            "job_id": attempt["job_id"], "day": attempt["started_at"].date().isoformat()})


class BestFrameError(Exception):
    """The best frame could not be fetched or did not match its MD5."""


BEST_FRAME_SECONDS = 30.0


def fetch_best_frame(
    http: Egress, info: BestFrameInfo, max_bytes: int
) -> tuple[bytes, str]:
    """Download the best frame through the egress policy (bounded in bytes and time),
    check its MD5; return (bytes, md5)."""
    try:
        with http.get(info.url, max_bytes=max_bytes, timeout=BEST_FRAME_SECONDS) as resp:
            if resp.status != 200:
                raise BestFrameError(f"best frame download: HTTP {resp.status}")
            data = resp.read()
    except EgressRefused as exc:
        raise BestFrameError(f"best frame URL refused by the egress policy: {exc}") from None
    except EgressError as exc:
        if exc.kind == "too-large":
            raise BestFrameError(f"best frame larger than {max_bytes} bytes") from None
        raise BestFrameError(f"best frame download: {exc.kind}") from None
    md5 = hashlib.md5(data).hexdigest()
    if info.md5 and md5.lower() != info.md5.lower():
        raise BestFrameError(f"best frame MD5 {md5} does not match the API's {info.md5}")
    if info.size is not None and info.size != len(data):
        raise BestFrameError(f"best frame size {len(data)} does not match the API's {info.size}")
    return bytes(data), md5


def store_best_frame(session: Session, job_id: int, content: bytes, md5: str) -> None:
    """Keep the best frame with the job (once per job)."""
    if session.scalar(_FRAME_OF, {"of_job": job_id}) is not None:
        return
    session.execute(_INSERT_FRAME, {"job_id": job_id, "md5": md5, "size": len(content),
                                    "content": content})
