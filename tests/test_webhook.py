"""Completion callbacks: Standard Webhooks signatures, retried with backoff, every attempt
recorded; the Python API.

The receiver is a real HTTP server in the test process; deliveries come from a real worker
and are checked with the published ``standardwebhooks`` package (PyPI), not our own code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from faceid_batch.db import session_scope
from faceid_batch.intake import api
from faceid_batch.intake.submit import SubmitError
from faceid_batch.local.samples import write_pair
from faceid_batch.models import WebhookDelivery
from faceid_batch.outcome import webhooks
from faceid_batch.settings import SettingsError, load_settings
from helpers import wait_until

# Obviously fake secrets in the Standard Webhooks form (whsec_ + base64 of the key).
SECRET = "whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs"
NEXT_SECRET = "whsec_c2Vjb25kLUZBS0Utc2VjcmV0LWZvci1yb3RhdGlvbiEh"
NODE = Path(__file__).resolve().parent / "node"
# The Node check runs where scripts/test could install tests/node (npm ci).
NODE_WEBHOOKS = bool(shutil.which("node")) and (NODE / "node_modules" / "standardwebhooks").is_dir()
# Three attempts, 0.2 s apart (the default schedule spans a day).
WORKER = dict(WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_SCHEDULE="0.2s 0.2s")


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

    # (A callback may wait a moment for a thread: EGRESS_SHARE of the worker's 8.)
    wait_until(lambda: len(receiver.to("/flaky")) == 2 and len(receiver.to("/down")) == 3
               and receiver.to("/ok"), 30, what="the deliveries")
    wait_until(lambda: len(deliveries(settings.database_url, ids["/down"])) == 3, 10,
               what="the last failed attempt to be recorded")

    # Every request verifies with the published Standard Webhooks library, and not with
    # another secret; a body changed on the way does not.
    for path, job_id in ids.items():
        for headers, body in receiver.to(path):
            payload = Webhook(SECRET).verify(body, headers)
            with pytest.raises(WebhookVerificationError):
                Webhook(NEXT_SECRET).verify(body, headers)
            with pytest.raises(WebhookVerificationError):
                Webhook(SECRET).verify(body + b" ", headers)
            assert payload == json.loads(body)
            assert payload["job_id"] == job_id and payload["event"] == "job.finished"
            assert payload["timestamp"] == int(headers["webhook-timestamp"])
            assert payload["state"] == "completed" and payload["passed"] is True
            assert payload["result"] == "Success" and payload["sim"] >= 70
            assert payload["metadata"] == {"user": list(ids).index(path)}
    assert len(receiver.to("/ok")) == 1  # one delivery per job

    # A retry is the same message: the same webhook-id, so receivers can deduplicate.
    flaky = [h["webhook-id"] for h, _ in receiver.to("/flaky")]
    assert len(set(flaky)) == 1 and flaky[0] != receiver.to("/ok")[0][0]["webhook-id"]

    # Every attempt is recorded; /down gives up once WEBHOOK_RETRY_SCHEDULE is used up.
    url = settings.database_url
    assert deliveries(url, ids["/ok"]) == [(1, 200, None)]
    assert deliveries(url, ids["/flaky"]) == [(1, 500, "HTTP 500"), (2, 200, None)]
    assert deliveries(url, ids["/down"]) == [(n, 500, "HTTP 500") for n in (1, 2, 3)]


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


@pytest.mark.skipif(not NODE_WEBHOOKS, reason="needs node and `npm ci` in tests/node "
                                               "(scripts/test runs it)")
def test_a_delivery_verifies_with_the_npm_standardwebhooks_package(
        hook_settings, sim_control, start_worker, receiver, tmp_path):
    settings = hook_settings
    start_worker(**WORKER)
    photo, video = write_pair(tmp_path / "m", 8)
    job_id = api.submit(str(photo), str(video), "SILENT", key="node-hook",
                        callback_url=receiver.url + "/ok", settings=settings)
    wait_until(lambda: receiver.to("/ok"), 60, what="the callback")
    headers, body = receiver.to("/ok")[0]
    (tmp_path / "headers.json").write_text(json.dumps(headers))
    (tmp_path / "body").write_bytes(body)

    def node(secret: str) -> subprocess.CompletedProcess:
        return subprocess.run(["node", str(NODE / "verify_webhook.mjs"), secret,
                               str(tmp_path / "headers.json"), str(tmp_path / "body")],
                              capture_output=True, text=True, timeout=30)

    good = node(SECRET)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["job_id"] == job_id
    bad = node(NEXT_SECRET)
    assert bad.returncode == 1 and "not verified" in bad.stderr


def test_network_error_is_recorded_and_retried(hook_settings, start_worker, sim_control,
                                               tmp_path):
    settings = hook_settings
    start_worker(**WORKER)
    photo, video = write_pair(tmp_path / "m", 6)
    # Nothing listens on this port: connection refused, every attempt.
    from faceid_batch.local.services import free_port

    job_id = api.submit(str(photo), str(video), "SILENT", key="hook-refused",
                        callback_url=f"http://127.0.0.1:{free_port()}/x", settings=settings)
    api.wait(job_id, timeout=60, settings=settings)
    wait_until(lambda: len(deliveries(settings.database_url, job_id)) == 3, 30,
               what="three failed attempts")
    assert deliveries(settings.database_url, job_id) == [
        (n, None, "connect") for n in (1, 2, 3)]


def test_signatures_are_standard_webhooks_and_two_secrets_allow_rotation():
    body = b'{"job_id":1}'
    headers = webhooks.headers_for(SECRET, "msg_job1_1", body)
    # The published library accepts ours; ours accepts what the library signs.
    assert Webhook(SECRET).verify(body, headers) == {"job_id": 1}
    ts = int(headers["webhook-timestamp"])
    theirs = Webhook(SECRET).sign("msg_job1_1", datetime.fromtimestamp(ts, UTC), body.decode())
    assert headers["webhook-signature"] == theirs
    assert webhooks.verify(SECRET, headers, body)
    assert not webhooks.verify(SECRET, headers, body + b" ")
    assert not webhooks.verify(SECRET, {**headers, "webhook-timestamp": str(ts - 3600)}, body)
    # While rotating, both secrets sign: a receiver on either one accepts the delivery.
    both = webhooks.headers_for(f"{NEXT_SECRET} {SECRET}", "msg_job1_1", body)
    assert len(both["webhook-signature"].split()) == 2
    assert Webhook(SECRET).verify(body, both) and Webhook(NEXT_SECRET).verify(body, both)
    assert webhooks.new_secret().startswith("whsec_")
    Webhook(webhooks.new_secret())  # a fresh secret is one the library takes


@pytest.mark.parametrize("value,expected", [
    ("plain-text-secret", "start with whsec_"),
    ("whsec_not base64!", "base64"),
    ("whsec_c2hvcnQ=", "too short"),
    (f"{SECRET} {NEXT_SECRET} {SECRET}", "two while rotating"),
])
def test_a_webhook_secret_not_in_the_standard_form_is_refused_at_start(value, expected):
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET: .*" + re.escape(expected)) as info:
        load_settings(webhook_secret=value)
    assert value not in str(info.value)  # the error never echoes the secret


@pytest.mark.parametrize("url,expected", [
    ("ftp://example.com/x", "absolute http(s) URL"),
    ("/relative", "absolute http(s) URL"),
    ("https://user:pw@example.com/x", "no credentials"),
    ("https://example.com/x?token=abc", "query string"),
    ("https://example.com/a b", "no spaces"),
    ("https://example.com/a\r\nX-Injected: 1", "no spaces"),
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
