"""Paid answers that could not be written yet (the database was down) are parked in Redis.

The next run of the job, or the recovery sweep, writes them before anything else, so a paid
call is never repeated because of a database outage.

Taking an answer out of the park moves it, in one step, to a second hash of answers being
written. If the process dies before the write (or before parking the answer again), the
answer is still there: the recovery sweep puts it back in the park once it is older than
STUCK_AFTER_SECONDS and the job has no attempt with its RequestId (see ``recovery.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import redis

from faceid_batch.faceid_client import Answer, BestFrameInfo

log = logging.getLogger(__name__)
KEY = "faceid:parked-answers"
TAKEN_KEY = "faceid:parked-answers:taken"

# Move one answer from the park to the taken hash, stamped with the time it was taken.
_TAKE = """
local raw = redis.call('hget', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('hset', KEYS[2], ARGV[1], cjson.encode({taken_at = tonumber(ARGV[2]), answer = raw}))
return raw
"""
# Put a taken answer back in the park, unless the job was parked again meanwhile.
_RESTORE = """
local entry = redis.call('hget', KEYS[2], ARGV[1])
if not entry then return 0 end
redis.call('hdel', KEYS[2], ARGV[1])
if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], ARGV[1], cjson.decode(entry)['answer'])
return 1
"""


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
    pipe = client.pipeline(transaction=True)
    pipe.hset(KEY, str(job_id), _dump(answer))
    pipe.hdel(TAKEN_KEY, str(job_id))
    pipe.execute()
    log.error("job %s: database unavailable; answer %s (RequestId %s) parked in Redis",
              job_id, answer.code, answer.request_id)


def take(client: redis.Redis, job_id: int) -> Answer | None:
    """The parked answer for ``job_id``, taken out of the park, or None.

    It stays in the taken hash until the sweep sees it written (or puts it back); if
    writing fails, the caller parks it again.
    """
    raw = client.eval(_TAKE, 2, KEY, TAKEN_KEY, str(job_id), repr(time.time()))
    if raw is None:
        return None
    return _load(raw)


def parked_jobs(client: redis.Redis) -> list[int]:
    return [int(k) for k in client.hkeys(KEY)]


def parked(client: redis.Redis) -> dict[int, Answer]:
    """Every parked answer by job id."""
    return {int(k): _load(v) for k, v in client.hgetall(KEY).items()}


def taken(client: redis.Redis) -> dict[int, tuple[float, Answer]]:
    """Answers taken out of the park and not yet settled: job id -> (taken at, answer)."""
    out = {}
    for k, v in client.hgetall(TAKEN_KEY).items():
        entry = json.loads(v)
        out[int(k)] = (float(entry["taken_at"]), _load(entry["answer"]))
    return out


def settle(client: redis.Redis, job_id: int) -> None:
    """Forget a taken answer: it was written (or the job needs it no more)."""
    client.hdel(TAKEN_KEY, str(job_id))


def restore(client: redis.Redis, job_id: int) -> bool:
    """Put a taken answer that was never written back in the park; True if it was."""
    return bool(client.eval(_RESTORE, 2, KEY, TAKEN_KEY, str(job_id)))
