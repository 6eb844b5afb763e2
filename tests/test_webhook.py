"""Completion callbacks: signed, retried with backoff, every attempt recorded; the API.

The receiver is a real HTTP server in the test process; deliveries come from a real worker.
Until ``tasks.py`` calls ``notify.job_finished`` itself (``HOOKED``), the delivery test
makes that call once the job is final, exactly where the worker will.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr
from sqlalchemy import select

import faceid_batch.tasks
from faceid_batch import api, notify
from faceid_batch.db import session_scope
from faceid_batch.models import WebhookDelivery
from faceid_batch.samples import write_pair
from faceid_batch.submit import SubmitError
from faceid_batch.worker import resources
from helpers import wait_until

SECRET = "whsec-test-not-real-0123456789"
HOOKED = "job_finished" in inspect.getsource(faceid_batch.tasks)
WORKER = dict(extra_args=("--include", "faceid_batch.notify"), WEBHOOK_SECRET=SECRET,
              WEBHOOK_RETRY_BASE_DELAY="0.2", WEBHOOK_MAX_ATTEMPTS="3")


class Receiver:
    """A local webhook receiver: /ok answers 200, /flaky 500 once then 200, /down 500."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    seen = sum(1 for p, _, _ in receiver.requests if p == self.path)
                ok = self.path == "/ok" or (self.path == "/flaky" and seen > 1)
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def hook_settings(configured, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    return configured.model_copy(update={"webhook_secret": SecretStr(SECRET)})


def deliveries(url: str, job_id: int) -> list[tuple[int, int | None, str | None]]:
    with session_scope(url) as s:
        return [(d.attempt, d.status_code, d.error) for d in s.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id))]


def test_one_signed_delivery_per_job_and_retries_after_500(
        hook_settings, sim_control, start_worker, receiver, tmp_path):
    settings = hook_settings
    start_worker(**WORKER)
    ids = {}
    for i, path in enumerate(("/ok", "/flaky", "/down")):
        photo, video = write_pair(tmp_path / "m", i)
        ids[path] = api.submit(str(photo), str(video), "SILENT", key=f"hook-{i}",
                               callback_url=receiver.url + path, metadata={"user": i},
                               settings=settings)
    for job_id in ids.values():
        outcome = api.wait(job_id, timeout=60, settings=settings)
        assert outcome.final and outcome.state == "completed", outcome
        if not HOOKED:
            assert notify.job_finished(resources(), job_id) is True

    wait_until(lambda: len(receiver.to("/flaky")) == 2 and len(receiver.to("/down")) == 3,
               30, what="the retried deliveries")
    wait_until(lambda: len(deliveries(settings.database_url, ids["/down"])) == 3, 10,
               what="the last failed attempt to be recorded")

    # Every request is signed over its raw body with the shared secret.
    for path, job_id in ids.items():
        for headers, body in receiver.to(path):
            assert notify.verify_signature(SECRET, body, headers["X-FaceID-Signature"])
            assert not notify.verify_signature("another-secret", body,
                                               headers["X-FaceID-Signature"])
            payload = json.loads(body)
            assert payload["job_id"] == job_id and payload["event"] == "job.finished"
            assert payload["timestamp"] == int(headers["X-FaceID-Timestamp"])
            assert payload["state"] == "completed" and payload["passed"] is True
            assert payload["result"] == "Success" and payload["sim"] >= 70
            assert payload["metadata"] == {"user": list(ids).index(path)}
    assert len(receiver.to("/ok")) == 1  # one delivery per job
    assert [h["X-FaceID-Delivery"] for h, _ in receiver.to("/flaky")] == [
        f"{ids['/flaky']}.1", f"{ids['/flaky']}.2"]

    # Every attempt is recorded; /down gives up after WEBHOOK_MAX_ATTEMPTS.
    url = settings.database_url
    assert deliveries(url, ids["/ok"]) == [(1, 200, None)]
    assert deliveries(url, ids["/flaky"]) == [(1, 500, "HTTP 500"), (2, 200, None)]
    assert deliveries(url, ids["/down"]) == [(n, 500, "HTTP 500") for n in (1, 2, 3)]


@pytest.mark.xfail(not HOOKED, run=HOOKED, strict=False,
                   reason="needs notify.job_finished(res, job_id) in tasks.py after a final state")
def test_worker_sends_the_callback_itself(hook_settings, sim_control, start_worker, receiver,
                                          tmp_path):
    settings = hook_settings
    start_worker(**WORKER)
    photo, video = write_pair(tmp_path / "m", 5)
    job_id = api.submit(str(photo), str(video), "SILENT", key="auto-hook",
                        callback_url=receiver.url + "/ok", settings=settings)
    api.wait(job_id, timeout=60, settings=settings)
    wait_until(lambda: receiver.to("/ok"), 20, what="the callback")
    assert deliveries(settings.database_url, job_id) == [(1, 200, None)]


def test_network_error_is_recorded_and_retried(hook_settings, start_worker, sim_control,
                                               tmp_path):
    settings = hook_settings
    start_worker(**WORKER)
    photo, video = write_pair(tmp_path / "m", 6)
    # Nothing listens on this port: connection refused, every attempt.
    from faceid_batch.local_services import free_port

    job_id = api.submit(str(photo), str(video), "SILENT", key="hook-refused",
                        callback_url=f"http://127.0.0.1:{free_port()}/x", settings=settings)
    api.wait(job_id, timeout=60, settings=settings)
    if not HOOKED:
        notify.job_finished(resources(), job_id)
    wait_until(lambda: len(deliveries(settings.database_url, job_id)) == 3, 30,
               what="three failed attempts")
    assert deliveries(settings.database_url, job_id) == [
        (n, None, "ConnectionError") for n in (1, 2, 3)]


def test_signature_is_hmac_sha256_of_the_body():
    import hashlib
    import hmac

    body = b'{"job_id":1}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert notify.sign(SECRET, body) == f"sha256={expected}"
    assert notify.verify_signature(SECRET, body, f"sha256={expected}")
    assert not notify.verify_signature(SECRET, body + b" ", f"sha256={expected}")
    assert not notify.verify_signature(SECRET, body, None)


@pytest.mark.parametrize("url,expected", [
    ("ftp://example.com/x", "absolute http(s) URL"),
    ("/relative", "absolute http(s) URL"),
    ("https://user:pw@example.com/x", "no credentials"),
    ("https://example.com/x?token=abc", "query string"),
])
def test_callback_urls_that_would_keep_a_secret_or_go_nowhere_are_refused(
        configured, tmp_path, url, expected):
    photo, video = write_pair(tmp_path / "m", 1)
    settings = configured.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    with pytest.raises(SubmitError, match=re.escape(expected)):
        api.submit(str(photo), str(video), "SILENT", key="k", callback_url=url,
                   settings=settings)


def test_api_refuses_a_callback_without_secret_and_wait_times_out(configured, tmp_path):
    settings = configured
    photo, video = write_pair(tmp_path / "m", 1)
    with pytest.raises(SubmitError, match="WEBHOOK_SECRET"):
        api.submit(str(photo), str(video), "SILENT", key="k",
                   callback_url="http://127.0.0.1:9/x", settings=settings)
    job_id = api.submit(str(photo), str(video), "LIP", "4721", key="k", settings=settings)
    assert api.submit(str(photo), str(video), "LIP", "4721", key="k",
                      settings=settings) == job_id  # idempotent on the key
    with pytest.raises(api.WaitTimeout) as info:
        api.wait(job_id, timeout=0.3, settings=settings)  # no worker is running
    assert info.value.outcome.state == "queued" and not info.value.outcome.final
