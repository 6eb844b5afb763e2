"""Who a request acts for, and the short-lived signed links that serve face images.

An API client names its token as ``Authorization: Bearer``; tokens.py maps it to a named
Principal (revoked tokens map to nobody). A browser logs in once with the form, and its
cookie holds a login session's random id, never the token: whatever reads the cookie holds
at most a session that ends at logout or after ADMIN_SESSION_SECONDS. The session's row keeps
only digests, of its id and of the token that opened it; that token is looked up again on
every request, so revoking it (or changing ADMIN_TOKEN) ends its sessions at once.

A browser cannot put a bearer token on ``<img>``, and a face image must never sit behind a
public URL, so each image link carries an expiry, the id of the token it was issued to and
the surface it was issued on (``web`` for the review page, ``api`` for /api/jobs), all under
an HMAC: the image read is audited as that token on that surface, and a leaked link dies
within ADMIN_LINK_SECONDS. Serving a link also needs its own token (or a session of it) on
the request, so a revoked token's links die with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import timedelta
from urllib.parse import urlencode

from sqlalchemy import delete, select, update

from faceid_batch.admin.tokens import Authenticator, Principal, digest
from faceid_batch.db import session_scope
from faceid_batch.models import AdminSession
from faceid_batch.settings import Settings
from faceid_batch.times import utcnow

COOKIE = "faceid_admin_session"
# Before sessions the cookie held the token itself; login and logout delete it from browsers.
LEGACY_COOKIE = "faceid_admin_token"
# A login deletes the sessions that expired longer ago than this: one DELETE keeps the table
# to the last day's logins, with no job to schedule.
KEEP_EXPIRED = timedelta(days=1)

KINDS = ("best_frame", "id_photo")
VIA = ("web", "api")
_LABEL = b"faceid-batch admin image links"


def link_key(settings: Settings) -> tuple[bytes, str]:
    """The key of the image-link HMAC and where it comes from.

    ADMIN_LINK_SECRET if set, else derived from ADMIN_TOKEN, else random for this process
    only: links then die when the process restarts, and several admin processes behind one
    address would refuse each other's links (set ADMIN_LINK_SECRET for that).
    """
    for name, value in (("ADMIN_LINK_SECRET", settings.admin_link_secret),
                        ("ADMIN_TOKEN", settings.admin_token)):
        secret = value.get_secret_value().strip() if value else ""
        if secret:
            return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest(), name
    return secrets.token_bytes(32), "random per process"


class Sessions:
    """The review pages' login sessions (admin_sessions): open, look up, end."""

    def __init__(self, url: str, tokens: Authenticator, seconds: int) -> None:
        self.url = url
        self.tokens = tokens
        self.seconds = seconds

    def open(self, token: str) -> str:
        """Start a session for ``token`` (already checked); return its id, the cookie's value."""
        sid = secrets.token_urlsafe(32)
        now = utcnow()
        with session_scope(self.url) as s:
            s.execute(delete(AdminSession).where(AdminSession.expires_at < now - KEEP_EXPIRED))
            s.add(AdminSession(session_sha256=digest(sid), token_sha256=digest(token),
                               created_at=now, expires_at=now + timedelta(seconds=self.seconds)))
        return sid

    def principal(self, sid: str | None) -> Principal | None:
        """Who a session acts for; None when it is unknown, ended or expired, or when its token
        no longer authenticates (revoked, or ADMIN_TOKEN changed or unset)."""
        if not sid:
            return None
        # A 256-bit random id: what the index lookup's timing could leak of its digest tells
        # nothing about it (as for tokens).
        with session_scope(self.url) as s:
            token = s.scalar(select(AdminSession.token_sha256).where(
                AdminSession.session_sha256 == digest(sid), AdminSession.ended_at.is_(None),
                AdminSession.expires_at > utcnow()))
        return self.tokens.by_digest(token) if token else None

    def end(self, sid: str | None) -> None:
        """End a session now (logout); an unknown or already ended one is left as it is."""
        if not sid:
            return
        with session_scope(self.url) as s:
            s.execute(update(AdminSession)
                      .where(AdminSession.session_sha256 == digest(sid),
                             AdminSession.ended_at.is_(None))
                      .values(ended_at=utcnow()))


class TokenCheck:
    """Authenticates requests and signs and checks image links."""

    def __init__(self, tokens: Authenticator, key: bytes,
                 sessions: Sessions | None = None) -> None:
        self.tokens = tokens
        self.sessions = sessions
        self._link_key = key

    def who(self, authorization: str | None, session: str | None = None) -> Principal | None:
        """The bearer header's token if there is one, else the login session's."""
        if authorization and authorization[:7].lower() == "bearer ":
            return self.tokens.principal(authorization[7:].strip())
        return self.sessions.principal(session) if self.sessions else None

    # -- signed image links --------------------------------------------------------------
    def _sig(self, job_id: int, kind: str, expires: int, by: int, via: str) -> str:
        msg = f"{job_id}:{kind}:{expires}:{by}:{via}".encode()
        return hmac.new(self._link_key, msg, hashlib.sha256).hexdigest()

    def image_link(self, job_id: int, kind: str, seconds: int, by: Principal, via: str,
                   now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + seconds)
        query = urlencode({"exp": expires, "by": by.token_id, "via": via,
                           "sig": self._sig(job_id, kind, expires, by.token_id, via)})
        return f"/media/{job_id}/{kind}?{query}"

    def link_valid(self, job_id: int, kind: str, expires: int, by: int, via: str, sig: str,
                   now: float | None = None) -> bool:
        if kind not in KINDS or via not in VIA:
            return False
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(sig.encode(),
                                   self._sig(job_id, kind, expires, by, via).encode())
