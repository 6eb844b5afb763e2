"""Poison sources beside a backfill, at the default settings.

A 300-job backfill (local media) runs on two workers while a few jobs point at URLs that
hang (the server accepts and never answers), trickle a byte a second and close (HTTP/1.0
style), or redirect to a closed port, and a sign-up
(local media, onboarding lane) arrives every two seconds. Prints the backfill's steady
rate against the budget, when each poison job ended and with what code, the FaceID calls
made for them (there must be none), and the sign-ups' answer time over their own call.

Nothing is shortened: SOURCE_FETCH_SECONDS 20, STAGE_MAX_ATTEMPTS 3, EGRESS_SHARE
0.25, RETRY_BASE_DELAY 2, `faceid-batch worker`'s 32 threads. The bound a poison job ends
within: STAGE_MAX_ATTEMPTS fetches of SOURCE_FETCH_SECONDS, the backoff between them (full
jitter, at most 2 + 4 s), and each try's turn in a backfill lane kept full (its 40
messages are two seconds of the budget; up to 8 s with the claim): 3 x 20 + 6 + 3 x 8 =
90 s.

    .venv/bin/python -m bench.poison
    .venv/bin/python -m bench.poison --jobs 1000 --hang 10 --redirect 10
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import LocalStack, pct, run_once, ts

BOUND_SECONDS = 90.0


class Poison:
    """/hang never answers; /to/<url> redirects there. Counts what it was asked."""

    def __init__(self) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits += 1
                try:
                    if self.path.startswith("/to/"):
                        self.send_response(302)
                        self.send_header("Location", self.path[len("/to/"):])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif self.path == "/trickle":
                        # Headers at once, then a byte a second, closing when done.
                        self.send_response(200)
                        self.send_header("Connection", "close")
                        self.end_headers()
                        for _ in range(600):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(1.0)
                    else:
                        time.sleep(600)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from faceid_batch.db import session_scope
    from faceid_batch.intake.submit import JobSpec, insert_job, submit, validate_spec
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import Attempt, Job

    stack = LocalStack(base, seed=3, database_url=args.database_url)
    settings, db_url = stack.settings(), stack.db_url
    poison = Poison()
    backfill: dict[str, int] = {}
    for i in range(args.jobs):
        photo, video = write_pair(base / "media", i)
        job_id, _ = insert_job(settings, validate_spec(JobSpec(
            f"b-{i}", str(photo), str(video), "SILENT", lane="backfill"), settings))
        backfill[hashlib.md5(video.read_bytes()).hexdigest()] = job_id
    photo0, _ = write_pair(base / "media", 0)
    poisoned: dict[int, tuple[str, float]] = {}
    sources = ([("hang", f"{poison.url}/hang")] * args.hang
               + [("trickle", f"{poison.url}/trickle")] * args.trickle
               + [("redirect", f"{poison.url}/to/http://127.0.0.1:{closed_port()}/v.mp4")]
               * args.redirect)
    stack.start_workers(2, args.concurrency, "p")
    signups: list[int] = []
    signup_md5s: set[str] = set()
    started = time.time()
    try:
        for n, (kind, url) in enumerate(sources):
            job_id, _ = submit(settings, JobSpec(f"poison-{n}", str(photo0), url, "SILENT",
                                                 lane="backfill"))
            poisoned[job_id] = (kind, time.time())
        all_ids = list(backfill.values()) + list(poisoned)
        deadline = time.monotonic() + args.timeout
        next_signup = time.monotonic()
        n = 0

        def finished() -> int:
            with session_scope(db_url) as s:
                return len(s.scalars(select(Job.id).where(
                    Job.id.in_(all_ids + signups), Job.finished_at.is_not(None))).all())

        while finished() < len(all_ids) + len(signups) and time.monotonic() < deadline:
            if time.monotonic() >= next_signup and n < args.signups:
                p, v = write_pair(base / "signups", 10_000 + n)
                signup_md5s.add(hashlib.md5(v.read_bytes()).hexdigest())
                signups.append(submit(settings, JobSpec(f"s-{n}", str(p), str(v),
                                                        "SILENT"))[0])
                n += 1
                next_signup += 2.0
            time.sleep(0.2)
        calls = stack.calls()
        with session_scope(db_url) as s:
            rows = {j.id: j for j in s.scalars(select(Job).where(
                Job.id.in_(all_ids + signups)))}
            latency = {a.job_id: a.latency_ms / 1000 for a in s.scalars(
                select(Attempt).where(Attempt.job_id.in_(signups)))}
    finally:
        stack.stop()
        poison.httpd.shutdown()

    bf_starts = sorted(c["t_start"] for c in calls if c["video_md5"] in backfill)
    lo, hi = pct(bf_starts, 10), pct(bf_starts, 90)
    inside = [t for t in bf_starts if lo <= t <= hi]
    rate = (len(inside) - 1) / (hi - lo) if hi > lo else float("nan")
    # Every call is for a backfill job or a sign-up (by its video): none is left for poison.
    poison_calls = [c for c in calls if c["video_md5"] not in backfill
                    and c["video_md5"] not in signup_md5s]
    ends = {job_id: ts(rows[job_id].finished_at) - at for job_id, (_, at) in poisoned.items()
            if rows[job_id].finished_at is not None}
    codes: dict[str, int] = {}
    for job_id, (kind, _) in poisoned.items():
        key = f"{kind}: {rows[job_id].state} {rows[job_id].result_code}"
        codes[key] = codes.get(key, 0) + 1
    overhead = [ts(rows[j].finished_at) - ts(rows[j].created_at) - latency.get(j, 0.0)
                for j in signups if rows[j].finished_at is not None]
    return {
        "scenario": f"{args.jobs} backfill jobs; sources that hang ({args.hang}), trickle "
                    f"a byte a second ({args.trickle}), redirect to a closed port "
                    f"({args.redirect}); a sign-up every 2 s",
        "backfill steady rate (calls/s; ratio of 20/s)": f"{rate:.2f} ({rate / 20:.3f})",
        "backfill jobs completed": sum(rows[j].state == "completed" for j in backfill.values()),
        "poison jobs ended": f"{len(ends)}/{len(poisoned)}",
        "poison outcomes": ", ".join(f"{k} x{v}" for k, v in sorted(codes.items())),
        "poison ended after, s (min/p50/max)":
            f"{min(ends.values()):.1f}/{pct(list(ends.values()), 50):.1f}/"
            f"{max(ends.values()):.1f}" if ends else "none",
        f"poison jobs ended within the {BOUND_SECONDS:.0f} s bound":
            sum(1 for t in ends.values() if t <= BOUND_SECONDS),
        "FaceID calls for poison jobs": len(poison_calls),
        "requests the poison server got": poison.hits,
        "sign-ups answered": f"{len(overhead)}/{len(signups)}",
        "sign-up answer time over its own call, s (p50/p95/max)":
            f"{pct(overhead, 50):.2f}/{pct(overhead, 95):.2f}/{max(overhead):.2f}"
            if overhead else "none",
        "RequestLimitExceeded": sum(1 for c in calls if c["code"] == "RequestLimitExceeded"),
        "run, s": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--hang", type=int, default=6)
    ap.add_argument("--trickle", type=int, default=4)
    ap.add_argument("--redirect", type=int, default=6)
    ap.add_argument("--signups", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    return run_once("faceid-bench-poison-", args, run,
                    f"default settings, 2 workers x threads {args.concurrency}, simulated "
                    "latency median 1.5 s / p99 5 s", 56)


if __name__ == "__main__":
    raise SystemExit(main())
