"""Paid answers that could not be written yet (the database was down) are parked in Redis.

The next run of the job, or the recovery sweep, writes them before anything else, so a paid
call is never repeated because of a database outage.

Taking an answer out of the park moves it, in one step, to a second hash of answers being
written, with the lease of the worker taking it. If that worker dies before the write (or
before parking the answer again), the answer is still there: the job's next run takes it
over as soon as that lease is gone (``take``), and the recovery sweep puts it back in the
park if no run does (see ``recovery.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import redis

from faceid_batch.call.faceid_client import Answer, BestFrameInfo
from faceid_batch.scheduling.leases import LEASE_PREFIX

log = logging.getLogger(__name__)
KEY = "faceid:parked-answers"
TAKEN_KEY = "faceid:parked-answers:taken"

# Move one answer from the park to the taken hash, stamped with the time and the lease that
# took it; or take over one taken by a lease that is gone (its worker died before writing).
# ARGV = job id, now, taker's lease id, lease key prefix
_TAKE = """
local raw = redis.call('hget', KEYS[1], ARGV[1])
if raw then
  redis.call('hdel', KEYS[1], ARGV[1])
else
  local entry = redis.call('hget', KEYS[2], ARGV[1])
  if not entry then return false end
  local e = cjson.decode(entry)
  local by = e['by']
  if not by or by == '' or by == ARGV[3] then return false end
  if redis.call('exists', ARGV[4] .. by) == 1 then return false end
  raw = e['answer']
end
redis.call('hset', KEYS[2], ARGV[1],
           cjson.encode({taken_at = tonumber(ARGV[2]), answer = raw, by = ARGV[3]}))
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


def take(client: redis.Redis, job_id: int, lease_id: str = "") -> Answer | None:
    """The parked answer for ``job_id``, taken out of the park by ``lease_id``, or None.

    It stays in the taken hash until the sweep sees it written (or puts it back); if
    writing fails, the caller parks it again. An answer taken by a lease that is gone is
    taken over.
    """
    raw = client.eval(_TAKE, 2, KEY, TAKEN_KEY, str(job_id), repr(time.time()), lease_id,
                      LEASE_PREFIX)
    if raw is None:
        return None
    return _load(raw)


def is_parked(client: redis.Redis, job_id: int) -> bool:
    """Whether a paid answer for ``job_id`` waits in the park."""
    return bool(client.hexists(KEY, str(job_id)))


def parked_jobs(client: redis.Redis) -> list[int]:
    return [int(k) for k in client.hkeys(KEY)]


def parked(client: redis.Redis) -> dict[int, Answer]:
    """Every parked answer by job id."""
    return {int(k): _load(v) for k, v in client.hgetall(KEY).items()}


def taken(client: redis.Redis) -> dict[int, tuple[float, Answer, str]]:
    """Answers taken out of the park and not yet settled: job id -> (taken at, answer, the
    lease that took it, "" if unknown)."""
    out = {}
    for k, v in client.hgetall(TAKEN_KEY).items():
        entry = json.loads(v)
        out[int(k)] = (float(entry["taken_at"]), _load(entry["answer"]), entry.get("by") or "")
    return out


def settle(client: redis.Redis, job_id: int) -> None:
    """Forget a taken answer: it was written (or the job needs it no more)."""
    client.hdel(TAKEN_KEY, str(job_id))


def restore(client: redis.Redis, job_id: int) -> bool:
    """Put a taken answer that was never written back in the park; True if it was."""
    return bool(client.eval(_RESTORE, 2, KEY, TAKEN_KEY, str(job_id)))
