"""Admin queries on 1,000,000 jobs in PostgreSQL: p50 and p95 of every listing the review page
offers (each filter, each sort both ways, combinations), of ``stats`` and of the dashboard
of a batch (each held to 50 ms p95), and an export of every row in constant memory.

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
from typing import Any

from sqlalchemy import create_engine, text

from faceid_batch import migrate
from faceid_batch.admin import queries
from faceid_batch.admin.queries import Filters, Page
from faceid_batch.db import get_engine, normalise_url

BATCHES = 10
CODES = ("Success", "FailedOperation.LivessDetectFake", "FailedOperation.SilentTooShort")
PAGE_DEPTH = 20  # pages 1-20 of 50: the first 1,000 rows of a listing
LIMIT_MS = 50.0  # the p95 every listing and panel is held to

# The jobs, by id g: 1 in 50 failed before a verdict (no Sim), 1 in 101 queued and 1 in 103
# running (no outcome yet), the rest completed. Of the completed, 1 in 20 a liveness fake
# and 1 in 31 too short (Sim 0-40), the others Success with a Sim that passes (>= 70) 19
# times in 20: about 85 % of the jobs pass, as a production batch does, so a listing of the
# fails sorted by Sim cannot find them by walking the Sim order from the top.
STATE = """CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 101 = 0 THEN 'queued'
                 WHEN g % 103 = 0 THEN 'running' ELSE 'completed' END"""
CODE = """CASE WHEN g % 50 = 0 THEN 'InvalidParameterValue'
                WHEN g % 101 = 0 OR g % 103 = 0 THEN NULL
                WHEN g % 20 = 0 THEN 'FailedOperation.LivessDetectFake'
                WHEN g % 31 = 0 THEN 'FailedOperation.SilentTooShort' ELSE 'Success' END"""
# A pseudo-random number in [0, 1) from the id.
U = "(((g::bigint * 7919) % 10007) / 10007.0)"
SIM = f"""CASE WHEN code IS NULL OR code = 'InvalidParameterValue' THEN NULL
               WHEN code <> 'Success' THEN round((40 * {U})::numeric, 2)::float
               WHEN g % 19 = 0 THEN round((70 * {U})::numeric, 2)::float
               ELSE round((70 + 30 * {U})::numeric, 2)::float END"""

FILL = [
    """INSERT INTO batches (name, lane, state, created_at, updated_at, rows_read, rows_accepted,
           rows_known, rows_bad)
       SELECT 'bench-' || b, 'backfill', 'active', now(), now(), 0, 0, 0, 0
       FROM generate_series(1, :batches) AS b""",
    f"""INSERT INTO jobs (idempotency_key, lane, state, liveness_type, photo_source,
           video_source, attempts, result_code, passed, sim, created_at, updated_at,
           finished_at, batch_id, batch_row, photo_key)
       SELECT 'cust-' || lpad(g::text, 8, '0'),
              CASE WHEN g % 10 = 3 THEN 'onboarding' ELSE 'backfill' END,
              state, 'SILENT', '/p/' || g || '.jpg', '/v/' || g || '.mp4',
              CASE WHEN state = 'queued' THEN 0
                   ELSE 1 + (g % 7 = 0)::int + (g % 31 = 0)::int END,
              code, CASE WHEN code IS NULL OR state <> 'completed' THEN NULL
                         ELSE code = 'Success' AND sim >= 70 END,
              sim, t, t,
              CASE WHEN state IN ('completed', 'failed') THEN t + interval '20 seconds' END,
              (SELECT min(id) FROM batches) + (g - 1) * :batches / :rows, g,
              'media/' || md5(g::text) || '.jpg'
       FROM generate_series(1, :rows) AS g,
            LATERAL (SELECT timestamptz '2026-01-01' + g * interval '864 milliseconds'
                     * (1000000.0 / :rows)) AS c(t),
            LATERAL (SELECT {STATE}) AS s(state),
            LATERAL (SELECT {CODE}) AS o(code),
            LATERAL (SELECT {SIM}) AS m(sim)""",
    # A result for every completed job, its Sim the job's (both are written together).
    """INSERT INTO results (job_id, result, description, sim, request_id, passed, threshold,
           created_at)
       SELECT id, result_code, 'bench', sim, md5(id::text), passed, 70, finished_at
       FROM jobs WHERE state = 'completed'""",
    # The calls of each batch by minute: every job's last call with its code, and its
    # earlier tries as retried errors (not billed).
    """INSERT INTO batch_calls (batch_id, minute, code, billable, calls, waited_ms)
       SELECT batch_id, date_trunc('minute', finished_at), result_code,
              result_code <> 'InvalidParameterValue', count(*), sum(40 + id % 200)
       FROM jobs WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3, 4
       UNION ALL
       SELECT batch_id, date_trunc('minute', finished_at), 'FailedOperation.UnKnown', false,
              sum(attempts - 1), sum((attempts - 1) * (40 + id % 200))
       FROM jobs WHERE finished_at IS NOT NULL AND attempts > 1 GROUP BY 1, 2, 3, 4""",
    # A finished batch's pages are all-visible once autovacuum has passed: index-only scans.
    "VACUUM ANALYZE",
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
            batch_ids: list[int] = [
                r[0] for r in conn.execute(text("SELECT id FROM batches ORDER BY id"))]
        print(f"filled {args.rows:,} jobs + results in {time.perf_counter() - t0:.1f} s")

        rng = random.Random(6)
        figures: list[tuple[str, list[float]]] = []

        def listing(filters: Callable[[], Filters], sort: str = "-id",
                    depth: int = PAGE_DEPTH) -> Callable[[], object]:
            return lambda: queries.list_results(
                url, filters(), Page(sort=sort, page=rng.randint(1, depth), limit=50))

        def batch() -> int:
            return rng.choice(batch_ids)

        def one_day(**more: Any) -> Filters:
            start, end = _one_day(rng)
            return Filters(created_from=start, created_to=end, **more)

        def prefix() -> str:  # 1 % of the keys
            return f"cust-00{rng.randint(10, 99)}"

        every = Filters
        lists: dict[str, Callable[[], object]] = {
            # Each filter alone, newest first (the default order).
            "filter batch": listing(lambda: Filters(batch_id=batch())),
            "filter lane onboarding": listing(lambda: Filters(lane="onboarding")),
            "filter state failed (2 %)": listing(lambda: Filters(state="failed")),
            "filter state queued (1 %)": listing(lambda: Filters(state="queued")),
            "filter outcome code": listing(lambda: Filters(code=rng.choice(CODES))),
            "filter verdict fail": listing(lambda: Filters(passed=False)),
            "filter verdict pass": listing(lambda: Filters(passed=True)),
            "filter Sim 60-70": listing(lambda: Filters(sim_min=60, sim_max=70)),
            "filter created, one day": listing(lambda: one_day()),
            "filter key prefix (1 %)": listing(lambda: Filters(key_prefix=prefix())),
        }
        for sort in ("id", "key", "state", "attempts", "code", "sim", "created", "finished"):
            for s in (sort, f"-{sort}"):
                lists[f"sort {s}"] = listing(every, s)
        lists.update({
            # Combinations.
            "batch + verdict fail, newest first": listing(
                lambda: Filters(batch_id=batch(), passed=False)),
            "lane + outcome code, newest first": listing(
                lambda: Filters(lane="backfill", code=rng.choice(CODES))),
            "Sim 60-70 + one day, by created": listing(
                lambda: one_day(sim_min=60, sim_max=70), "-created", 10),
            "verdict fail, by Sim desc": listing(lambda: Filters(passed=False), "-sim"),
            "verdict pass, by Sim asc": listing(lambda: Filters(passed=True), "sim"),
            "batch + verdict fail, by Sim desc": listing(
                lambda: Filters(batch_id=batch(), passed=False), "-sim"),
            "key prefix, by key": listing(lambda: Filters(key_prefix=prefix()), "key"),
        })
        print(f"\nlistings, a page of 50 (pages 1-{PAGE_DEPTH}, random filter values; "
              f"{args.runs} runs each):")
        for label, fn in lists.items():
            figures.append((label, _report(label, fn, args.runs)))

        ms = _report(f"stats for one batch ({args.rows // BATCHES:,} jobs)",
                     lambda: queries.stats(url, Filters(batch_id=batch())), args.runs)
        figures.append(("stats, one batch", ms))

        print(f"\ndashboard of one batch ({args.rows // BATCHES:,} jobs):")
        for label, fn in _panels(url, batch).items():
            figures.append((label, _report(label, fn, args.runs)))

        over = [label for label, ms in figures if p95(ms) > LIMIT_MS]
        print(f"\nover {LIMIT_MS} ms p95: {', '.join(over) if over else 'none'}")

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


def _report(label: str, fn: Callable[[], object], runs: int) -> list[float]:
    first = timed(fn, 1)
    # Something slow is timed 20 times, not hundreds.
    ms = timed(fn, runs if first[0] < 250 else 20)
    flag = "  OVER" if p95(ms) > LIMIT_MS else ""
    print(f"  {label:<44} p50 {statistics.median(ms):7.1f} ms   p95 {p95(ms):7.1f} ms{flag}")
    return ms


def _panels(url: str, batch: Callable[[], int]) -> dict[str, Callable[[], object]]:
    """Every public read of admin/dashboard.py, for one batch."""
    from faceid_batch.admin import dashboard

    return {
        "dashboard tally": lambda: dashboard.tally(url, batch()),
        "dashboard calls_by_minute (last 3 h)": lambda: dashboard.calls_by_minute(url,
                                                                                  batch()),
        "dashboard call_totals": lambda: dashboard.call_totals(url, batch()),
        "dashboard share": lambda: dashboard.share(url, batch(), 20.0),
        "dashboard panels (all of the above)": lambda: dashboard.panels(
            url, batch(), budget=20.0, threshold=70.0),
        "dashboard list_batches": lambda: dashboard.list_batches(url),
    }


def _one_day(rng: random.Random) -> tuple[datetime, datetime]:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 8))
    return start, start + timedelta(days=1)


if __name__ == "__main__":
    main()
