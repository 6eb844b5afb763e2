"""Named bearer tokens: add, list, revoke, and look one up by its hash.

A token has a scope: ``admin`` (the admin service: listings, face images, audit, and every
verification on the producer API) or ``submit`` (the producer API only: create
verifications, and read the status and outcome of those it created). A submit token belongs
to one tenant (tenants.py: its keys, secrets, share and quota); an admin token may belong to
none (it acts for every tenant) or to one.

Only the SHA-256 of a token is stored. The tokens are 32 random bytes from ``secrets``
(256 bits): nobody can guess one or search for it from its hash, so the slow, salted hashes
made for low-entropy passwords would only cost time on every request without adding anything,
and a plain digest can be looked up through the unique index.

ADMIN_TOKEN, when set, keeps working as a bootstrap token named ``ADMIN_TOKEN`` (token id 0).
It lives only in the environment, never in this table; to retire it, unset it and restart.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from faceid_batch.db import session_scope
from faceid_batch.models import DEFAULT_TENANT_ID, AdminToken, Tenant
from faceid_batch.times import as_aware, utcnow

BOOTSTRAP_NAME = "ADMIN_TOKEN"
BOOTSTRAP_ID = 0
ADMIN = "admin"
SUBMIT = "submit"
SCOPES = (ADMIN, SUBMIT)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
# last_used_at is written at most this often per token: a write per request would make
# every image view contend for the SQLite write lock with the workers.
TOUCH_EVERY = timedelta(seconds=60)


class TokenError(ValueError):
    """A token name is refused, taken, or unknown; the message says which."""


@dataclass(frozen=True)
class Principal:
    """Who a request or a signed link acts for: the token's id, name and scope."""

    token_id: int
    name: str
    scope: str = ADMIN
    # The tenant it acts for; None: an admin token of every tenant.
    tenant_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == ADMIN

    @property
    def tenant(self) -> int:
        """The tenant whose keys it uses and whose jobs it creates (an admin token of every
        tenant: the default tenant's)."""
        return DEFAULT_TENANT_ID if self.tenant_id is None else self.tenant_id


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    scope: str = ADMIN
    tenant: str | None = None


def digest(token: str) -> str:
    """The hex SHA-256 stored for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add(url: str, name: str, scope: str = ADMIN, tenant_id: int | None = None) -> str:
    """Create a token named ``name`` with ``scope``; return the token itself (it is never
    stored). A submit token belongs to ``tenant_id`` (None: the default tenant); an admin
    token to ``tenant_id`` if given, else to every tenant."""
    if not NAME_RE.match(name) or name.upper() == BOOTSTRAP_NAME:
        raise TokenError(
            f"token name {name!r} refused: 1-100 of A-Z a-z 0-9 . _ @ -, starting with a letter "
            f"or digit, and not {BOOTSTRAP_NAME} (the name of the bootstrap token)")
    if scope not in SCOPES:
        raise TokenError(f"scope {scope!r}: must be one of {', '.join(SCOPES)}")
    if scope == SUBMIT and tenant_id is None:
        tenant_id = DEFAULT_TENANT_ID
    token = secrets.token_urlsafe(32)
    try:
        with session_scope(url) as s:
            s.add(AdminToken(name=name, token_sha256=digest(token), scope=scope,
                             tenant_id=tenant_id))
    except IntegrityError:
        # Names are never reused, revoked ones included, so an audit row's actor names one token.
        raise TokenError(f"a token named {name!r} exists (names are never reused)") from None
    return token


def list_all(url: str) -> list[TokenInfo]:
    """Every token, oldest first, without its hash; ``tenant``: its tenant's name."""
    with session_scope(url) as s:
        rows = s.execute(select(AdminToken.name, AdminToken.created_at, AdminToken.last_used_at,
                                AdminToken.revoked_at, AdminToken.scope, Tenant.name)
                         .outerjoin(Tenant, Tenant.id == AdminToken.tenant_id)
                         .order_by(AdminToken.id)).all()
    return [TokenInfo(*r) for r in rows]


def revoke(url: str, name: str) -> None:
    """Revoke a token now; its requests and its image links are refused from then on."""
    with session_scope(url) as s:
        row = s.scalar(select(AdminToken).where(AdminToken.name == name))
        if row is None:
            raise TokenError(f"no token named {name!r}")
        if row.revoked_at is not None:
            raise TokenError(f"token {name!r} was already revoked at {row.revoked_at}")
        row.revoked_at = utcnow()


def any_active(url: str, scope: str | None = ADMIN) -> bool:
    """Whether some token that is not revoked has ``scope`` (None: any scope)."""
    with session_scope(url) as s:
        q = select(AdminToken.id).where(AdminToken.revoked_at.is_(None))
        if scope is not None:
            q = q.where(AdminToken.scope == scope)
        return s.scalar(q.limit(1)) is not None


class Authenticator:
    """Maps a presented token to its Principal, or None; no cache, so a revocation holds at
    once (one primary-key-sized index lookup per request)."""

    def __init__(self, url: str, bootstrap: str | None) -> None:
        self.url = url
        self._bootstrap = bytes.fromhex(digest(bootstrap)) if bootstrap else None

    def principal(self, presented: str | None) -> Principal | None:
        """The Principal of a presented token; None for no token, an unknown or a revoked one."""
        return self.by_digest(digest(presented)) if presented else None

    def by_digest(self, hashed: str) -> Principal | None:
        """``principal`` for a token known only by its digest (a login session keeps that)."""
        if self._bootstrap is not None and hmac.compare_digest(bytes.fromhex(hashed),
                                                               self._bootstrap):
            return Principal(BOOTSTRAP_ID, BOOTSTRAP_NAME)
        # The index lookup is not constant-time, but what it could leak is a prefix of a
        # SHA-256, which tells nothing about a 256-bit random token.
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.execute(select(AdminToken.id, AdminToken.name, AdminToken.last_used_at,
                                   AdminToken.scope, AdminToken.tenant_id)
                            .where(AdminToken.token_sha256 == hashed,
                                   AdminToken.revoked_at.is_(None))).first()
            if row is None:
                return None
            last = row.last_used_at
            if last is None or as_aware(last) < now - TOUCH_EVERY:
                s.execute(update(AdminToken).where(AdminToken.id == row.id)
                          .values(last_used_at=now))
        return Principal(row.id, row.name, row.scope, row.tenant_id)



