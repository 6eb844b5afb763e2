"""HTTP plumbing shared by the simulator's two servers (FaceID API and COS store).

Both servers speak HTTP/1.1 with keep-alive, because the batch worker and the benchmarks keep
pooled connections open; that only works if every response carries a Content-Length and every
request body is consumed before the next request is parsed on the same connection.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("faceid_sim.http")
_QUERY_RE = re.compile(r"\?\S*")

# Python's socket module lacks SO_TIMESTAMPNS on some builds (this project's Python 3.11
# among them), although Linux has it: without the number, the simulator silently stamped
# every request when its handler thread got to it (measured under load: up to 93 ms after
# the client's own send stamp), and counted on-time calls as crowding the next second.
SO_TIMESTAMPNS: int | None = getattr(socket, "SO_TIMESTAMPNS",
                                     35 if sys.platform.startswith("linux") else None)

# A body we are willing to read and throw away to keep a connection reusable after an early
# rejection; anything larger closes the connection instead.
MAX_DRAIN_BYTES = 64 * 1024 * 1024


class SimHTTPServer(ThreadingHTTPServer):
    """Threaded server that tracks its open connections so stop() can cut them.

    ThreadingHTTPServer.shutdown() only stops accepting: handler threads blocked on idle
    keep-alive sockets would go on serving pooled clients of a "stopped" simulator.
    """

    daemon_threads = True
    # A benchmark keeps ~80 connections open and opens more in bursts.
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        if getattr(handler, "stamp_arrivals", False) and SO_TIMESTAMPNS is not None:
            try:  # inherited by every accepted connection (see SimHandler.stamp_arrivals)
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (their handler threads then exit)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful when constructed with port 0)."""
        return int(self.server_address[1])


class SimHandler(BaseHTTPRequestHandler):
    """Base request handler: HTTP/1.1, no Nagle delay, quiet logs, body helpers."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms per call.
    disable_nagle_algorithm = True
    # Idle keep-alive connections are reaped so abandoned clients do not pin threads forever.
    timeout = 300
    sys_version = ""
    _body_consumed: bool = False

    def version_string(self) -> str:
        return self.server_version

    def clock(self) -> float:
        """The server's time (Unix seconds): the host's, unless a handler skews it."""
        return time.time()

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header of every answer, on the server's clock.
        return super().date_time_string(self.clock() if timestamp is None else timestamp)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Query strings are cut: presigned URLs carry signatures and tokens.
        log.debug("%s %s", self.address_string(), _QUERY_RE.sub("?...", format % args))

    # --- request body ---------------------------------------------------------------------
    def content_length(self) -> int | None:
        """Declared Content-Length, or None when absent or unparsable."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            return None
        return value if value >= 0 else None

    def read_body(self, limit: int) -> bytes | None:
        """Read the whole body (at most ``limit`` bytes); None if it is larger than that."""
        length = self.content_length() or 0
        if length > limit:
            return None
        self._body_consumed = True
        return self.rfile.read(length) if length else b""

    def drain_body(self) -> None:
        """Consume an unread body so the connection can carry the next request."""
        if self._body_consumed:
            return
        self._body_consumed = True
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            return
        length = self.content_length() or 0
        if length > MAX_DRAIN_BYTES:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1024 * 1024))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    # --- responses ------------------------------------------------------------------------
    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        """Send a complete response with an exact Content-Length."""
        self.drain_body()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``payload`` as JSON with Content-Type exactly ``application/json``.

        Tencent's SDK only parses error envelopes when the Content-Type is exactly that string.
        """
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_bytes(status, body, "application/json", headers)

    # --- arrival time ---------------------------------------------------------------------
    # A handler that sets this stamps each request with the kernel's receive time of its first
    # bytes (SO_TIMESTAMPNS), like a gateway would, instead of when a Python thread got round
    # to it: on a busy host a handler thread can wait tens of ms for the GIL, which would make
    # the simulator's rate-limit window see requests later (and crowded) than they arrived.
    # SimHTTPServer sets the option on its listening socket: every accepted connection
    # inherits it, so the bytes that arrived before the handler thread started are stamped.
    stamp_arrivals = False
    arrival_wall: float = 0.0  # time.time() scale
    arrival_source: str = "handler"  # "kernel" when the kernel's receive time was read

    def _wait_for_request(self) -> bool:
        """Block until the next request's first bytes are here; stamp them. False on EOF."""
        self.arrival_wall = 0.0
        self.arrival_source = "handler"
        try:
            data, ancillary, _flags, _addr = self.connection.recvmsg(
                1, socket.CMSG_SPACE(16), socket.MSG_PEEK)
        except OSError:
            return True  # let the normal read path meet (and handle) the same error
        if not data:
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                self.arrival_wall = sec + nsec / 1e9
                self.arrival_source = "kernel"
        if not self.arrival_wall:
            self.arrival_wall = time.time()
        return True

    def arrival_monotonic(self) -> float:
        """The request's arrival on the ``time.monotonic()`` clock."""
        if not self.arrival_wall:
            return time.monotonic()
        return time.monotonic() - max(0.0, time.time() - self.arrival_wall)

    def handle_one_request(self) -> None:
        self._body_consumed = False
        try:
            if self.stamp_arrivals and not self._wait_for_request():
                self.close_connection = True
                return
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The client went away (often on purpose: a timed-out download); nothing to answer.
            self.close_connection = True


def serve_in_thread(server: SimHTTPServer, name: str) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread and return the thread."""
    # A short poll interval keeps stop() quick (shutdown waits for the next poll).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    return thread


def stop_server(server: SimHTTPServer, thread: threading.Thread | None = None) -> None:
    """Stop accepting, cut open connections and release the listening socket."""
    server.shutdown()
    server.close_connections()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)
