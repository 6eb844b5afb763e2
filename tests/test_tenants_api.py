"""Tenants on the producer API: keys per tenant, nothing learned about another tenant."""

from __future__ import annotations

import warnings

import pytest

from faceid_batch import tenants
from faceid_batch.admin import tokens
from helpers import BUCKET


@pytest.fixture
def client(configured):  # type: ignore[no-untyped-def]
    from faceid_batch.producer import app as producer_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(producer_app.create_app(configured), raise_server_exceptions=False)


def post(client, token: str, key: str, video: str = "v.mp4"):  # type: ignore[no-untyped-def]
    return client.post("/v1/verifications", headers={"Authorization": f"Bearer {token}",
                                                     "Idempotency-Key": key},
                       json={"photo_url": f"cos://{BUCKET}/p.jpg",
                             "video_url": f"cos://{BUCKET}/{video}",
                             "liveness_type": "SILENT", "lane": "backfill"})


def get(client, token: str, path: str):  # type: ignore[no-untyped-def]
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_keys_are_per_tenant_and_another_tenants_keys_answer_as_unknown(client, configured):
    url = configured.database_url
    a = tenants.add(url, "tenant-a", None)
    b = tenants.add(url, "tenant-b", None)
    token_a = tokens.add(url, "producer-a", tokens.SUBMIT, a.id)
    token_b = tokens.add(url, "producer-b", tokens.SUBMIT, b.id)
    token_a2 = tokens.add(url, "producer-a2", tokens.SUBMIT, a.id)

    first = post(client, token_a, "order-1")
    assert first.status_code == 202, first.text
    a_job = first.json()["id"]
    only_a = post(client, token_a, "only-a")
    assert only_a.status_code == 202

    # The same key in tenant B is B's own verification, whatever its content: no 409.
    other = post(client, token_b, "order-1", video="other.mp4")
    assert other.status_code == 202, other.text
    assert other.json()["id"] != a_job
    # Within a tenant a key stays one verification: another token of A gets the 409.
    assert post(client, token_a2, "order-1", video="other.mp4").status_code == 409

    # B probing A's keys and ids gets exactly what an unknown key or id gets.
    unknown_key = get(client, token_b, "/v1/verifications?key=never-used")
    probed_key = get(client, token_b, "/v1/verifications?key=only-a")
    assert probed_key.status_code == unknown_key.status_code == 404
    assert probed_key.json() == unknown_key.json()
    unknown_id = get(client, token_b, f"/v1/verifications/{a_job + 1000}")
    probed_id = get(client, token_b, f"/v1/verifications/{a_job}")
    assert probed_id.status_code == unknown_id.status_code == 404
    # The same answer but for the id it names.
    def without_id(text: str, job: int) -> str:
        return text.replace(f"/{job}\"", "/ID\"").replace(f" {job} ", " ID ")

    assert without_id(probed_id.text, a_job) == without_id(unknown_id.text, a_job + 1000)
    # B may take the key A uses for itself: a new verification of B's.
    taken = post(client, token_b, "only-a")
    assert taken.status_code == 202 and taken.json()["id"] != only_a.json()["id"]
    # Each reads its own by key.
    assert get(client, token_a, "/v1/verifications?key=order-1").json()["id"] == a_job
    assert get(client, token_b, "/v1/verifications?key=order-1").json()["id"] == \
        other.json()["id"]
    # An admin token of every tenant reads any by id; one of tenant A only A's.
    admin = tokens.add(url, "admin-all", tokens.ADMIN)
    admin_a = tokens.add(url, "admin-a", tokens.ADMIN, a.id)
    assert get(client, admin, f"/v1/verifications/{other.json()['id']}").status_code == 200
    assert get(client, admin_a, f"/v1/verifications/{other.json()['id']}").status_code == 404
    assert get(client, admin_a, f"/v1/verifications/{a_job}").status_code == 200


def test_a_tenant_over_its_quota_or_backlog_is_refused_and_the_others_are_not(configured):
    from faceid_batch.db import session_scope
    from faceid_batch.models import DEFAULT_TENANT_ID, TenantCalls
    from faceid_batch.producer import app as producer_app
    from faceid_batch.scheduling import schedule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    # One second of onboarding backlog admitted per tenant: 20 jobs at 20 calls/s.
    settings = configured.model_copy(update={"onboarding_max_wait_seconds": 1.0})
    client = TestClient(producer_app.create_app(settings), raise_server_exceptions=False)
    url = configured.database_url
    flood = tenants.add(url, "flooder", None)
    capped = tenants.add(url, "capped", None, max_calls_per_day=100)
    tokens_of = {t.id: tokens.add(url, f"p-{t.name}", tokens.SUBMIT, t.id)
                 for t in (flood, capped)}
    default_token = tokens.add(url, "p-default", tokens.SUBMIT)
    with session_scope(url) as s:
        s.add(TenantCalls(tenant_id=capped.id, day=tenants.today(), calls=100))
        conn = s.connection()
        schedule.insert_jobs(conn, [{
            "idempotency_key": f"f-{i}", "tenant_id": flood.id, "lane": "onboarding",
            "state": "queued", "liveness_type": "SILENT", "photo_source": "/p",
            "video_source": "/v"} for i in range(40)])

    def onboard(token: str, key: str):  # type: ignore[no-untyped-def]
        return client.post("/v1/verifications", headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": key}, json={
            "photo_url": f"cos://{BUCKET}/p.jpg", "video_url": f"cos://{BUCKET}/v.mp4",
            "liveness_type": "SILENT"})

    refused = onboard(tokens_of[flood.id], "one-more")
    assert refused.status_code == 429 and refused.json()["type"] == "/problems/too-many-requests"
    over = onboard(tokens_of[capped.id], "c-1")
    assert over.status_code == 429, over.text
    assert over.json()["type"] == "/problems/quota-exceeded"
    assert "quota of 100 a day" in over.json()["detail"]
    assert 0 < int(over.headers["Retry-After"]) <= 86400
    # The default tenant's line and quota are its own: neither refusal touches it.
    assert onboard(default_token, "d-1").status_code == 202
    assert DEFAULT_TENANT_ID not in (flood.id, capped.id)
