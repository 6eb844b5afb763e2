"""The admin token check and the short-lived signed links that serve face images.

A browser cannot put a bearer token on ``<img>``, and a face image must never sit behind a
public URL: each image link carries an expiry and an HMAC over (job id, kind, expiry) with a
key derived from ADMIN_TOKEN, so a leaked link dies within ADMIN_LINK_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

COOKIE = "faceid_admin_token"
KINDS = ("best_frame", "id_photo")


class TokenCheck:
    """Compares a presented token with ADMIN_TOKEN in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._link_key = hmac.new(self._token, b"faceid-batch admin image links",
                                  hashlib.sha256).digest()

    def accepts(self, authorization: str | None, cookie: str | None = None) -> bool:
        presented = None
        if authorization and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        elif cookie:
            presented = cookie
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)

    # -- signed image links --------------------------------------------------------------
    def _sig(self, job_id: int, kind: str, expires: int) -> str:
        msg = f"{job_id}:{kind}:{expires}".encode()
        return hmac.new(self._link_key, msg, hashlib.sha256).hexdigest()

    def image_link(self, job_id: int, kind: str, seconds: int, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + seconds)
        query = urlencode({"exp": expires, "sig": self._sig(job_id, kind, expires)})
        return f"/media/{job_id}/{kind}?{query}"

    def link_valid(self, job_id: int, kind: str, expires: int, sig: str,
                   now: float | None = None) -> bool:
        if kind not in KINDS or expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(sig.encode(), self._sig(job_id, kind, expires).encode())
