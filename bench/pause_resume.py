"""Pause and resume hammered during a running batch, at the default settings.

A backfill of --jobs jobs runs on two workers (simulated latency median 1.5 s / p99 5 s,
20 calls/s) while the batch is paused and resumed --cycles times, each state held for a
random 0.05-1 s. Prints the jobs left paused (there must be none), the jobs answered, and
the calls paid twice (there must be none).

    .venv/bin/python -m bench.pause_resume
    .venv/bin/python -m bench.pause_resume --jobs 1000 --cycles 100
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections import Counter
from pathlib import Path

from bench.common import LocalStack, run_once


def run(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from faceid_batch.bulk import batches
    from faceid_batch.bulk.backfill import run_backfill
    from faceid_batch.db import session_scope
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import Job

    stack = LocalStack(base, seed=9, database_url=args.database_url)
    settings, db_url = stack.settings(), stack.db_url
    lines = ["key,photo,video,liveness_type"]
    md5s = []
    for i in range(args.jobs):
        photo, video = write_pair(base / "media", i)
        md5s.append(hashlib.md5(video.read_bytes()).hexdigest())
        lines.append(f"pr-{i},{photo},{video},SILENT")
    manifest = base / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    batch = run_backfill(settings, manifest).batch_id
    stack.start_workers(2, args.concurrency, "r")
    rng = random.Random(11)
    started = time.monotonic()
    try:
        while not stack.calls():
            time.sleep(0.2)
        for _ in range(args.cycles):
            batches.pause(settings, batch)
            time.sleep(rng.uniform(0.05, 1.0))
            batches.resume(settings, batch)
            time.sleep(rng.uniform(0.05, 1.0))
        hammered = time.monotonic() - started
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with session_scope(db_url) as s:
                left = s.scalar(select(func.count()).select_from(Job).where(
                    Job.batch_id == batch, Job.finished_at.is_(None)))
            if not left:
                break
            time.sleep(0.5)
        calls = stack.calls()
        with session_scope(db_url) as s:
            states = dict(s.execute(select(Job.state, func.count())
                                    .where(Job.batch_id == batch).group_by(Job.state)).all())
    finally:
        stack.stop()
    charged = Counter(c["video_md5"] for c in calls if c["charged"])
    return {
        "scenario": f"{args.jobs} backfill jobs, {args.cycles} pause/resume cycles "
                    f"over {hammered:.0f} s",
        "jobs by state at the end": ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
        "jobs left paused": states.get("paused", 0),
        "paid calls": sum(charged.values()),
        "calls paid twice": sum(n - 1 for n in charged.values() if n > 1),
        "jobs with no paid call": sum(1 for m in md5s if not charged.get(m)),
        "run, s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    return run_once("faceid-bench-pause-", args, run,
                    f"default settings, 2 workers x threads {args.concurrency}", 40)


if __name__ == "__main__":
    raise SystemExit(main())
