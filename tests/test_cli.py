"""Operator commands: the breaker state is visible and can be closed; db upgrade works."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from faceid_batch.call.breaker import AccountBreaker


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_breaker_status_and_close(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    env = {"REDIS_URL": redis_server.url}
    closed = cli(env, "breaker", "status")
    assert closed.returncode == 0 and "closed" in closed.stdout
    AccountBreaker(client).record("UnauthorizedOperation.Arrears")
    opened = cli(env, "breaker", "status")
    assert opened.returncode == 1
    assert "OPEN" in opened.stdout and "UnauthorizedOperation.Arrears" in opened.stdout
    assert cli(env, "breaker", "close").returncode == 0
    assert not AccountBreaker(client).state().open


def test_db_upgrade_command(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    proc = cli({"DATABASE_URL": url}, "db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    current = cli({"DATABASE_URL": url}, "db", "current")
    assert current.stdout.strip() and current.stdout.strip() != "(none)"
    assert current.stdout.strip() in proc.stdout
