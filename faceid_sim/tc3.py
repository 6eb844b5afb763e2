"""Server-side verification of TencentCloud API 3.0 "TC3-HMAC-SHA256" request signatures.

Written from the public "Signature v3" description, independently of any client:

    CanonicalRequest = Method \n CanonicalURI \n CanonicalQueryString \n
                       CanonicalHeaders \n SignedHeaders \n hex(SHA256(payload))
    CanonicalHeaders = for each signed header (as listed): lower(name) ":" lower(trim(value)) \n
    StringToSign     = "TC3-HMAC-SHA256" \n Timestamp \n Date/service/tc3_request \n
                       hex(SHA256(CanonicalRequest))
    SecretSigning    = HMAC(HMAC(HMAC("TC3" + SecretKey, Date), service), "tc3_request")
    Signature        = hex(HMAC-SHA256(SecretSigning, StringToSign))

The signature is checked over the raw bytes received and against the Host header actually sent:
Tencent's SDK sets Host to its configured endpoint, so a client pointed at 127.0.0.1:PORT signs
"127.0.0.1:PORT", not "faceid.intl.tencentcloudapi.com".
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
MAX_SKEW_SECONDS = 300

_AUTH_RE = re.compile(
    r"^TC3-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-fA-F]{64})\s*$"
)


@dataclass(frozen=True)
class Tc3Error(Exception):
    """A rejected request: Tencent common error code and message."""

    code: str
    message: str


@dataclass(frozen=True)
class Tc3Authorization:
    """The parsed Authorization header."""

    secret_id: str
    date: str
    service: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str | None) -> Tc3Authorization:
    """Parse an ``Authorization: TC3-HMAC-SHA256 ...`` header or raise InvalidAuthorization."""
    match = _AUTH_RE.match((value or "").strip())
    if match is None:
        raise Tc3Error(
            "AuthFailure.InvalidAuthorization",
            "Authorization in the request header is missing or malformed.",
        )
    cred = match["cred"].split("/")
    if len(cred) != 4 or cred[3] != "tc3_request" or not all(cred):
        raise Tc3Error(
            "AuthFailure.InvalidAuthorization",
            "Credential must be SecretId/Date/service/tc3_request.",
        )
    signed = match["signed"].split(";")
    return Tc3Authorization(cred[0], cred[1], cred[2], signed, match["sig"].lower())


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signature_for(
    secret_key: str, date: str, service: str, timestamp: str, canonical_request: str
) -> str:
    """The hex signature of ``canonical_request`` (exposed so tests can probe the verifier)."""
    scope = f"{date}/{service}/tc3_request"
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"
    key = _hmac(_hmac(_hmac(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_tc3(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
    service: str = "faceid",
    now: float | None = None,
) -> Tc3Authorization:
    """Verify a request's TC3 signature; return the parsed authorization or raise Tc3Error.

    ``headers`` must be a case-insensitive mapping (the handler's ``self.headers``).
    Checks run in the order the real gateway reports them: malformed header, unknown key,
    stale timestamp, then the signature itself.
    """
    auth = parse_authorization(headers.get("Authorization"))
    secret_key = secrets.get(auth.secret_id)
    if secret_key is None:
        raise Tc3Error(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        )
    raw_ts = headers.get("X-TC-Timestamp")
    if raw_ts is None:
        raise Tc3Error(
            "MissingParameter", "The request is missing a required parameter `Timestamp`."
        )
    try:
        timestamp = int(raw_ts.strip())
    except ValueError:
        raise Tc3Error("InvalidParameter", "The parameter `Timestamp` is not an integer.") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > MAX_SKEW_SECONDS:
        raise Tc3Error(
            "AuthFailure.SignatureExpire",
            f"Signature expired. Timestamp `{timestamp}` and server time `{int(current)}` differ "
            f"by more than {MAX_SKEW_SECONDS} seconds.",
        )
    if auth.date != datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d"):
        raise Tc3Error(
            "AuthFailure.SignatureFailure",
            "The credential date does not match the UTC date of X-TC-Timestamp.",
        )
    if auth.service != service:
        raise Tc3Error(
            "AuthFailure.SignatureFailure",
            f"The credential scope names service `{auth.service}`, expected `{service}`.",
        )
    names = [n.strip().lower() for n in auth.signed_headers]
    if "content-type" not in names or "host" not in names:
        raise Tc3Error(
            "AuthFailure.InvalidAuthorization",
            "SignedHeaders must include content-type and host.",
        )
    canonical_headers = ""
    for name in names:
        value = headers.get(name)
        if value is None:
            raise Tc3Error(
                "AuthFailure.SignatureFailure",
                f"Signed header `{name}` is absent from the request.",
            )
        canonical_headers += f"{name}:{value.strip().lower()}\n"
    if (headers.get("X-TC-Content-SHA256") or "").strip() == "UNSIGNED-PAYLOAD":
        payload_hash = hashlib.sha256(b"UNSIGNED-PAYLOAD").hexdigest()
    else:
        payload_hash = hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        [method.upper(), path, query, canonical_headers, ";".join(names), payload_hash]
    )
    expected = signature_for(secret_key, auth.date, service, raw_ts.strip(), canonical_request)
    if not hmac.compare_digest(expected, auth.signature):
        raise Tc3Error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. "
            "Please check your signature is correct.",
        )
    return auth
