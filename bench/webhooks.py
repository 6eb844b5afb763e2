"""Completion callbacks through a receiver outage and a killed worker, at the default settings.

Sign-ups with a ``callback_url`` are answered by two workers while the receiver answers 503
for --down seconds (after a second's wait each); one worker is SIGKILLed during the outage
while callbacks are claimed (in flight). Prints the retry schedule, when each callback was
delivered after the receiver was back, how many attempts it took, and whether any was lost
or delivered twice. WEBHOOK_RETRY_SCHEDULE is the default (5s 30s 1m 2m 5m ...), WEBHOOK_TIMEOUT 10.

    .venv/bin/python -m bench.webhooks
    .venv/bin/python -m bench.webhooks --jobs 200 --down 120
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import LocalStack, pct, run_once

SECRET = "whsec_YmVuY2gtRkFLRS13ZWJob29rLXNlY3JldC1ub3QtcmVhbA=="


class Receiver:
    """503 until ``up``; then 200. Keeps when each webhook-id was first taken."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.taken: dict[str, float] = {}
        self.duplicates = 0
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                if outer.up.is_set():
                    msg = self.headers["webhook-id"]
                    if msg in outer.taken:
                        outer.duplicates += 1
                    outer.taken.setdefault(msg, time.time())
                    self.send_response(200)
                else:
                    # A struggling receiver: slow to refuse, so deliveries are in flight
                    # (claimed) when the worker is killed.
                    time.sleep(1.0)
                    outer.refused += 1
                    self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def run(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from faceid_batch.db import session_scope
    from faceid_batch.intake.submit import JobSpec, submit
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import WebhookDelivery, WebhookMessage

    stack = LocalStack(base, seed=5, appendonly=True, database_url=args.database_url,
                       WEBHOOK_SECRET=SECRET)
    settings, db_url = stack.settings(), stack.db_url
    receiver = Receiver()
    workers = stack.start_workers(2, args.concurrency, "h")
    try:
        down_at = time.time()
        for i in range(args.jobs):
            photo, video = write_pair(base / "media", i)
            submit(settings, JobSpec(f"hook-{i}", str(photo), str(video), "SILENT",
                                     callback_url=receiver.url))
        time.sleep(max(0.0, down_at + args.down / 3 - time.time()))
        claimed = 0
        while not claimed and time.time() < down_at + args.down * 0.8:
            # Killed while it holds deliveries, if they can be caught in flight.
            with session_scope(db_url) as s:
                claimed = s.scalar(select(func.count()).select_from(WebhookMessage).where(
                    WebhookMessage.claim.is_not(None)))
            time.sleep(0.05)
        workers[0].kill()
        killed_at = time.time()
        time.sleep(max(0.0, down_at + args.down - time.time()))
        receiver.up.set()
        back_at = time.time()
        deadline = time.monotonic() + args.timeout
        while len(receiver.taken) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        with session_scope(db_url) as s:
            attempts = dict(s.execute(select(WebhookDelivery.message_id, func.count())
                                      .group_by(WebhookDelivery.message_id)).all())
            states = dict(s.execute(select(WebhookMessage.state, func.count())
                                    .group_by(WebhookMessage.state)).all())
    finally:
        stack.stop()
        receiver.httpd.shutdown()

    after = [t - back_at for t in receiver.taken.values()]
    spread = Counter(attempts.values())
    return {
        "scenario": f"{args.jobs} sign-ups with callbacks; receiver down {args.down:.0f} s; "
                    f"a worker SIGKILLed {killed_at - down_at:.0f} s into it",
        "retry schedule (s after each failed attempt)":
            " ".join(f"{d:g}" for d in settings.webhook_delays),
        "callbacks claimed when the worker was killed": claimed,
        "callbacks delivered": f"{len(receiver.taken)}/{args.jobs}",
        "delivered after the receiver was back, s (p50/p95/max)":
            f"{pct(after, 50):.1f}/{pct(after, 95):.1f}/{max(after):.1f}" if after else "none",
        "within 120 s of it being back": sum(1 for t in after if t <= 120),
        "attempts per callback (attempts: callbacks)":
            ", ".join(f"{k}: {v}" for k, v in sorted(spread.items())),
        "503 answers during the outage": receiver.refused,
        "delivered twice": receiver.duplicates,
        "callback rows by state": ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--down", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    return run_once("faceid-bench-webhooks-", args, run,
                    f"default settings, 2 workers x threads {args.concurrency}", 56)


if __name__ == "__main__":
    raise SystemExit(main())
