"""Two tenants on one budget: one floods sign-ups over a big backfill, the other signs up.

Starts a redis-server, the simulator (lognormal latency, median 1.5 s, p99 5 s, 20 calls/s
enforced), the producer API and two worker processes (threads, 40 each). Tenant ``flood``
has a backfill of --backfill jobs stored due in the database (it need not finish) and posts
onboarding sign-ups over the API at --flood-rate a second (a 429 is counted and dropped);
tenant ``steady`` posts one sign-up a second with ``Prefer: wait=20``. Prints the steady
tenant's whole request p50/p95 against its own API call (the attempt's latency), over
--signups sign-ups; the target is its own API call + 1 s at p95.

    .venv/bin/python -m bench.tenants
    .venv/bin/python -m bench.tenants --signups 120 --flood-rate 60
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from bench.api import BUCKET, Stack
from bench.common import pct, print_scenarios, run_once


def run(args, base: Path) -> dict:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from faceid_batch import tenants
    from faceid_batch.admin import tokens
    from faceid_batch.db import session_scope
    from faceid_batch.local.samples import write_pair
    from faceid_batch.models import Attempt, Job
    from faceid_batch.scheduling import schedule
    from faceid_batch.stage.storage import MediaStager

    stack = Stack(base, "tenants", workers=2)
    settings = stack.settings()
    flood = tenants.add(stack.db, "flood", None).id
    steady = tenants.add(stack.db, "steady", None).id
    token = {t: tokens.add(stack.db, f"producer-{t}", tokens.SUBMIT, t) for t in (flood, steady)}
    stager = MediaStager(settings)
    p, v = write_pair(stack.work / "media", 1)
    # The producers' own objects (a submit token may not name the service's staged ones).
    for name, path in (("bench/p.jpg", p), ("bench/v.mp4", v)):
        stager.client.put_object(Bucket=BUCKET, Key=name, Body=path.read_bytes())
    media = {"photo_url": f"cos://{BUCKET}/bench/p.jpg",
             "video_url": f"cos://{BUCKET}/bench/v.mp4", "liveness_type": "SILENT"}
    loaded = time.monotonic()
    with session_scope(stack.db) as s:
        conn = s.connection()
        for start in range(0, args.backfill, 5000):
            schedule.insert_jobs(conn, [{
                "idempotency_key": f"bf-{i}", "tenant_id": flood, "lane": "backfill",
                "liveness_type": "SILENT", "photo_source": media["photo_url"],
                "video_source": media["video_url"], **schedule.waiting_columns(out=False)}
                for i in range(start, min(args.backfill, start + 5000))])
    loaded = time.monotonic() - loaded
    stop = threading.Event()
    flood_status: dict[int, int] = {}
    lock = threading.Lock()

    def post(tenant: int, key: str, wait: bool) -> requests.Response:
        headers = {"Authorization": f"Bearer {token[tenant]}", "Idempotency-Key": key}
        if wait:
            headers["Prefer"] = "wait=20"
        return requests.post(f"{stack.url}/v1/verifications", headers=headers, json=media,
                             timeout=60)

    def flooder(n: int) -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = post(flood, f"flood-{n}-{i}", False).status_code
            except requests.RequestException:
                status = 0
            with lock:
                flood_status[status] = flood_status.get(status, 0) + 1
            i += 1
            stop.wait(max(0.0, args.clients / args.flood_rate - (time.monotonic() - started)))

    results: list[tuple[float, int, int]] = []
    posted: dict[int, tuple[float, float]] = {}  # job id -> wall clock sent, answered

    def signup(i: int) -> None:
        started, sent = time.monotonic(), time.time()
        resp = post(steady, f"signup-{i}", True)
        with lock:
            results.append((time.monotonic() - started, resp.status_code,
                            resp.json().get("id", 0)))
            posted[resp.json().get("id", 0)] = (sent, time.time())

    threads = [threading.Thread(target=flooder, args=(n,), daemon=True)
               for n in range(args.clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(args.warmup)  # the backfill and the flood fill the budget first
        window = time.time()
        steady_threads = []
        for i in range(args.signups):
            t = threading.Thread(target=signup, args=(i,))
            t.start()
            steady_threads.append(t)
            time.sleep(1.0)
        for t in steady_threads:
            t.join()
        window = time.time() - window
        stop.set()
        for t in threads:
            t.join(70)
        with session_scope(stack.db) as s:
            ids = [r[2] for r in results]
            own = dict(s.execute(select(Attempt.job_id, func.max(Attempt.latency_ms))
                                 .where(Attempt.job_id.in_(ids))
                                 .group_by(Attempt.job_id)).all())
            # Where a sign-up's time beside its call goes: before the call (API, message,
            # claim, staging, rate-limit slot), after it (recording), and back to the caller.
            steps = s.execute(select(Job.id, Job.started_at, Job.finished_at,
                                     func.min(Attempt.started_at), func.max(Attempt.latency_ms))
                              .join(Attempt, Attempt.job_id == Job.id)
                              .where(Job.id.in_(ids)).group_by(Job.id)).all()
            by_lane = dict(s.execute(select(Job.lane, func.count()).where(
                Job.tenant_id == flood, Job.finished_at.is_not(None)).group_by(Job.lane)).all())
        calls = len(stack.calls())
    finally:
        stop.set()
        stack.stop()
    whole = [r[0] for r in results]
    claim, before, after, back = [], [], [], []
    for job_id, claimed, finished, called, latency in steps:
        sent, answered = posted[job_id]
        claim.append(_epoch(claimed) - sent)
        before.append(_epoch(called) - _epoch(claimed))
        after.append(_epoch(finished) - _epoch(called) - latency / 1000)
        back.append(answered - _epoch(finished))
    mine = [own[r[2]] / 1000 for r in results if r[2] in own]
    over = [r[0] - own[r[2]] / 1000 for r in results if r[2] in own]
    return {
        "scenario": f"{args.signups} sign-ups of tenant steady, one a second with Prefer: "
                    f"wait=20, beside tenant flood's {args.backfill:,}-job backfill and its "
                    f"sign-ups at {args.flood_rate:g}/s",
        "backfill stored due in": f"{loaded:.1f} s",
        "steady: answered 200 with the outcome": f"{sum(1 for r in results if r[1] == 200)}"
                                                 f"/{len(results)}",
        "steady: whole request p50 / p95 s": f"{pct(whole, 50):.2f} / {pct(whole, 95):.2f}",
        "steady: its own API call p50 / p95 s": f"{pct(mine, 50):.2f} / {pct(mine, 95):.2f}",
        "steady: over its own API call p50 / p95 / max s":
            f"{pct(over, 50):.2f} / {pct(over, 95):.2f} / {max(over, default=float('nan')):.2f}",
        "steady: sent to claimed by a worker p50 / p95 s":
            f"{pct(claim, 50):.2f} / {pct(claim, 95):.2f}",
        "steady: claimed to its call (staging, slot) p50 / p95 s":
            f"{pct(before, 50):.2f} / {pct(before, 95):.2f}",
        "steady: call answered to recorded p50 / p95 s":
            f"{pct(after, 50):.2f} / {pct(after, 95):.2f}",
        "steady: recorded to answered p50 / p95 s": f"{pct(back, 50):.2f} / {pct(back, 95):.2f}",
        "flood: sign-up answers by status": dict(sorted(flood_status.items())),
        "flood: jobs answered, by lane": {str(k): v for k, v in by_lane.items()},
        "calls/s over the whole run": round(calls / max(1e-9, window + args.warmup), 2),
    }


def _epoch(when: datetime) -> float:
    """A stored timestamp (UTC, naive on SQLite) in epoch seconds."""
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signups", type=int, default=60)
    ap.add_argument("--backfill", type=int, default=50_000)
    ap.add_argument("--flood-rate", type=float, default=40.0)
    ap.add_argument("--clients", type=int, default=8, help="the flooding tenant's clients")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (databases, logs) afterwards")
    args = ap.parse_args(argv)
    if args.keep:
        base = Path(tempfile.mkdtemp(prefix="faceid-bench-tenants-"))
        print(f"work directory kept: {base}")
        print_scenarios([run(args, base)], 52)
        return 0
    return run_once("faceid-bench-tenants-", args, run,
                    "Two tenants: a flood and a backfill beside one sign-up a second", 52)


if __name__ == "__main__":
    raise SystemExit(main())
