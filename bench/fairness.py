"""Fair share between backfill batches: a small batch submitted while a big one runs.

Starts a redis-server, the simulator (lognormal latency, median 1.5 s, p99 5 s, 20 calls/s
enforced) and two real worker processes; runs a manifest of --big rows, then --delay
seconds later a manifest of --small rows (weights --big-weight and --small-weight), and
prints, from the simulator's own call log, how the budget was shared while both had work:
the small batch's share of the calls, how many of its jobs were answered within --window
seconds of its submission, and when it finished. Before the feeder, batches shared one FIFO
list: a batch submitted behind a big one got nothing until the big one had drained.

    .venv/bin/python -m bench.fairness                         # 3000 + 300, weights 1:1
    .venv/bin/python -m bench.fairness --small-weight 3
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import requests

from bench.common import ROOT, SECRET_ID, SECRET_KEY

BUCKET = "bench-1250000000"


def manifest(path: Path, media: Path, prefix: str, n: int, offset: int) -> dict[str, str]:
    """A CSV of ``n`` SILENT rows with small local media; returns {video md5: prefix}."""
    from faceid_batch.local.samples import write_pair

    lines, md5s = ["key,photo,video,liveness_type"], {}
    for i in range(n):
        photo, video = write_pair(media, offset + i, 10_000, 60_000)
        md5s[hashlib.md5(video.read_bytes()).hexdigest()] = prefix
        lines.append(f"{prefix}-{i},{photo},{video},SILENT")
    path.write_text("\n".join(lines) + "\n")
    return md5s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", type=int, default=3000)
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--delay", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--big-weight", type=float, default=1.0)
    ap.add_argument("--small-weight", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args(argv)

    from faceid_batch import migrate
    from faceid_batch.bulk.backfill import run_backfill
    from faceid_batch.local.services import RedisServer, Simulator, Worker
    from faceid_batch.settings import load_settings

    base = Path(tempfile.mkdtemp(prefix="faceid-bench-fair-"))
    server = RedisServer(base / "redis").start()
    sim = Simulator(base / "sim", SECRET_ID, SECRET_KEY, extra_args=[
        "--latency-median", "1.5", "--latency-p99", "5", "--rate-limit", "20",
        "--seed", "1"]).start()
    db_url = args.database_url or f"sqlite:///{base}/bench.db"
    migrate.upgrade(db_url)
    env = {"DATABASE_URL": db_url, "REDIS_URL": server.url, "FACEID_SECRET_ID": SECRET_ID,
           "FACEID_SECRET_KEY": SECRET_KEY, "FACEID_ENDPOINT": sim.api_url,
           "COS_BUCKET": BUCKET, "COS_DOMAIN": sim.cos_domain, "COS_SCHEME": "http",
           "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
           "METRICS_PORT": "0", "PYTHONPATH": str(ROOT)}
    settings = load_settings(**{k.lower(): v for k, v in env.items() if k != "PYTHONPATH"})
    print(f"writing {args.big} + {args.small} jobs' media ...", flush=True)
    owner = manifest(base / "big.csv", base / "media", "big", args.big, 0)
    owner |= manifest(base / "small.csv", base / "media", "small", args.small, args.big)
    workers = [Worker(env=env, logfile=base / f"w{i}.log", concurrency=args.concurrency,
                      name=f"fair{i}").start() for i in range(2)]
    submitted: dict[str, float] = {}
    try:
        submitted["big"] = time.time()
        run_backfill(settings, base / "big.csv", weight=args.big_weight, name="big")
        time.sleep(max(0.0, submitted["big"] + args.delay - time.time()))
        submitted["small"] = time.time()
        run_backfill(settings, base / "small.csv", weight=args.small_weight, name="small")
        deadline = time.monotonic() + args.window + 600
        while time.monotonic() < deadline:
            calls = requests.get(f"{sim.control_url}/calls", timeout=30).json()
            small_done = sum(1 for c in calls if owner.get(c["video_md5"]) == "small")
            if small_done >= args.small and time.time() > submitted["small"] + args.window:
                break
            time.sleep(1.0)
        calls = requests.get(f"{sim.control_url}/calls", timeout=30).json()
    finally:
        for w in workers:
            w.stop()
        sim.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    small_calls = sorted(c["t_end"] for c in calls if owner.get(c["video_md5"]) == "small")
    small_starts = sorted(c["t_start"] for c in calls if owner.get(c["video_md5"]) == "small")
    # The steady share: between the 5th and the 95th percentile of the small batch's call
    # starts. Before, the calls already in the pipeline when it came (the lane's window, the
    # jobs the workers hold: a few seconds) are the big batch's; after, its last few jobs.
    both_from = small_starts[len(small_starts) // 20] if small_starts else submitted["small"]
    both_until = small_starts[-1 - len(small_starts) // 20] if small_starts else both_from
    during = [c for c in calls if both_from <= c["t_start"] <= both_until]
    share = sum(1 for c in during if owner.get(c["video_md5"]) == "small") / max(1, len(during))
    want = args.small_weight / (args.small_weight + args.big_weight)
    in_window = sum(1 for t in small_calls if t <= submitted["small"] + args.window)
    print(f"\n{args.big} + {args.small} backfill jobs (weights {args.big_weight:g} : "
          f"{args.small_weight:g}), small batch {args.delay:g} s after the big one; "
          f"2 workers x threads {args.concurrency}, 20 calls/s")
    rows = {
        "small batch's share of call starts, p5-p95 of its own": f"{share:.3f} (weights say "
                                                                 f"{want:.3f})",
        "calls/s in that window": round(len(during) / max(1e-9, both_until - both_from), 2),
        f"small jobs answered within {args.window:g} s of submission":
            f"{in_window}/{args.small}",
        "small batch: first / last answer, s after submission":
            f"{small_calls[0] - submitted['small']:.1f} / "
            f"{small_calls[-1] - submitted['small']:.1f}" if small_calls else "-",
    }
    for k, v in rows.items():
        print(f"  {k:<56} {v}")
    # How the share settles: the calls already in the pipeline when the small batch came
    # (the lane's window, jobs the workers hold) are the big batch's.
    print("  small batch's share of calls, by 5 s after its submission:")
    t0 = submitted["small"]
    for lo in range(0, int((small_starts[-1] if small_starts else t0) - t0) + 5, 5):
        part = [c for c in calls if t0 + lo <= c["t_start"] < t0 + lo + 5]
        if part:
            mine = sum(1 for c in part if owner.get(c["video_md5"]) == "small")
            print(f"    {lo:>4}-{lo + 5:<4} s  {mine / len(part):.2f}  ({len(part)} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
