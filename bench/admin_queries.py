"""Admin queries on 1,000,000 result rows in PostgreSQL: p95 of a filtered, paged list
(target <= 20 ms), p95 of stats for a batch, and an export of every row in constant memory.

    python -m bench.admin_queries postgresql://postgres@127.0.0.1:5432/postgres [--rows N] [--keep]

Creates a fresh database next to the one in the URL (dropped at the end unless --keep),
migrates it to head, fills it with INSERT ... SELECT generate_series, and prints figures.
See scripts/test for starting a throw-away PostgreSQL server with initdb/pg_ctl.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from faceid_batch import migrate
from faceid_batch.admin import queries
from faceid_batch.admin.queries import Filters, Page
from faceid_batch.db import get_engine, normalise_url

BATCHES = 10
CODES = ("Success", "FailedOperation.LivessDetectFake", "FailedOperation.SilentTooShort")

FILL = [
    """INSERT INTO batches (name, lane, state, created_at, updated_at, rows_read, rows_accepted,
           rows_known, rows_bad)
       SELECT 'bench-' || b, 'backfill', 'active', now(), now(), 0, 0, 0, 0
       FROM generate_series(1, :batches) AS b""",
    # One job a row; Sim is a pseudo-random function of the id, so results can recompute it.
    """INSERT INTO jobs (idempotency_key, lane, state, liveness_type, photo_source, video_source,
           attempts, result_code, passed, created_at, updated_at, finished_at, batch_id,
           batch_row, photo_key)
       SELECT 'cust-' || lpad(g::text, 8, '0'),
              CASE WHEN g % 10 = 0 THEN 'onboarding' ELSE 'backfill' END,
              'completed', 'SILENT', '/p/' || g || '.jpg', '/v/' || g || '.mp4',
              1 + (g % 7 = 0)::int + (g % 31 = 0)::int,
              CASE WHEN g % 5 = 0 THEN 'FailedOperation.LivessDetectFake'
                   WHEN g % 23 = 0 THEN 'FailedOperation.SilentTooShort' ELSE 'Success' END,
              g % 5 <> 0 AND g % 23 <> 0 AND (g::bigint * 7919) % 10000 >= 7000,
              t, t, t + interval '20 seconds',
              (SELECT min(id) FROM batches) + (g - 1) * :batches / :rows, g,
              'media/' || md5(g::text) || '.jpg'
       FROM generate_series(1, :rows) AS g,
            LATERAL (SELECT timestamptz '2026-01-01' + g * interval '864 milliseconds'
                     * (1000000.0 / :rows)) AS c(t)""",
    """INSERT INTO results (job_id, result, description, sim, request_id, passed, threshold,
           created_at)
       SELECT id, result_code, 'bench', ((id * 7919) % 10000) / 100.0, md5(id::text), passed,
              70, finished_at
       FROM jobs""",
    "ANALYZE",
]


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 20 else max(samples)


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm the cache and the connection pool
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Sink:
    """A file that counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, s: str) -> int:
        self.bytes += len(s)
        return len(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="a PostgreSQL URL; a fresh database is created on its server")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the bench database")
    args = ap.parse_args()

    name = f"bench_admin_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(args.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(url)
        t0 = time.perf_counter()
        with get_engine(url).begin() as conn:
            for sql in FILL[:-1]:
                conn.execute(text(sql), {"rows": args.rows, "batches": BATCHES})
        with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(FILL[-1]))
            batch_ids = [r[0] for r in conn.execute(text("SELECT id FROM batches ORDER BY id"))]
        print(f"filled {args.rows:,} jobs + results in {time.perf_counter() - t0:.1f} s")

        rng = random.Random(6)
        lists = {
            "batch + verdict fail, newest first, pages 1-20": lambda: queries.list_results(
                url, Filters(batch_id=rng.choice(batch_ids), passed=False),
                Page(sort="-id", page=rng.randint(1, 20), limit=50)),
            "lane + outcome code, newest first, pages 1-10": lambda: queries.list_results(
                url, Filters(lane="backfill", code=rng.choice(CODES)),
                Page(sort="-id", page=rng.randint(1, 10), limit=50)),
            "Sim 60-70 + created range (1 day), by created": lambda: queries.list_results(
                url, Filters(sim_min=60, sim_max=70, **dict(zip(
                    ("created_from", "created_to"), _one_day(rng), strict=True))),
                Page(sort="-created", page=rng.randint(1, 10), limit=50)),
            "key prefix, page 1": lambda: queries.list_results(
                url, Filters(key_prefix=f"cust-00{rng.randint(10, 99)}"), Page(limit=50)),
        }
        slow = {  # no index serves it: Sim is in results, and a job may have no result
            "verdict fail, sorted by Sim desc, page 1": lambda: queries.list_results(
                url, Filters(passed=False), Page(sort="-sim", limit=50)),
        }
        print(f"\nlist queries ({args.runs} runs each, random filter values and pages):")
        for label, fn in lists.items():
            ms = timed(fn, args.runs)
            print(f"  {label:<48} p50 {statistics.median(ms):6.1f} ms   p95 {p95(ms):6.1f} ms")
        for label, fn in slow.items():
            ms = timed(fn, 20)
            print(f"  {label:<48} p50 {statistics.median(ms):6.1f} ms   p95 {p95(ms):6.1f} ms"
                  "  (20 runs)")

        ms = timed(lambda: queries.stats(url, Filters(batch_id=rng.choice(batch_ids))), 20)
        per_batch = args.rows // BATCHES
        print(f"\nstats for one batch ({per_batch:,} jobs, 20 runs): "
              f"p50 {statistics.median(ms):.0f} ms   p95 {p95(ms):.0f} ms")

        before = rss_mb()
        sink = _Sink()
        t0 = time.perf_counter()
        n = queries.write_csv(queries.iter_results(url), sink)  # type: ignore[arg-type]
        took = time.perf_counter() - t0
        print(f"\nexport CSV of all rows: {n:,} rows, {sink.bytes / 1e6:.0f} MB in {took:.1f} s "
              f"({n / took:,.0f} rows/s); peak RSS {before:.0f} MB before, {rss_mb():.0f} MB "
              f"after (+{rss_mb() - before:.0f} MB)")
    finally:
        get_engine(url).dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            print(f"kept database {url}")
        admin.dispose()


def _one_day(rng: random.Random) -> tuple[datetime, datetime]:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 8))
    return start, start + timedelta(days=1)


if __name__ == "__main__":
    main()
