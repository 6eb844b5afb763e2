"""The breakers of several accounts as an operator sees them: `faceid-batch breaker status`
shows every account's (or one's, with --account), `breaker close` closes one, or all with
--all, and the metric faceid_breaker_open has one series per account."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import redis

from faceid_batch import migrate
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.ops import metrics

ACCOUNTS = """
[accounts.th-1]
secret_id = "AKIDfakeBANGKOK0001"
secret_key_env = "TEST_FAKE_KEY_TH_1"
regions = ["ap-bangkok"]

[accounts.th-2]
secret_id = "AKIDfakeBANGKOK0002"
secret_key_env = "TEST_FAKE_KEY_TH_2"
regions = ["ap-bangkok"]
"""


class _Pipe:
    def __init__(self) -> None:
        self.n = 0

    def llen(self, _name: str) -> None:
        self.n += 1

    def execute(self) -> list[int]:
        return [0] * self.n


def test_the_breaker_metric_has_one_series_per_account(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    migrate.upgrade(url)
    states = {"th-1": True, "th-2": False}
    parts = SimpleNamespace(
        settings=SimpleNamespace(database_url=url, rate_limit_margin_ms=10),
        margins=SimpleNamespace(extra=lambda account: 0.0),
        redis=SimpleNamespace(pipeline=lambda transaction=False: _Pipe()),
        breakers=tuple(SimpleNamespace(account=n, state=lambda n=n: SimpleNamespace(
            open=states[n])) for n in states))
    families = {f.name: f for f in metrics.StateCollector(lambda: parts).collect()}
    samples = {s.labels["account"]: s.value for s in families["faceid_breaker_open"].samples}
    assert samples == {"th-1": 1, "th-2": 0}


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_breaker_commands_act_on_one_account_and_show_each(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    env = {"REDIS_URL": redis_server.url, "FACEID_ACCOUNTS_FILE": str(path),
           "COS_BUCKET": "bucket-1250000000"}
    AccountBreaker(client, account="th-2").record("UnauthorizedOperation.Arrears")
    status = cli(env, "breaker", "status")
    assert status.returncode == 1, status.stderr  # one of them is open
    lines = status.stdout.splitlines()
    assert lines[0] == "th-1: closed: calls allowed"
    assert lines[1].startswith("th-2: OPEN since ") and "Arrears" in lines[1]
    one = cli(env, "breaker", "status", "--account", "th-1")
    assert one.returncode == 0 and one.stdout.splitlines() == ["th-1: closed: calls allowed"]
    unknown = cli(env, "breaker", "status", "--account", "th-9")
    assert unknown.returncode == 2
    assert "no such account; the accounts are th-1, th-2" in unknown.stderr
    # Several accounts: close needs a name (or --all), so none is closed by mistake.
    vague = cli(env, "breaker", "close")
    assert vague.returncode == 2 and "give --account NAME" in vague.stderr
    assert AccountBreaker(client, account="th-2").state().open
    closed = cli(env, "breaker", "close", "--account", "th-2")
    assert closed.returncode == 0 and closed.stdout.strip() == "th-2: closed: calls allowed"
    assert not AccountBreaker(client, account="th-2").state().open
    for name in ("th-1", "th-2"):
        AccountBreaker(client, account=name).record("UnauthorizedOperation.Arrears")
    assert cli(env, "breaker", "close", "--all").returncode == 0
    assert not any(AccountBreaker(client, account=n).state().open for n in ("th-1", "th-2"))
    # Without the file: the one default account, no option needed, as before.
    plain = {"REDIS_URL": redis_server.url}
    AccountBreaker(client).record("UnauthorizedOperation.Arrears")
    assert cli(plain, "breaker", "status").stdout.startswith("default: OPEN")
    assert cli(plain, "breaker", "close").returncode == 0
    assert not AccountBreaker(client).state().open
