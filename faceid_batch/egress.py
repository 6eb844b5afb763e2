"""The egress policy: the one gate for every fetch and POST made on a producer's behalf.

Media URLs (from the producer API, the CLI or a manifest), the best frame an answer points
to, and completion callbacks all leave through here. FaceID and COS, the endpoints the
operator configures, do not. A request:

- is ``http`` or ``https``, with no ``user:password@`` (a credential would be stored,
  logged and echoed with the job);
- goes to a name resolved here, and every address it resolves to is checked: loopback,
  private (RFC 1918), link-local (where cloud metadata services live), carrier-grade NAT,
  unique-local, multicast, unspecified, IPv4-mapped and translated, and every other address
  that is not global is refused unless EGRESS_ALLOW_NETWORKS holds it;
- connects to an address that was checked, never to the result of a second lookup (a
  rebinding DNS server could answer it differently), with SNI and the certificate checked
  against the URL's own name;
- checks every redirect hop the same way (at most MAX_REDIRECTS) and never reads a
  redirect's body;
- reads at most the caller's byte cap, and ends at the caller's deadline however slowly
  the peer trickles bytes (a reaper thread shuts the socket down at the deadline);
- reads nothing from the environment: no proxy, no ``.netrc``.

A refusal (``EgressRefused``) names the rule that refused, never what the target answered.
"""

from __future__ import annotations

import heapq
import http.client
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
CONNECT_TIMEOUT = 5.0
MAX_ADDRESSES = 3  # of a name's addresses, those tried in turn
CHUNK = 256 * 1024
USER_AGENT = "faceid-batch/1"
# What a submit-time check waits for a name to resolve; a slower name is checked by the
# worker when it fetches (the submission is not refused for a slow resolver).
SUBMIT_RESOLVE_SECONDS = 2.0
SUBMIT_CACHE_SECONDS = 60.0
_REDIRECTS = (301, 302, 303, 307, 308)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                    "192.168.0.0/16"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(ValueError):
    """The policy refuses this URL; the message says which rule (never what was there)."""


class EgressError(OSError):
    """The fetch or POST failed on the way: ``kind`` says how (``dns``, ``connect``,
    ``tls``, ``timeout``, ``protocol``, ``too-large``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def forbidden(ip: IPAddress) -> str | None:
    """The kind of address ``ip`` is when the policy refuses it by default, else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped address"
        if ip.sixtofour is not None or ip.teredo is not None or ip in _NAT64:
            return "an address that embeds an IPv4 address"
        if ip in _ULA:
            return "a unique-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if any(ip in net for net in _RFC1918 if ip.version == net.version):
        return "a private address"
    if ip.is_private or not ip.is_global or ip.is_reserved:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class Target:
    """One hop: the URL's parts and the addresses it may connect to (all checked)."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class Policy:
    """What may be reached: global addresses, and those inside ``allow``."""

    allow: tuple[IPNetwork, ...] = ()
    max_redirects: int = MAX_REDIRECTS

    def check_address(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused, or None if it may be reached."""
        if any(ip.version == net.version and ip in net for net in self.allow):
            return None
        kind = forbidden(ip)
        return f"{kind}, outside EGRESS_ALLOW_NETWORKS" if kind else None

    def parse(self, url: str) -> Target:
        """The URL's parts once its form is checked (no lookup); EgressRefused says why not."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise EgressRefused("not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise EgressRefused(f"scheme {parts.scheme or '(none)'!r}: only http and https "
                                "are fetched")
        if "@" in parts.netloc:
            raise EgressRefused("credentials in the URL (user@ or user:password@) are not "
                                "accepted")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise EgressRefused("no host in the URL")
        if host == "localhost" or host.endswith(".localhost"):
            raise EgressRefused("localhost names are not reached")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80),
                      path)

    def resolve(self, target: Target, timeout: float) -> Target:
        """``target`` with its addresses, each checked; EgressRefused if any is refused."""
        addresses = _lookup(target.host, target.port, timeout)
        for ip in addresses:
            reason = self.check_address(ip)
            if reason is not None:
                raise EgressRefused(f"host {target.host} is {reason}"
                                    if _is_literal(target.host)
                                    else f"host {target.host} resolves to {reason}")
        return Target(target.scheme, target.host, target.port, target.path, addresses)

    def check(self, url: str) -> None:
        """A submit-time check: the URL's form and, when the name resolves in time, its
        addresses (cached a minute per host). A name that does not resolve now is not
        refused here: the worker checks it again when it fetches."""
        target = self.parse(url)
        reason = _submit_verdict(self, target.host, target.port)
        if reason is not None:
            raise EgressRefused(reason)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _lookup(host: str, port: int, timeout: float) -> tuple[IPAddress, ...]:
    """The addresses ``host`` resolves to (numeric forms such as 2130706433 too). A name is
    looked up on a thread of its own, waited for at most ``timeout``: a resolver that hangs
    on a producer's name holds that thread, never a shared pool other lookups need."""
    if _is_literal(host):
        return (ipaddress.ip_address(host),)
    answer: list[Any] = []

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=resolve, name="egress-dns", daemon=True)
    thread.start()
    thread.join(max(0.01, timeout))
    if not answer:
        raise EgressError("timeout", f"host {host}: name lookup took too long")
    if isinstance(answer[0], BaseException):
        raise EgressError("dns", f"host {host}: name not resolved")
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _canon, sockaddr in answer[0]:
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), None)
    if not seen:
        raise EgressError("dns", f"host {host}: name not resolved")
    return tuple(seen)


@lru_cache(maxsize=1024)
def _cached_verdict(policy: Policy, host: str, port: int, epoch: int) -> str | None:
    try:
        policy.resolve(Target("https", host, port, "/"), SUBMIT_RESOLVE_SECONDS)
    except EgressRefused as exc:
        return str(exc)
    except EgressError:
        return None  # not known now: the worker's own lookup decides
    return None


def _submit_verdict(policy: Policy, host: str, port: int) -> str | None:
    return _cached_verdict(policy, host, port, int(time.monotonic() // SUBMIT_CACHE_SECONDS))


# -- deadlines ---------------------------------------------------------------------------
class _Reaper:
    """Shuts sockets down at their deadline: a blocked read or write then returns at once,
    however the peer trickles (socket timeouts bound each operation, not the whole)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[socket.socket | None]]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._pid = 0

    def watch(self, sock: socket.socket, deadline: float) -> list[socket.socket | None]:
        entry: list[socket.socket | None] = [sock]
        with self._cond:
            if self._pid != os.getpid():  # first use in this process (or a forked child)
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(target=self._run, name="egress-reaper", daemon=True).start()
            heapq.heappush(self._heap, (deadline, next(self._ids), entry))
            self._cond.notify()
        return entry

    @staticmethod
    def forget(entry: list[socket.socket | None]) -> None:
        entry[0] = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                _, _, entry = heapq.heappop(self._heap)
            sock = entry[0]
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_reaper = _Reaper()


# -- connections to a checked address ---------------------------------------------------
def _open_socket(target: Target, deadline: float) -> socket.socket:
    """A connection to one of the target's checked addresses, tried in turn (at most
    MAX_ADDRESSES), each with what is left of CONNECT_TIMEOUT and the deadline."""
    last: OSError | None = None
    for ip in target.addresses[:MAX_ADDRESSES]:
        timeout = min(CONNECT_TIMEOUT, deadline - time.monotonic())
        if timeout <= 0:
            raise EgressError("timeout", f"host {target.host}: could not connect in time")
        # The checked address itself, never through another lookup (create_connection
        # would resolve again).
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((str(ip), target.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise EgressError("timeout" if isinstance(last, TimeoutError) else "connect",
                      f"host {target.host}: could not connect") from last


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to ``target``'s checked address; Host says its name."""

    def __init__(self, target: Target, timeout: float, deadline: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.target = target
        self.deadline = deadline
        self.watched: list[socket.socket | None] | None = None

    def _raw(self) -> socket.socket:
        sock = _open_socket(self.target, self.deadline)
        sock.settimeout(self.timeout)
        self.watched = _reaper.watch(sock, self.deadline)
        return sock

    def connect(self) -> None:
        self.sock = self._raw()

    def release(self) -> None:
        """End the exchange: the deadline no longer applies, the connection is closed.
        (Not in close(): http.client closes the connection itself when the server says it
        will close after this response, and the body is still to be read under the
        deadline then.)"""
        if self.watched is not None:
            _reaper.forget(self.watched)
        self.close()


class _PinnedTLS(_Pinned):
    """HTTPS to the checked address; SNI and the certificate name are the URL's host."""

    def __init__(self, target: Target, timeout: float, deadline: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(target, timeout, deadline)
        self.context = context

    def connect(self) -> None:
        raw = self._raw()
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.target.host)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raw.close()
            raise EgressError("tls", f"host {self.target.host}: TLS failed "
                                     f"({type(exc).__name__})") from None
        except OSError:
            raw.close()
            raise
        if self.watched is not None:
            # The TLS socket took the raw one's descriptor: the reaper shuts this one down.
            self.watched[0] = self.sock


@lru_cache(maxsize=4)
def _tls_context(bundle: str | None) -> ssl.SSLContext:
    if bundle is None:
        import certifi  # requests' own bundle, so this trusts what the rest of the product does

        bundle = certifi.where()
    return ssl.create_default_context(cafile=bundle)


def _context() -> ssl.SSLContext:
    # The CA bundle an operator points requests at is honoured; nothing else of the
    # environment is read.
    return _tls_context(os.environ.get("REQUESTS_CA_BUNDLE")
                        or os.environ.get("CURL_CA_BUNDLE") or None)


# -- responses ----------------------------------------------------------------------------
@dataclass
class Response:
    """A response whose body is read within the byte cap and the deadline."""

    url: str
    status: int
    headers: http.client.HTTPMessage
    max_bytes: int
    deadline: float
    _raw: http.client.HTTPResponse = field(repr=False)
    _read: int = 0

    def iter_bytes(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body in chunks; EgressError ``too-large`` past the cap, ``timeout`` past the
        deadline."""
        declared = self.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise EgressError("too-large", f"the response is over {self.max_bytes:,} bytes")
        while True:
            chunk = _guarded(self.deadline, lambda: self._raw.read(size))
            if not chunk:
                if time.monotonic() >= self.deadline:
                    raise EgressError("timeout", "the response did not end in time")
                return
            self._read += len(chunk)
            if self._read > self.max_bytes:
                raise EgressError("too-large", f"the response is over {self.max_bytes:,} "
                                  "bytes")
            yield chunk

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())


R = TypeVar("R")


def _guarded(deadline: float, op: Callable[[], R]) -> R:
    """Run a socket operation; its errors become EgressError (``timeout`` once the
    deadline has passed, as the reaper's shutdown makes it fail)."""
    try:
        return op()
    except EgressError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            raise EgressError("timeout", "no answer in time") from None
        raise EgressError("protocol" if isinstance(exc, http.client.HTTPException)
                          else "connect", f"the connection failed ({type(exc).__name__})"
                          ) from None


class Egress:
    """Fetches and POSTs under one Policy."""

    def __init__(self, policy: Policy, user_agent: str = USER_AGENT) -> None:
        self.policy = policy
        self.user_agent = user_agent

    def _connection(self, target: Target, timeout: float, deadline: float) -> _Pinned:
        if target.scheme == "https":
            return _PinnedTLS(target, timeout, deadline, _context())
        return _Pinned(target, timeout, deadline)

    def _hop(self, url: str, deadline: float) -> Target:
        left = deadline - time.monotonic()
        if left <= 0:
            raise EgressError("timeout", "deadline passed")
        return self.policy.resolve(self.policy.parse(url), min(left, CONNECT_TIMEOUT))

    @contextmanager
    def get(self, url: str, *, max_bytes: int, timeout: float,
            read_timeout: float = 30.0) -> Iterator[Response]:
        """GET ``url`` following at most ``policy.max_redirects`` redirects, each hop
        checked; the whole exchange ends within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for _ in range(self.policy.max_redirects + 1):
            target = self._hop(url, deadline)
            conn = self._connection(target, min(read_timeout, timeout), deadline)
            try:
                raw = _guarded(deadline, partial(
                    _request, conn, "GET", target.path, None,
                    {"User-Agent": self.user_agent, "Accept": "*/*",
                     "Accept-Encoding": "identity"}))
                location = raw.getheader("location")
                if raw.status in _REDIRECTS and location:
                    url = urljoin(url, location.strip())
                    continue  # the redirect's body is never read
                yield Response(url, raw.status, raw.headers, max_bytes, deadline, raw)
                return
            finally:
                conn.release()
        raise EgressRefused(f"more than {self.policy.max_redirects} redirects")

    def post(self, url: str, body: bytes, headers: dict[str, str], *,
             timeout: float) -> int:
        """POST ``body`` to ``url`` (redirects are not followed); return the status. The
        response body is never read."""
        deadline = time.monotonic() + timeout
        target = self._hop(url, deadline)
        conn = self._connection(target, timeout, deadline)
        try:
            raw = _guarded(deadline, lambda: _request(
                conn, "POST", target.path, body,
                {"User-Agent": self.user_agent, **headers,
                 "Content-Length": str(len(body))}))
            return raw.status
        finally:
            conn.release()


def _request(conn: _Pinned, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> http.client.HTTPResponse:
    conn.request(method, path, body=body, headers=headers)
    return conn.getresponse()


def from_networks(allow: Sequence[IPNetwork]) -> Egress:
    """An Egress under the default policy with ``allow`` (EGRESS_ALLOW_NETWORKS)."""
    return Egress(Policy(tuple(allow)))
