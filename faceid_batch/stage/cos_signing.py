"""COS request signatures (XML API, "q-sign-*", HMAC-SHA1), made on the bucket endpoint's
clock (call/clock.py). Written here from COS's public description of signature v5:

    SignKey      = hex(HMAC-SHA1(SecretKey, KeyTime))          KeyTime = "start;end"
    HttpString   = lower(method) \\n path \\n HttpParameters \\n HttpHeaders \\n
    StringToSign = "sha1" \\n SignTime \\n hex(SHA1(HttpString)) \\n
    Signature    = hex(HMAC-SHA1(SignKey, StringToSign))

HttpParameters and HttpHeaders are ``key=value`` pairs joined by ``&`` and sorted, keys
URL-encoded and lower-cased, values URL-encoded (unreserved: ``-_.~``); their names, sorted,
are ``q-url-param-list`` and ``q-header-list``.

cos-python-sdk-v5 signs with ``time.time()`` and takes no other time, so:
- presigned GET URLs (the ones FaceID downloads) are made here (``presigned_url``), their
  window ``[now - 60, now + expires]`` on the endpoint's clock, as the SDK shapes it;
- the SDK's own requests (uploads, HEADs, deletes) go through ``ClockedAdapter``: while the
  endpoint's clock is off by a second or more, it signs each one again with the same
  headers and parameters and its window moved onto that clock; it learns the clock from
  every answer's ``Date``, and a request refused (403) by an answer that moved the clock is
  sent once more, signed on the new one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from faceid_batch.call.clock import TOLERANCE, EndpointClock

log = logging.getLogger(__name__)

# The SDK's window starts this long before the signing time (a client a little ahead).
WINDOW_BEFORE = 60


def _enc(value: str) -> str:
    return quote(value.encode("utf-8"), safe="-_.~")


def signature_fields(*, secret_id: str, secret_key: str, method: str, path: str,
                     params: Mapping[str, str], headers: Mapping[str, str], start: int,
                     end: int) -> dict[str, str]:
    """The q-* fields signing one request (``path``: decoded, starting with "/")."""
    signed_headers = {_enc(k).lower(): _enc(v) for k, v in headers.items()}
    signed_params = {_enc(k).lower(): _enc(v) for k, v in params.items()}
    http_string = "\n".join([
        method.lower(), path,
        "&".join(f"{k}={v}" for k, v in sorted(signed_params.items())),
        "&".join(f"{k}={v}" for k, v in sorted(signed_headers.items())), ""])
    sign_time = f"{start};{end}"
    sign_key = hmac.new(secret_key.encode("utf-8"), sign_time.encode("utf-8"),
                        hashlib.sha1).hexdigest()
    string_to_sign = (f"sha1\n{sign_time}\n"
                      f"{hashlib.sha1(http_string.encode('utf-8')).hexdigest()}\n")
    signature = hmac.new(sign_key.encode("utf-8"), string_to_sign.encode("utf-8"),
                         hashlib.sha1).hexdigest()
    return {
        "q-sign-algorithm": "sha1",
        "q-ak": secret_id,
        "q-sign-time": sign_time,
        "q-key-time": sign_time,
        "q-header-list": ";".join(sorted(signed_headers)),
        "q-url-param-list": ";".join(sorted(signed_params)),
        "q-signature": signature,
    }


def object_url(base_url: str, key: str) -> str:
    """The URL of ``key`` under a bucket endpoint (``https://bucket.cos.region...com/``),
    its path encoded as the SDK encodes it."""
    path = quote(key.lstrip("/").encode("utf-8"), safe="/-_.~").replace("./", ".%2F")
    return f"{base_url.rstrip('/')}/{path}"


def presigned_url(*, base_url: str, key: str, secret_id: str, secret_key: str, now: float,
                  expires: int) -> str:
    """A GET URL of ``key`` valid from ``now - 60`` to ``now + expires`` (the endpoint's
    time), its host signed as the SDK signs it."""
    url = object_url(base_url, key)
    host = urlsplit(url).hostname or ""
    at = int(now)
    fields = signature_fields(
        secret_id=secret_id, secret_key=secret_key, method="GET", path="/" + key.lstrip("/"),
        params={}, headers={"host": host}, start=at - WINDOW_BEFORE, end=at + expires)
    return f"{url}?{urlencode(fields)}"


def _fields(authorization: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in authorization.split("&"):
        name, sep, value = part.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def resign(request: PreparedRequest, secret_key: str, shift: int) -> bool:
    """Sign ``request`` again with its window moved by ``shift`` seconds, over the headers
    and parameters its signature names; False (left as it is) if it carries no signature
    this can read."""
    fields = _fields(str(request.headers.get("Authorization") or ""))
    try:
        start, end = (int(x) for x in fields["q-sign-time"].split(";"))
        header_names = [h for h in fields["q-header-list"].split(";") if h]
        param_names = [p for p in fields["q-url-param-list"].split(";") if p]
        secret_id = fields["q-ak"]
    except (KeyError, ValueError):
        return False
    parts = urlsplit(request.url or "")
    headers: dict[str, str] = {}
    for name in header_names:
        value = request.headers.get(unquote(name))
        if value is None and name == "host":
            value = parts.hostname
        if value is None:
            return False
        headers[unquote(name)] = str(value)
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(_enc(key).lower(), value)
    if any(name not in query for name in param_names):
        return False
    new = signature_fields(
        secret_id=secret_id, secret_key=secret_key, method=request.method or "GET",
        path=unquote(parts.path) or "/", params={unquote(n): query[n] for n in param_names},
        headers=headers, start=start + shift, end=end + shift)
    request.headers["Authorization"] = "&".join(f"{k}={v}" for k, v in new.items())
    return True


class ClockedAdapter(HTTPAdapter):
    """The COS client's adapter: learns the endpoint's clock from every answer, signs on it
    (see the module docstring). ``secret_key`` is the key the SDK signs with."""

    def __init__(self, clock: EndpointClock, secret_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self._secret_key = secret_key

    def send(self, request: PreparedRequest, stream: bool = False,
             timeout: float | tuple[float, float] | tuple[float, None] | None = None,
             verify: bool | str = True,
             cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
             proxies: Mapping[str, str] | None = None) -> Response:
        shift = self._shift()
        if shift:
            resign(request, self._secret_key, shift)
        body: Any = request.body  # what the SDK gave: bytes, or a file it can rewind
        position = body.tell() if hasattr(body, "tell") and hasattr(body, "seek") else None
        sent = time.time()
        response = super().send(request, stream, timeout, verify, cert, proxies)
        self.clock.observe(response.headers, sent, time.time())
        again = self._shift()
        if response.status_code != 403 or again == shift:
            return response
        # Refused, and its answer moved the clock: the window was judged on the other one.
        if body is not None and not isinstance(body, bytes | str):
            if position is None:
                return response
            body.seek(position)
        log.info("COS %s refused (403) while its clock moved to %+.0f s: signed again",
                 self.clock.name, again)
        response.close()
        resign(request, self._secret_key, again - shift)
        sent = time.time()
        response = super().send(request, stream, timeout, verify, cert, proxies)
        self.clock.observe(response.headers, sent, time.time())
        return response

    def _shift(self) -> int:
        """Whole seconds to move a window signed on this host's clock (0 while the clocks
        agree: the SDK's own signature goes out unchanged)."""
        offset = self.clock.offset
        return round(offset) if abs(offset) >= TOLERANCE else 0
