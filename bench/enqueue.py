"""Enqueue speed and memory of a manifest backfill (``faceid-batch backfill``).

For each size, writes a CSV manifest and runs ``backfill.run_backfill`` in a fresh process
on a local redis-server and a new SQLite file (or ``--database-url``), then prints rows/s
and the peak RSS of the producer and of its helper sending process. Then re-runs the first
size (every key known: the dedupe path) and times the ways to send ``verify`` messages.

Sources are ``cos://bucket/key`` objects by default: every row gets the full free checks
(key, LivenessType/ValidateData, bucket) but no file is read, so the figure is the enqueue
path itself (parse, check, dedupe lookup, bulk insert, pipelined send, mark sent).
``--local-rows N`` also runs N rows with local files, where reading and hashing each file
(``media.inspect_local``) is the cost.

    .venv/bin/python -m bench.enqueue                        # 100k and 1M rows
    .venv/bin/python -m bench.enqueue --rows 100000 --local-rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench-1250000000"
ENV = {"FACEID_SECRET_ID": "AKIDbenchFAKEkeyNOTrealXXXXXXXXXXX",
       "FACEID_SECRET_KEY": "benchFAKEsecretKEYnotREAL0000000", "COS_BUCKET": BUCKET}


def write_manifest(path: Path, rows: int, media: Path | None = None) -> None:
    """``rows`` rows cycling through LIP/ACTION/SILENT, each with a little metadata."""
    pairs: list[tuple[str, str]] = []
    if media is not None:
        from faceid_batch.samples import write_pair

        pairs = [tuple(map(str, write_pair(media, i, 2_000, 20_000))) for i in range(100)]
    kinds = (("LIP", "{:04d}"), ("ACTION", "1,2"), ("SILENT", ""))
    with path.open("w") as out:
        out.write("key,photo,video,liveness_type,validate_data,metadata\n")
        for i in range(rows):
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
    from faceid_batch.backfill import run_backfill
    from faceid_batch.settings import get_settings

    started = time.monotonic()
    r = run_backfill(get_settings(), manifest, report_path=os.devnull)
    print(json.dumps({
        "read": r.read, "accepted": r.accepted, "sent": r.sent, "known": r.known,
        "bad": r.bad, "seconds": r.seconds, "wall": time.monotonic() - started,
        "rss": peak_rss(),
        # The helper sending process, reaped when the run ended (KiB on Linux).
        "helper_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
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
    from faceid_batch.enqueue import send_verify_many
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
        assert client.llen("backfill") == n

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="manifest sizes (repeatable; default 100000 and 1000000)")
    parser.add_argument("--local-rows", type=int, default=0,
                        help="also run this many rows with small local files")
    parser.add_argument("--database-url", default=None, help="default: a new SQLite file")
    parser.add_argument("--send-messages", type=int, default=20_000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sizes = args.rows or [100_000, 1_000_000]

    import redis

    from faceid_batch import migrate
    from faceid_batch.local_services import RedisServer

    base = Path(tempfile.mkdtemp(prefix="faceid-bench-enqueue-"))
    server = RedisServer(base / "redis").start()
    print(f"redis-server {server.url}; work dir {base}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: list[tuple[str, dict]] = []
    try:
        plan = [(f"{n:,} rows, cos:// sources", n, None) for n in sizes]
        if args.local_rows:
            plan.append((f"{args.local_rows:,} rows, local files (2 KB + 20 KB)",
                         args.local_rows, base / "media"))
        for index, (label, rows, media) in enumerate(plan):
            redis.Redis.from_url(server.url).flushall()
            db = args.database_url or f"sqlite:///{base}/bench-{index}.db"
            migrate.upgrade(db)
            manifest = base / f"manifest-{index}.csv"
            write_manifest(manifest, rows, media)
            env = {**ENV, "DATABASE_URL": db, "REDIS_URL": server.url}
            print(f"{label}: {manifest.stat().st_size / 1e6:.1f} MB manifest ...", flush=True)
            fig = run_child(manifest, env)
            assert fig["accepted"] == rows == fig["sent"], fig
            queued = redis.Redis.from_url(server.url).llen("backfill")
            assert queued == rows, f"{queued} messages in the backfill queue, not {rows}"
            runs.append((label, fig))
            if index == 0:
                again = run_child(manifest, env)
                assert again["sent"] == 0 and again["known"] == rows, again
                runs.append((f"{label}, re-run (all keys known)", again))
            if args.database_url is None:
                Path(db.removeprefix("sqlite:///")).unlink(missing_ok=True)
            manifest.unlink()
        sends = send_alternatives(server.url, args.send_messages)
    finally:
        server.stop()

    print()
    print(f"{'run':<52} {'rows/s':>9} {'enqueue s':>9} {'wall s':>7} {'RSS MB':>7} "
          f"{'helper MB':>9}")
    for label, f in runs:
        print(f"{label:<52} {f['read'] / f['seconds']:>9,.0f} {f['seconds']:>9.1f} "
              f"{f['wall']:>7.1f} {f['rss'] / 1e6:>7.0f} {f['helper_rss'] / 1e6:>9.0f}")
    print()
    print(f"sending {args.send_messages:,} verify messages to Redis:")
    for name, rate in sends.items():
        print(f"  {name:<50} {rate:>9,.0f} messages/s")


if __name__ == "__main__":
    main()
