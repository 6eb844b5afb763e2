"""The simulator's clock (FaceID and COS alike) 400 s ahead of this host's, at the default
settings.

100 sign-ups (local media) on two workers of `faceid-batch worker`'s 32 threads, the
simulator's clock_skew knob at +400 s (``--skew``; -400 puts it behind). FaceID refuses a
timestamp more than 300 s off (``AuthFailure.SignatureExpire``) and COS a presigned URL
outside its window, both on their own clock. Prints: jobs answered; SignatureExpire answers
per worker process (from each worker's log) and in all (the simulator's call log); attempts
counted for them and attempts billed for them (both must be 0); DownLoadError answers (0:
the presigned URLs were valid on COS's clock); the offsets the workers learned.

    .venv/bin/python -m bench.clock_skew
    .venv/bin/python -m bench.clock_skew --skew -400
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import requests

from bench.common import LocalStack, run_once

EXPIRED = "AuthFailure.SignatureExpire"


def run(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from faceid_batch.db import session_scope
    from faceid_batch.intake.submit import JobSpec, submit
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import Attempt, Job

    stack = LocalStack(base, seed=5, database_url=args.database_url)
    settings, db_url = stack.settings(), stack.db_url
    requests.post(f"{stack.sim.control_url}/config", json={"clock_skew": args.skew},
                  timeout=5).raise_for_status()
    pairs = [write_pair(base / "media", i) for i in range(args.jobs)]
    workers = stack.start_workers(2, args.concurrency, "c")
    started = time.time()
    try:
        ids = [submit(settings, JobSpec(f"c-{i}", str(p), str(v), "SILENT"))[0]
               for i, (p, v) in enumerate(pairs)]
        deadline = time.monotonic() + args.timeout

        def ended() -> int:
            with session_scope(db_url) as s:
                return len(s.scalars(select(Job.id).where(
                    Job.id.in_(ids), Job.finished_at.is_not(None))).all())

        while ended() < len(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.time() - started
        calls = stack.calls()
        with session_scope(db_url) as s:
            jobs = s.scalars(select(Job).where(Job.id.in_(ids))).all()
            expired_rows = s.scalars(select(Attempt).where(
                Attempt.job_id.in_(ids), Attempt.code == EXPIRED)).all()
    finally:
        stack.stop()
    logs = [w.logfile.read_text() for w in workers]
    per_process = [log.count(f": {EXPIRED} (RequestId") for log in logs]
    learned = sorted({m for log in logs for m in re.findall(
        r"clock of (\S+): ([+-][\d.]+) s from this host's", log)})
    codes = [c["code"] for c in calls]
    states: dict[str, int] = {}
    for j in jobs:
        states[j.state] = states.get(j.state, 0) + 1
    return {
        "scenario": f"{args.jobs} sign-ups, the simulator's clock {args.skew:+.0f} s from the "
                    "host's",
        "jobs answered (completed)": f"{states.get('completed', 0)}/{len(ids)}",
        "job states": ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
        "SignatureExpire per worker process": ", ".join(str(n) for n in per_process),
        "SignatureExpire in all (simulator's log)": codes.count(EXPIRED),
        "attempts counted for SignatureExpire": sum(1 for a in expired_rows if a.counted),
        "attempts billed for SignatureExpire": sum(1 for a in expired_rows if a.billable),
        "DownLoadError": codes.count("FailedOperation.DownLoadError"),
        "calls made / counted attempts": f"{len(calls)} / {sum(j.attempts for j in jobs)}",
        "offsets learned (endpoint: s)": "; ".join(f"{n}: {o}" for n, o in learned) or "none",
        "run, s": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--skew", type=float, default=400.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args(argv)
    return run_once("faceid-bench-clock-", args, run,
                    f"default settings, 2 workers x threads {args.concurrency}, simulated "
                    "latency median 1.5 s / p99 5 s", 44)


if __name__ == "__main__":
    raise SystemExit(main())
