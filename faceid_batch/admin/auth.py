"""Who a request acts for, and the short-lived signed links that serve face images.

A request names its token as ``Authorization: Bearer`` or in the login cookie; tokens.py maps
it to a named Principal (revoked tokens map to nobody). A browser cannot put a bearer token on
``<img>``, and a face image must never sit behind a public URL, so each image link carries an
expiry, the id of the token it was issued to and the surface it was issued on (``web`` for the
review page, ``api`` for /api/jobs), all under an HMAC: the image read is audited as that
token on that surface, and a leaked link dies within ADMIN_LINK_SECONDS. Serving a link also
needs its own token on the request, so a revoked token's links die with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

from faceid_batch.admin.tokens import Authenticator, Principal
from faceid_batch.settings import Settings

COOKIE = "faceid_admin_token"
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


def presented(authorization: str | None, cookie: str | None = None) -> str | None:
    """The token a request presents: the bearer header first, else the login cookie."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return cookie or None


class TokenCheck:
    """Authenticates requests and signs and checks image links."""

    def __init__(self, tokens: Authenticator, key: bytes) -> None:
        self.tokens = tokens
        self._link_key = key

    def who(self, authorization: str | None, cookie: str | None = None) -> Principal | None:
        return self.tokens.principal(presented(authorization, cookie))

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
