"""Standard Webhooks signing (https://www.standardwebhooks.com): secrets, signatures, checks.

Kept apart from notify.py (which delivers) so that settings can check WEBHOOK_SECRET
without loading the worker. A secret is ``whsec_`` + base64 of its key bytes; a signature
is ``v1,`` + base64 of HMAC-SHA256(key, ``"<webhook-id>.<webhook-timestamp>.<body>"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60  # what verify() accepts, as the Standard Webhooks libraries do


# The delays between a callback's attempts (Stripe retries for three days, Svix for about
# one): close together first, so a receiver back within minutes gets it within minutes, then
# spread over more than a day for one that is down for hours. 13 attempts over ~28 h.
DEFAULT_SCHEDULE = "5s 30s 1m 2m 5m 15m 30m 1h 2h 4h 8h 12h"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_schedule(value: str) -> tuple[float, ...]:
    """WEBHOOK_RETRY_SCHEDULE: the delays after each failed attempt, such as ``5s 30s 1m 2h``
    (s, m, h, d; a bare number is seconds), separated by spaces or commas. Attempts: one more
    than the delays. ValueError says what is wrong."""
    delays = []
    for part in value.replace(",", " ").split():
        number, unit = (part[:-1], part[-1]) if part[-1] in _UNITS else (part, "s")
        try:
            delay = float(number) * _UNITS[unit]
        except ValueError:
            raise ValueError(f"{part!r} is not a delay (such as 30s, 5m, 2h)") from None
        if not 0 < delay <= 7 * 86400:
            raise ValueError(f"{part!r}: a delay is above 0 and at most 7d")
        delays.append(delay)
    if len(delays) > 50:
        raise ValueError("at most 50 delays")
    return tuple(delays)


class WebhookSecretError(ValueError):
    """WEBHOOK_SECRET is not one or two Standard Webhooks secrets; the message says why."""


def secret_keys(value: str) -> list[bytes]:
    """The HMAC keys in WEBHOOK_SECRET: one or two ``whsec_<base64>`` secrets (two while
    rotating), separated by spaces or a comma."""
    parts = [p for p in value.replace(",", " ").split() if p]
    if not 1 <= len(parts) <= 2:
        raise WebhookSecretError("must be one secret, or two while rotating, each whsec_<base64>")
    keys = []
    for part in parts:
        if not part.startswith(SECRET_PREFIX):
            raise WebhookSecretError("each secret must start with whsec_ (the Standard Webhooks "
                                     "form; make one with `faceid-batch webhook-secret`)")
        try:
            key = base64.b64decode(part[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSecretError("the part after whsec_ must be base64") from None
        if len(key) < 24:
            raise WebhookSecretError(f"a secret of {len(key)} bytes is too short (24 or more)")
        keys.append(key)
    return keys


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks form (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
                    .decode() for key in keys)


def headers_for(secret: str, msg_id: str, body: bytes, timestamp: int | None = None
                ) -> dict[str, str]:
    """The signing headers of one delivery attempt."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret_keys(secret), msg_id, timestamp, body)}


def verify(secret: str, headers: dict[str, str], body: bytes,
           now: float | None = None) -> bool:
    """For Python receivers: do ``headers`` sign ``body`` with ``secret`` (constant time),
    within TOLERANCE_SECONDS? The published ``standardwebhooks`` package does the same."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp = h[ID_HEADER], int(h[TIMESTAMP_HEADER])
        given = h[SIGNATURE_HEADER].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = signature(secret_keys(secret), msg_id, timestamp, body).split()
    return any(hmac.compare_digest(e, g) for e in expected for g in given)


