"""Paid answers that could not be written yet (the database was down) are parked in Redis.

The next run of the job, or the recovery sweep, writes them before anything else, so a paid
call is never repeated because of a database outage.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import redis

from faceid_batch.faceid_client import Answer, BestFrameInfo

log = logging.getLogger(__name__)
KEY = "faceid:parked-answers"


def _dump(answer: Answer) -> str:
    data = {f.name: getattr(answer, f.name) for f in dataclasses.fields(answer) if f.init}
    if answer.best_frame is not None:
        data["best_frame"] = dataclasses.asdict(answer.best_frame)
    return json.dumps(data)


def _load(raw: bytes | str) -> Answer:
    data = json.loads(raw)
    if data.get("best_frame"):
        data["best_frame"] = BestFrameInfo(**data["best_frame"])
    return Answer(**data)


def park(client: redis.Redis, job_id: int, answer: Answer) -> None:
    """Keep ``answer`` for ``job_id`` until it is written."""
    client.hset(KEY, str(job_id), _dump(answer))
    log.error("job %s: database unavailable; answer %s (RequestId %s) parked in Redis",
              job_id, answer.code, answer.request_id)


def take(client: redis.Redis, job_id: int) -> Answer | None:
    """The parked answer for ``job_id``, removed from the park, or None.

    Removed before it is written: if writing fails again the caller parks it again.
    """
    raw = client.hget(KEY, str(job_id))
    if raw is None:
        return None
    client.hdel(KEY, str(job_id))
    return _load(raw)


def parked_jobs(client: redis.Redis) -> list[int]:
    return [int(k) for k in client.hkeys(KEY)]
