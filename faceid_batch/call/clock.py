"""How far an endpoint's clock is from this host's, learned from its answers' ``Date``.

A FaceID request is signed with a timestamp the API accepts only within 300 s of its own
clock (``AuthFailure.SignatureExpire``), and a presigned COS URL carries a validity window
COS judges on its clock. So both are signed with this host's time corrected by the offset
of the endpoint they go to (``EndpointClock.now``), never with the bare host clock.

The offset is learned as the AWS SDKs learn it: from every HTTP answer's ``Date`` header,
the server's time minus the midpoint of when the request left and when the answer came.
``Date`` has whole seconds and is truncated, so the server read its clock somewhere in
``[Date, Date + 1)``: a sample takes ``Date + 0.5`` and is good to half a second plus half
the round trip. An answer with an ``Age`` header is discarded (a cache may have served it:
its ``Date`` is when the origin made it), and so is one that took longer than
``MAX_ROUND_TRIP`` or that puts the clocks more than ``MAX_OFFSET`` apart.

The offset held has an uncertainty too (0 at first: the clocks are taken to agree until an
answer says otherwise). A sample moves the offset when the two disagree by more than both
uncertainties together (and at least ``TOLERANCE``): the new offset is the sample, or 0
when the sample is within its uncertainty of 0. A sample that agrees but is tighter than
the offset held replaces it (a quick answer after a slow one). So two clocks that agree
keep an offset of exactly 0 (signing is what it would be without this module), a skewed
one is learned from its first answer, and the gauge does not jitter with the resolution of
``Date``: an error of a second changes nothing that matters (the API accepts 300 s either
way; a presigned window starts 60 s back).

Process-local: each worker process (each prefork child) learns its own offsets, from the
answers it gets, in a registry keyed by endpoint (``endpoint_clock``); nothing is shared
through Redis, and a restarted process learns again from its first answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Below this, an offset is the resolution of Date and the round trip, not a skew.
TOLERANCE = 1.0
# Further apart than this, the Date is not believed (a broken server or proxy).
MAX_OFFSET = 86_400.0
# A longer round trip says too little about when the server read its clock.
MAX_ROUND_TRIP = 60.0
# How long a call waits for the first answer of its process to an endpoint (first_answer).
FIRST_ANSWER_WAIT = 60.0


def parse_http_date(value: str | None) -> float | None:
    """Unix seconds of an HTTP date (RFC 9110: IMF-fixdate and the two obsolete forms), or
    None if it is absent or unreadable. Bounded: at most 64 characters are read."""
    if not value or len(value) > 64:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000" or the asctime form: HTTP dates are GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class EndpointClock:
    """The learned offset of one endpoint's clock from this host's. Thread-safe."""

    def __init__(self, name: str, tolerance: float = TOLERANCE) -> None:
        self.name = name
        self.tolerance = tolerance
        self._offset = 0.0
        self._uncertainty = 0.0  # of the offset held: 0 until a sample moves it
        self._samples = 0
        self._answered = False  # an HTTP answer came (first_answer lets everyone go)
        self._probing = False  # a call is out to get that first answer
        self._cond = threading.Condition()
        self._warned = False

    def __repr__(self) -> str:
        return f"EndpointClock({self.name!r}, offset={self._offset:+.1f})"

    @property
    def offset(self) -> float:
        """Seconds to add to this host's clock to read the endpoint's."""
        return self._offset

    @property
    def answered(self) -> bool:
        """Whether the endpoint has answered this process yet (usable Date or not)."""
        return self._answered

    @property
    def samples(self) -> int:
        """How many answers' Date headers were used."""
        return self._samples

    def now(self) -> float:
        """The endpoint's time now, as far as its answers tell (Unix seconds)."""
        return time.time() + self._offset

    def observe(self, headers: Mapping[str, str], sent: float, received: float) -> float | None:
        """Learn from one HTTP answer: ``headers`` its headers (case-insensitive), ``sent``
        and ``received`` this host's ``time.time()`` when the request's first bytes left
        and when the answer was read. Returns the sample (seconds) or None if it was
        discarded. Every answer, usable or not, lets the calls waiting in ``first_answer``
        go."""
        try:
            return self._sample(headers, sent, received)
        finally:
            if not self._answered:
                with self._cond:
                    self._answered = True
                    self._cond.notify_all()

    def _sample(self, headers: Mapping[str, str], sent: float,
                received: float) -> float | None:
        if headers.get("Age") is not None:
            return None
        date = parse_http_date(headers.get("Date"))
        round_trip = received - sent
        if date is None or not 0.0 <= round_trip <= MAX_ROUND_TRIP:
            return None
        sample = date + 0.5 - (sent + received) / 2
        if abs(sample) > MAX_OFFSET:
            if not self._warned:
                self._warned = True
                log.warning("clock of %s: its Date is %.0f s from this host's; not believed",
                            self.name, sample)
            return None
        uncertainty = 0.5 + round_trip / 2
        with self._cond:
            self._samples += 1
            if abs(sample - self._offset) > max(self.tolerance,
                                                uncertainty + self._uncertainty):
                before = self._offset
                self._offset = 0.0 if abs(sample) <= max(self.tolerance, uncertainty) \
                    else sample
                self._uncertainty = uncertainty
                log.log(logging.WARNING if self._offset else logging.INFO,
                        "clock of %s: %+.1f s from this host's (was %+.1f s); requests to it "
                        "are signed with its time", self.name, self._offset, before)
            elif self._offset and uncertainty < self._uncertainty:
                self._offset, self._uncertainty = sample, uncertainty  # a tighter sample
        return sample

    @contextmanager
    def first_answer(self, timeout: float = FIRST_ANSWER_WAIT) -> Iterator[None]:
        """Around a call to this endpoint: until the first answer of this process has come,
        one call goes and the others wait for its answer (at most ``timeout``), so that at
        most one request per process is signed before the offset is known. A call that ends
        without an answer (a network error, given back before sending) lets the next one
        go. Once an answer has come this costs one attribute read."""
        if self._answered:
            yield
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._answered and self._probing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break  # waited long enough: go without it
                self._cond.wait(remaining)
            mine = not self._answered and not self._probing
            if mine:
                self._probing = True
        try:
            yield
        finally:
            if mine:
                with self._cond:
                    self._probing = False
                    self._cond.notify_all()


_clocks: dict[str, EndpointClock] = {}
_clocks_lock = threading.Lock()


def endpoint_clock(name: str) -> EndpointClock:
    """This process's clock of the endpoint ``name`` (made on first use)."""
    clock = _clocks.get(name)
    if clock is None:
        with _clocks_lock:
            clock = _clocks.setdefault(name, EndpointClock(name))
    return clock


def offsets() -> dict[str, float]:
    """The current offset of every endpoint this process has a clock of (the gauge)."""
    with _clocks_lock:
        return {name: clock.offset for name, clock in _clocks.items()}


def faceid_endpoint(url: str, region: str) -> str:
    """The name of a FaceID endpoint's clock: its host and the region called there."""
    return f"{urlsplit(url).netloc}/{region}"


def bucket_endpoint(url: str) -> str:
    """The name of a COS bucket endpoint's clock: its host."""
    return urlsplit(url).netloc
