"""The access audit: one row per read of a job's face images, by any surface, and its query.

This module only ever INSERTs into access_audit and SELECTs from it; triggers (revision 0006)
refuse an UPDATE, a DELETE (and on PostgreSQL a TRUNCATE) from anyone. A read is recorded
before the bytes leave the process: when the row cannot be written, the image is not served.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.models import AccessAudit, BatchAction
from faceid_batch.times import as_aware

SURFACES = ("web", "api", "cli")
WHAT = ("best_frame", "id_photo", "erasure")  # a read of an image, or an erasure
MAX_LIMIT = 100_000


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    actor: str
    token_id: int | None
    surface: str
    what: str
    job_id: int
    remote: str | None
    detail: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": as_aware(self.at).isoformat(), "actor": self.actor,
                "token_id": self.token_id, "surface": self.surface, "what": self.what,
                "job_id": self.job_id, "remote": self.remote, "detail": self.detail}


def record(url: str, *, actor: str, surface: str, what: str, job_id: int,
           token_id: int | None = None, remote: str | None = None,
           detail: str | None = None) -> None:
    """Append one audit row (committed when this returns)."""
    if surface not in SURFACES or what not in WHAT:
        raise ValueError(f"audit: unknown surface {surface!r} or what {what!r}")
    with session_scope(url) as s:
        s.add(AccessAudit(actor=actor[:200], token_id=token_id, surface=surface, what=what,
                          job_id=job_id, remote=(remote or "")[:200] or None,
                          detail=detail))


def record_batch_action(url: str, *, actor: str, surface: str, action: str, batch_id: int,
                        token_id: int | None = None, remote: str | None = None,
                        detail: str | None = None) -> None:
    """Append one row to batch_actions on its own (an action of bulk/batches.py writes its
    row itself, in the action's transaction: batches.add_action)."""
    from faceid_batch.bulk.batches import add_action

    with session_scope(url) as s:
        add_action(s, batch_id=batch_id, action=action, actor=actor, surface=surface,
                   token_id=token_id, remote=remote, detail=detail)


def batch_actions(url: str, batch_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The newest actions on a batch, newest first."""
    with session_scope(url) as s:
        rows = s.scalars(select(BatchAction).where(BatchAction.batch_id == batch_id)
                         .order_by(BatchAction.id.desc()).limit(limit)).all()
        return [{"at": as_aware(r.at), "actor": r.actor, "surface": r.surface,
                 "action": r.action, "detail": r.detail} for r in rows]


def cli_actor() -> tuple[str, str]:
    """The CLI's actor (``cli:<os user>@<host>``) and where it runs (the host name)."""
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{host}", host


@dataclass(frozen=True)
class Query:
    """Narrow the audit; every field left None matches everything."""

    job_id: int | None = None
    actor: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int = 100


def entries(url: str, q: Query = Query()) -> list[Entry]:
    """The newest ``q.limit`` matching rows, newest first."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be 1..{MAX_LIMIT}, got {q.limit}")
    stmt = select(AccessAudit.id, AccessAudit.at, AccessAudit.actor, AccessAudit.token_id,
                  AccessAudit.surface, AccessAudit.what, AccessAudit.job_id,
                  AccessAudit.remote, AccessAudit.detail)
    if q.job_id is not None:
        stmt = stmt.where(AccessAudit.job_id == q.job_id)
    if q.actor is not None:
        stmt = stmt.where(AccessAudit.actor == q.actor)
    if q.since is not None:
        stmt = stmt.where(AccessAudit.at >= q.since)
    if q.until is not None:
        stmt = stmt.where(AccessAudit.at < q.until)
    with session_scope(url) as s:
        rows = s.execute(stmt.order_by(AccessAudit.id.desc()).limit(q.limit)).all()
    return [Entry(*r) for r in rows]


def write_text(rows: Iterable[Entry], out: TextIO) -> int:
    n = 0
    for e in rows:
        out.write(f"{as_aware(e.at).isoformat(timespec='seconds')}  job {e.job_id:<8} {e.what:<10} "
                  f"{e.surface:<3}  {e.actor}  from {e.remote or '-'}"
                  + (f"  ({e.detail})" if e.detail else "") + "\n")
        n += 1
    return n


def write_jsonl(rows: Iterable[Entry], out: TextIO) -> int:
    n = 0
    for e in rows:
        out.write(json.dumps(e.as_dict(), ensure_ascii=False) + "\n")
        n += 1
    return n



