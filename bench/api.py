"""The producer API under load: uploads, a sign-up waiting for its answer, a burst.

Each scenario starts its own redis-server, simulator and ``faceid-batch api`` process (and,
where jobs must be answered, two worker processes: threads, 40 each), all on this machine.

- ``uploads``: --clients concurrent clients each post --per-client multipart submissions
  with a --video-mb video; prints submissions/s, the time of one submission (p50/p95), the
  API process's peak RSS, and checks that every key made exactly one job.
- ``wait``: a backfill of --backfill jobs saturates the budget while onboarding sign-ups
  post with ``Prefer: wait=20`` one a second; prints the whole request's p50/p95 against
  the API call's own latency (the simulator's log).
- ``burst``: --burst onboarding submissions (JSON, cos:// media) within 10 s; prints how many
  were admitted at once, the refused ones' Retry-After, whether following it got them in,
  and how long admitted jobs waited for their answer against ONBOARDING_MAX_WAIT_SECONDS.

    .venv/bin/python -m bench.api                             # all three
    .venv/bin/python -m bench.api --scenarios uploads --clients 50 --per-client 6
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import ROOT, SECRET_ID, SECRET_KEY, pct, print_scenarios, ts

BUCKET = "bench-1250000000"




def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0




class Stack:
    """redis-server, simulator, database, an API process, optionally workers."""

    def __init__(self, base: Path, name: str, workers: int, extra_env: dict | None = None):
        from faceid_batch import migrate
        from faceid_batch.admin import tokens
        from faceid_batch.local.services import RedisServer, Simulator, Worker, free_port

        self.work = base / name
        self.redis = RedisServer(self.work / "redis").start()
        self.sim = Simulator(self.work / "sim", SECRET_ID, SECRET_KEY, extra_args=[
            "--latency-median", "1.5", "--latency-p99", "5", "--rate-limit", "20",
            "--seed", "1"]).start()
        self.db = f"sqlite:///{self.work}/bench.db"
        migrate.upgrade(self.db)
        self.env = {"DATABASE_URL": self.db, "REDIS_URL": self.redis.url,
                    "FACEID_SECRET_ID": SECRET_ID, "FACEID_SECRET_KEY": SECRET_KEY,
                    "FACEID_ENDPOINT": self.sim.api_url, "COS_BUCKET": BUCKET,
                    "COS_DOMAIN": self.sim.cos_domain, "COS_SCHEME": "http",
                    "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
                    "METRICS_PORT": "0", "PYTHONPATH": str(ROOT), **(extra_env or {})}
        self.token = tokens.add(self.db, "bench-producer", tokens.SUBMIT)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        self.api = subprocess.Popen(
            [sys.executable, "-m", "faceid_batch.cli", "api", "--port", str(port)],
            env={**os.environ, **self.env, "TMPDIR": str(self.work / "tmp")}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(self.work / "api.log", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/openapi.json", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        self.workers = [Worker(env=self.env, logfile=self.work / f"w{i}.log", concurrency=40,
                               name=f"{name}{i}").start() for i in range(workers)]

    def settings(self):  # type: ignore[no-untyped-def]
        from faceid_batch.settings import load_settings

        return load_settings(**{k.lower(): v for k, v in self.env.items()
                                if k != "PYTHONPATH"})

    def calls(self) -> list[dict]:
        return requests.get(f"{self.sim.control_url}/calls", timeout=60).json()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.api.terminate()
        self.api.wait(10)
        self.sim.stop()
        self.redis.stop()


def uploads(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from faceid_batch.db import session_scope
    from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
    from faceid_batch.models import Job

    stack = Stack(base, "uploads", workers=0)
    photo = jpeg_bytes(3, 60_000)
    body = mp4_bytes(7, int(args.video_mb * 1024 * 1024))
    times: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    total = args.clients * args.per_client

    def client(c: int) -> None:
        session = requests.Session()
        for i in range(args.per_client):
            tag = f"{c:04d}-{i:04d}".encode().ljust(16, b"-")
            video = body[:40] + tag + body[56:]  # a video of its own: its own object
            started = time.monotonic()
            resp = session.post(
                f"{stack.url}/v1/verifications",
                headers={"Authorization": f"Bearer {stack.token}",
                         "Idempotency-Key": f"up-{c}-{i}"},
                files={"photo": ("p.jpg", photo, "image/jpeg"),
                       "video": ("v.mp4", video, "video/mp4")},
                data={"liveness_type": "SILENT", "lane": "backfill"}, timeout=120)
            with lock:
                times.append(time.monotonic() - started)
                statuses.append(resp.status_code)

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.monotonic() - started
        rss = peak_rss(stack.api.pid)
        with session_scope(stack.db) as s:
            jobs = s.scalar(select(func.count()).select_from(Job))
            keys = s.scalar(select(func.count(func.distinct(Job.idempotency_key))))
        leftover = list((stack.work / "tmp").iterdir())
    finally:
        stack.stop()
    return {
        "scenario": f"uploads: {args.clients} clients x {args.per_client}, "
                    f"{args.video_mb:g} MB videos",
        "submissions": f"{statuses.count(202)}/{total} answered 202 "
                       f"(others: {sorted(set(statuses) - {202}) or 'none'})",
        "submissions/s": round(total / wall, 1),
        "one submission p50 / p95 s": f"{pct(times, 50):.2f} / {pct(times, 95):.2f}",
        "MB/s received": round(total * args.video_mb / wall, 1),
        "API process peak RSS MB": round(rss / 2**20),
        "jobs stored / distinct keys": f"{jobs} / {keys} (of {total})",
        "temporary files left": len(leftover),
    }


def wait(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
    from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, write_pair

    stack = Stack(base, "wait", workers=2)
    settings = stack.settings()
    for i in range(args.backfill):
        p, v = write_pair(stack.work / "media", i)
        insert_job(settings, validate_spec(JobSpec(f"bf-{i}", str(p), str(v), "SILENT",
                                                   lane="backfill")))
    photo = jpeg_bytes(5, 60_000)
    body = mp4_bytes(9, int(args.video_mb * 1024 * 1024))
    results: list[tuple[float, str, int, dict]] = []
    lock = threading.Lock()

    def signup(i: int) -> None:
        tag = f"signup-{i:06d}".encode().ljust(16, b"-")
        video = body[:40] + tag + body[56:]
        started = time.monotonic()
        resp = requests.post(
            f"{stack.url}/v1/verifications",
            headers={"Authorization": f"Bearer {stack.token}", "Idempotency-Key": f"su-{i}",
                     "Prefer": "wait=20"},
            files={"photo": ("p.jpg", photo, "image/jpeg"),
                   "video": ("v.mp4", video, "video/mp4")},
            data={"liveness_type": "SILENT"}, timeout=60)
        with lock:
            results.append((time.monotonic() - started, hashlib.md5(video).hexdigest(),
                            resp.status_code, resp.json()))

    try:
        time.sleep(args.warmup)  # the backfill saturates the budget first
        threads = []
        for i in range(args.signups):
            t = threading.Thread(target=signup, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(1.0)
        for t in threads:
            t.join()
        calls = stack.calls()
        backfill_calls = sum(1 for c in calls if not any(c["video_md5"] == m
                                                         for _, m, _, _ in results))
    finally:
        stack.stop()
    latency = {c["video_md5"]: c["t_end"] - c["t_start"] for c in calls}
    whole = [r[0] for r in results]
    own = [latency[r[1]] for r in results if r[1] in latency]
    over = [r[0] - latency.get(r[1], 0.0) for r in results]
    return {
        "scenario": f"wait: {args.signups} sign-ups with Prefer: wait=20 beside a backfill",
        "answered 200 with the outcome": f"{sum(1 for r in results if r[2] == 200)}"
                                         f"/{len(results)}",
        "whole request p50 / p95 s": f"{pct(whole, 50):.2f} / {pct(whole, 95):.2f}",
        "their own API call p50 / p95 s": f"{pct(own, 50):.2f} / {pct(own, 95):.2f}",
        "overhead over the API call p50 / p95 s": f"{pct(over, 50):.2f} / {pct(over, 95):.2f}",
        "backfill calls meanwhile": backfill_calls,
    }


def burst(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from faceid_batch.db import session_scope
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import Attempt, Job
    from faceid_batch.stage.storage import MediaStager

    stack = Stack(base, "burst", workers=2)
    settings = stack.settings()
    stager = MediaStager(settings)
    p, v = write_pair(stack.work / "media", 1)
    photo_key = stager.stage("photo", str(p)).key
    video_key = stager.stage("video", str(v)).key
    first: dict[str, tuple[int, float]] = {}  # key -> (first status, Retry-After)
    rounds: dict[str, int] = {}
    admitted_at: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    local = threading.local()
    pool = ThreadPoolExecutor(args.burst_clients)

    def attempt(key: str, tries: int) -> None:
        # A client's one POST; a 429 schedules the same POST after Retry-After, the way an
        # integrator's client follows it.
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            resp = local.session.post(
                f"{stack.url}/v1/verifications",
                headers={"Authorization": f"Bearer {stack.token}", "Idempotency-Key": key},
                json={"photo_url": f"cos://{BUCKET}/{photo_key}",
                      "video_url": f"cos://{BUCKET}/{video_key}", "liveness_type": "SILENT"},
                timeout=60)
        except requests.RequestException:
            threading.Timer(1.0, lambda: pool.submit(attempt, key, tries + 1)).start()
            return
        with lock:
            first.setdefault(key, (resp.status_code, float(resp.headers.get("Retry-After", 0))))
        if resp.status_code == 429:
            later = threading.Timer(float(resp.headers["Retry-After"]),
                                    lambda: pool.submit(attempt, key, tries + 1))
            later.daemon = True
            later.start()
            return
        with lock:
            rounds[key] = tries
            admitted_at[key] = time.time()
            if len(rounds) == args.burst:
                done.set()

    try:
        started = time.monotonic()
        for i in range(args.burst):
            pool.submit(attempt, f"burst-{i}", 1)
            # Spread over 10 s
            time.sleep(max(0.0, started + 10.0 * (i + 1) / args.burst - time.monotonic()))
        sent_in = time.monotonic() - started
        done.wait(900)
        pool.shutdown(wait=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with session_scope(stack.db) as s:
                left = s.scalar(select(Job.id).where(Job.finished_at.is_(None)).limit(1))
            if left is None:
                break
            time.sleep(1.0)
        with session_scope(stack.db) as s:
            jobs = {j.idempotency_key: (ts(j.created_at), ts(j.finished_at) if j.finished_at
                                        else None, j.attempts)
                    for j in s.scalars(select(Job))}
            # Each job's own API call (its last attempt's latency, from send to answer).
            own = dict(s.execute(select(Job.idempotency_key, Attempt.latency_ms)
                                 .join(Attempt, Attempt.job_id == Job.id)
                                 .order_by(Attempt.id)).all())
        calls = stack.calls()
    finally:
        stack.stop()
    # Per job: answered how long after it was admitted (stored), and its API call's latency
    # (all jobs share the media, so calls are matched to jobs in order of start and end).
    durations = sorted(c["t_end"] - c["t_start"] for c in calls)
    latency_p95 = pct(durations, 95)
    at_once = [k for k, (status, _) in first.items() if status != 429]
    waits = {k: (jobs[k][1] - jobs[k][0]) for k in jobs if jobs[k][1] is not None}
    refused = [k for k, (status, _) in first.items() if status == 429]
    limit = settings.onboarding_max_wait_seconds
    after = [first[k][1] for k in refused]
    answered = list(waits.values())
    beyond = [w - own[k] / 1000 for k, w in waits.items() if k in own]
    starts = sorted(c["t_start"] for c in calls)
    rate = (len(starts) - 1) / max(1e-9, starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return {
        "scenario": f"burst: {args.burst} onboarding submissions within {sent_in:.1f} s",
        "admitted at once": len(at_once),
        "refused with 429 at first": len(refused),
        "their first Retry-After min / p50 / max s":
            f"{min(after):.0f} / {pct(after, 50):.0f} / {max(after):.0f}" if after else "-",
        "refused ones in after following Retry-After once / more":
            f"{sum(1 for k in refused if rounds.get(k) == 2)} / "
            f"{sum(1 for k in refused if rounds.get(k, 0) > 2)}",
        "jobs answered": f"{len(waits)}/{args.burst}",
        "admitted to answered p50 / p95 / max s":
            f"{pct(answered, 50):.1f} / {pct(answered, 95):.1f} / {max(answered):.1f}"
            if answered else "-",
        "calls/s, first to last": round(rate, 2),
        f"answered within {limit:g} s + API latency p95 ({latency_p95:.1f} s)":
            f"{sum(1 for w in answered if w <= limit + latency_p95)}/{len(answered)}",
        "admitted to answered, less its own API call, p50 / p95 / max s":
            f"{pct(beyond, 50):.1f} / {pct(beyond, 95):.1f} / {max(beyond):.1f}"
            if beyond else "-",
        f"answered within {limit:g} s + its own API call":
            f"{sum(1 for b in beyond if b <= limit)}/{len(beyond)}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="uploads,wait,burst")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--video-mb", type=float, default=5.0)
    ap.add_argument("--backfill", type=int, default=1500)
    ap.add_argument("--signups", type=int, default=40)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--burst-clients", type=int, default=64)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="faceid-bench-api-"))
    results = []
    try:
        for name in args.scenarios.split(","):
            results.append({"uploads": uploads, "wait": wait, "burst": burst}[name](args, base))
            print(f"[{name}] {results[-1]}", flush=True)
            shutil.rmtree(base / name, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_scenarios(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
