"""Screenshots of the admin's review pages for the docs, in real headless Chromium.

Starts the bundled simulator (for the ID photos in COS) and the admin app on a temporary
SQLite database holding a few generated jobs, logs in, and saves one PNG per entry of SHOTS
(a 1280x900 window). Usage: .venv/bin/python scripts/screenshots.py [--out docs/img]

Another page is one more (file name, address) in SHOTS; an address may name a seeded job
as ``{job}`` (a completed job with several attempts) or any key of ``seed``'s result.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faceid_batch import migrate  # noqa: E402
from faceid_batch.admin.app import create_app  # noqa: E402
from faceid_batch.db import session_scope  # noqa: E402
from faceid_batch.local.services import Simulator  # noqa: E402
from faceid_batch.models import Attempt, Batch, BestFrame, Job, Result  # noqa: E402
from faceid_batch.settings import Settings, load_settings  # noqa: E402
from faceid_batch.stage.storage import MediaStager  # noqa: E402

# (file name, address on the admin app) -- one screenshot each, in this order.
SHOTS: list[tuple[str, str]] = [
    ("review-list.png", "/review"),
    ("review-job.png", "/review/jobs/{job}"),
    ("dashboard.png", "/batches/{batch}"),
]
WINDOW = (1280, 900)
TOKEN = "screenshot-admin-token-0123456789"
# Obviously fake keys: they only reach the bundled simulator.
SECRET_ID = "AKIDscreenshotFAKEkeyNOTrealXXXXX"
SECRET_KEY = "screenshotFAKEsecretKEYnotREAL00"
BUCKET = "faceid-docs-1250000000"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

# key, lane, state, code, passed, sim, attempt kinds (in order), minutes after T0
JOBS: list[tuple[str, str, str, str | None, bool | None, float | None, list[str], int]] = [
    ("crm-000187", "backfill", "completed", "Success", True, 93.41, ["success"], 0),
    ("crm-000188", "backfill", "completed", "Success", True, 88.07, ["success"], 1),
    ("crm-000189", "backfill", "completed", "FailedOperation.CompareLowSimilarity", False,
     41.5, ["transient", "verdict"], 2),
    ("crm-000190", "backfill", "completed", "Success", True, 76.92,
     ["transient", "throttled", "transient", "success"], 3),
    ("crm-000191", "backfill", "failed", "InvalidParameterValue", None, None, ["request"], 4),
    ("crm-000192", "backfill", "completed", "FailedOperation.LivessDetectFake", False, 12.3,
     ["verdict"], 5),
    ("signup-7f3a", "onboarding", "completed", "Success", True, 97.2, ["success"], 30),
    ("signup-7f3b", "onboarding", "retrying", "FailedOperation.UnKnown", None, None,
     ["transient", "transient"], 31),
    ("signup-7f3c", "onboarding", "completed", "Success", True, 71.8,
     ["throttled", "success"], 32),
    ("signup-7f3d", "onboarding", "queued", None, None, None, [], 33),
    ("signup-7f3e", "onboarding", "completed", "FailedOperation.CompareLowSimilarity", False,
     64.4, ["verdict"], 34),
]
FEATURED = "crm-000190"  # the job of "{job}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def portrait(width: int, height: int, background: tuple[int, int, int],
             shift: float = 0.0) -> bytes:
    """A decodable PNG of a plain head-and-shoulders silhouette (no real face)."""
    skin, shirt, dark = (224, 182, 150), (60, 82, 120), (50, 40, 35)
    cx = width / 2 + shift * width
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            dx, dy = (x - cx) / (width * 0.22), (y - height * 0.40) / (height * 0.24)
            sx, sy = (x - cx) / (width * 0.46), (y - height * 1.05) / (height * 0.36)
            ex = min(abs(x - (cx - width * 0.08)), abs(x - (cx + width * 0.08)))
            if abs(y - height * 0.37) < height * 0.018 and ex < width * 0.025:
                pixel = dark
            elif dx * dx + dy * dy <= 1:
                pixel = skin
            elif sx * sx + sy * sy <= 1:
                pixel = shirt
            else:
                pixel = background
            row += bytes(pixel)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + _png_chunk(b"IEND", b""))


def seed(settings: Settings, workdir: Path) -> dict[str, int]:
    """Insert JOBS with their attempts, results and best frames; return key -> job id (and
    "job" -> the featured one)."""
    photo = workdir / "id-photo.png"
    photo.write_bytes(portrait(180, 225, (236, 240, 244)))
    photo_key = MediaStager(settings).stage("photo", str(photo)).key
    frame = portrait(180, 225, (120, 140, 110), shift=0.05)
    ids: dict[str, int] = {}
    with session_scope(settings.database_url) as s:
        batch = Batch(name="crm-reverify-2026-03", lane="backfill")
        s.add(batch)
        s.flush()
        for key, lane, state, code, passed, sim, kinds, minutes in JOBS:
            created = T0 + timedelta(minutes=minutes)
            at = created + timedelta(seconds=2)
            attempts = []
            for n, kind in enumerate(kinds, 1):
                last = n == len(kinds)
                latency = 1400 + 300 * n
                attempts.append(Attempt(
                    number=n, started_at=at, latency_ms=latency, kind=kind, channel="result",
                    http_status=200, request_id=f"{key}-req-{n}",
                    code=(code or "Success") if last else {
                        "throttled": "RequestLimitExceeded"}.get(kind, "FailedOperation.UnKnown"),
                    counted=kind != "throttled"))
                at += timedelta(milliseconds=latency) + timedelta(seconds=4 * n * n)
            finished = at if state in ("completed", "failed") else None
            job = Job(idempotency_key=key, lane=lane, state=state, liveness_type="SILENT",
                      photo_source="s3-export/photo.png", video_source="s3-export/video.mp4",
                      attempts=sum(a.counted for a in attempts), result_code=code,
                      passed=passed, created_at=created, finished_at=finished,
                      photo_key=photo_key,
                      batch_id=batch.id if lane == "backfill" else None,
                      error_message="bad request: VideoBase64 empty" if state == "failed"
                      else None)
            s.add(job)
            s.flush()
            ids[key] = job.id
            for a in attempts:
                a.job_id = job.id
                s.add(a)
            if sim is not None:
                s.add(Result(job_id=job.id, result=code or "Success", sim=sim,
                             passed=bool(passed), threshold=70.0,
                             request_id=f"{key}-req-{len(kinds)}", description="Success"))
                s.add(BestFrame(job_id=job.id, md5="0" * 32, size=len(frame), content=frame))
    ids["job"] = ids[FEATURED]
    ids["batch"] = seed_backfill(settings)
    return ids


def seed_backfill(settings: Settings, jobs: int = 60_000, minutes: int = 32) -> int:
    """A backfill part way through: jobs in every state, Sims around the threshold, and its
    calls by minute (batch_calls) at about the 20/s budget; return its batch id."""
    import random

    from sqlalchemy import insert

    from faceid_batch.models import BatchCalls
    from faceid_batch.times import utcnow

    rnd = random.Random(7)
    now = utcnow().replace(second=0, microsecond=0)
    with session_scope(settings.database_url) as s:
        batch = Batch(name="overnight re-verification (manifest kyc-2019.csv)",
                      lane="backfill", manifest_sha256="9f" * 32, weight=1.0)
        s.add(batch)
        s.flush()
        rows = []
        for i in range(jobs):
            r = rnd.random()
            sim = min(99.0, max(1.0, rnd.gauss(82, 11)))
            if i > jobs * 0.62:
                state, code, passed, sim_or_none = "queued", None, None, None
            elif r < 0.80:
                state, code, passed, sim_or_none = "completed", "Success", sim >= 70, sim
            elif r < 0.88:
                state, code, passed, sim_or_none = ("completed",
                                                    "FailedOperation.LivessDetectFake",
                                                    False, None)
            elif r < 0.93:
                state, code, passed, sim_or_none = ("failed",
                                                    "FailedOperation.DownLoadTimeoutError",
                                                    None, None)
            elif r < 0.97:
                state, code, passed, sim_or_none = ("refused",
                                                    "FailedOperation.SilentTooShort", None,
                                                    None)
            else:
                state, code, passed, sim_or_none = "failed", "Local.SourceTimeout", None, None
            rows.append(dict(
                idempotency_key=f"kyc-2019-{i:06d}", lane="backfill", state=state,
                liveness_type="SILENT", photo_source="cos://old/p.jpg",
                video_source="cos://old/v.mp4", result_code=code, passed=passed,
                sim=sim_or_none, attempts=0 if state in ("queued", "refused") else
                1 + (rnd.random() < 0.12) + (rnd.random() < 0.03),
                batch_id=batch.id, batch_row=i + 1, created_at=now, updated_at=now,
                due_at=now if state == "queued" else None))
        s.execute(insert(Job), rows)
        for m in range(minutes):
            minute = now - timedelta(minutes=minutes - m)
            ok = int(60 * rnd.uniform(17.5, 19.6)) if m > 2 else 300 * m
            timeouts = rnd.randint(0, 25) if 20 < m < 30 else rnd.randint(0, 4)
            for code, calls in (("Success", ok), ("FailedOperation.DownLoadTimeoutError",
                                                  timeouts),
                                ("FailedOperation.LivessDetectFake", ok // 12)):
                if calls:
                    s.add(BatchCalls(batch_id=batch.id, minute=minute, code=code,
                                     billable=True, calls=calls,
                                     waited_ms=calls * rnd.randint(300, 900)))
        return batch.id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The admin app on uvicorn at 127.0.0.1; yields its base address."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_window_size(*WINDOW)
    # The page itself gets the whole 1280x900, whatever the headless window keeps for itself.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: Any, base: str, ids: dict[str, int], out: Path) -> list[Path]:
    """Log in, then save one screenshot per SHOTS entry; return the files written."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/login")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/review"))
    written = []
    for name, address in SHOTS:
        driver.get(base + address.format(**ids))
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.prototype.every.call("
            "document.images, function(i){return i.complete})"))
        path = out / name
        if not driver.save_screenshot(str(path)):
            raise RuntimeError(f"no screenshot of {address}")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="faceid-shots-") as tmp:
        work = Path(tmp)
        sim = Simulator(work / "sim", SECRET_ID, SECRET_KEY).start()
        try:
            url = f"sqlite:///{work}/faceid.db"
            migrate.upgrade(url)
            settings = load_settings(
                database_url=url, admin_token=TOKEN, faceid_secret_id=SECRET_ID,
                faceid_secret_key=SECRET_KEY, cos_bucket=BUCKET, cos_domain=sim.cos_domain,
                cos_scheme="http")
            ids = seed(settings, work)
            with serve(settings) as base, chromium(work / "profile") as driver:
                for path in shoot(driver, base, ids, args.out):
                    print(f"{path} ({path.stat().st_size // 1024} KB)")
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
