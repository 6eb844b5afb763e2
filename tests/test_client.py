"""Our signed client against the simulator's independent signature check, over real HTTP."""

from __future__ import annotations

import pytest

from faceid_batch.call.errors import Kind
from faceid_batch.call.faceid_client import CompareRequest, FaceIDClient
from faceid_batch.local.samples import write_pair
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY, sim_calls


@pytest.fixture
def staged_request(simulator, sim_control, tmp_path, sqlite_url):
    settings = load_settings(faceid_secret_id=FAKE_SECRET_ID, faceid_secret_key=FAKE_SECRET_KEY,
                             cos_bucket=BUCKET, cos_domain=simulator.cos_domain,
                             cos_scheme="http", database_url=sqlite_url)
    stager = MediaStager(settings)
    photo, video = write_pair(tmp_path, 1)
    p, v = stager.stage("photo", str(photo)), stager.stage("video", str(video))
    return CompareRequest(stager.presign(p.key), p.info.md5, stager.presign(v.key), v.info.md5,
                          "LIP", "4721")


def client(simulator, **kw) -> FaceIDClient:
    args = dict(endpoint=simulator.api_url, region="ap-singapore", secret_id=FAKE_SECRET_ID,
                secret_key=FAKE_SECRET_KEY)
    args.update(kw)
    return FaceIDClient(**args)


def test_signed_call_is_accepted(simulator, staged_request):
    answer = client(simulator).compare(staged_request)
    assert answer.code == "Success" and answer.rule.kind == Kind.SUCCESS
    assert answer.request_id and answer.sim is not None and answer.best_frame is not None
    assert answer.latency_ms >= 0 and answer.started_at is not None


def test_wrong_key_is_refused_by_the_signature_check(simulator, staged_request):
    answer = client(simulator, secret_key="wrongFAKEkey000000000000000000000").compare(
        staged_request)
    assert answer.code == "AuthFailure.SignatureFailure"
    assert answer.channel == "error" and answer.rule.kind == Kind.ACCOUNT


def test_unreachable_endpoint_is_a_transient_transport_error(staged_request):
    answer = FaceIDClient(endpoint="http://127.0.0.1:9", region="ap-singapore",
                          secret_id="x", secret_key="y", connect_timeout=0.5).compare(
        staged_request)
    assert answer.code.startswith("ClientError.") and answer.rule.kind == Kind.TRANSIENT


def test_repr_never_shows_the_key(simulator):
    assert FAKE_SECRET_KEY not in repr(client(simulator))


def test_on_sent_reports_when_the_first_bytes_left(simulator, sim_control, staged_request):
    """The limiter's write-back uses this moment: it must be the request's real departure,
    which the simulator stamps (kernel receive time) within a few ms, once per call."""
    import time

    c = client(simulator)
    sent: list[float] = []
    offset = time.time() - time.monotonic()
    before = time.monotonic()
    answer = c.send(c.prepare(staged_request), on_sent=sent.append)
    after = time.monotonic()
    assert answer.code == "Success"
    assert len(sent) == 1 and before <= sent[0] <= after
    (call,) = [k for k in sim_calls(sim_control) if k["request_id"] == answer.request_id]
    # The simulator's stamp is the kernel's receive time, not its handler thread's clock.
    assert call["t_start_source"] == "kernel"
    assert abs(call["t_start"] - (sent[0] + offset)) < 0.02
    # The attempt row's started_at is the same moment, on the wall clock.
    assert abs(call["t_start"] - answer.started_at) < 0.02


def test_a_request_past_its_send_by_time_is_not_sent(simulator, sim_control, staged_request):
    import time

    from faceid_batch.call.ratelimit import SendTooLate

    c = client(simulator)
    sent: list[float] = []
    # Warm a pooled connection, so the refused request is the one that would reuse it.
    assert c.send(c.prepare(staged_request)).code == "Success"
    with pytest.raises(SendTooLate):
        c.send(c.prepare(staged_request), on_sent=sent.append,
               send_by=time.monotonic() - 0.001)
    assert sent == [] and len(sim_calls(sim_control)) == 1  # the simulator saw nothing more
    # In time, the same client sends as usual.
    answer = c.send(c.prepare(staged_request), on_sent=sent.append,
                    send_by=time.monotonic() + 5)
    assert answer.code == "Success" and len(sent) == 1 and len(sim_calls(sim_control)) == 2


def test_on_sent_is_not_called_when_nothing_was_sent(staged_request):
    sent: list[float] = []
    c = FaceIDClient(endpoint="http://127.0.0.1:9", region="ap-singapore", secret_id="x",
                     secret_key="y", connect_timeout=0.5)
    c.send(c.prepare(staged_request), on_sent=sent.append)
    assert sent == []


def test_send_at_holds_the_first_byte_until_its_time(simulator, sim_control, staged_request):
    """The wait for a slot is made at the first write, with the request built and a
    connection in hand: the request leaves at its time, not before, and its latency counts
    from then."""
    import time

    c = client(simulator)
    assert c.send(c.prepare(staged_request)).code == "Success"  # a pooled connection
    sent: list[float] = []
    offset = time.time() - time.monotonic()
    send_at = time.monotonic() + 0.3
    answer = c.send(c.prepare(staged_request), on_sent=sent.append, send_at=send_at)
    done = time.monotonic()
    assert answer.code == "Success" and len(sent) == 1
    assert send_at <= sent[0] < send_at + 0.05
    (call,) = [k for k in sim_calls(sim_control) if k["request_id"] == answer.request_id]
    assert call["t_start"] >= send_at + offset - 0.002  # the simulator's kernel stamp
    assert answer.latency_ms <= (done - sent[0]) * 1000 + 1  # not the 0.3 s of waiting


def test_a_call_through_an_http_proxy_is_held_and_reported_too(simulator, sim_control,
                                                               staged_request):
    """Through a proxy, requests uses a proxy manager with its own pools: they must run the
    first-write hook too, or the call would leave before its slot and never be reported."""
    import http.client
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    import requests

    relayed: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            target = urlsplit(self.path)  # a proxy gets the absolute URI
            relayed.append(self.path)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            upstream = http.client.HTTPConnection(target.netloc, timeout=30)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("proxy-connection", "connection")}
            upstream.request("POST", target.path or "/", body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"http": f"http://127.0.0.1:{server.server_address[1]}"}
        c = client(simulator, session=session)
        sent: list[float] = []
        send_at = time.monotonic() + 0.2
        answer = c.send(c.prepare(staged_request), on_sent=sent.append, send_at=send_at)
        assert answer.code == "Success" and relayed  # it went through the proxy...
        assert len(sent) == 1 and sent[0] >= send_at  # ...held until its time and reported
    finally:
        server.shutdown()
