"""Two accounts on the simulator, each 20 calls/s counted per SecretId; then one in arrears
mid-run; then residency: a mixed manifest of ap-bangkok and ap-singapore rows; and
(``--scenarios cap``) an account-wide cap the product has to learn.

Starts a redis-server, the simulator (lognormal latency, median 1.5 s, p99 5 s, 20 calls/s
per SecretId, a second bucket for ap-bangkok on its own port) and two real worker
processes sized by the accounts' budget (no -c given: 40/s x WORKER_CALL_SECONDS). Account
``sg`` serves ap-singapore; ``bkk`` serves ap-singapore and ap-bangkok; both belong to one
owner. Prints the figures.

    .venv/bin/python -m bench.accounts --jobs 1200
    .venv/bin/python -m bench.accounts --scenarios cap --owner-cap 30
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import ROOT, SECRET_ID, SECRET_KEY, pct, print_scenarios
from bench.throughput import make_media
from faceid_batch.call.ratelimit import max_starts_in_window

BKK_ID, BKK_KEY = "AKIDbenchFAKEbangkokNOTrealXXXXXX", "benchFAKEbangkokKEYnotREAL000000"
SG_BUCKET, BKK_BUCKET = "bench-sg-1250000000", "bench-bkk-1250000000"
ACCOUNTS = f"""
[accounts.sg]
secret_id = "{SECRET_ID}"
secret_key_env = "BENCH_FAKE_KEY_SG"
regions = ["ap-singapore"]
owner = "bench-uin"

[accounts.bkk]
secret_id = "{BKK_ID}"
secret_key_env = "BENCH_FAKE_KEY_BKK"
regions = ["ap-singapore", "ap-bangkok"]
owner = "bench-uin"
"""


class Stack:
    """redis-server, the simulator with two accounts and two buckets, a migrated database,
    the workers' environment."""

    def __init__(self, base: Path, args: Any) -> None:
        from faceid_batch import migrate
        from faceid_batch.local.services import RedisServer, Simulator

        self.base = base
        self.server = RedisServer(base / "redis").start()
        self.sim = Simulator(base / "sim", SECRET_ID, SECRET_KEY, extra_args=[
            "--latency-median", "1.5", "--latency-p99", "5", "--rate-limit", "20",
            "--seed", "1", "--extra-bucket", f"{BKK_BUCKET}@ap-bangkok"],
            extra_env={"FACEID_SIM_EXTRA_CREDENTIALS": f"{BKK_ID}:{BKK_KEY}"}).start()
        if args.sim_nice:
            # The simulator stands in for Tencent's machines: not starved by the workers.
            for tid in os.listdir(f"/proc/{self.sim.proc.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), args.sim_nice)
        self.db_url = f"sqlite:///{base}/bench.db"
        migrate.upgrade(self.db_url)
        accounts_file = base / "accounts.toml"
        accounts_file.write_text(ACCOUNTS)
        domains = self.sim.cos_domains
        self.env = {
            "DATABASE_URL": self.db_url, "REDIS_URL": self.server.url,
            "FACEID_ACCOUNTS_FILE": str(accounts_file), "BENCH_FAKE_KEY_SG": SECRET_KEY,
            "BENCH_FAKE_KEY_BKK": BKK_KEY, "COS_SECRET_ID": SECRET_ID,
            "COS_SECRET_KEY": SECRET_KEY, "FACEID_ENDPOINT": self.sim.api_url,
            "COS_BUCKET": SG_BUCKET, "COS_BUCKETS": f"ap-bangkok={BKK_BUCKET}",
            "COS_DOMAIN": self.sim.cos_domain,
            "COS_DOMAINS": f"ap-bangkok={domains[BKK_BUCKET]}", "COS_SCHEME": "http",
            "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32", "METRICS_PORT": "0",
            "RETRY_BASE_DELAY": "1", "PYTHONPATH": str(ROOT)}
        for name in ("FACEID_SECRET_ID", "FACEID_SECRET_KEY"):
            os.environ.pop(name, None)
        os.environ.update(self.env)
        from faceid_batch.settings import get_settings

        get_settings.cache_clear()
        self.settings = get_settings()
        self.workers: list[Any] = []

    def start_workers(self, n: int, name: str) -> None:
        from faceid_batch.call import accounts
        from faceid_batch.local.services import Worker

        threads = accounts.threads_for(accounts.configured(self.settings),
                                       self.settings.worker_call_seconds)
        self.threads = threads
        self.workers = [Worker(env=self.env, logfile=self.base / f"{name}{i}.log",
                               concurrency=threads, name=f"{name}{i}").start()
                        for i in range(n)]

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def calls(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.sim.control_url}/calls", timeout=30).json()

    def reset(self) -> None:
        requests.post(f"{self.sim.control_url}/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.stop_workers()
        self.sim.stop()
        self.server.stop()


def _finished(db_url: str, prefix: str) -> list[Any]:
    from sqlalchemy import select

    from faceid_batch.db import session_scope
    from faceid_batch.models import Job

    with session_scope(db_url) as s:
        return s.execute(select(Job.id, Job.state, Job.finished_at).where(
            Job.idempotency_key.like(f"{prefix}%"))).all()


def _insert(stack: Stack, prefix: str, media: list[tuple[str, str]],
            region: str | None = None) -> None:
    from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec

    for i, (p, v) in enumerate(media):
        insert_job(stack.settings, validate_spec(JobSpec(
            f"{prefix}{i}", p, v, "SILENT", lane="backfill", region=region), stack.settings))


def _wait(stack: Stack, prefix: str, total: int, timeout: float,
          during: Any = None) -> float:
    started = time.time()
    while True:
        rows = _finished(stack.db_url, prefix)
        done = sum(1 for r in rows if r.state in ("completed", "failed"))
        if during is not None:
            during(time.time() - started, done)
        if done >= total or time.time() - started > timeout:
            return time.time() - started
        time.sleep(0.5)


def _per_secret(calls: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for c in calls:
        out.setdefault(c["secret_id"], []).append(c["t_start"])
    return out


def _steady(times: list[float]) -> float:
    """Events per second between the 5th and the 95th percentile."""
    times = sorted(times)
    lo, hi = pct(times, 5), pct(times, 95)
    return sum(1 for t in times if lo <= t <= hi) / max(1e-9, hi - lo)


def two_accounts(stack: Stack, args: Any) -> dict[str, Any]:
    stack.reset()
    media = make_media(stack.base / "media", args.jobs, args.video_mb, "t")
    _insert(stack, "two-", media)
    os.sync()
    stack.start_workers(2, "two")
    seconds = _wait(stack, "two-", args.jobs, args.timeout)
    stack.stop_workers()
    calls = stack.calls()
    rows = _finished(stack.db_url, "two-")
    finished = [r.finished_at.timestamp() for r in rows if r.finished_at]
    steady = _steady(finished)
    by_secret = _per_secret(calls)
    return {
        "scenario": "two accounts, 20/s each (40/s together)",
        "threads per worker (derived, no -c)": stack.threads,
        "jobs finished / failed": f"{len(finished)}/{args.jobs}, "
                                  f"{sum(1 for r in rows if r.state == 'failed')}",
        "wall seconds": round(seconds, 1),
        "throughput jobs/s (steady, p5-p95)": round(steady, 2),
        "ratio of 40/s": round(steady / 40, 3),
        "calls per SecretId": ", ".join(f"{'sg' if k == SECRET_ID else 'bkk'} {len(v)}"
                                        for k, v in sorted(by_secret.items())),
        "max starts in any sliding 1 s, per SecretId": ", ".join(
            f"{'sg' if k == SECRET_ID else 'bkk'} {max_starts_in_window(v)}"
            for k, v in sorted(by_secret.items())),
        "RequestLimitExceeded*": sum(1 for c in calls
                                     if (c["code"] or "").startswith("RequestLimitExceeded")),
    }


def arrears(stack: Stack, args: Any) -> dict[str, Any]:
    stack.reset()
    media = make_media(stack.base / "media", args.jobs, args.video_mb, "a")
    _insert(stack, "arr-", media)
    os.sync()
    stack.start_workers(2, "arr")
    switched: list[float] = []

    def during(elapsed: float, done: int) -> None:
        if not switched and elapsed >= args.arrears_after:
            requests.post(f"{stack.sim.control_url}/config", json={
                "account_errors": {BKK_ID: "UnauthorizedOperation.Arrears"}},
                timeout=5).raise_for_status()
            switched.append(time.time())

    seconds = _wait(stack, "arr-", args.jobs, args.timeout, during)
    stack.stop_workers()
    calls = stack.calls()
    rows = _finished(stack.db_url, "arr-")
    at = switched[0] if switched else float("inf")
    # From a few seconds after the switch (the calls in flight answered) to the end.
    after = [c["t_start"] for c in calls if c["secret_id"] == SECRET_ID
             and c["t_start"] >= at + 5 and c["code"] == "Success"]
    arrears_answers = [c for c in calls if c["code"] == "UnauthorizedOperation.Arrears"]
    return {
        "scenario": f"account bkk in arrears {args.arrears_after:.0f} s into the run",
        "jobs finished / failed": f"{sum(1 for r in rows if r.finished_at)}/{args.jobs}, "
                                  f"{sum(1 for r in rows if r.state == 'failed')}",
        "wall seconds": round(seconds, 1),
        "sg calls/s after the switch (steady, p5-p95)": round(_steady(after), 2),
        "ratio of 20/s": round(_steady(after) / 20, 3),
        "arrears answers (bkk's probes and calls in flight)": len(arrears_answers),
        "max starts in any sliding 1 s, sg": max_starts_in_window(
            [c["t_start"] for c in calls if c["secret_id"] == SECRET_ID]),
        "RequestLimitExceeded*": sum(1 for c in calls
                                     if (c["code"] or "").startswith("RequestLimitExceeded")),
    }


def residency(stack: Stack, args: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from faceid_batch.bulk.backfill import run_backfill
    from faceid_batch.db import session_scope
    from faceid_batch.models import Job, MediaObject
    from faceid_batch.stage.storage import MediaStager

    stack.reset()
    requests.post(f"{stack.sim.control_url}/config", json={"account_errors": {}},
                  timeout=5).raise_for_status()
    media = make_media(stack.base / "media", args.residency_rows, args.video_mb, "r")
    manifest = stack.base / "mixed.csv"
    with manifest.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["key", "photo", "video", "liveness_type", "region"])
        for i, (p, v) in enumerate(media):
            out.writerow([f"res-{i}", p, v, "SILENT",
                          "ap-bangkok" if i % 2 else "ap-singapore"])
    result = run_backfill(stack.settings, manifest, report_path=stack.base / "report.csv")
    stack.start_workers(2, "res")
    _wait(stack, "res-", args.residency_rows, args.timeout)
    stack.stop_workers()
    calls = stack.calls()
    with session_scope(stack.db_url) as s:
        jobs = {j.id: j.region for j in s.scalars(select(Job).where(
            Job.idempotency_key.like("res-%")))}
        ledger = s.execute(select(MediaObject.job_id, MediaObject.bucket,
                                  MediaObject.object_key).where(
            MediaObject.job_id.in_(list(jobs)))).all()
    bucket_of = {"ap-bangkok": BKK_BUCKET, "ap-singapore": SG_BUCKET}
    stagers = {bucket_of[r]: MediaStager(stack.settings, region=r) for r in bucket_of}
    # Each object of this run asked of both buckets (HEAD): where it is, where it is not.
    found = {(key, bucket): stager.exists(key) for _, _, key in ledger
             for bucket, stager in stagers.items()}
    wrong_ledger = sum(1 for job_id, bucket, _ in ledger if bucket != bucket_of[jobs[job_id]])
    missing = sum(1 for job_id, _, key in ledger if not found[(key, bucket_of[jobs[job_id]])])
    misplaced = sum(1 for job_id, _, key in ledger for bucket in stagers
                    if bucket != bucket_of[jobs[job_id]] and found[(key, bucket)])
    host_of = {SG_BUCKET: stack.sim.cos_domain,
               BKK_BUCKET: stack.sim.cos_domains[BKK_BUCKET]}
    wrong_calls = 0
    for c in calls:
        region = c["region"]
        if c["secret_id"] != BKK_ID and region == "ap-bangkok":
            wrong_calls += 1  # only bkk serves ap-bangkok
        if c["media_hosts"] != [host_of[bucket_of[region]]]:
            wrong_calls += 1
    return {
        "scenario": f"residency: {args.residency_rows} manifest rows, half ap-bangkok",
        "rows accepted": result.accepted,
        "calls (ap-bangkok / ap-singapore)": "{} / {}".format(
            sum(1 for c in calls if c["region"] == "ap-bangkok"),
            sum(1 for c in calls if c["region"] == "ap-singapore")),
        "ap-bangkok calls by SecretId": ", ".join(sorted({
            "bkk" if c["secret_id"] == BKK_ID else "sg" for c in calls
            if c["region"] == "ap-bangkok"})),
        "objects staged (ledger rows)": len(ledger),
        "objects missing from their region's bucket": missing,
        "ledger rows in the wrong bucket": wrong_ledger,
        "objects also in the other region's bucket": misplaced,
        "calls by a wrong account, region or bucket": wrong_calls,
    }


def owner_cap(stack: Stack, args: Any) -> dict[str, Any]:
    """Both accounts (one owner, 20/s each) under an account-wide cap of ``--owner-cap``
    calls/s that Tencent does not publish (the simulator's ``owner_limits`` knob answers
    ``RequestLimitExceeded.UinLimitExceeded`` above it); the knob is lifted
    ``--cap-lift-after`` seconds in and the run goes on ``--cap-recover-for`` seconds."""
    import redis

    from faceid_batch.call import caps

    stack.reset()
    config = f"{stack.sim.control_url}/config"
    requests.post(config, json={"account_errors": {}, "owner_limits": [
        {"secret_ids": [SECRET_ID, BKK_ID], "limit": args.owner_cap}]},
        timeout=5).raise_for_status()
    r = redis.Redis.from_url(stack.server.url)
    r.delete(caps.KEY + "bench-uin")
    run_for = args.cap_lift_after + args.cap_recover_for
    # More jobs than the run answers (the cap, then its slow recovery): the budget is the
    # limit, not the backlog.
    jobs = int(run_for * 36)
    media = make_media(stack.base / "media-cap", jobs, args.cap_video_mb, "c")
    _insert(stack, "cap-", media)
    os.sync()
    cap_at: list[tuple[float, int]] = []
    lifted: list[float] = []

    learned = caps.OwnerCaps(r, {"bench-uin": 40})

    def during(elapsed: float, done: int) -> None:
        cap_at.append((elapsed, learned.cap("bench-uin")))  # what the workers read
        if not lifted and elapsed >= args.cap_lift_after:
            requests.post(config, json={"owner_limits": []}, timeout=5).raise_for_status()
            lifted.append(time.time())

    stack.start_workers(2, "cap")
    started = time.time()
    _wait(stack, "cap-", jobs, run_for, during)
    stack.stop_workers()
    calls = stack.calls()
    lift = lifted[0] if lifted else float("inf")
    uin = sorted(c["t_start"] for c in calls
                 if c["code"] == "RequestLimitExceeded.UinLimitExceeded")
    ok = sorted(c["t_start"] for c in calls if c["code"] == "Success")
    first = min((c["t_start"] for c in calls), default=started)

    def rate(lo: float, hi: float) -> float:
        return sum(1 for t in ok if lo <= t < hi) / max(1e-9, hi - lo)

    before = [c["t_start"] for c in calls if c["t_start"] < lift
              and c["code"] != "RequestLimitExceeded.UinLimitExceeded"]
    cap_before = [c for e, c in cap_at if e < args.cap_lift_after]
    cap_after = [c for e, c in cap_at if e >= args.cap_lift_after]
    buckets = []
    t = lift
    while t + 30 <= first + (time.time() - started):
        buckets.append(f"{rate(t, t + 30):.1f}")
        t += 30
    rows = _finished(stack.db_url, "cap-")
    return {
        "scenario": f"one owner, two accounts of 20/s, account-wide cap {args.owner_cap}/s "
                    f"lifted at {args.cap_lift_after:.0f} s",
        "jobs answered / failed": f"{sum(1 for r in rows if r.state == 'completed')}, "
                                  f"{sum(1 for r in rows if r.state == 'failed')}",
        "UinLimitExceeded answers (all)": len(uin),
        "... of them after the first 5 s": sum(1 for t in uin if t >= first + 5),
        "last one, seconds into the run": round(uin[-1] - first, 1) if uin else "none",
        "learned cap while capped (min, max)": f"{min(cap_before, default=40)}, "
                                               f"{max(cap_before, default=40)}",
        "Success calls/s from 10 s to the lift": round(
            rate(first + 10, min(lift, first + run_for)), 2),
        "ratio of the cap": round(rate(first + 10, min(lift, first + run_for))
                                  / args.owner_cap, 3),
        "max starts in any sliding 1 s, both, before the lift":
            max_starts_in_window(before),
        "learned cap after the lift (first, last)": f"{cap_after[0] if cap_after else '-'}, "
                                                    f"{cap_after[-1] if cap_after else '-'}",
        "Success calls/s per 30 s after the lift": ", ".join(buckets) or "-",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1200)
    ap.add_argument("--residency-rows", type=int, default=200)
    ap.add_argument("--video-mb", type=float, default=0.5)
    ap.add_argument("--arrears-after", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--scenarios", default="two,arrears,residency",
                    help="comma-separated, of two, arrears, residency, cap")
    ap.add_argument("--owner-cap", type=int, default=30,
                    help="cap: the simulator's account-wide limit, calls/s")
    ap.add_argument("--cap-lift-after", type=float, default=60.0)
    ap.add_argument("--cap-recover-for", type=float, default=130.0)
    ap.add_argument("--cap-video-mb", type=float, default=0.05)
    ap.add_argument("--sim-nice", type=int, default=-10,
                    help="niceness of the simulator's threads (0: as the workers; needs root)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="faceid-bench-accounts-"))
    sys.path.insert(0, str(ROOT))
    stack = Stack(base, args)
    results = []
    runs = {"two": two_accounts, "arrears": arrears, "residency": residency,
            "cap": owner_cap}
    try:
        for name in args.scenarios.split(","):
            results.append(runs[name](stack, args))
            print(f"[{name}] done", flush=True)
    finally:
        stack.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    print("\nTwo accounts on the simulator")
    print_scenarios(results, 56)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    raise SystemExit(main())
