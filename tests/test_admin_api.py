"""The admin HTTP service (FastAPI TestClient) on seeded rows, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import time
import warnings

import pytest
from sqlalchemy import func, select, update
from test_queries import FRAME, INJECTION, SEED, seed

from faceid_batch.admin.app import AdminConfigError, create_app
from faceid_batch.admin.auth import TokenCheck, link_key
from faceid_batch.admin.tokens import Authenticator, Principal
from faceid_batch.db import session_scope
from faceid_batch.local.samples import png_bytes
from faceid_batch.models import Job
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "admin-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(database_url, simulator, tmp_path):
    """A TestClient on the admin app, the seeded job ids, and a staged ID photo's bytes."""
    settings = load_settings(
        database_url=database_url, admin_token=TOKEN, faceid_secret_id=FAKE_SECRET_ID,
        faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET, cos_domain=simulator.cos_domain,
        cos_scheme="http")
    ids = seed(database_url)
    photo = tmp_path / "id.png"
    photo.write_bytes(png_bytes(42, 5000))
    staged = MediaStager(settings).stage("photo", str(photo))
    with session_scope(database_url) as s:
        s.execute(update(Job).where(Job.id == ids["bob-1"]).values(photo_key=staged.key))
    return TestClient(create_app(settings)), ids, photo.read_bytes()


def test_no_token_no_start(database_url):
    with pytest.raises(AdminConfigError, match="ADMIN_TOKEN"):
        create_app(load_settings(database_url=database_url))


def test_every_route_refuses_missing_or_wrong_token(admin):
    client, ids, _ = admin
    job = ids["bob-1"]
    links = client.get(f"/api/jobs/{job}", headers=AUTH).json()["images"]
    routes = ["/api/results", f"/api/jobs/{job}", "/api/stats", "/api/export",
              links["best_frame"], links["id_photo"]]
    for headers in ({}, {"Authorization": "Bearer wrong-token"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        for route in routes:
            assert client.get(route, headers=headers).status_code == 401, (route, headers)
    # The review pages send a browser without the cookie to the login form.
    assert client.get("/review", follow_redirects=False).headers["location"] == "/login"
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    for route in routes:
        assert client.get(route, headers=AUTH).status_code == 200, route


def test_filters_and_sql_as_data(admin):
    client, ids, _ = admin

    def keys(**params):
        r = client.get("/api/results", headers=AUTH, params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return {row["key"] for row in r.json()["rows"]}

    assert keys() == {row[0] for row in SEED}
    assert keys(verdict="fail") == {"alice-2", "bob-1"}
    assert keys(lane="backfill", sim_min=50) == {"alice-1", "alice-3"}
    assert keys(since="2026-01-02T00:00:00") == {"carol%_1", "carolX_2"}
    assert keys(key_prefix=INJECTION) == {INJECTION + "1"}
    assert keys(code="' OR '1'='1") == set()
    assert client.get("/api/results", headers=AUTH,
                      params={"sort": "id desc; DROP TABLE jobs"}).status_code == 422
    assert client.get("/api/results", headers=AUTH, params={"since": "soon"}).status_code == 422
    # The review form sends every field, empty ones meaning "any".
    assert keys(batch="", sim_min="", verdict="", key_prefix="bob") == {"bob-1", "bob-2"}
    assert client.get("/api/results", headers=AUTH, params={"batch": "1 OR 1=1"}).status_code == 422
    with session_scope(client.app.state.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == len(SEED)


def test_paging_stable(admin):
    client, _, _ = admin
    seen = []
    for page in range(1, 10):
        body = client.get("/api/results", headers=AUTH,
                          params={"sort": "-sim", "page": page, "limit": 2}).json()
        seen += [r["id"] for r in body["rows"]]
        if not body["has_more"]:
            break
    assert len(seen) == len(set(seen)) == len(SEED)


def test_job_images_through_signed_links(admin):
    client, ids, photo = admin
    body = client.get(f"/api/jobs/{ids['bob-1']}", headers=AUTH).json()
    assert [a["request_id"] for a in body["attempts"]][-1] == body["result"]["request_id"]
    frame = client.get(body["images"]["best_frame"], headers=AUTH)
    assert frame.content == FRAME and frame.headers["content-type"] == "image/png"
    assert "no-store" in frame.headers["cache-control"]
    idp = client.get(body["images"]["id_photo"], headers=AUTH)
    assert idp.status_code == 200 and idp.content == photo
    # A tampered, re-targeted or expired link is refused even with the token.
    link = body["images"]["best_frame"]
    assert client.get(link[:-4] + "0000", headers=AUTH).status_code == 403
    other = ids["alice-1"]
    assert client.get(link.replace(f"/{ids['bob-1']}/", f"/{other}/"),
                      headers=AUTH).status_code == 403
    url = client.app.state.database_url
    key, source = link_key(load_settings(database_url=url, admin_token=TOKEN))
    assert source == "ADMIN_TOKEN"
    signer = TokenCheck(Authenticator(url, TOKEN), key)
    me = Principal(0, "ADMIN_TOKEN")
    fresh = signer.image_link(ids["bob-1"], "best_frame", 60, me, "api")
    assert client.get(fresh, headers=AUTH).status_code == 200
    old = signer.image_link(ids["bob-1"], "best_frame", 60, me, "api", now=time.time() - 120)
    assert client.get(old, headers=AUTH).status_code == 403


def test_export_and_review_page(admin):
    client, ids, _ = admin
    text = client.get("/api/export", headers=AUTH, params={"format": "csv"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(SEED)
    assert {r["key"] for r in rows if "HYPERLINK" in r["key"]} == {"'=HYPERLINK(\"http://evil\")"}
    # Log in with the form: the cookie then opens the pages; the HTML escapes keys.
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    page = client.get("/review", params={"key_prefix": "x'"}).text
    assert "x&#x27;; DROP TABLE jobs; --1" in page and "alice-1" not in page
    assert "id='best-frame'" in client.get(f"/review/jobs/{ids['bob-1']}").text
