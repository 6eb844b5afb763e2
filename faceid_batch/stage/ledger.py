"""The ledger of what the product writes to COS (``media_objects``).

A row is written before the object (``record``), naming the job it is for, or no job yet
for an upload the producer API stores before the job exists (``link`` names it once the
job is stored). A job that reuses an object already in the bucket gets a row too: each row
is one job's use of one object. The purge (admin/purge.py) walks these rows, not the job's
columns, so it finds every object whatever way its job ended, and the objects of requests
that never stored a job (``job_id`` NULL: purged once ORPHAN_GRACE old).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import bindparam, select

from faceid_batch.db import affected, write_scope
from faceid_batch.models import MediaObject, table
from faceid_batch.times import utcnow

# How long an object written for no job yet waits for its job (a producer API request
# links it within the request) before the purge takes it for the leftover of a request
# that stored nothing.
ORPHAN_GRACE = timedelta(hours=1)

_M = table(MediaObject)
_C = _M.c
_INSERT = _M.insert().returning(_C.id)
_USE_OF = select(_C.id).where(_C.object_key == bindparam("key"),
                              _C.job_id == bindparam("of_job"), _C.deleted_at.is_(None))


def record(database_url: str, bucket: str, key: str, job_id: int | None) -> int:
    """Note, before writing it, that ``key`` is (or is about to be) in ``bucket`` for
    ``job_id``; return the row's id. A job's second use of one object adds no row."""
    with write_scope(database_url) as session:
        if job_id is not None:
            found = session.scalar(_USE_OF, {"key": key, "of_job": job_id})
            if found is not None:
                return int(found)
        return int(session.scalar(_INSERT, {"bucket": bucket, "object_key": key,
                                            "job_id": job_id, "written_at": utcnow()}))


def link(database_url: str, ids: Iterable[int], job_id: int) -> int:
    """Name the job that objects written for no job yet (``record(..., None)``) are for."""
    ids = list(ids)
    if not ids:
        return 0
    with write_scope(database_url) as session:
        return affected(session.execute(_M.update().where(_C.id.in_(ids), _C.job_id.is_(None))
                               .values(job_id=job_id)))
