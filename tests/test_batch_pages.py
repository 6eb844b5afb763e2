"""The batch pages of the admin service (TestClient): the list, the dashboard and its
panels, actions behind a dry run and a confirmation, audited under the token's name."""

from __future__ import annotations

import re
import warnings

import pytest
from sqlalchemy import select

from faceid_batch.admin.app import create_app
from faceid_batch.db import session_scope
from faceid_batch.models import Batch, BatchAction, BatchCalls, BatchState, Job, JobState, Lane
from faceid_batch.settings import load_settings
from faceid_batch.times import utcnow
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "admin-test-token-batches-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def site(database_url, redis_server):
    settings = load_settings(
        database_url=database_url, redis_url=redis_server.url, admin_token=TOKEN,
        faceid_secret_id=FAKE_SECRET_ID, faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET,
        faceid_price_per_call="0.05")
    now = utcnow()
    with session_scope(database_url) as s:
        batch = Batch(name="night <b>run</b>", lane=Lane.BACKFILL, weight=1.0)
        s.add(batch)
        s.flush()
        rows = [(JobState.COMPLETED, "Success", True, 91.0), (JobState.COMPLETED, "Success",
                                                               False, 40.0),
                (JobState.FAILED, "FailedOperation.DownLoadTimeoutError", None, None),
                (JobState.FAILED, "FailedOperation.DownLoadTimeoutError", None, None),
                (JobState.FAILED, "Local.SourceTimeout", None, None),
                *[(JobState.QUEUED, None, None, None)] * 5]
        for i, (state, code, passed, sim) in enumerate(rows):
            s.add(Job(idempotency_key=f"page-{i}", lane=Lane.BACKFILL, state=state,
                      liveness_type="SILENT", photo_source="/p.jpg", video_source="/v.mp4",
                      result_code=code, passed=passed, sim=sim, batch_id=batch.id,
                      attempts=1 if code else 0,
                      due_at=now if state == JobState.QUEUED else None))
        s.add(BatchCalls(batch_id=batch.id, minute=now.replace(second=0, microsecond=0),
                         code="Success", billable=True, calls=2, waited_ms=900))
        batch_id = batch.id
    return TestClient(create_app(settings)), batch_id, database_url


def test_the_pages_need_a_token_and_a_browser_is_sent_to_login(site):
    client, batch_id, _ = site
    for path in ("/batches", f"/batches/{batch_id}", f"/batches/{batch_id}/panels"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    assert client.get(f"/api/batches/{batch_id}/dashboard").status_code == 401
    r = client.post(f"/batches/{batch_id}/cancel", follow_redirects=False)
    assert r.status_code in (303, 401)
    with session_scope(site[2]) as s:
        assert s.get(Batch, batch_id).state == BatchState.ACTIVE


def test_list_dashboard_and_panels(site):
    client, batch_id, _ = site
    listing = client.get("/batches", headers=AUTH)
    assert listing.status_code == 200
    assert f"href='/batches/{batch_id}'" in listing.text
    assert "night &lt;b&gt;run&lt;/b&gt;" in listing.text and "<b>run</b>" not in listing.text
    assert "5 / 10" in listing.text  # done / total

    page = client.get(f"/batches/{batch_id}", headers=AUTH)
    assert page.status_code == 200
    for panel in ("progress", "money", "calls", "held", "outcomes", "codes", "sim",
                  "attempts"):
        assert f"id='{panel}'" in page.text, panel
    assert "pass threshold" in page.text and "<svg" in page.text
    # Only what the package serves: no script or style from elsewhere.
    assert not re.search(r"(src|href)=['\"]https?://", page.text)
    assert "0.10</b> USD so far" in page.text  # 2 billable calls at 0.05
    # The retry menu offers the codes of failed jobs.
    assert "value='FailedOperation.DownLoadTimeoutError'" in page.text

    fragment = client.get(f"/batches/{batch_id}/panels", headers=AUTH)
    assert fragment.status_code == 200 and "id='progress'" in fragment.text
    assert "<html" not in fragment.text
    data = client.get(f"/api/batches/{batch_id}/dashboard", headers=AUTH).json()
    assert data["total"] == 10 and data["done"] == 5 and data["billable_calls"] == 2
    assert data["outcomes"]["local"] == {"Local.SourceTimeout": 1}
    assert client.get("/batches/999999", headers=AUTH).status_code == 404


def test_an_action_is_a_dry_run_then_a_confirmed_post_audited(site):
    client, batch_id, url = site
    plan = client.get(f"/batches/{batch_id}/pause", headers=AUTH)
    assert plan.status_code == 200 and "id='confirm'" in plan.text
    with session_scope(url) as s:  # the GET changed nothing
        assert s.get(Batch, batch_id).state == BatchState.ACTIVE
    r = client.post(f"/batches/{batch_id}/pause", headers=AUTH, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/batches/{batch_id}?done=pause"
    with session_scope(url) as s:
        assert s.get(Batch, batch_id).state == BatchState.PAUSED
        actions = s.scalars(select(BatchAction)).all()
        assert [(a.action, a.actor, a.surface, a.batch_id) for a in actions] == [
            ("pause", "ADMIN_TOKEN", "web", batch_id)]
        assert actions[0].detail and "parked" in actions[0].detail
        parked = s.scalar(select(Job.id).where(Job.state == JobState.PAUSED))
        assert parked is not None
    page = client.get(f"/batches/{batch_id}?done=pause", headers=AUTH).text
    assert "id='flash'" in page and "id='resume'" in page
    # A flash is a fixed text: what a link puts in ``done`` is not echoed.
    assert "<script>x" not in client.get(f"/batches/{batch_id}?done=<script>x",
                                         headers=AUTH).text

    bad = client.get(f"/batches/{batch_id}/weight?weight=-3", headers=AUTH)
    assert bad.status_code == 422 and "weight" in bad.text
    r = client.post(f"/batches/{batch_id}/weight", headers=AUTH, data={"weight": "2.5"},
                    follow_redirects=False)
    assert r.status_code == 303
    with session_scope(url) as s:
        assert s.get(Batch, batch_id).weight == 2.5
    assert client.get(f"/batches/{batch_id}/nothing", headers=AUTH).status_code == 404
    assert client.post(f"/batches/{batch_id}/nothing", headers=AUTH).status_code == 404


def test_an_action_from_elsewhere_or_without_its_count_is_refused(site):
    client, batch_id, url = site
    r = client.post(f"/batches/{batch_id}/cancel", headers={**AUTH, "Sec-Fetch-Site":
                                                            "same-site"})
    assert r.status_code == 403
    r = client.post(f"/batches/{batch_id}/retry", headers=AUTH, data={"code": ""})
    assert r.status_code == 422 and "expect" in r.text and "id='refused'" in r.text
    r = client.post(f"/batches/{batch_id}/retry", headers=AUTH, data={"expect": "7"})
    assert r.status_code == 409 and "the dry run counted 7" in r.text
    assert client.get(f"/batches/{2**63}", headers=AUTH).status_code == 422
    assert client.get("/batches?page=99999999999", headers=AUTH).status_code == 422
    r = client.post(f"/batches/{batch_id}/retry", headers=AUTH, data={"expect": "\u00b2"})
    assert r.status_code == 422
    with session_scope(url) as s:
        assert s.get(Batch, batch_id).state == BatchState.ACTIVE
        assert s.query(Job).filter(Job.state == JobState.FAILED).count() == 3
        assert s.scalars(select(BatchAction)).all() == []
    plan = client.get(f"/batches/{batch_id}/retry", headers=AUTH).text
    assert "Retry 3 failed jobs" in plan
    r = client.post(f"/batches/{batch_id}/retry", headers=AUTH, data={"expect": "3"},
                    follow_redirects=False)
    assert r.status_code == 303
    with session_scope(url) as s:
        assert s.query(Job).filter(Job.state == JobState.FAILED).count() == 0


def test_the_cli_records_its_actions_with_its_user(site, monkeypatch, redis_server):
    from typer.testing import CliRunner

    from faceid_batch.cli.main import app
    from faceid_batch.settings import get_settings

    _client, batch_id, url = site
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    for args in (["pause", str(batch_id)], ["weight", str(batch_id), "3"],
                 ["resume", str(batch_id)], ["cancel", str(batch_id)]):
        result = CliRunner().invoke(app, ["batch", *args])
        assert result.exit_code == 0, result.output
    with session_scope(url) as s:
        rows = s.scalars(select(BatchAction).order_by(BatchAction.id)).all()
        assert [r.action for r in rows] == ["pause", "weight", "resume", "cancel"]
        assert all(r.actor.startswith("cli:") and r.surface == "cli" for r in rows)
        assert rows[1].detail == "weight 1 -> 3" and "closed" in (rows[3].detail or "")
        assert s.get(Batch, batch_id).state == BatchState.CANCELLED
    get_settings.cache_clear()
    # The dashboard lists who did what.
    page = _client.get(f"/batches/{batch_id}", headers=AUTH).text
    assert "id='actions-log'" in page and "weight 1 -&gt; 3" in page


def test_an_admin_token_of_one_tenant_is_refused_here(site):
    from faceid_batch import tenants
    from faceid_batch.admin import tokens

    client, batch_id, url = site
    tenant = tenants.add(url, "thai", None)
    scoped = tokens.add(url, "admin-thai", tokens.ADMIN, tenant.id)
    for path in ("/api/results", "/batches", f"/api/batches/{batch_id}/dashboard",
                 "/api/export"):
        r = client.get(path, headers={"Authorization": f"Bearer {scoped}"})
        assert r.status_code == 403 and "every tenant" in r.text, path
    r = client.post("/login", data={"token": scoped}, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert client.get("/api/results", headers=AUTH).status_code == 200


def test_listings_and_exports_filter_by_tenant(site):
    from faceid_batch import tenants

    client, _batch_id, url = site
    thai = tenants.add(url, "thai", None)
    with session_scope(url) as s:
        s.add(Job(idempotency_key="page-0", tenant_id=thai.id, lane=Lane.ONBOARDING,
                  state=JobState.COMPLETED, liveness_type="SILENT", photo_source="/p.jpg",
                  video_source="/v.mp4", result_code="Success", passed=True, sim=90.0))
    rows = client.get("/api/results?tenant=thai", headers=AUTH).json()["rows"]
    assert [r["key"] for r in rows] == ["page-0"]
    everyone = client.get("/api/results?limit=100", headers=AUTH).json()["rows"]
    assert len(everyone) == 11
    assert len(client.get("/api/results?tenant=default&limit=100",
                          headers=AUTH).json()["rows"]) == 10
    export = client.get("/api/export?tenant=thai", headers=AUTH).text
    assert "page-0" in export and export.count("\n") == 2
    assert client.get("/api/results?tenant=nobody", headers=AUTH).status_code == 422
    assert "id='f-tenant'" in client.get("/review?tenant=thai", headers=AUTH).text
