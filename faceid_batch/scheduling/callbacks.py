"""The schedule of completion callbacks: each is a due row, as a job is.

A job that ends with a ``callback_url`` gets a ``webhook_messages`` row in the transaction
that ends it (``enqueue``): an ended job whose callback was never queued cannot happen, and
nothing waits in a worker's memory. The feeder claims the due rows (``claim_due``: a random
token, valid CLAIM_SECONDS) and sends one message each; the worker that gets the message
takes the claim for the length of one delivery (``take``: the token must still be the
row's), POSTs, and writes how it went under the same token (``delivered``, ``retry_at``,
``gave_up``). A claim that lapses (the message was lost, the worker was killed) leaves the
row due, and the feeder claims it again with a new token; the old message, if it ever
runs, finds another token and does nothing.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, literal, or_, select

from faceid_batch.db import affected
from faceid_batch.models import Job, WebhookMessage, table
from faceid_batch.scheduling.schedule import Executor
from faceid_batch.times import utcnow

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
# How long a claim made by the feeder lasts: the message's wait in its lane and for a
# thread. A delivery's own claim lasts its timeout and TAKE_MARGIN more.
CLAIM_SECONDS = 30.0
TAKE_MARGIN = timedelta(seconds=15)

_M = table(WebhookMessage)
_C = _M.c
_J = table(Job).c
_ENQUEUE = _M.insert().from_select(
    ["job_id", "lane", "state", "created_at", "due_at", "attempts"],
    select(_J.id, _J.lane, literal(PENDING), bindparam("now"), bindparam("now"), literal(0))
    .where(_J.id == bindparam("of_job"), _J.callback_url.is_not(None)),
)
_CLAIMED = and_(_C.id == bindparam("of_message"), _C.claim == bindparam("token"),
                _C.state == PENDING)


def enqueue(db: Executor, job_id: int) -> None:
    """Queue the completion callback of a job that has just ended (if it has a callback
    URL), in the transaction that ends it."""
    db.execute(_ENQUEUE, {"of_job": job_id, "now": utcnow()})


def enqueue_again(db: Executor, chosen: ColumnElement[bool]) -> int:
    """Queue the completion callback once more for every job ``chosen`` selects (a condition
    on ``jobs``) that has a callback URL, in one statement; return how many were queued.
    For jobs that ended earlier (an operator's resend): each new row has its own id, so
    the receiver gets a new ``webhook-id``."""
    now = utcnow()
    return affected(db.execute(_M.insert().from_select(
        ["job_id", "lane", "state", "created_at", "due_at", "attempts"],
        select(_J.id, _J.lane, literal(PENDING), literal(now, _C.created_at.type),
               literal(now, _C.due_at.type), literal(0))
        .where(chosen, _J.callback_url.is_not(None)),
    # An INSERT's row count is kept only when asked for (psycopg reports -1 otherwise).
    ).execution_options(preserve_rowcount=True)))


def claim_due(db: Executor, limit: int) -> list[tuple[int, str, str]]:
    """Claim up to ``limit`` due callbacks for CLAIM_SECONDS; return (id, lane, token)."""
    now = utcnow()
    ids = list(db.scalars(select(_C.id).where(
        _C.due_at <= now, or_(_C.claimed_until.is_(None), _C.claimed_until < now),
    ).order_by(_C.due_at, _C.id).limit(limit)))
    claimed = []
    for message_id in ids:
        token = secrets.token_hex(16)
        # Guarded by what was read: two feeders (one losing its lock) never both claim it.
        won = db.execute(_M.update().where(
            _C.id == message_id, _C.due_at <= now,
            or_(_C.claimed_until.is_(None), _C.claimed_until < now),
        ).values(claim=token, claimed_until=now + timedelta(seconds=CLAIM_SECONDS)))
        if affected(won):
            claimed.append(message_id)
    if not claimed:
        return []
    rows = db.execute(select(_C.id, _C.lane, _C.claim).where(_C.id.in_(claimed))).all()
    return [(r.id, r.lane, r.claim) for r in rows]


def take(db: Executor, message_id: int, token: str, seconds: float) -> dict[str, Any] | None:
    """Hold the claim ``token`` for one delivery of ``seconds``; the message's row, or None
    if the token is no longer its claim (claimed again since, or done)."""
    until = utcnow() + timedelta(seconds=seconds) + TAKE_MARGIN
    if not affected(db.execute(_M.update().where(_CLAIMED).values(claimed_until=until),
                      {"of_message": message_id, "token": token})):
        return None
    row = db.execute(select(_C.job_id, _C.attempts).where(_C.id == message_id)).one()
    return {"job_id": row.job_id, "attempts": row.attempts}


def _finish(db: Executor, message_id: int, token: str, **values: Any) -> bool:
    return affected(db.execute(_M.update().where(_CLAIMED).values(
        claim=None, claimed_until=None, attempts=_C.attempts + 1, **values),
        {"of_message": message_id, "token": token})) > 0


def later(db: Executor, message_id: int, token: str, due: datetime) -> bool:
    """Not sent now (its worker had no thread to spare): due at ``due``, not an attempt."""
    return affected(db.execute(_M.update().where(_CLAIMED).values(
        claim=None, claimed_until=None, due_at=due),
        {"of_message": message_id, "token": token})) > 0


def delivered(db: Executor, message_id: int, token: str) -> bool:
    """The receiver took it."""
    return _finish(db, message_id, token, state=DELIVERED, due_at=None, ended_at=utcnow(),
                   last_error=None)


def retry_at(db: Executor, message_id: int, token: str, due: datetime, error: str) -> bool:
    """It failed; try again at ``due``."""
    return _finish(db, message_id, token, due_at=due, last_error=error[:2000])


def gave_up(db: Executor, message_id: int, token: str, error: str) -> bool:
    """It failed for the last time (the schedule is used up, or it can never succeed)."""
    return _finish(db, message_id, token, state=FAILED, due_at=None, ended_at=utcnow(),
                   last_error=error[:2000])
