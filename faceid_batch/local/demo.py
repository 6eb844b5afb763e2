"""``faceid-batch demo``: sample jobs end to end on real local parts.

A local redis-server (installed with apt when missing), the bundled simulator for FaceID and
COS, one real Celery worker process, and the default SQLite database. Among the samples, one
job meets a transient download timeout once, one fails liveness, one scores below the
threshold; the rest pass.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from pathlib import Path

import requests

from faceid_batch import migrate
from faceid_batch.admin.queries import iter_results
from faceid_batch.admin.report import format_results_table
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.local.services import RedisServer, Simulator, Worker
from faceid_batch.settings import get_settings

DEMO_SECRET_ID = "AKIDdemoFAKEkeyNOTrealXXXXXXXXXXXX"
DEMO_SECRET_KEY = "demoFAKEsecretKEYnotREAL00000000"  # obviously fake: simulator only

SCRIPTS = {
    1: ["FailedOperation.DownLoadTimeoutError"],  # transient once, then the real answer
    2: ["FailedOperation.LivessDetectFake"],  # fails liveness: a final verdict
    3: [{"code": "Success", "sim": 52.5}],  # answered, but below PASS_THRESHOLD
}
SCENARIOS = {
    1: "DownLoadTimeoutError once (transient), retried with backoff, then passes",
    2: "fails liveness (LivessDetectFake): a final verdict, not retried",
    3: "answered Success but Sim 52.5 < PASS_THRESHOLD: fails",
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def demo_env(redis_url: str, sim: Simulator) -> dict[str, str]:
    """The environment that points this product at the local parts."""
    return {
        "REDIS_URL": redis_url,
        "FACEID_SECRET_ID": DEMO_SECRET_ID,
        "FACEID_SECRET_KEY": DEMO_SECRET_KEY,
        "FACEID_ENDPOINT": sim.api_url,
        "COS_BUCKET": "faceid-demo-1250000000",
        "COS_DOMAIN": sim.cos_domain,
        "COS_SCHEME": "http",
        # The simulator serves best frames on loopback: the egress policy lets it through.
        "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        "RETRY_BASE_DELAY": "1",
    }


def run_demo(jobs: int = 5, timeout: float = 120.0, workdir: Path | None = None) -> int:
    """Run the demo; print the stored outcomes; return a process exit code."""
    workdir = workdir or Path("var/demo")
    run_id = uuid.uuid4().hex[:8]
    print(f"demo {run_id}: starting redis-server, simulator and a worker in {workdir}/", flush=True)
    redis_server = RedisServer(workdir / "redis").start()
    sim = Simulator(workdir / "sim", DEMO_SECRET_ID, DEMO_SECRET_KEY).start()
    env = demo_env(redis_server.url, sim)
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    worker = None
    try:
        migrate.upgrade(settings.database_url)
        worker = Worker(env=env, logfile=workdir / "worker.log", concurrency=8).start()

        ids = []
        for i in range(jobs):
            photo, video = write_pair(workdir / "media", i)
            if i in SCRIPTS:
                requests.post(f"{sim.control_url}/script", timeout=5,
                              json={"video_md5": _md5(video), "responses": SCRIPTS[i]})
            job_id, _ = submit(settings, JobSpec(
                idempotency_key=f"demo-{run_id}-{i}", photo=str(photo), video=str(video),
                liveness_type="SILENT",
            ))
            ids.append(job_id)
        print(f"submitted {len(ids)} jobs: {ids}", flush=True)

        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in iter_results(settings.database_url, sort="-id") if r.id in ids]
            done = [r for r in rows if r.state in ("completed", "failed")]
            if len(done) == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(format_results_table(rows))
        print("\nwhat each sample shows:")
        for i, job_id in enumerate(ids):
            print(f"  job {job_id}: {SCENARIOS.get(i, 'an ordinary pass')}")
        if len(done) != len(ids):
            print(f"timed out: {len(ids) - len(done)} job(s) not finished; see "
                  f"{workdir}/worker.log", file=sys.stderr)
            return 1
        print(f"\nall {len(ids)} jobs finished; database: {settings.database_url}")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        sim.stop()
        redis_server.stop()
