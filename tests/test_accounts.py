"""Several accounts: the accounts file, each account's budget and breaker, the choice of an
account per call, the learned account-wide cap, and what each attempt records."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from faceid_batch.call import accounts, billing, caps
from faceid_batch.call.breaker import AccountBreaker
from faceid_batch.call.caps import OwnerCaps
from faceid_batch.call.faceid_client import Answer
from faceid_batch.call.ratelimit import GlobalRateLimiter, max_starts_in_window
from faceid_batch.call.routing import Caller, Router
from faceid_batch.outcome.persist import attempt_columns
from faceid_batch.resources import Resources
from faceid_batch.settings import SettingsError, load_settings
from tests.helpers import FAKE_SECRET_ID, FAKE_SECRET_KEY

TWO = """
[accounts.bkk]
secret_id = "AKIDfakeBANGKOK0001"
secret_key_env = "TEST_FAKE_KEY_BKK"
regions = ["ap-bangkok", "ap-singapore"]
owner = "uin-1"

[accounts.sg]
secret_id = "AKIDfakeSINGAPORE02"
secret_key_env = "TEST_FAKE_KEY_SG"
regions = ["ap-singapore"]
rate_limit = 10
owner = "uin-1"
endpoint = "http://127.0.0.1:9/"
"""


def _settings(tmp_path: Path, text: str | None, **more: str):
    env = {"faceid_secret_id": FAKE_SECRET_ID, "faceid_secret_key": FAKE_SECRET_KEY,
           "cos_bucket": "bucket-1250000000", **more}
    if text is not None:
        path = tmp_path / "accounts.toml"
        path.write_text(text)
        env["faceid_accounts_file"] = str(path)
    return load_settings(**env)


def test_without_a_file_one_default_account_as_before(tmp_path):
    s = _settings(tmp_path, None, faceid_region="ap-bangkok", faceid_rate_limit="17")
    (account,) = accounts.load(s, environ={})
    assert account.name == "default" and account.owner == "default"
    assert account.secret_id == FAKE_SECRET_ID and account.secret_key == FAKE_SECRET_KEY
    assert account.regions == ("ap-bangkok",) and account.rate_limit == 17
    assert account.endpoint == s.faceid_endpoint
    # Its budget and breaker keep the keys of a single-account deployment.
    res = Resources(s)
    assert res.limiter.key == "faceid:ratelimit" and res.limiter.limit == 17
    assert res.breaker.key == "faceid:breaker"
    assert [b.key for b in res.breakers] == ["faceid:breaker"]


def test_the_file_is_read_and_keys_come_from_the_environment(tmp_path):
    s = _settings(tmp_path, TWO)
    found = accounts.load(s, environ={"TEST_FAKE_KEY_BKK": "fakeKEYbkk",
                                      "TEST_FAKE_KEY_SG": "fakeKEYsg"})
    bkk, sg = found
    assert (bkk.name, bkk.rate_limit, bkk.regions, bkk.owner) == (
        "bkk", 20, ("ap-bangkok", "ap-singapore"), "uin-1")
    assert bkk.secret_key == "fakeKEYbkk" and "fakeKEYbkk" not in repr(bkk)
    assert (sg.rate_limit, sg.endpoint) == (10, "http://127.0.0.1:9")
    assert accounts.serving(found, "ap-bangkok") == (bkk,)
    assert accounts.regions_served(found) == {"ap-bangkok", "ap-singapore"}
    # Each account has its own budget and breaker keys.
    res = Resources(s)
    assert [b.key for b in res.breakers] == ["faceid:breaker:account:bkk",
                                            "faceid:breaker:account:sg"]
    assert res.limiter.key == "faceid:ratelimit:account:bkk"


def test_a_missing_key_variable_is_named(tmp_path):
    s = _settings(tmp_path, TWO)
    with pytest.raises(SettingsError, match="account 'sg'.*TEST_FAKE_KEY_SG is not set"):
        accounts.load(s, environ={"TEST_FAKE_KEY_BKK": "fakeKEYbkk", "TEST_FAKE_KEY_SG": " "})


@pytest.mark.parametrize(("text", "error"), [
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=['ap-bangkok']\nkey='x'\n",
     r"account 'a': unknown key\(s\) key"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=['eu-frankfurt']\n",
     r"account 'a': unknown region\(s\) 'eu-frankfurt'"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=['ap-bangkok']\n"
     "[accounts.b]\nsecret_id='AKIDa'\nsecret_key_env='K2'\nregions=['ap-bangkok']\n",
     r"account 'b': secret_id is also account 'a'"),
    ("[accounts.a]\nsecret_key_env='K'\nregions=['ap-bangkok']\n",
     r"account 'a': secret_id is required"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=['ap-bangkok']\n"
     "rate_limit=0\n", r"account 'a': rate_limit must be"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=[]\n",
     r"account 'a': regions must be a non-empty list"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='not a var'\nregions=['ap-bangkok']\n",
     r"account 'a': secret_key_env must name"),
    ("[accounts.a]\nsecret_id='AKIDa'\nsecret_key_env='K'\nregions=['ap-bangkok']\n"
     "endpoint='ftp://x'\n", r"account 'a': endpoint must start"),
    ("[other]\n", r"top level: unknown key\(s\) other"),
    ("accounts = 3\n", r"no \[accounts.NAME\] table"),
    ("[accounts.a\n", r"not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_account(tmp_path, text, error):
    s = _settings(tmp_path, text)
    with pytest.raises(SettingsError, match=error) as info:
        accounts.configured(s)
    assert "FACEID_ACCOUNTS_FILE" in str(info.value) and "accounts.toml" in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    s = _settings(tmp_path, None, faceid_accounts_file=str(tmp_path / "nowhere.toml"))
    with pytest.raises(SettingsError, match="nowhere.toml: cannot be read"):
        accounts.configured(s)


# --- budgets, breakers and the choice of an account (real Redis) ----------------------------

def _starts(limiter: GlobalRateLimiter, n: int, threads: int = 12) -> list[float]:
    """``n`` calls on ``limiter`` from ``threads`` threads; the times they started."""
    starts: list[float] = []
    lock = threading.Lock()
    left = [n]

    def send(send_at, send_by, on_sent):
        now = max(time.monotonic(), send_at)
        time.sleep(max(0.0, send_at - time.monotonic()))
        on_sent(now)
        with lock:
            starts.append(now)

    def run():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            limiter.call("onboarding", send)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return starts


def test_two_budgets_are_independent_and_each_is_strict(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    a = GlobalRateLimiter(r, 10, window=1.005, key="faceid:ratelimit:account:a",
                          onboarding_horizon=0.5)
    b = GlobalRateLimiter(r, 10, window=1.005, key="faceid:ratelimit:account:b",
                          onboarding_horizon=0.5)
    out: dict[str, list[float]] = {}
    pool = [threading.Thread(target=lambda n=n, lim=lim: out.__setitem__(n, _starts(lim, 30)))
            for n, lim in (("a", a), ("b", b))]
    t0 = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - t0
    assert max_starts_in_window(out["a"]) <= 10 and max_starts_in_window(out["b"]) <= 10
    # Side by side, 60 calls took about as long as 30 on one budget: neither waited for
    # the other (one shared budget of 10/s would need about 6 s).
    assert elapsed < 4.5, elapsed
    assert max_starts_in_window(out["a"] + out["b"]) > 10


class _Client:
    def __init__(self, name: str) -> None:
        self.name = name


def _router(r: redis.Redis, limits: dict[str, int], owner: str = "uin") -> Router:
    callers = []
    for name, limit in limits.items():
        account = accounts.Account(name=name, secret_id=f"AKIDfake{name}", regions=(
            "ap-singapore",), rate_limit=limit, endpoint="http://127.0.0.1:9", owner=owner)
        callers.append(Caller(account, _Client(name),  # type: ignore[arg-type]
                              GlobalRateLimiter(r, limit, key=f"t:rl:{name}"),
                              AccountBreaker(r, probe_after=30, account=name)))
    return Router(callers, OwnerCaps(r, {owner: sum(limits.values())}))


def test_one_account_in_arrears_stops_only_its_own_calls(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    router = _router(r, {"a": 20, "b": 20})
    a, b = router.callers
    chosen = []
    for _ in range(8):
        caller, _ = router.choose("ap-singapore")
        chosen.append(caller.name)
    assert chosen.count("a") == chosen.count("b") == 4  # both take calls while both may
    a.breaker.record("UnauthorizedOperation.Arrears")
    assert not AccountBreaker(r, account="b").state().open  # only a's breaker opened
    for _ in range(5):
        caller, wait = router.choose("ap-singapore")
        assert caller is b and wait == 0.0  # a's jobs go to b
    assert router.others_may_call("ap-singapore", a)
    b.breaker.record("UnauthorizedOperation.Arrears")
    caller, wait = router.choose("ap-singapore")
    assert caller is None and 0 < wait <= 30  # none may call: the job waits for a probe
    assert router.choose("ap-bangkok") == (None, 60.0)  # no account serves it


def test_the_busier_account_for_its_budget_gets_fewer_new_calls(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    router = _router(r, {"big": 30, "small": 10})
    chosen = [router.choose("ap-singapore")[0].name for _ in range(40)]
    assert chosen.count("big") == 30 and chosen.count("small") == 10


def test_an_account_wide_throttle_cuts_the_owners_budget_then_it_recovers(redis_server,
                                                                           monkeypatch):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    monkeypatch.setattr(caps, "REFRESH", 0.0)
    owners = OwnerCaps(r, {"uin": 40})
    assert owners.cap("uin") == 40 and owners.share("uin", 20) == 20
    owners.hit("uin", "RequestLimitExceeded.UinLimitExceeded")
    assert owners.cap("uin") == 28 and owners.share("uin", 20) == 14
    # The calls in flight answer the same news: one cut per HOLD.
    owners.hit("uin", "RequestLimitExceeded.UinLimitExceeded")
    assert owners.cap("uin") == 28
    # Every worker sees it (kept in Redis).
    assert OwnerCaps(r, {"uin": 40}).cap("uin") == 28
    # Each RECOVER_EVERY without another gives back STEP of the full budget (2 of 40).
    r.hset(caps.KEY + "uin", mapping={"at": int((time.time() - 3 * caps.RECOVER_EVERY - 1)
                                                 * 1_000_000), "cut_at": 0})
    assert owners.cap("uin") == 34
    r.hset(caps.KEY + "uin", "at", int((time.time() - 10 * caps.RECOVER_EVERY) * 1_000_000))
    assert owners.cap("uin") == 40 and not r.exists(caps.KEY + "uin")  # whole: gone


def test_a_cut_sets_each_accounts_limiter_to_its_share(redis_server, monkeypatch):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    monkeypatch.setattr(caps, "REFRESH", 0.0)
    router = _router(r, {"a": 20, "b": 20})
    a, b = router.callers
    router.caps.hit("uin", "RequestLimitExceeded.GlobalRegionUinLimitExceeded")
    assert router.budget(a) == 14 and a.limiter.limit == 14
    assert router.budget(b) == 14 and b.limiter.limit == 14
    assert a.limiter.min_gap_us == int(a.limiter.window_us / 14 * a.limiter.min_spacing)


def test_every_attempt_records_its_account_and_region():
    answer = Answer("Success", "result", 200, "req-1", sim=90.0)
    answer.account, answer.region = "bkk", "ap-bangkok"
    row = attempt_columns(7, 0, answer, billing.table(""))
    assert (row["account"], row["region"]) == ("bkk", "ap-bangkok")


def test_the_simulator_caps_the_calls_of_one_owner_across_its_secret_ids(tmp_path):
    from faceid_sim.control import Simulator

    sim = Simulator({"AKIDa": "k" * 32, "AKIDb": "k" * 32, "AKIDc": "k" * 32},
                    frames_dir=tmp_path / "frames")
    sim.configure({"owner_limits": [{"secret_ids": ["AKIDa", "AKIDb"], "limit": 3}],
                   "account_errors": {"AKIDb": "UnauthorizedOperation.Arrears"}})
    assert [sim.admit_owner(sid, 10.0 + i / 10) for i, sid in enumerate(
        ["AKIDa", "AKIDb", "AKIDa", "AKIDb", "AKIDc"])] == [True, True, True, False, True]
    assert sim.admit_owner("AKIDa", 11.05)  # the first start left the sliding second
    assert sim.account_error_for("AKIDb") == "UnauthorizedOperation.Arrears"
    assert sim.account_error_for("AKIDa") is None
    with pytest.raises(ValueError, match="limit must be"):
        sim.configure({"owner_limits": [{"secret_ids": ["AKIDa"], "limit": 0}]})


def test_a_worker_without_c_holds_the_calls_its_accounts_budget_needs(tmp_path):
    one = accounts.configured(_settings(tmp_path, None))
    assert accounts.threads_for(one, 1.6) == 32  # one account at 20/s: as before
    two = accounts.configured(_settings(tmp_path, TWO))  # 20/s + 10/s
    assert accounts.threads_for(two, 1.6) == 48
    assert accounts.threads_for(two, 3.0) == 90
    assert accounts.threads_for(two, 1000.0) == accounts.MAX_THREADS


def test_the_worker_command_refuses_an_account_without_its_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    path = tmp_path / "accounts.toml"
    path.write_text(TWO)
    monkeypatch.setenv("FACEID_ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("COS_BUCKET", "bucket-1250000000")
    monkeypatch.setenv("TEST_FAKE_KEY_BKK", "fakeKEYbkk")
    monkeypatch.delenv("TEST_FAKE_KEY_SG", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "account 'sg': its SecretKey variable TEST_FAKE_KEY_SG is not set" in result.output
