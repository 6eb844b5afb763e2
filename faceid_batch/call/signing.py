"""TC3-HMAC-SHA256 request signing for Tencent Cloud API 3.0 (written here, not taken from an SDK).

The canonical request is always a POST of a JSON body to ``/`` with the two signed
headers ``content-type`` and ``host``; that is all this product sends.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
SIGNED_HEADERS = "content-type;host"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SignedRequest:
    """Everything the signature was computed from, kept for tests and debugging."""

    canonical_request: str
    string_to_sign: str
    signature: str
    authorization: str
    headers: dict[str, str]


def canonical_request(host: str, body: bytes, content_type: str = CONTENT_TYPE) -> str:
    """The canonical request of a POST / with signed headers content-type;host."""
    return "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{content_type.strip().lower()}\nhost:{host.strip().lower()}\n",
            SIGNED_HEADERS,
            sha256_hex(body),
        ]
    )


def sign(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    version: str,
    region: str | None,
    body: bytes,
    timestamp: int,
    token: str | None = None,
    content_type: str = CONTENT_TYPE,
) -> SignedRequest:
    """Sign one API call; return the headers to send with ``body`` (byte-exact)."""
    date = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    creq = canonical_request(host, body, content_type)
    string_to_sign = "\n".join(
        [ALGORITHM, str(timestamp), scope, sha256_hex(creq.encode("utf-8"))]
    )
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac(k_date, service)
    k_signing = _hmac(k_service, "tc3_request")
    signature = hmac.new(
        k_signing, string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    authorization = (
        f"{ALGORITHM} Credential={secret_id}/{scope}, "
        f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )
    headers = {
        "Authorization": authorization,
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": version,
    }
    if region:
        headers["X-TC-Region"] = region
    if token:
        headers["X-TC-Token"] = token
    return SignedRequest(creq, string_to_sign, signature, authorization, headers)
