"""The egress policy against real servers on loopback addresses.

Every case that should be refused is tried with EGRESS_ALLOW_NETWORKS empty (the default)
and a server listening where the URL points, so a refusal is the policy's and not a closed
port's. The redirect case allows one loopback address and puts the target on another.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from faceid_batch import egress
from faceid_batch.egress import Egress, EgressError, EgressRefused, Policy

LOOPBACK_ONLY = Policy((ipaddress.ip_network("127.0.0.1/32"),))
BIG = 200 * 1024 * 1024


class Server:
    """A small HTTP server on ``host`` that records every request it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/ok":
                    self._send(200, b"hello")
                elif path == "/to":
                    self.send_response(302)
                    self.send_header("Location", query)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/big-redirect":
                    # A redirect whose body is 200 MB: never read.
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                    self.send_header("Content-Length", str(BIG))
                    self.end_headers()
                    self._stream(BIG)
                elif path in ("/big", "/big-chunked"):
                    self.send_response(200)
                    if path == "/big":
                        self.send_header("Content-Length", str(BIG))
                    self.end_headers()
                    self._stream(BIG)
                elif path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self._trickle()
                elif path == "/trickle-close":
                    # HTTP/1.0 style: the server closes after this response, so http.client
                    # closes the connection as soon as the headers are read.
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    self._trickle()
                elif path == "/trickle-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self._trickle(header=True)
                else:
                    self._send(404, b"no")

            def do_POST(self) -> None:  # noqa: N802
                outer.hits.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Length", str(BIG))
                    self.end_headers()
                    self._stream(BIG)
                else:
                    self._send(204, b"")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, n: int) -> None:
                block = b"x" * 65536
                try:
                    for _ in range(n // len(block)):
                        self.wfile.write(block)
                except OSError:
                    pass

            def _trickle(self, header: bool = False) -> None:
                try:
                    for _ in range(1000):
                        self.wfile.write(b"X-Slow: y\r\n" if header else b"y")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def other():
    """A server on 127.0.0.2: loopback too, but outside LOOPBACK_ONLY."""
    s = Server("127.0.0.2")
    yield s
    s.close()


def fetch(policy: Policy, url: str, max_bytes: int = 10_000, timeout: float = 5) -> bytes:
    with Egress(policy).get(url, max_bytes=max_bytes, timeout=timeout) as resp:
        assert resp.status == 200, resp.status
        return resp.read()


def test_an_allowed_address_is_fetched(server):
    assert fetch(LOOPBACK_ONLY, server.url + "/ok") == b"hello"


@pytest.mark.parametrize("make_url,reason", [
    (lambda p: f"http://127.0.0.1:{p}/ok", "loopback"),
    (lambda p: f"https://127.0.0.1:{p}/ok", "loopback"),
    (lambda p: f"http://localhost:{p}/ok", "localhost"),
    (lambda p: f"http://LOCALHOST.:{p}/ok", "localhost"),
    (lambda p: f"http://2130706433:{p}/ok", "loopback"),  # 127.0.0.1 in decimal
    (lambda p: f"http://0x7f000001:{p}/ok", "loopback"),
    (lambda p: f"http://0177.0.0.1:{p}/ok", "loopback"),
    (lambda p: f"http://127.1:{p}/ok", "loopback"),
    (lambda p: f"http://[::1]:{p}/ok", "loopback"),
    (lambda p: f"http://[::ffff:127.0.0.1]:{p}/ok", "IPv4-mapped"),
    (lambda p: f"http://0.0.0.0:{p}/ok", "unspecified"),
    (lambda p: f"http://user@127.0.0.1:{p}/ok", "credentials"),
    (lambda p: f"http://user:pass@127.0.0.1:{p}/ok", "credentials"),
    (lambda p: f"file:///etc/passwd#{p}", "scheme"),
    (lambda p: f"ftp://127.0.0.1:{p}/ok", "scheme"),
    (lambda p: f"gopher://127.0.0.1:{p}/_", "scheme"),
])
def test_default_policy_refuses_loopback_in_every_spelling(server, make_url, reason):
    url = make_url(server.port)
    with pytest.raises(EgressRefused, match=reason):
        fetch(Policy(), url)
    with pytest.raises(EgressRefused, match=reason):
        Policy().check(url)  # the submit-time check says the same
    assert server.hits == []  # nothing reached the server


@pytest.mark.parametrize("address,kind", [
    ("169.254.169.254", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("fd00::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("2002:7f00:1::", "embeds an IPv4"),  # 6to4 of 127.0.0.1
    ("64:ff9b::7f00:1", "embeds an IPv4"),  # NAT64 of 127.0.0.1
    ("192.0.2.1", "reserved"),  # documentation range: not global
    ("240.0.0.1", "reserved"),
])
def test_addresses_that_are_not_global_are_refused(address, kind):
    reason = Policy().check_address(ipaddress.ip_address(address))
    assert reason is not None and kind in reason
    # Allowed networks are the operator's exceptions.
    net = ipaddress.ip_network(f"{address}/{32 if ':' not in address else 128}")
    assert Policy((net,)).check_address(ipaddress.ip_address(address)) is None


def test_global_addresses_pass():
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert Policy().check_address(ipaddress.ip_address(address)) is None


def test_a_redirect_is_checked_at_every_hop(server, other):
    # The first hop is allowed (127.0.0.1); the redirect points at 127.0.0.2, which is not.
    url = f"{server.url}/to?{other.url}/latest/meta-data/"
    with pytest.raises(EgressRefused, match="loopback"):
        fetch(LOOPBACK_ONLY, url)
    assert server.hits == [f"/to?{other.url}/latest/meta-data/"]
    assert other.hits == []  # the internal service never saw a request
    # Redirects to other schemes are refused as well.
    for target in ("file:///etc/passwd", "ftp://127.0.0.1/x", "http://u:p@127.0.0.1/"):
        with pytest.raises(EgressRefused):
            fetch(LOOPBACK_ONLY, f"{server.url}/to?{target}")


def test_redirects_are_followed_a_few_times_only(server):
    assert fetch(LOOPBACK_ONLY, f"{server.url}/to?/ok") == b"hello"
    with pytest.raises(EgressRefused, match="redirects"):
        fetch(LOOPBACK_ONLY, server.url + "/loop")
    assert len(server.hits) == 2 + egress.MAX_REDIRECTS + 1


def test_a_redirect_body_is_never_read(server):
    started = time.monotonic()
    assert fetch(LOOPBACK_ONLY, server.url + "/big-redirect") == b"hello"
    assert time.monotonic() - started < 3  # 200 MB were not read


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_the_body_is_capped(server, path):
    started = time.monotonic()
    with pytest.raises(EgressError, match="over 1,000,000 bytes") as info:
        fetch(LOOPBACK_ONLY, server.url + path, max_bytes=1_000_000)
    assert info.value.kind == "too-large"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/trickle", "/trickle-close", "/trickle-headers"])
def test_a_trickling_peer_is_cut_at_the_deadline(server, path):
    # Each byte comes well within any socket timeout; only the deadline ends it.
    started = time.monotonic()
    with pytest.raises(EgressError) as info:
        fetch(LOOPBACK_ONLY, server.url + path, timeout=1.0)
    elapsed = time.monotonic() - started
    assert info.value.kind == "timeout"
    assert 0.9 < elapsed < 2.0, elapsed


def test_tls_to_a_plain_port_fails_fast(server):
    started = time.monotonic()
    with pytest.raises(EgressError) as info:
        fetch(LOOPBACK_ONLY, f"https://127.0.0.1:{server.port}/ok")
    assert info.value.kind in ("tls", "connect")
    assert time.monotonic() - started < 3


def test_a_closed_port_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EgressError) as info:
        fetch(LOOPBACK_ONLY, f"http://127.0.0.1:{port}/x")
    assert info.value.kind == "connect"


def test_one_lookup_per_hop_and_the_checked_address_is_dialled(server, monkeypatch):
    # A resolver that answers an allowed address first and another one afterwards (DNS
    # rebinding): the fetch must connect where the first answer pointed.
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    calls = []

    def rebinding(host, port, family=0, type=0, *args):  # noqa: A002 - socket's names
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(egress.socket, "getaddrinfo", rebinding)
    url = f"http://media.test:{server.port}/ok"
    assert fetch(LOOPBACK_ONLY, url) == b"hello"
    assert calls == ["media.test"]


def test_a_name_that_resolves_inside_is_refused_at_submit(monkeypatch):
    monkeypatch.setattr(egress.socket, "getaddrinfo", lambda host, port, *a: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))])
    egress._cached_verdict.cache_clear()
    with pytest.raises(EgressRefused, match="internal.test resolves to a private address"):
        Policy().check("https://internal.test/photo.jpg")
    egress._cached_verdict.cache_clear()


def test_a_name_that_does_not_resolve_is_left_to_the_worker():
    Policy().check("https://no-such-host.invalid/photo.jpg")  # not known now: not refused
    with pytest.raises(EgressError) as info:
        fetch(Policy(), "https://no-such-host.invalid/photo.jpg")
    assert info.value.kind == "dns"


def test_post_returns_the_status_and_never_reads_the_body(server):
    e = Egress(LOOPBACK_ONLY)
    assert e.post(server.url + "/hook", b"{}", {"Content-Type": "application/json"},
                  timeout=5) == 204
    started = time.monotonic()
    assert e.post(server.url + "/big", b"{}", {}, timeout=5) == 200
    assert time.monotonic() - started < 3
    with pytest.raises(EgressRefused, match="loopback"):
        Egress(Policy()).post(server.url + "/hook", b"{}", {}, timeout=5)
    assert server.hits == ["/hook", "/big"]


def test_a_name_with_many_silent_addresses_still_ends_at_the_deadline(monkeypatch):
    # Eight addresses whose listeners never accept (their backlog is full, so SYNs are
    # dropped): trying each with a full connect timeout would take 40 s.
    listeners, fillers = [], []
    port = 0
    for i in range(1, 9):
        sock = socket.socket()
        sock.bind((f"127.0.0.{i}", port))
        port = sock.getsockname()[1]
        sock.listen(0)
        listeners.append(sock)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((f"127.0.0.{i}", port))
            fillers.append(filler)
    time.sleep(0.2)
    monkeypatch.setattr(egress.socket, "getaddrinfo", lambda host, p, *a: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"127.0.0.{i}", p)) for i in range(1, 9)])
    policy = Policy((ipaddress.ip_network("127.0.0.0/8"),))
    for call in (lambda: fetch(policy, f"http://many.test:{port}/", timeout=3),
                 lambda: Egress(policy).post(f"http://many.test:{port}/", b"{}", {},
                                             timeout=3)):
        started = time.monotonic()
        with pytest.raises(EgressError) as info:
            call()
        assert info.value.kind in ("timeout", "connect")
        assert time.monotonic() - started < 4, time.monotonic() - started
    for s in listeners + fillers:
        s.close()


def test_a_hung_lookup_holds_no_one_elses(monkeypatch):
    # Names that never resolve tie up only their own lookups: an address given as a literal
    # needs none, and another name is looked up at once.
    real = socket.getaddrinfo

    def slow(host, port, *args):
        if host.endswith(".slow.test"):
            time.sleep(5)
        return real("127.0.0.1", port, *args)

    monkeypatch.setattr(egress.socket, "getaddrinfo", slow)
    threads = [threading.Thread(target=lambda n=n: pytest.raises(
        EgressError, fetch, LOOPBACK_ONLY, f"http://h{n}.slow.test/", timeout=1))
        for n in range(8)]
    for t in threads:
        t.start()
    started = time.monotonic()
    with pytest.raises(EgressError):
        fetch(LOOPBACK_ONLY, "http://127.0.0.1:9/", timeout=2)  # refused at once: no lookup
    assert egress._lookup("fine.test", 80, 1.0) == (ipaddress.ip_address("127.0.0.1"),)
    assert time.monotonic() - started < 1.0
    for t in threads:
        t.join()
