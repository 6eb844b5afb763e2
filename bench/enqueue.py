"""Manifest intake speed, and Redis memory with a backlog in the database.

Writes CSV manifests and runs ``backfill.run_backfill`` on each in a fresh process, into one
database (a new SQLite file, or ``--database-url``), on a local redis-server with a real
feeder running beside it (a ``celery beat`` process: it runs a feeder candidate, as in
production; no worker takes anything). It prints rows/s and peak RSS of each intake, and
Redis ``used_memory`` with 0, then each cumulative number of backfill jobs queued: the
backlog stays in the database, Redis holds the lane's window (QUEUE_DEPTH). Then it re-runs
the first manifest (every key known: the dedupe path) and times the ways to send ``verify``
messages (what the feeder uses).

Sources are ``cos://bucket/key`` objects by default: every row gets the full free checks
(key, LivenessType/ValidateData, bucket) but no file is read, so the figure is the intake
path itself (parse, check, dedupe lookup, bulk insert). ``--local-rows N`` also runs N rows
with local files, where reading and hashing each file (``media.inspect_local``) is the cost.

    .venv/bin/python -m bench.enqueue                      # 100k, then 900k more: 1M queued
    .venv/bin/python -m bench.enqueue --rows 100000 --local-rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench-1250000000"
ENV = {"FACEID_SECRET_ID": "AKIDbenchFAKEkeyNOTrealXXXXXXXXXXX",
       "FACEID_SECRET_KEY": "benchFAKEsecretKEYnotREAL0000000", "COS_BUCKET": BUCKET}


def write_manifest(path: Path, rows: int, media: Path | None = None, start: int = 0) -> None:
    """``rows`` rows cycling through LIP/ACTION/SILENT, each with a little metadata."""
    pairs: list[tuple[str, str]] = []
    if media is not None:
        from faceid_batch.local.samples import write_pair

        pairs = [tuple(map(str, write_pair(media, i, 2_000, 20_000))) for i in range(100)]
    kinds = (("LIP", "{:04d}"), ("ACTION", "1,2"), ("SILENT", ""))
    with path.open("w") as out:
        out.write("key,photo,video,liveness_type,validate_data,metadata\n")
        for i in range(start, start + rows):
            kind, data = kinds[i % 3]
            if pairs:
                photo, video = pairs[i % len(pairs)]
            else:
                photo, video = f"cos://{BUCKET}/old/{i}.jpg", f"cos://{BUCKET}/old/{i}.mp4"
            out.write(f'bench-{i:08d},{photo},{video},{kind},"{data.format(i % 10_000)}",'
                      f'"{{""crm_id"": {i}}}"\n')


def peak_rss(path: str = "/proc/self/status") -> int:
    """VmHWM of this process, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(manifest: str) -> None:
    """Run one backfill here and print its figures as JSON (run in a fresh process)."""
    from faceid_batch.bulk.backfill import run_backfill
    from faceid_batch.settings import get_settings

    started = time.monotonic()
    r = run_backfill(get_settings(), manifest, report_path=os.devnull)
    print(json.dumps({
        "read": r.read, "accepted": r.accepted, "known": r.known,
        "bad": r.bad, "seconds": r.seconds, "wall": time.monotonic() - started,
        "rss": peak_rss(),
    }))


def run_child(manifest: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.enqueue", "--child", str(manifest)],
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"backfill failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def send_alternatives(redis_url: str, n: int) -> dict[str, float]:
    """Messages/s for three ways to send ``verify`` messages (``n`` each, then flushed)."""
    import redis

    os.environ["REDIS_URL"] = redis_url
    from faceid_batch.messages import lane_depths, send_verify_many
    from faceid_batch.tasks import verify
    from faceid_batch.worker import celery_app

    celery_app.conf.broker_url = redis_url
    client = redis.Redis.from_url(redis_url)
    figures = {}

    def timed(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        client.flushall()
        t = time.perf_counter()
        fn()
        figures[name] = n / (time.perf_counter() - t)
        assert lane_depths(client)["backfill"] == n

    def one_by_one() -> None:
        for i in range(n):
            verify.apply_async(args=[i], queue="backfill")

    def one_producer_batched() -> None:
        with celery_app.producer_or_acquire() as producer, producer.batch(1000):
            for i in range(n):
                verify.apply_async(args=[i], queue="backfill", producer=producer)

    send_verify_many(range(10), "backfill")  # connect once before timing
    timed("apply_async, one message at a time", one_by_one)
    timed("apply_async, one producer + Producer.batch", one_producer_batched)
    timed("send_verify_many (as_task_v2 + Producer.batch)",
          lambda: send_verify_many(range(n), "backfill"))
    client.flushall()
    return figures


def used_memory(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.info("memory")["used_memory"])


def settle(client, lane_depth: int, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the feeder has filled the lane to its depth and Redis is quiet."""
    from faceid_batch.messages import lane_depths

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and lane_depths(client)["backfill"] < lane_depth:
        time.sleep(0.2)
    time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="manifest sizes, queued one after the other (repeatable; "
                             "default 100000 and 900000: 1M queued)")
    parser.add_argument("--local-rows", type=int, default=0,
                        help="also run this many rows with small local files")
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--send-messages", type=int, default=20_000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = args.rows or [100_000, 900_000]

    import redis

    from faceid_batch import migrate
    from faceid_batch.local.services import RedisServer
    from faceid_batch.messages import lane_depths
    from faceid_batch.settings import load_settings

    base = Path(tempfile.mkdtemp(prefix="faceid-bench-enqueue-"))
    server = RedisServer(base / "redis").start()
    client = redis.Redis.from_url(server.url)
    print(f"redis-server {server.url}; work dir {base}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    db = args.database_url or f"sqlite:///{base}/bench.db"
    migrate.upgrade(db)
    env = {**ENV, "DATABASE_URL": db, "REDIS_URL": server.url}
    depth = load_settings(**{k.lower(): v for k, v in env.items()}).lane_depth
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "faceid_batch.worker", "beat",
         "--schedule", str(base / "beat-schedule"), "--loglevel", "WARNING"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=open(base / "beat.log", "ab"))
    runs: list[tuple[str, dict]] = []
    memory: list[tuple[int, int, int]] = []  # jobs queued, used_memory, messages in the lane
    try:
        time.sleep(3.0)  # beat up, its feeder holding the lock
        memory.append((0, used_memory(client), lane_depths(client)["backfill"]))
        queued, start = 0, 0
        for index, rows in enumerate(sizes):
            manifest = base / f"manifest-{index}.csv"
            write_manifest(manifest, rows, start=start)
            label = f"{rows:,} rows, cos:// sources ({queued + rows:,} queued after)"
            print(f"{label}: {manifest.stat().st_size / 1e6:.1f} MB manifest ...", flush=True)
            fig = run_child(manifest, env)
            assert fig["accepted"] == rows, fig
            runs.append((label, fig))
            if index == 0:
                again = run_child(manifest, env)
                assert again["accepted"] == 0 and again["known"] == rows, again
                runs.append((f"{rows:,} rows, re-run (all keys known)", again))
            queued += rows
            start += rows
            settle(client, depth)
            memory.append((queued, used_memory(client), lane_depths(client)["backfill"]))
            manifest.unlink()
        if args.local_rows:
            manifest = base / "manifest-local.csv"
            write_manifest(manifest, args.local_rows, base / "media", start=start)
            label = f"{args.local_rows:,} rows, local files (2 KB + 20 KB)"
            runs.append((label, run_child(manifest, env)))
        beat.terminate()
        beat.wait(10)
        sends = send_alternatives(server.url, args.send_messages)
    finally:
        if beat.poll() is None:
            beat.kill()
        server.stop()
        if args.database_url is None:
            Path(db.removeprefix("sqlite:///")).unlink(missing_ok=True)

    print()
    print(f"{'run':<60} {'rows/s':>9} {'enqueue s':>9} {'wall s':>7} {'RSS MB':>7}")
    for label, f in runs:
        print(f"{label:<60} {f['read'] / f['seconds']:>9,.0f} {f['seconds']:>9.1f} "
              f"{f['wall']:>7.1f} {f['rss'] / 1e6:>7.0f}")
    print()
    print(f"Redis with backfill jobs queued in the database (feeder running, lane depth "
          f"{depth}):")
    for jobs, used, lane in memory:
        print(f"  {jobs:>9,} jobs queued: used_memory {used / 2**20:7.2f} MiB "
              f"(+{(used - memory[0][1]) / 2**20:.2f} MiB), {lane} messages in the lane")
    print()
    print(f"sending {args.send_messages:,} verify messages to Redis:")
    for name, rate in sends.items():
        print(f"  {name:<50} {rate:>9,.0f} messages/s")


if __name__ == "__main__":
    main()
