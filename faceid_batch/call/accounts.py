"""The Tencent Cloud accounts that call FaceID, and the regions each serves.

Without ``FACEID_ACCOUNTS_FILE`` there is one account, ``default``: FACEID_SECRET_ID /
FACEID_SECRET_KEY (and FACEID_TOKEN), serving FACEID_REGION at FACEID_RATE_LIMIT calls/s
on FACEID_ENDPOINT.

With it, the file (TOML) lists them, one table each; the file holds no secret::

    [accounts.ops-bangkok]
    secret_id = "AKIDexampleFAKE1"
    secret_key_env = "FACEID_KEY_OPS_BANGKOK"   # the variable holding its SecretKey
    regions = ["ap-bangkok"]
    rate_limit = 20                             # calls/s, Tencent's per-SecretId limit
    owner = "main-uin"                          # CAM sub-users of one Tencent account
    endpoint = "https://faceid.intl.tencentcloudapi.com"

``owner`` names the Tencent account (UIN) the SecretId belongs to: accounts with the same
owner share the learned account-wide cap (``call/caps.py``); without it an account is its
own owner. Everything is checked when it is read, and an error names the file and the
account.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from faceid_batch.settings import FACEID_REGIONS, Settings, SettingsError

DEFAULT = "default"
DEFAULT_RATE_LIMIT = 20
# Bounds on what the file may say: an account name goes into Redis keys and attempt rows.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SECRET_ID = re.compile(r"^[A-Za-z0-9]{1,128}$")
MAX_ACCOUNTS = 64
MAX_FILE_BYTES = 256 * 1024
_KEYS = {"secret_id", "secret_key_env", "regions", "rate_limit", "endpoint", "owner"}


@dataclass(frozen=True)
class Account:
    """One SecretId that may call FaceID: where, how fast, and on whose Tencent account."""

    name: str
    secret_id: str
    regions: tuple[str, ...]
    rate_limit: int
    endpoint: str
    owner: str
    secret_key_env: str | None = None  # None: FACEID_SECRET_KEY (the default account)
    secret_key: str = field(default="", repr=False, compare=False)
    token: str | None = field(default=None, repr=False, compare=False)

    def serves(self, region: str) -> bool:
        return region in self.regions


def _fail(path: str, where: str, what: str) -> SettingsError:
    return SettingsError(f"FACEID_ACCOUNTS_FILE {path}: {where}: {what}")


def parse(text: str, path: str, settings: Settings) -> tuple[Account, ...]:
    """The accounts of one file's ``text`` (keys not resolved); SettingsError names the
    file, the account and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, "not valid TOML", str(exc)) from None
    extra = set(data) - {"accounts"}
    if extra:
        raise _fail(path, "top level", f"unknown key(s) {', '.join(sorted(extra))}; "
                    "expected only [accounts.NAME] tables")
    tables = data.get("accounts")
    if not isinstance(tables, dict) or not tables:
        raise _fail(path, "top level", "no [accounts.NAME] table")
    if len(tables) > MAX_ACCOUNTS:
        raise _fail(path, "top level", f"{len(tables)} accounts; at most {MAX_ACCOUNTS}")
    accounts: list[Account] = []
    seen: dict[str, str] = {}
    for name, table in tables.items():
        account = _one(path, name, table, settings)
        if account.secret_id in seen:
            raise _fail(path, f"account {name!r}", f"secret_id is also account "
                        f"{seen[account.secret_id]!r}'s (one budget per SecretId)")
        seen[account.secret_id] = name
        accounts.append(account)
    return tuple(accounts)


def _one(path: str, name: str, table: Any, settings: Settings) -> Account:
    where = f"account {name!r}"
    if not _NAME.match(name):
        raise _fail(path, where, "a name is 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise _fail(path, where, "must be a table [accounts.NAME]")
    unknown = set(table) - _KEYS
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(sorted(unknown))}; known: "
                    f"{', '.join(sorted(_KEYS))}")
    for key in ("secret_id", "secret_key_env", "regions"):
        if key not in table:
            raise _fail(path, where, f"{key} is required")
    secret_id = table["secret_id"]
    if not isinstance(secret_id, str) or not _SECRET_ID.match(secret_id):
        raise _fail(path, where, "secret_id must be 1-128 letters and digits")
    env = table["secret_key_env"]
    if not isinstance(env, str) or not _ENV.match(env):
        raise _fail(path, where, "secret_key_env must name an environment variable "
                    "(letters, digits, '_'); the file holds no secret")
    regions = table["regions"]
    if (not isinstance(regions, list) or not regions
            or not all(isinstance(r, str) for r in regions)):
        raise _fail(path, where, "regions must be a non-empty list of region names")
    bad = [r for r in regions if r not in FACEID_REGIONS]
    if bad:
        raise _fail(path, where, f"unknown region(s) {', '.join(map(repr, bad))}; known: "
                    f"{', '.join(FACEID_REGIONS)}")
    if len(set(regions)) != len(regions):
        raise _fail(path, where, "a region is listed twice")
    rate = table.get("rate_limit", DEFAULT_RATE_LIMIT)
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 10_000:
        raise _fail(path, where, "rate_limit must be a whole number of calls/s, 1-10000")
    endpoint = table.get("endpoint", settings.faceid_endpoint)
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise _fail(path, where, "endpoint must start with https:// or http://")
    owner = table.get("owner", name)
    if not isinstance(owner, str) or not _NAME.match(owner):
        raise _fail(path, where, "owner must be 1-64 letters, digits, '.', '_' or '-'")
    return Account(name=name, secret_id=secret_id, regions=tuple(regions), rate_limit=rate,
                   endpoint=endpoint.rstrip("/"), owner=owner, secret_key_env=env)


def read_file(path: str, settings: Settings) -> tuple[Account, ...]:
    """The accounts of the file at ``path`` (keys not resolved)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"FACEID_ACCOUNTS_FILE {path}: cannot be read "
                            f"({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _fail(path, "top level", f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "top level", "not UTF-8") from None
    return parse(text, path, settings)


def configured(settings: Settings) -> tuple[Account, ...]:
    """The accounts as configured, their keys not resolved: what submit needs to know
    (which regions are served) without any secret."""
    if settings.faceid_accounts_file:
        return read_file(settings.faceid_accounts_file, settings)
    secret_id = (settings.faceid_secret_id.get_secret_value()
                 if settings.faceid_secret_id else "")
    return (Account(name=DEFAULT, secret_id=secret_id, regions=(settings.faceid_region,),
                    rate_limit=settings.faceid_rate_limit,
                    endpoint=settings.faceid_endpoint, owner=DEFAULT),)


_cache: dict[tuple[str, int, int], tuple[Account, ...]] = {}


def configured_cached(settings: Settings) -> tuple[Account, ...]:
    """``configured``, the file read again only when it changed (submit checks every row
    of a manifest against it)."""
    path = settings.faceid_accounts_file
    if not path:
        return configured(settings)
    try:
        st = os.stat(path)
    except OSError:
        return configured(settings)  # names the problem
    key = (path, st.st_mtime_ns, st.st_size)
    found = _cache.get(key)
    if found is None:
        found = configured(settings)
        _cache.clear()
        _cache[key] = found
    return found


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[Account, ...]:
    """The accounts with their SecretKeys, for the process that calls FaceID. A missing or
    empty key is a SettingsError naming its variable (and the account)."""
    env = os.environ if environ is None else environ
    if not settings.faceid_accounts_file:
        missing = [n for n, v in (("FACEID_SECRET_ID", settings.faceid_secret_id),
                                  ("FACEID_SECRET_KEY", settings.faceid_secret_key))
                   if v is None or not v.get_secret_value().strip()]
        if missing:
            raise SettingsError(f"missing required setting(s): {', '.join(missing)}")
        (account,) = configured(settings)
        key = settings.faceid_secret_key
        token = settings.faceid_token
        return (_with_key(account, key.get_secret_value() if key else "",
                          token.get_secret_value() if token else None),)
    path = settings.faceid_accounts_file
    accounts = []
    for account in read_file(path, settings):
        secret = env.get(account.secret_key_env or "", "")
        if not secret.strip():
            raise SettingsError(
                f"FACEID_ACCOUNTS_FILE {path}: account {account.name!r}: its SecretKey "
                f"variable {account.secret_key_env} is not set or empty")
        accounts.append(_with_key(account, secret, None))
    return tuple(accounts)


def _with_key(account: Account, key: str, token: str | None) -> Account:
    return Account(name=account.name, secret_id=account.secret_id, regions=account.regions,
                   rate_limit=account.rate_limit, endpoint=account.endpoint,
                   owner=account.owner, secret_key_env=account.secret_key_env,
                   secret_key=key, token=token)


# Bounds on the threads of a worker sized by ``threads_for``.
MIN_THREADS, MAX_THREADS = 8, 1000


def threads_for(accounts: tuple[Account, ...], call_seconds: float) -> int:
    """The calls a worker holds in flight to carry the whole budget of ``accounts`` alone:
    their rate limits together times how long one call holds a thread. 20/s x 1.6 s = 32
    threads for one account; each account added adds its share."""
    budget = sum(a.rate_limit for a in accounts)
    return max(MIN_THREADS, min(MAX_THREADS, math.ceil(budget * call_seconds)))


def regions_served(accounts: tuple[Account, ...]) -> set[str]:
    return {r for a in accounts for r in a.regions}


def serving(accounts: tuple[Account, ...], region: str) -> tuple[Account, ...]:
    """The accounts that may call for a job of ``region``, in file order."""
    return tuple(a for a in accounts if a.serves(region))
