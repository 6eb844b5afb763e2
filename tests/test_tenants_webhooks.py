"""Each tenant's callbacks are signed with its own secrets: one tenant's receivers cannot
verify, nor forge, another's. Deliveries go through the real sender (notify.deliver) to a
local receiver; signatures are checked with the published ``standardwebhooks`` package."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from faceid_batch import tenants
from faceid_batch.db import session_scope, write_scope
from faceid_batch.egress import Egress, Policy
from faceid_batch.intake.submit import JobSpec, SubmitError, check_callback, insert_job
from faceid_batch.models import DEFAULT_TENANT_ID, Job, JobState
from faceid_batch.outcome import notify
from faceid_batch.scheduling import callbacks
from faceid_batch.settings import load_settings

# An obviously fake secret in the Standard Webhooks form, as tests/test_webhook.py uses.
SECRET = "whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs"


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


def deliver_one(settings, tenant_id: int, key: str, url: str) -> None:  # type: ignore[no-untyped-def]
    """A finished job of ``tenant_id`` with a callback, delivered once by the real sender."""
    job_id, _ = insert_job(settings, JobSpec(key, "/p", "/v", "SILENT", lane="backfill",
                                             callback_url=url, tenant_id=tenant_id))
    with write_scope(settings.database_url) as s:
        s.query(Job).filter(Job.id == job_id).update(
            {"state": JobState.COMPLETED.value, "due_at": None, "passed": True})
        callbacks.enqueue(s, job_id)
    with write_scope(settings.database_url) as s:
        [(message, _, token)] = callbacks.claim_due(s, 10)
    res = SimpleNamespace(settings=settings, egress=Egress(Policy(settings.egress_networks)),
                          egress_slots=threading.Semaphore(1))
    assert notify.deliver(res, message, token) == "delivered"  # type: ignore[arg-type]


def test_each_tenant_signs_with_its_own_secrets(database_url, receiver, monkeypatch):
    monkeypatch.setenv("EGRESS_ALLOW_NETWORKS", "127.0.0.1/32")
    settings = load_settings(database_url=database_url, webhook_secret=SecretStr(SECRET),
                             egress_allow_networks="127.0.0.1/32")
    url, got = receiver
    a = tenants.add(database_url, "tenant-a", None)
    tenants.add(database_url, "tenant-b", None)
    # A tenant without a secret of its own may not ask for callbacks (nothing unsigned,
    # and never WEBHOOK_SECRET, which the default tenant's receivers know).
    with pytest.raises(SubmitError, match="webhook secret of this tenant"):
        check_callback(settings, url, a.id)
    secret_a = tenants.rotate_secret(database_url, "tenant-a")
    secret_b = tenants.rotate_secret(database_url, "tenant-b")
    assert check_callback(settings, url, a.id) == url

    deliver_one(settings, a.id, "k-a", url)
    deliver_one(settings, DEFAULT_TENANT_ID, "k-default", url)
    (headers_a, body_a), (headers_d, body_d) = got
    Webhook(secret_a).verify(body_a, headers_a)
    for other in (secret_b, SECRET):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body_a, headers_a)
    # The default tenant keeps WEBHOOK_SECRET; the tenants' secrets do not verify it.
    Webhook(SECRET).verify(body_d, headers_d)
    for other in (secret_a, secret_b):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body_d, headers_d)

    # A rotation signs with the new and the previous secret until the previous is dropped.
    newer_a = tenants.rotate_secret(database_url, "tenant-a")
    deliver_one(settings, a.id, "k-a2", url)
    headers, body = got[-1]
    Webhook(secret_a).verify(body, headers)
    Webhook(newer_a).verify(body, headers)
    assert tenants.drop_previous_secret(database_url, "tenant-a")
    deliver_one(settings, a.id, "k-a3", url)
    headers, body = got[-1]
    Webhook(newer_a).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_a).verify(body, headers)
    # Shown only as fingerprints.
    shown = tenants.get(database_url, "tenant-a")
    assert shown is not None and len(shown.secrets) == 1 and newer_a not in repr(shown)
    with session_scope(database_url) as s:
        assert s.query(Job).count() == 4
