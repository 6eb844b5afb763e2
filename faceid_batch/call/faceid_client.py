"""Call FaceID VideoLivenessCompare over ``requests`` and parse both failure channels.

A failure can arrive two ways, both with HTTP 200:
- a normal answer whose ``Response.Result`` is a ``FailedOperation.*`` code, or
- an error envelope ``Response.Error = {Code, Message}``.
Transport problems (timeouts, connection errors, non-200, unparsable bodies) become
``ClientError.*`` codes so that one error table decides what happens next.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from faceid_batch.call.clock import EndpointClock, endpoint_clock, faceid_endpoint
from faceid_batch.call.errors import Rule, classify
from faceid_batch.call.httpenv import pinned_session
from faceid_batch.call.ratelimit import SendTooLate
from faceid_batch.call.signing import sign

ACTION = "VideoLivenessCompare"
VERSION = "2018-03-01"
SERVICE = "faceid"


@dataclass(frozen=True)
class CompareRequest:
    """The business parameters of one call (URLs are short-lived presigned GETs)."""

    image_url: str
    image_md5: str
    video_url: str
    video_md5: str
    liveness_type: str
    validate_data: str | None = None

    def to_params(self) -> dict[str, str]:
        params = {
            "ImageUrl": self.image_url,
            "ImageMd5": self.image_md5,
            "VideoUrl": self.video_url,
            "VideoMd5": self.video_md5,
            "LivenessType": self.liveness_type,
        }
        if self.validate_data:
            params["ValidateData"] = self.validate_data
        return params


@dataclass(frozen=True)
class BestFrameInfo:
    url: str
    md5: str | None
    size: int | None


@dataclass
class Answer:
    """One call's outcome, whatever channel it came through."""

    code: str
    channel: str  # "result" | "error" | "transport"
    http_status: int | None = None
    request_id: str | None = None
    message: str = ""
    sim: float | None = None
    description: str | None = None
    best_frame: BestFrameInfo | None = None
    latency_ms: int = 0
    started_at: float | None = None  # epoch seconds when the request was sent
    waited_ms: int = 0  # how long the job waited for its rate-limit slot (pipeline.py)
    account: str | None = None  # the account that made the call (call/accounts.py)
    region: str | None = None  # the access region it was made in
    rule: Rule = field(init=False)

    def __post_init__(self) -> None:
        self.rule = classify(self.code)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_response(status: int, body: bytes) -> Answer:
    """Turn one HTTP answer into an Answer; never raises on a malformed body."""
    if status != 200:
        return Answer("ClientError.HttpStatus", "transport", status, message=f"HTTP {status}")
    try:
        resp = json.loads(body)["Response"]
        if not isinstance(resp, dict):
            raise TypeError("Response is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        return Answer("ClientError.BadResponse", "transport", status, message=str(exc)[:200])
    request_id = _text(resp.get("RequestId")) or None
    error = resp.get("Error")
    if isinstance(error, dict):
        return Answer(
            _text(error.get("Code")) or "ClientError.BadResponse", "error", status,
            request_id, message=_text(error.get("Message"))[:500],
        )
    result = _text(resp.get("Result"))
    if not result:
        return Answer("ClientError.BadResponse", "transport", status, request_id,
                      message="answer has neither Result nor Error")
    sim = resp.get("Sim")
    frame = resp.get("BestFrame")
    best = None
    if isinstance(frame, dict) and _text(frame.get("Url")):
        size = frame.get("Size")
        best = BestFrameInfo(
            url=frame["Url"],
            md5=(_text(frame.get("MD5")) or None),
            size=int(size) if isinstance(size, int | float) else None,
        )
    return Answer(
        result, "result", status, request_id,
        message=_text(resp.get("Description"))[:500],
        sim=float(sim) if isinstance(sim, int | float) else None,
        description=_text(resp.get("Description")) or None,
        best_frame=best,
    )


# --- when did the request really leave? ----------------------------------------------------
# The rate limit counts when a call reaches the API, and on a busy host the first byte can
# leave well after the thread woke for its slot. These connections report the moment a
# request's first bytes were handed to the kernel (``send(on_sent=...)``), reading the clock
# after the write returns, never before: late is the safe side for the limiter.
# Two more things happen at the first write, because only there is nothing left between the
# check and the send (the request built, a pooled connection in hand): the wait for the slot
# (``send(send_at=...)``), and refusing to send at all past ``send_by`` (a thread can lose
# the GIL for long enough that its call would crowd a window reserved while it looked on
# time). The figures behind these choices are in docs/benchmarks.md (throughput).
_first_byte = threading.local()


def _stamped_send(send: Callable[[Any], None], data: Any) -> None:
    """``send(data)``, for the first write of a stamped call: not before its slot, not at
    all past ``send_by``, and the moment its bytes left reported to the hook."""
    hook = getattr(_first_byte, "hook", None)
    if hook is None:
        send(data)
        return
    _first_byte.hook = None
    send_at = getattr(_first_byte, "send_at", None)
    if send_at is not None and (remaining := send_at - time.monotonic()) > 0:
        time.sleep(remaining)
    send_by = getattr(_first_byte, "send_by", None)
    if send_by is not None and time.monotonic() > send_by:
        raise SendTooLate(f"{(time.monotonic() - send_by) * 1000:.0f} ms past send_by")
    send(data)
    hook(time.monotonic())


class _StampedHTTPConnection(HTTPConnection):
    def send(self, data: Any) -> None:
        _stamped_send(super().send, data)


class _StampedHTTPSConnection(HTTPSConnection):
    def send(self, data: Any) -> None:
        _stamped_send(super().send, data)


class _StampedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _StampedHTTPConnection


class _StampedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _StampedHTTPSConnection


_STAMPED_POOLS = {"http": _StampedHTTPPool, "https": _StampedHTTPSPool}


class _StampedAdapter(HTTPAdapter):
    """Every connection it makes runs the first-write hook, through an HTTP(S) proxy too:
    a request that went around it would leave before its slot and never be reported."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_STAMPED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = dict(_STAMPED_POOLS)
        return manager


# How long the clock probe (FaceIDClient.probe_clock) may take, connect and read each.
PROBE_SECONDS = 3.0

class FaceIDClient:
    """A signed, pooled client for one account and region. Thread-safe for concurrent calls.

    Requests are signed with the endpoint's time (``clock_for``: this process's clock of
    the endpoint URL and the call's region, shared by every client of them; ``clock``: one
    clock for every region instead), learned from the ``Date`` of every answer
    (call/clock.py)."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        secret_id: str,
        secret_key: str,
        token: str | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 30.0,
        pool_size: int = 64,
        session: requests.Session | None = None,
        clock: EndpointClock | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/") + "/"
        self.host = urlsplit(self.endpoint).netloc
        self.region = region
        self._clock = clock
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._token = token
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or pinned_session(self.endpoint)
        # One pool sized to the calls in flight, so keep-alive connections are reused
        # instead of a new TLS handshake per call.
        adapter = _StampedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:  # never show the key
        return f"FaceIDClient(endpoint={self.endpoint!r}, region={self.region!r})"

    def clock_for(self, region: str | None = None) -> EndpointClock:
        """The clock requests in ``region`` (None: the client's) are signed with."""
        return self._clock or endpoint_clock(
            faceid_endpoint(self.endpoint, region or self.region))

    def prepare(self, request: CompareRequest,
                region: str | None = None) -> requests.PreparedRequest:
        """Sign and build the HTTP request, so that sending it later costs almost nothing.
        ``region``: the access region of this call (None: the client's)."""
        body = json.dumps(request.to_params(), separators=(",", ":")).encode("utf-8")
        signed = sign(
            secret_id=self._secret_id, secret_key=self._secret_key, service=SERVICE,
            host=self.host, action=ACTION, version=VERSION, region=region or self.region,
            body=body, timestamp=int(self.clock_for(region).now()), token=self._token,
        )
        return self.session.prepare_request(
            requests.Request("POST", self.endpoint, data=body, headers=signed.headers)
        )

    def compare(self, request: CompareRequest) -> Answer:
        """Make one VideoLivenessCompare call. Never raises for API or network failures."""
        return self.send(self.prepare(request))

    def probe_clock(self, region: str | None = None) -> None:
        """Learn the endpoint's clock from one HEAD of its root (not an API call: no action,
        no signature, nothing counted or billed; any answer carries a ``Date``), so that a
        process's first calls are signed on the endpoint's time without waiting for one
        whole API call. A failure leaves the clock to the first call's answer."""
        started = time.time()
        try:
            resp = self.session.head(self.endpoint.rstrip("/") + "/",
                                     timeout=(PROBE_SECONDS, PROBE_SECONDS),
                                     allow_redirects=False)
        except requests.RequestException:
            return
        self.clock_for(region).observe(resp.headers, started, time.time())

    def send(self, prepared: requests.PreparedRequest,
             on_sent: Callable[[float], None] | None = None,
             send_by: float | None = None, send_at: float | None = None) -> Answer:
        """Send a prepared call (see ``prepare``) and parse the answer. ``on_sent`` is called
        with the ``time.monotonic()`` at which the request's first bytes had left (not at all
        if nothing was sent, e.g. the connection could not be made). With ``send_at`` (a
        ``time.monotonic()``), the first byte does not leave before it: the thread sleeps at
        the write, with the request built and a connection in hand. With ``send_by``, a
        request that would leave later is not sent: SendTooLate. ``latency_ms`` counts from
        when the request left."""
        started_at = time.time()
        started = time.monotonic()
        sent: list[float] = []

        def first_bytes_left(when: float) -> None:
            sent.append(when)
            if on_sent is not None:
                on_sent(when)

        _first_byte.hook = first_bytes_left
        _first_byte.send_by = send_by
        _first_byte.send_at = send_at
        try:
            resp = self.session.send(prepared, timeout=self.timeout, allow_redirects=False)
            answer = parse_response(resp.status_code, resp.content)
            # Whatever the answer, its Date tells the endpoint's clock (call/clock.py).
            self.clock_for(prepared.headers.get("X-TC-Region")).observe(
                resp.headers, started_at + (sent[0] - started if sent else 0.0), time.time())
        except requests.ConnectTimeout:
            answer = Answer("ClientError.ConnectTimeout", "transport", message="connect timeout")
        except requests.ReadTimeout:
            answer = Answer("ClientError.ReadTimeout", "transport", message="read timeout")
        except requests.RequestException as exc:
            answer = Answer("ClientError.ConnectionError", "transport",
                            message=type(exc).__name__)
        finally:
            _first_byte.hook = _first_byte.send_by = _first_byte.send_at = None
        answer.latency_ms = int((time.monotonic() - (sent[0] if sent else started)) * 1000)
        # When the request left (the attempt's started_at), else when sending was begun.
        answer.started_at = started_at + (sent[0] - started if sent else 0.0)
        return answer

    def close(self) -> None:
        self.session.close()
