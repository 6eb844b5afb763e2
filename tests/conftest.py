"""Shared fixtures: real redis-server, the simulator, a migrated database, worker processes."""

from __future__ import annotations

import os
import uuid

import pytest
import requests
from sqlalchemy import create_engine, text

from faceid_batch import migrate
from faceid_batch.db import normalise_url
from faceid_batch.local.services import RedisServer, Simulator, Worker
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    sim = Simulator(tmp_path_factory.mktemp("sim"), FAKE_SECRET_ID, FAKE_SECRET_KEY).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim_control(simulator):
    """The simulator's control API, reset before each test."""
    requests.post(f"{simulator.control_url}/reset", timeout=5).raise_for_status()
    return simulator.control_url


@pytest.fixture
def pg_url_fresh():
    """A new empty PostgreSQL database on TEST_POSTGRES_URL's server, or None."""
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        yield None
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, pg_url_fresh):
    """A migrated database: a SQLite file, and PostgreSQL when TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/faceid.db"
    elif pg_url_fresh is None:
        pytest.skip("TEST_POSTGRES_URL not set")
    else:
        url = pg_url_fresh
    migrate.upgrade(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    """A migrated SQLite database, for tests that only need one to exist (the ledger of
    staged objects) and are not about the database."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    migrate.upgrade(url)
    return url


@pytest.fixture
def app_env(redis_server, simulator, tmp_path):
    """Environment for this product pointed at the local parts, with a fresh Redis db."""
    redis_server_flush(redis_server)
    return {
        "REDIS_URL": redis_server.url,
        "FACEID_SECRET_ID": FAKE_SECRET_ID,
        "FACEID_SECRET_KEY": FAKE_SECRET_KEY,
        "FACEID_ENDPOINT": simulator.api_url,
        "COS_BUCKET": BUCKET,
        "COS_DOMAIN": simulator.cos_domain,
        "COS_SCHEME": "http",
        # The simulator and the tests' receivers listen on 127.0.0.1; the egress policy
        # refuses every other non-global address (tests of the policy unset this).
        "EGRESS_ALLOW_NETWORKS": "127.0.0.1/32",
        "RETRY_BASE_DELAY": "0.2",
        "RETRY_MAX_DELAY": "1",
        # No metrics endpoint unless a test asks for one: test workers would fight over a port.
        "METRICS_PORT": "0",
    }


def redis_server_flush(server: RedisServer) -> None:
    import redis

    redis.Redis.from_url(server.url).flushall()


@pytest.fixture
def configured(app_env, database_url, monkeypatch):
    """This process configured like a worker would be: returns the Settings."""
    from faceid_batch.settings import get_settings

    for k, v in {**app_env, "DATABASE_URL": database_url}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    import faceid_batch.worker as worker_mod

    worker_mod.drop_resources()
    worker_mod.celery_app.conf.broker_url = app_env["REDIS_URL"]
    yield get_settings()
    get_settings.cache_clear()
    worker_mod.drop_resources()  # its lease's heartbeat would outlive this test's Redis


@pytest.fixture
def start_worker(tmp_path, app_env, database_url):
    """Start real Celery worker processes; all are stopped at the end of the test."""
    started: list[Worker] = []

    def _start(name: str = "w1", concurrency: int = 8, extra_args: tuple[str, ...] = (),
               **env: str) -> Worker:
        w = Worker(env={**app_env, "DATABASE_URL": database_url, **env},
                   logfile=tmp_path / f"{name}.log", concurrency=concurrency, name=name,
                   extra_args=list(extra_args))
        started.append(w.start())
        return w

    yield _start
    for w in started:
        w.stop()


# Markers from what a test uses, so they cannot drift from it: ``e2e`` for a test that
# starts (or shares) a redis-server, the simulator (a process, or in-process for its own
# tests) or a worker process; ``postgres`` for
# the PostgreSQL run of a test. ``pytest -m "not e2e"`` is the fast loop.
_E2E_FIXTURES = {"redis_server", "simulator", "sim_running", "start_worker"}


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    for item in items:
        if _E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)
