"""Preflight time per file next to the time of one upload of the same file.

    python -m bench.preflight [--runs 30]

Writes a 200 KB and an 8 MB sample MP4 (the largest whose Base64 fits the API's 8 MB) and
a 2 MB JPEG, then, for each: the whole preflight of one job (``preflight.check``: name vs
content, container metadata through PyAV, photo header) and one simple PUT of the file to
the bundled simulator's COS store with the product's client (``storage.make_cos_client``),
median and p95 over ``--runs`` runs. Preflight reads headers only, so its cost should not
grow with the file; the upload's does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SECRET_ID = "AKIDbenchFAKEkeyNOTrealXXXXXXXXXX"
SECRET_KEY = "benchFAKEsecretKEYnotREAL0000000"
BUCKET = "bench-1250000000"


def _times(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm: imports, page cache, connection pool
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples) * 1000, p95 * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)

    from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
    from faceid_batch.local.services import Simulator
    from faceid_batch.settings import load_settings
    from faceid_batch.stage import preflight
    from faceid_batch.stage.media import max_raw_size
    from faceid_batch.stage.storage import make_cos_client

    work = Path(tempfile.mkdtemp(prefix="bench-preflight-"))
    files = {
        "video 200 KB": (work / "small.mp4", mp4_bytes(1, 200_000)),
        "video 8 MB": (work / "big.mp4", mp4_bytes(2, max_raw_size("video"))),
        "photo 2 MB": (work / "photo.jpg", jpeg_bytes(3, 2 * 1024 * 1024)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    photo = files["photo 2 MB"][0]

    sim = Simulator(work / "sim", SECRET_ID, SECRET_KEY).start()
    try:
        settings = load_settings(
            faceid_secret_id=SECRET_ID, faceid_secret_key=SECRET_KEY, cos_bucket=BUCKET,
            cos_domain=sim.cos_domain, cos_scheme="http", database_url="sqlite://")
        cos = make_cos_client(settings)
        print(f"{'file':<14} {'preflight p50':>14} {'p95':>9} {'upload p50':>12} {'p95':>9}"
              f" {'ratio p50':>10}")
        for label, (path, _data) in files.items():
            if path == photo:
                def check(p: Path = path) -> object:
                    return preflight.check(settings, "SILENT", str(p), None)
            else:
                def check(p: Path = path) -> object:
                    return preflight.check(settings, "LIP", None, str(p))
            findings = check()
            assert findings.items == [], findings.items  # a sample must pass every rule
            pre = _times(check, args.runs)

            def upload(p: Path = path, name: str = path.name) -> object:
                with p.open("rb") as fh:
                    return cos.put_object(Bucket=BUCKET, Key=f"bench/{name}", Body=fh)

            up = _times(upload, args.runs)
            print(f"{label:<14} {pre[0]:>11.3f} ms {pre[1]:>6.3f} ms {up[0]:>9.2f} ms "
                  f"{up[1]:>6.2f} ms {up[0] / pre[0]:>9.0f}x", flush=True)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
