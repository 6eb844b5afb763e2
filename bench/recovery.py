"""Recovery at the default settings: a worker SIGKILLed, Redis SIGKILLed, Redis flushed.

Each scenario starts its own redis-server (AOF on, as in docker-compose), the simulator
(lognormal latency, median 1.5 s, p99 5 s, 20 calls/s enforced) and two real worker
processes (threads pool, 40 each), stores a backfill of --jobs jobs (the workers' feeder
sends them), breaks one part once the calls are flowing, and prints what it cost: when the
jobs came back, calls paid twice, answers lost, and whether every job ended. No timeout is
shortened: WORKER_LEASE_SECONDS 10, BROKER_VISIBILITY_TIMEOUT 900.

    .venv/bin/python -m bench.recovery                 # all three, 400 jobs each
    .venv/bin/python -m bench.recovery --scenarios worker-kill --jobs 1000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from bench.common import ROOT, SECRET_ID, SECRET_KEY, pct, print_scenarios, ts


def run(name: str, args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    import redis
    from sqlalchemy import func, select

    from faceid_batch import migrate
    from faceid_batch.db import session_scope
    from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
    from faceid_batch.local.samples import write_pair
    from faceid_batch.local.services import RedisServer, Simulator, Worker
    from faceid_batch.models import Attempt, Job
    from faceid_batch.settings import load_settings

    work = base / name
    server = RedisServer(work / "redis", appendonly=True).start()
    sim = Simulator(work / "sim", SECRET_ID, SECRET_KEY, extra_args=[
        "--latency-median", "1.5", "--latency-p99", "5", "--rate-limit", "20",
        "--seed", "1"]).start()
    db_url = args.database_url or f"sqlite:///{work}/bench.db"
    migrate.upgrade(db_url)
    settings = load_settings(database_url=db_url, redis_url=server.url)
    env = {"DATABASE_URL": db_url, "REDIS_URL": server.url, "FACEID_SECRET_ID": SECRET_ID,
           "FACEID_SECRET_KEY": SECRET_KEY, "FACEID_ENDPOINT": sim.api_url,
           "COS_BUCKET": "bench-1250000000", "COS_DOMAIN": sim.cos_domain,
           "COS_SCHEME": "http", "METRICS_PORT": "0",
           "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32", "PYTHONPATH": str(ROOT)}
    md5_job: dict[str, int] = {}
    for i in range(args.jobs):
        photo, video = write_pair(work / "media", i)
        job_id, _ = insert_job(settings, validate_spec(
            JobSpec(f"{name}-{i}", str(photo), str(video), "SILENT", lane="backfill")))
        md5_job[hashlib.md5(video.read_bytes()).hexdigest()] = job_id
    ids = list(md5_job.values())
    workers = [Worker(env=env, logfile=work / f"w{i}.log", concurrency=args.concurrency,
                      name=f"{name}{i}").start() for i in range(2)]
    client = redis.Redis.from_url(server.url)

    def calls() -> list[dict]:
        return requests.get(f"{sim.control_url}/calls", timeout=30).json()

    def done() -> int:
        with session_scope(db_url) as s:
            return s.scalar(select(func.count()).select_from(Job).where(
                Job.id.in_(ids), Job.state.in_(["completed", "failed"])))

    figures: dict = {"scenario": name, "jobs": args.jobs}
    try:
        deadline = time.monotonic() + 120
        while len(calls()) < args.jobs * 0.25 and time.monotonic() < deadline:
            time.sleep(0.2)
        held: dict[int, str] = {}
        with session_scope(db_url) as s:
            # What the failure can strand: jobs running, and jobs whose message is in Redis.
            exposed = set(s.scalars(select(Job.id).where(Job.id.in_(ids), (
                Job.state == "running") | Job.enqueued_at.is_not(None))))
        if name == "worker-kill":
            with session_scope(db_url) as s:
                rows = s.execute(select(Job.id, Job.lease_id).where(
                    Job.id.in_(ids), Job.state == "running")).all()
            by_lease = Counter(lease for _, lease in rows)
            victim_lease = by_lease.most_common(1)[0][0]
            held = {job_id: lease for job_id, lease in rows if lease == victim_lease}
            victim = next(w for w in workers if f":{w.proc.pid}:" in victim_lease)
            broke_at = time.time()
            victim.kill()
            back_at = broke_at
        elif name == "redis-kill":
            broke_at = time.time()
            server.restart(hard=True, down_for=2.0)
            back_at = time.time()
        else:
            broke_at = back_at = time.time()
            client.flushall()
        deadline = time.monotonic() + args.timeout
        while done() < args.jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        log = calls()
        with session_scope(db_url) as s:
            ends = dict(s.execute(select(Job.id, Job.finished_at).where(
                Job.id.in_(ids), Job.finished_at.is_not(None))).all())
            finished = [ts(t) for t in ends.values()]
            exposed_end = [ts(ends[i]) for i in exposed if i in ends]
            recorded = set(s.scalars(select(Attempt.request_id)))
    finally:
        for w in workers:
            w.stop()
        sim.stop()
        server.stop()

    in_flight = [c for c in log if c["t_start"] < broke_at < c["t_end"]]
    charged = Counter(md5_job.get(c["video_md5"]) for c in log if c["charged"])
    figures.update({
        "jobs ended": f"{len(finished)}/{args.jobs}",
        "calls in flight when it broke": len(in_flight),
        "calls paid twice": sum(n - 1 for n in charged.values() if n > 1),
        "answers lost (calls with no attempt row)": sum(
            1 for c in log if c["request_id"] not in recorded),
        "jobs running or in Redis when it broke": len(exposed),
        "of those, the last ended, s after the part was back": round(
            max(exposed_end) - back_at, 1) if exposed_end else None,
        "last job of the batch ended, s after the part was back": round(
            max(finished) - back_at, 1) if finished else None,
    })
    if held:
        again = []
        for job_id in held:
            starts = [c["t_start"] for c in log
                      if md5_job.get(c["video_md5"]) == job_id and c["t_start"] > broke_at]
            again.append(min(starts) - broke_at if starts else float("inf"))
        figures.update({
            "jobs the killed worker held": len(held),
            "held jobs called again after, s (min/p50/max)":
                f"{min(again):.1f}/{pct(again, 50):.1f}/{max(again):.1f}",
        })
    else:
        after = sorted(c["t_start"] for c in log if c["t_start"] > back_at)
        figures["first call after the part was back, s"] = round(after[0] - back_at, 2) \
            if after else None
    figures["RequestLimitExceeded"] = sum(1 for c in log if c["code"] == "RequestLimitExceeded")
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--scenarios", default="worker-kill,redis-kill,redis-flush")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="faceid-bench-recovery-"))
    os.environ.setdefault("METRICS_PORT", "0")
    results = []
    try:
        for name in args.scenarios.split(","):
            results.append(run(name, args, base))
            print(f"[{name}] {results[-1]}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.jobs} backfill jobs, 2 workers x threads {args.concurrency}, default "
          "settings")
    print_scenarios(results, 50)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
