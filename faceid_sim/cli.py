"""Command line: ``python -m faceid_sim`` starts the FaceID API and COS store simulators.

When both listen it prints one JSON line to stdout (and to ``--ready-file``)::

    {"api_url": "http://127.0.0.1:PORT", "cos_domain": "127.0.0.1:PORT",
     "control_url": "http://127.0.0.1:PORT/_sim"}

then serves until SIGTERM or SIGINT and exits 0. The secret key is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from faceid_sim.runner import ENV_SECRET_ID, ENV_SECRET_KEY, start


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m faceid_sim",
        description="Simulated Tencent Cloud FaceID VideoLivenessCompare + COS bucket.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--cos-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--secret-id", default=None, help=f"default: ${ENV_SECRET_ID}")
    p.add_argument("--secret-key", default=None, help=f"default: ${ENV_SECRET_KEY}")
    p.add_argument("--token-ok", action="store_true", help="accept any temporary-credential token")
    p.add_argument("--data-dir", default=None, help="objects and frames (default: a temp dir)")
    p.add_argument("--rate-limit", type=int, default=20, help="calls per second per SecretId")
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--latency-fixed", type=float, default=None, metavar="S")
    lat.add_argument("--latency-median", type=float, default=None, metavar="S")
    p.add_argument("--latency-p99", type=float, default=None, metavar="S")
    p.add_argument("--download-timeout", type=float, default=4.0, metavar="S")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--clock-skew", type=float, default=0.0, metavar="S",
                   help="the services' clock is S seconds ahead of the host's (negative: "
                        "behind): Date headers, the TC3 timestamp check, COS signatures")
    p.add_argument("--arrival-jitter", type=float, default=0.0, metavar="S",
                   help="count each call up to S seconds after it arrived, at random (the "
                        "jitter of a network's one-way delay)")
    p.add_argument("--extra-bucket", action="append", default=[], metavar="NAME@REGION",
                   help="another bucket, served on its own port (repeatable)")
    p.add_argument("--ready-file", default=None, help="also write the ready JSON here")
    p.add_argument("--log-level", default="WARNING")
    return p


def _latency(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    if args.latency_fixed is not None:
        if args.latency_p99 is not None:
            parser.error("--latency-p99 goes with --latency-median, not --latency-fixed")
        return {"fixed": args.latency_fixed}
    if args.latency_median is not None or args.latency_p99 is not None:
        if args.latency_median is None or args.latency_p99 is None:
            parser.error("--latency-median and --latency-p99 must be given together")
        return {"lognormal": {"median": args.latency_median, "p99": args.latency_p99}}
    return None


# More accepted credentials (the simulator's fake keys only): "ID:KEY,ID:KEY".
ENV_EXTRA_CREDENTIALS = "FACEID_SIM_EXTRA_CREDENTIALS"


def _extra_credentials(value: str) -> dict[str, str]:
    found = {}
    for item in filter(None, (i.strip() for i in value.split(","))):
        sid, _, key = item.partition(":")
        if not sid or not key:
            raise SystemExit(f"faceid_sim: {ENV_EXTRA_CREDENTIALS}: expected ID:KEY,...")
        found[sid] = key
    return found


def _extra_buckets(values: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    found = {}
    for value in values:
        name, _, region = value.partition("@")
        if not name or not region:
            parser.error(f"--extra-bucket {value!r}: expected NAME@REGION")
        found[name] = region
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    latency = _latency(args, parser)
    try:
        running = start(
            host=args.host,
            api_port=args.api_port,
            cos_port=args.cos_port,
            secret_id=args.secret_id,
            secret_key=args.secret_key,
            token_ok=args.token_ok,
            data_dir=args.data_dir,
            rate_limit=args.rate_limit,
            latency=latency,
            seed=args.seed,
            download_timeout=args.download_timeout,
            clock_skew=args.clock_skew,
            arrival_jitter=args.arrival_jitter,
            extra_credentials=_extra_credentials(os.environ.get(ENV_EXTRA_CREDENTIALS, "")),
            extra_buckets=_extra_buckets(args.extra_bucket, parser),
        )
    except (ValueError, OSError) as exc:
        print(f"faceid_sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    line = json.dumps(running.ready_info())
    try:
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
            # Atomic rename: a poller never reads a half-written file.
            os.replace(tmp, args.ready_file)
        print(line, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        running.stop()
    return 0
