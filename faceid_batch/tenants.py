"""Tenants: the producer organisations one deployment serves, kept apart from each other.

A tenant has its own idempotency keys (unique per tenant), its own webhook signing secrets,
its own admission line and share of the onboarding lane, and optionally a quota of FaceID
calls a day. A submit token belongs to one tenant; an admin token to none (it sees all).
Revision 0015 creates the ``default`` tenant (id 1): every job, batch and submit token of a
deployment that has never named a tenant belongs to it, and its callbacks are signed with
WEBHOOK_SECRET until it is given a secret of its own.

The regions and accounts a tenant may use are stored here as data; ``allowed`` hands them
to whoever chooses the region and account of a job.

Webhook secrets must be read back to sign, so unlike tokens they are stored as they are, in
their own table (``tenant_secrets``) that only the rotation and the callback sender read:
no listing, export or log line includes one, and ``tenant show`` prints only a fingerprint.
They are as safe as the database and its backups; see docs/operations.md.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from faceid_batch.db import session_scope
from faceid_batch.models import (
    DEFAULT_TENANT,
    DEFAULT_TENANT_ID,
    Tenant,
    TenantCalls,
    TenantSecret,
)
from faceid_batch.settings import FACEID_REGIONS
from faceid_batch.times import utcnow

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
REGION_RE = re.compile(r"^[a-z]{2,4}(-[a-z0-9]+){1,3}$")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_LIST = 50
SECRET_PREFIX = "whsec_"
# How long the number of tenants is cached (whether the onboarding lane is shared).
COUNT_CACHE_SECONDS = 5.0

__all__ = ["DEFAULT_TENANT", "DEFAULT_TENANT_ID"]


class TenantError(ValueError):
    """A tenant name, region or account is refused, taken or unknown; the message says which."""


@dataclass(frozen=True)
class TenantInfo:
    id: int
    name: str
    regions: list[str] | None
    accounts: list[str] | None
    max_calls_per_day: int | None
    weight: float
    created_at: datetime
    # The fingerprints (first 8 hex of SHA-256) of its webhook secrets, current first;
    # empty: none of its own (the default tenant then signs with WEBHOOK_SECRET).
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Allowed:
    """What a tenant's jobs may use; None: no restriction of the tenant's own."""

    regions: tuple[str, ...] | None
    accounts: tuple[str, ...] | None


def _names(values: list[str] | None, pattern: re.Pattern[str], what: str) -> list[str] | None:
    if values is None:
        return None
    clean = sorted({v.strip() for v in values if v.strip()})
    if not clean:
        raise TenantError(f"--{what}: give at least one, or leave the option out")
    if len(clean) > MAX_LIST:
        raise TenantError(f"--{what}: at most {MAX_LIST}")
    for v in clean:
        if not pattern.match(v):
            raise TenantError(f"--{what}: {v!r} is not a {what[:-1]} name")
    return clean


def _known(values: list[str] | None, known: Collection[str] | None, what: str,
           where: str) -> None:
    """TenantError naming the first of ``values`` not in ``known`` (None: not checked)."""
    if values is None or known is None:
        return
    unknown = [v for v in values if v not in known]
    if unknown:
        raise TenantError(f"--{what}: unknown {what[:-1]} {unknown[0]!r}"
                          f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                          f"{where}: {', '.join(sorted(known)) or 'none'}")


def split_list(value: str | None) -> list[str] | None:
    """A comma- or space-separated option value as a list (None: not given)."""
    return None if value is None else [p for p in value.replace(",", " ").split() if p]


def add(url: str, name: str, regions: list[str] | None, accounts: list[str] | None = None,
        max_calls_per_day: int | None = None, weight: float = 1.0, *,
        known_accounts: Collection[str] | None = None) -> TenantInfo:
    """Create a tenant; TenantError for a bad or taken name or value. A region must be one
    FaceID has (FACEID_REGIONS); an account one of ``known_accounts`` (the names of the
    accounts file, call.accounts.configured) when given."""
    if not NAME_RE.match(name):
        raise TenantError(f"tenant name {name!r} refused: 1-63 of a-z 0-9 . _ -, starting "
                          "with a letter or digit")
    regions = _names(regions, REGION_RE, "regions")
    _known(regions, FACEID_REGIONS, "regions", "FaceID's regions")
    accounts = _names(accounts, ACCOUNT_RE, "accounts")
    _known(accounts, known_accounts, "accounts", "the accounts configured")
    if max_calls_per_day is not None and not 0 < max_calls_per_day <= 10**12:
        raise TenantError("--max-calls-per-day: a whole number above 0")
    if not 0 < weight <= 1000:
        raise TenantError("--weight: above 0 and at most 1000")
    try:
        with session_scope(url) as s:
            row = Tenant(name=name, regions=regions, accounts=accounts,
                         max_calls_per_day=max_calls_per_day, weight=weight)
            s.add(row)
            s.flush()
            tenant_id = row.id
    except IntegrityError:
        raise TenantError(f"a tenant named {name!r} exists") from None
    _count_cache.clear()
    info = get(url, name)
    assert info is not None and info.id == tenant_id
    return info


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def _info(row: Tenant, secret: TenantSecret | None) -> TenantInfo:
    prints = () if secret is None else tuple(
        _fingerprint(s) for s in (secret.current, secret.previous) if s)
    return TenantInfo(row.id, row.name, row.regions, row.accounts, row.max_calls_per_day,
                      row.weight, row.created_at, prints)


def list_all(url: str) -> list[TenantInfo]:
    """Every tenant, oldest first (secrets only as fingerprints)."""
    with session_scope(url) as s:
        rows = s.execute(select(Tenant, TenantSecret)
                         .outerjoin(TenantSecret, TenantSecret.tenant_id == Tenant.id)
                         .order_by(Tenant.id)).all()
        return [_info(t, sec) for t, sec in rows]


def get(url: str, name: str) -> TenantInfo | None:
    """A tenant by name, or None."""
    with session_scope(url) as s:
        row = s.execute(select(Tenant, TenantSecret)
                        .outerjoin(TenantSecret, TenantSecret.tenant_id == Tenant.id)
                        .where(Tenant.name == name)).first()
        return None if row is None else _info(row[0], row[1])


def resolve(url: str, name: str | None) -> int:
    """The id of the tenant named ``name`` (None: the default tenant); TenantError if none."""
    if name is None or name == DEFAULT_TENANT:
        return DEFAULT_TENANT_ID
    info = get(url, name)
    if info is None:
        raise TenantError(f"no tenant named {name!r} (see `faceid-batch tenant list`)")
    return info.id


def name_of(url: str, tenant_id: int) -> str | None:
    with session_scope(url) as s:
        return s.scalar(select(Tenant.name).where(Tenant.id == tenant_id))


def allowed(url: str, tenant_id: int) -> Allowed:
    """The regions and accounts the jobs of ``tenant_id`` may use (None: any the
    deployment has); an unknown tenant may use nothing."""
    with session_scope(url) as s:
        row = s.execute(select(Tenant.regions, Tenant.accounts)
                        .where(Tenant.id == tenant_id)).first()
    if row is None:
        return Allowed((), ())
    return Allowed(None if row.regions is None else tuple(row.regions),
                   None if row.accounts is None else tuple(row.accounts))


# How long a process uses a tenant's allowance it read (routing, submit) before reading
# it again.
ALLOWED_CACHE_SECONDS = 5.0
_allowed_cache: dict[tuple[str, int], tuple[float, Allowed]] = {}
_allowed_lock = threading.Lock()
_ANY = Allowed(None, None)


def allowed_cached(url: str, tenant_id: int) -> Allowed:
    """``allowed``, read at most once per ALLOWED_CACHE_SECONDS per tenant per process (a
    worker asks before every call of a tenant's job). The default tenant may use anything
    the deployment has (revision 0015 creates it so, and no command restricts it): no read,
    so a deployment that names no tenant does what it did without one."""
    if tenant_id == DEFAULT_TENANT_ID:
        return _ANY
    key = (url, tenant_id)
    with _allowed_lock:
        cached = _allowed_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
    found = allowed(url, tenant_id)
    with _allowed_lock:
        if len(_allowed_cache) > 10_000:  # bounded: tenants are few, but ids come from rows
            _allowed_cache.clear()
        _allowed_cache[key] = (time.monotonic() + ALLOWED_CACHE_SECONDS, found)
    return found


def set_quota(url: str, name: str, max_calls_per_day: int | None) -> None:
    """Change a tenant's daily quota of calls (None: no quota)."""
    if max_calls_per_day is not None and not 0 < max_calls_per_day <= 10**12:
        raise TenantError("--max-calls-per-day: a whole number above 0")
    with session_scope(url) as s:
        row = s.scalar(select(Tenant).where(Tenant.name == name))
        if row is None:
            raise TenantError(f"no tenant named {name!r}")
        row.max_calls_per_day = max_calls_per_day
    _quota_cache.clear()


# -- webhook secrets ---------------------------------------------------------------------
def rotate_secret(url: str, name: str) -> str:
    """Give the tenant a new webhook secret and return it (shown once): callbacks are signed
    with it and the one it replaces, until the next rotation drops the older."""
    import base64
    import secrets

    new = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    with session_scope(url) as s:
        tenant_id = s.scalar(select(Tenant.id).where(Tenant.name == name))
        if tenant_id is None:
            raise TenantError(f"no tenant named {name!r}")
        row = s.get(TenantSecret, tenant_id)
        if row is None:
            s.add(TenantSecret(tenant_id=tenant_id, current=new, previous=None,
                               rotated_at=utcnow()))
        else:
            row.previous, row.current, row.rotated_at = row.current, new, utcnow()
    return new


def drop_previous_secret(url: str, name: str) -> bool:
    """Stop signing with the tenant's previous secret (its receivers all have the new one);
    False if it had none."""
    with session_scope(url) as s:
        tenant_id = s.scalar(select(Tenant.id).where(Tenant.name == name))
        if tenant_id is None:
            raise TenantError(f"no tenant named {name!r}")
        row = s.get(TenantSecret, tenant_id)
        if row is None or row.previous is None:
            return False
        row.previous = None
        return True


def signing_secret(url: str, tenant_id: int | None) -> str | None:
    """The tenant's own secrets as WEBHOOK_SECRET writes them (``whsec_new whsec_old``), or
    None if it has none. Never logged."""
    with session_scope(url) as s:
        row = s.get(TenantSecret, tenant_id if tenant_id is not None else DEFAULT_TENANT_ID)
        if row is None:
            return None
        return " ".join(x for x in (row.current, row.previous) if x)


def all_secrets(url: str) -> tuple[str, ...]:
    """Every tenant's current and previous webhook secrets (for the logs' redaction list
    only). Never logged."""
    with session_scope(url) as s:
        rows = s.execute(select(TenantSecret.current, TenantSecret.previous)).all()
    return tuple(x for row in rows for x in row if x)


def signs_with_own(url: str, tenant_id: int | None) -> bool:
    """Whether the tenant's callbacks are signed with a secret of its own."""
    with session_scope(url) as s:
        return s.get(TenantSecret, tenant_id or DEFAULT_TENANT_ID) is not None


# -- quotas and counts -------------------------------------------------------------------
def today(now: datetime | None = None) -> str:
    """The UTC day calls are counted under."""
    return (now or utcnow()).date().isoformat()


def calls_on(url: str, tenant_id: int, day: date | str | None = None) -> int:
    """The FaceID calls made for the tenant's jobs on ``day`` (UTC; default today)."""
    key = today() if day is None else (day if isinstance(day, str) else day.isoformat())
    with session_scope(url) as s:
        return s.scalar(select(TenantCalls.calls).where(
            TenantCalls.tenant_id == tenant_id, TenantCalls.day == key)) or 0


def over_quota(url: str, tenant_id: int) -> tuple[int, int] | None:
    """(calls today, quota) if the tenant has a quota and has reached it; else None. Two
    primary-key reads."""
    with session_scope(url) as s:
        quota = s.scalar(select(Tenant.max_calls_per_day).where(Tenant.id == tenant_id))
        if quota is None:
            return None
        used = s.scalar(select(TenantCalls.calls).where(
            TenantCalls.tenant_id == tenant_id, TenantCalls.day == today())) or 0
    return (used, quota) if used >= quota else None


# How long a worker uses a tenant's count of calls today before reading it again: the
# quota is checked before every call, so a tenant may pass its quota by the calls its
# workers start in this long plus those already under way (see docs/operations.md).
CALLS_CACHE_SECONDS = 1.0
_quota_cache: dict[tuple[str, int], tuple[float, int | None]] = {}
_calls_cache: dict[tuple[str, int, str], tuple[float, int]] = {}
_quota_lock = threading.Lock()


def _cached(cache: dict[Any, tuple[float, Any]], key: Any, ttl: float,
            read: Callable[[], Any]) -> Any:
    with _quota_lock:
        found = cache.get(key)
        if found is not None and found[0] > time.monotonic():
            return found[1]
    value = read()
    with _quota_lock:
        if len(cache) > 10_000:  # bounded: tenants are few, but ids come from rows
            cache.clear()
        cache[key] = (time.monotonic() + ttl, value)
    return value


def over_quota_cached(url: str, tenant_id: int) -> tuple[int, int] | None:
    """``over_quota`` for the check before each call: the quota read at most once per
    ALLOWED_CACHE_SECONDS and the day's count (one row of tenant_calls) at most once per
    CALLS_CACHE_SECONDS, per tenant per process; a tenant without a quota costs no read of
    its count."""
    def read_quota() -> int | None:
        with session_scope(url) as s:
            return s.scalar(select(Tenant.max_calls_per_day).where(Tenant.id == tenant_id))

    quota = _cached(_quota_cache, (url, tenant_id), ALLOWED_CACHE_SECONDS, read_quota)
    if quota is None:
        return None
    day = today()
    used = _cached(_calls_cache, (url, tenant_id, day), CALLS_CACHE_SECONDS,
                   lambda: calls_on(url, tenant_id, day))
    return (used, quota) if used >= quota else None


def until_midnight(now: float | None = None) -> float:
    """Seconds until the next UTC day, when daily quotas start again."""
    return 86400.0 - (time.time() if now is None else now) % 86400.0


_count_cache: dict[str, tuple[float, int]] = {}
_count_lock = threading.Lock()


def count(url: str) -> int:
    """How many tenants there are (cached a few seconds)."""
    with _count_lock:
        cached = _count_cache.get(url)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
    with session_scope(url) as s:
        n = s.scalar(select(func.count()).select_from(Tenant)) or 0
    with _count_lock:
        _count_cache[url] = (time.monotonic() + COUNT_CACHE_SECONDS, n)
    return n


def weights(url: str) -> dict[int, float]:
    """Every tenant's weight on the onboarding lane."""
    with session_scope(url) as s:
        return {i: (w if w and w > 0 else 1.0)
                for i, w in s.execute(select(Tenant.id, Tenant.weight))}
