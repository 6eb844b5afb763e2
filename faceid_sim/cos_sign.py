"""Server-side verification of the COS XML API request signature (HMAC-SHA1, "q-sign-*").

Written from the public description of the algorithm, not from any client code:

    KeyTime     = q-key-time  ("start;end" Unix seconds)
    SignKey     = hex(HMAC-SHA1(SecretKey, KeyTime))
    HttpString  = lower(method) \n path \n HttpParameters \n HttpHeaders \n
    StringToSign= "sha1" \n q-sign-time \n hex(SHA1(HttpString)) \n
    Signature   = hex(HMAC-SHA1(SignKey, StringToSign))

HttpParameters / HttpHeaders are "key=value" pairs joined by "&", sorted by key, where keys are
URL-encoded then lower-cased and values URL-encoded (unreserved set "-_.~"), restricted to the
names listed in q-url-param-list / q-header-list. The signature travels either in the
Authorization header or, for presigned URLs, as query parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

SIGN_FIELDS = (
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
)


@dataclass(frozen=True)
class CosAuthError(Exception):
    """A rejected request: COS error code, message and HTTP status."""

    code: str
    message: str
    status: int = 403


@dataclass(frozen=True)
class CosRequest:
    """What the verifier needs to know about one incoming request."""

    method: str
    path: str  # percent-decoded, starts with "/"
    query: list[tuple[str, str]]  # decoded, in arrival order, blanks kept
    headers: Mapping[str, str]  # case-insensitive mapping (email.message.Message is fine)


def _enc(value: str) -> str:
    return quote(value.encode("utf-8"), safe="-_.~")


def _pairs(items: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(items))


def extract_signature(req: CosRequest) -> dict[str, str] | None:
    """Return the q-* fields from the Authorization header or the query string, or None."""
    auth = req.headers.get("Authorization")
    if auth:
        fields: dict[str, str] = {}
        for part in auth.split("&"):
            name, sep, value = part.partition("=")
            if sep:
                fields[name.strip()] = value.strip()
        return fields
    query = {k: v for k, v in req.query}
    if "q-sign-algorithm" in query or "q-signature" in query:
        return {k: query[k] for k in SIGN_FIELDS if k in query}
    return None


def _parse_window(raw: str) -> tuple[int, int]:
    start_s, sep, end_s = raw.partition(";")
    if not sep:
        raise ValueError(raw)
    return int(start_s), int(end_s)


def _header_candidates(req: CosRequest, name: str) -> list[str] | None:
    """Possible values of a signed header; None when the request does not carry it."""
    value = req.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if name == "host" and ":" in value and not value.startswith("["):
        # Clients sign the host name taken from the URL, which drops the port, while the Host
        # header carries it; on the real service the port is the default and absent from both.
        return [value, value.rsplit(":", 1)[0]]
    return [value]


def _http_headers_variants(req: CosRequest, names: list[str]) -> list[str] | None:
    variants: list[list[tuple[str, str]]] = [[]]
    for name in names:
        candidates = _header_candidates(req, name)
        if candidates is None:
            return None
        variants = [v + [(_enc(name).lower(), _enc(c))] for v in variants for c in candidates]
    return [_pairs(v) for v in variants]


def _http_params(req: CosRequest, names: list[str]) -> str | None:
    by_key: dict[str, str] = {}
    for key, value in req.query:
        by_key.setdefault(_enc(key).lower(), value)
    items = []
    for name in names:
        if name not in by_key:
            return None
        items.append((name, _enc(by_key[name])))
    return _pairs(items)


def compute_signature(secret_key: str, key_time: str, sign_time: str, http_string: str) -> str:
    """The q-signature for ``http_string`` (exposed for tests of the verifier itself)."""
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    digest = hashlib.sha1(http_string.encode("utf-8")).hexdigest()
    string_to_sign = f"sha1\n{sign_time}\n{digest}\n"
    return hmac.new(sign_key.encode(), string_to_sign.encode(), hashlib.sha1).hexdigest()


def verify_cos_request(
    req: CosRequest,
    secrets: Mapping[str, str],
    token_ok: Callable[[str], bool],
    now: float | None = None,
) -> str:
    """Check the request's COS signature; return the SecretId or raise CosAuthError.

    ``token_ok`` decides whether an ``x-cos-security-token`` (header or query) is acceptable.
    """
    fields = extract_signature(req)
    if fields is None:
        raise CosAuthError("AccessDenied", "Access Denied. The bucket is private.")
    missing = [f for f in SIGN_FIELDS if f not in fields]
    if missing or fields["q-sign-algorithm"].lower() != "sha1":
        raise CosAuthError("AccessDenied", "Authorization is malformed or incomplete.")
    secret_key = secrets.get(fields["q-ak"])
    if secret_key is None:
        raise CosAuthError(
            "InvalidAccessKeyId", "The access key Id format you provided is invalid."
        )
    try:
        start, end = _parse_window(fields["q-sign-time"])
        _parse_window(fields["q-key-time"])
    except ValueError:
        raise CosAuthError("AccessDenied", "q-sign-time or q-key-time is malformed.") from None
    current = time.time() if now is None else now
    if current > end:
        raise CosAuthError("AccessDenied", "Request has expired.")
    if current < start:
        raise CosAuthError("RequestTimeTooSkewed", "The signature is not valid yet.")

    token = req.headers.get("x-cos-security-token")
    if token is None:
        token = next((v for k, v in req.query if k.lower() == "x-cos-security-token"), None)
    if token is not None and not token_ok(token):
        raise CosAuthError("AccessDenied", "The security token is invalid or not accepted.")

    header_names = [h for h in fields["q-header-list"].split(";") if h]
    param_names = [p for p in fields["q-url-param-list"].split(";") if p]
    params = _http_params(req, param_names)
    headers_variants = _http_headers_variants(req, header_names)
    if params is None or headers_variants is None:
        raise CosAuthError(
            "SignatureDoesNotMatch", "A signed header or parameter is absent from the request."
        )
    given = fields["q-signature"].lower()
    for http_headers in headers_variants:
        http_string = f"{req.method.lower()}\n{req.path}\n{params}\n{http_headers}\n"
        expected = compute_signature(
            secret_key, fields["q-key-time"], fields["q-sign-time"], http_string
        )
        if hmac.compare_digest(expected, given):
            return fields["q-ak"]
    raise CosAuthError(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
    )
