"""Secrets hygiene: a batch run with recognisable fake credentials leaves no trace.

A real worker runs four jobs (a pass, a transient retry, a refused request, a spoof verdict)
with a canary SecretKey and canary session tokens (temporary credentials, for FaceID and COS).
Then the worker's log, the SQLite database file (and its WAL) and every stored row are
searched for the key, the tokens and any presigned-URL signature.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect, select, text

from faceid_batch import migrate
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.local.services import Simulator, Worker
from faceid_batch.models import Job
from faceid_batch.settings import get_settings
from helpers import BUCKET, file_md5, sim_calls, sim_script, wait_until

SECRET_ID = "AKIDcanaryIDnotREALxxxxxxxxxxxxxxxx"
SECRET_KEY = "fakeSECRETcanary0123456789abcdef"
FACEID_TOKEN = "fakeTOKENcanaryFACEID0123456789"
COS_TOKEN = "fakeTOKENcanaryCOS0123456789abcd"
# What a presigned COS URL carries (q-sign-algorithm, q-signature ...).
SIGNATURE_MARKS = ("q-signature=", "q-sign-", "x-cos-security-token")
NEEDLES = (SECRET_KEY, FACEID_TOKEN, COS_TOKEN, *SIGNATURE_MARKS)


@pytest.fixture(scope="module")
def canary_sim(tmp_path_factory):
    sim = Simulator(tmp_path_factory.mktemp("sim-canary"), SECRET_ID, SECRET_KEY,
                    extra_args=["--token-ok"]).start()
    yield sim
    sim.stop()


def find_needles(blob: bytes) -> list[str]:
    low = blob.lower()
    return [n for n in NEEDLES if n.lower().encode() in low]


def test_no_secret_in_logs_database_or_rows(redis_server, canary_sim, tmp_path, monkeypatch):
    import redis

    import faceid_batch.worker as worker_mod

    redis.Redis.from_url(redis_server.url).flushall()
    requests.post(f"{canary_sim.control_url}/reset", timeout=5).raise_for_status()
    db_file = tmp_path / "faceid.db"
    url = f"sqlite:///{db_file}"
    migrate.upgrade(url)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": redis_server.url,
        "FACEID_SECRET_ID": SECRET_ID,
        "FACEID_SECRET_KEY": SECRET_KEY,
        "FACEID_TOKEN": FACEID_TOKEN,
        "COS_TOKEN": COS_TOKEN,
        "FACEID_ENDPOINT": canary_sim.api_url,
        "COS_BUCKET": BUCKET,
        "COS_DOMAIN": canary_sim.cos_domain,
        "COS_SCHEME": "http",
        "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        "RETRY_BASE_DELAY": "0.2",
        "RETRY_MAX_DELAY": "1",
        "METRICS_PORT": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    worker_mod.drop_resources()
    worker_mod.celery_app.conf.broker_url = redis_server.url
    settings = get_settings()
    try:
        pairs = [write_pair(tmp_path / "media", 40 + i) for i in range(4)]
        sim_script(canary_sim.control_url, file_md5(pairs[1][1]),
                   ["FailedOperation.DownLoadTimeoutError"])
        sim_script(canary_sim.control_url, file_md5(pairs[2][1]), ["InvalidParameterValue"])
        sim_script(canary_sim.control_url, file_md5(pairs[3][1]),
                   ["FailedOperation.LivessDetectFake"])
        log_file = tmp_path / "worker.log"
        worker = Worker(env={**env, "LOG_FORMAT": "json"}, logfile=log_file,
                        extra_args=["--loglevel", "DEBUG"]).start()
        try:
            ids = [submit(settings, JobSpec(f"canary-{i}", str(p), str(v), "SILENT"))[0]
                   for i, (p, v) in enumerate(pairs)]

            def done() -> bool:
                with session_scope(url) as s:
                    got = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
                return all(st in ("completed", "failed") for st in got)

            wait_until(done, 60, what="the canary batch to end")
        finally:
            worker.stop()
    finally:
        get_settings.cache_clear()
        worker_mod.drop_resources()

    # The credentials really were used: the simulator saw the calls (it checks signatures).
    assert len(sim_calls(canary_sim.control_url)) == 5
    log = log_file.read_bytes()
    assert b"RequestId" in log or b"request_id" in log  # the log is about these jobs
    assert find_needles(log) == [], "secret material in the worker log"
    check_json_log_lines(log.decode())

    # Every stored row, every column, as text.
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                assert find_needles(repr(tuple(row)).encode()) == [], (table, row)
                for value in row:
                    if isinstance(value, bytes):
                        assert find_needles(value) == [], table
    engine.dispose()
    # The database file and its write-ahead log, byte for byte (deleted pages too).
    for path in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-journal")):
        if path.exists():
            assert find_needles(path.read_bytes()) == [], path.name


def check_json_log_lines(log: str) -> None:
    """LOG_FORMAT=json: our lines are JSON; a line about a job names it (and its RequestId)."""
    about_jobs = 0
    for line in log.splitlines():
        if not line.startswith("{"):
            continue  # Celery's start-up banner and Python warnings go to stderr as text
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry)
        m = re.match(r"job (\d+): ", entry["message"])
        if m:
            about_jobs += 1
            assert entry.get("job_id") == int(m.group(1)), entry
        rid = re.search(r"RequestId ([0-9a-f-]{36})", entry["message"])
        if rid:
            assert entry.get("request_id") == rid.group(1), entry
        if "faceid_batch.verify[" in entry["message"]:
            assert isinstance(entry.get("job_id"), int), entry
    assert about_jobs >= 5


def test_settings_never_show_secrets(monkeypatch):
    """Settings printed or failing validation do not show the key or the tokens."""
    import subprocess

    env = {**os.environ, "FACEID_SECRET_ID": SECRET_ID, "FACEID_SECRET_KEY": SECRET_KEY,
           "FACEID_TOKEN": FACEID_TOKEN, "COS_TOKEN": COS_TOKEN, "FACEID_RATE_LIMIT": "zero"}
    proc = subprocess.run([sys.executable, "-m", "faceid_batch.cli", "db", "current"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "FACEID_RATE_LIMIT" in proc.stderr
    assert find_needles((proc.stdout + proc.stderr).encode()) == []
    for k, v in env.items():
        if k.startswith(("FACEID_", "COS_")):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("FACEID_RATE_LIMIT")
    get_settings.cache_clear()
    try:
        shown = repr(get_settings()) + str(get_settings().model_dump())
    finally:
        get_settings.cache_clear()
    assert find_needles(shown.encode()) == []


def test_log_lines_are_redacted_and_tagged():
    """The log filter strips signatures, tokens and configured secrets, even in tracebacks."""
    import io
    import logging

    from faceid_batch.ops import logs

    stream = io.StringIO()
    logger = logging.getLogger("faceid_batch.test_redact")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.propagate = False
    logs.configure(logger, "json", (SECRET_KEY, FACEID_TOKEN))
    url = ("http://cos.example/faceid-batch/media/abc.mp4?q-sign-algorithm=sha1&q-ak=AKIDx"
           "&q-sign-time=1;2&q-key-time=1;2&q-header-list=host&q-url-param-list="
           "&q-signature=0123456789abcdef0123456789abcdef01234567"
           "&x-cos-security-token=" + COS_TOKEN)
    logs.bind(job_id=7, request_id="req-1")
    try:
        logger.warning("download of %s failed with key %s", url, SECRET_KEY)
        try:
            raise ConnectionError(f"Max retries exceeded with url: {url} ({FACEID_TOKEN})")
        except ConnectionError:
            logger.exception("job 7: staging failed")
    finally:
        logs.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert find_needles(stream.getvalue().encode()) == []
    assert SECRET_KEY not in stream.getvalue() and COS_TOKEN not in stream.getvalue()
    assert "0123456789abcdef0123456789abcdef01234567" not in stream.getvalue()
    assert "cos.example/faceid-batch/media/abc.mp4" in lines[0]["message"]
    assert all(e["job_id"] == 7 and e["request_id"] == "req-1" for e in lines)
    assert "ConnectionError" in lines[1]["exc_info"]


def test_text_log_format_names_the_job():
    import io
    import logging

    from faceid_batch.ops import logs

    stream = io.StringIO()
    logger = logging.getLogger("faceid_batch.test_text")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logs.configure(logger, "text")
    logs.bind(job_id=9, request_id="req-9")
    try:
        logger.info("job 9: Success")
    finally:
        logs.clear()
    logger.info("no job here")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("job 9: Success [job_id=9 request_id=req-9]")
    assert second.endswith("no job here")


def test_temporary_credentials_reach_both_clients(monkeypatch):
    """FACEID_TOKEN signs API calls (X-TC-Token); COS_TOKEN goes to the COS client."""
    from faceid_batch.worker import Resources

    for k, v in {"FACEID_SECRET_ID": SECRET_ID, "FACEID_SECRET_KEY": SECRET_KEY,
                 "FACEID_TOKEN": FACEID_TOKEN, "COS_TOKEN": COS_TOKEN, "COS_BUCKET": BUCKET,
                 "COS_DOMAIN": "127.0.0.1:9", "COS_SCHEME": "http"}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        res = Resources(get_settings())
        assert res.faceid._token == FACEID_TOKEN
        assert res.stager.client._conf._token == COS_TOKEN
        monkeypatch.delenv("COS_TOKEN")
        get_settings.cache_clear()
        # Without a COS token of its own, COS uses the API's temporary credentials.
        assert Resources(get_settings()).stager.client._conf._token == FACEID_TOKEN
    finally:
        get_settings.cache_clear()
