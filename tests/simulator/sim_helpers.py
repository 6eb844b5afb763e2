"""Test-side helpers: sample media and a TC3-HMAC-SHA256 signer written from the public spec.

The signer deliberately does not reuse faceid_sim's verifier (nor faceid_batch's signer): a
signing bug must not be shared by the side that signs and the side that checks.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime

SECRET_ID = "AKIDfakeTESTsecretID"
SECRET_KEY = "fakeTESTsecretKEYdoNotUse0000000"
OTHER_ID = "AKIDfakeTESTsecondACCOUNT"
OTHER_KEY = "fakeTESTsecondKEYdoNotUse0000000"
REGION = "ap-singapore"


# --- sample media -------------------------------------------------------------------------
def jpeg(size: int = 2048, tag: bytes = b"") -> bytes:
    """A "JPEG" of ``size`` bytes: the simulator only checks magic bytes, MD5 and size."""
    head = b"\xff\xd8\xff\xe0" + tag
    return head + b"\x00" * (size - len(head))


def png(size: int = 2048) -> bytes:
    head = b"\x89PNG\r\n\x1a\n"
    return head + b"\x01" * (size - len(head))


def mp4(size: int = 4096, tag: bytes = b"") -> bytes:
    head = b"\x00\x00\x00\x18ftypmp42" + tag
    return head + b"\x02" * (size - len(head))


def avi(size: int = 4096) -> bytes:
    head = b"RIFF\x00\x10\x00\x00AVI LIST"
    return head + b"\x03" * (size - len(head))


def flv(size: int = 4096) -> bytes:
    head = b"FLV\x01\x05\x00\x00\x00\x09"
    return head + b"\x04" * (size - len(head))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- TC3-HMAC-SHA256, from the "Signature v3" description ---------------------------------
def tc3_headers(
    body: bytes,
    host: str,
    *,
    secret_id: str = SECRET_ID,
    secret_key: str = SECRET_KEY,
    action: str = "VideoLivenessCompare",
    version: str = "2018-03-01",
    region: str | None = REGION,
    timestamp: int | None = None,
    service: str = "faceid",
    content_type: str = "application/json",
    signed_host: str | None = None,
    token: str | None = None,
    date: str | None = None,
) -> dict[str, str]:
    """Headers of a signed POST; ``signed_host`` lets a test sign a different host than sent."""
    ts = int(time.time()) if timestamp is None else timestamp
    date = date or datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    canonical_headers = (
        f"content-type:{content_type.lower()}\nhost:{(signed_host or host).lower()}\n"
    )
    canonical_request = "\n".join(
        [
            "POST",
            "/",
            "",
            canonical_headers,
            "content-type;host",
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{service}/tc3_request"
    to_sign = "\n".join(
        [
            "TC3-HMAC-SHA256",
            str(ts),
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )

    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    k = mac(mac(mac(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers = {
        "Authorization": (
            f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
            f"SignedHeaders=content-type;host, Signature={signature}"
        ),
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Version": version,
        "X-TC-Timestamp": str(ts),
    }
    if region is not None:
        headers["X-TC-Region"] = region
    if token is not None:
        headers["X-TC-Token"] = token
    return headers
