"""The admin HTTP service (FastAPI TestClient) on seeded rows, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import io
import time
import warnings
from datetime import timedelta

import pytest
from sqlalchemy import func, inspect, select, text, update
from test_queries import FRAME, INJECTION, SEED, seed

from faceid_batch.admin import tokens
from faceid_batch.admin.app import AdminConfigError, create_app
from faceid_batch.admin.auth import COOKIE, LEGACY_COOKIE, TokenCheck, link_key
from faceid_batch.admin.tokens import Authenticator, Principal
from faceid_batch.db import get_engine, session_scope
from faceid_batch.local.samples import png_bytes
from faceid_batch.models import AdminSession, Job
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "admin-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def admin_settings(database_url, simulator, admin_token=TOKEN):  # type: ignore[no-untyped-def]
    return load_settings(
        database_url=database_url, admin_token=admin_token, faceid_secret_id=FAKE_SECRET_ID,
        faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET, cos_domain=simulator.cos_domain,
        cos_scheme="http")


@pytest.fixture
def admin(database_url, simulator, tmp_path):
    """A TestClient on the admin app, the seeded job ids, and a staged ID photo's bytes."""
    settings = admin_settings(database_url, simulator)
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


# -- login sessions -------------------------------------------------------------------------
def log_in(client, token=TOKEN) -> str:  # type: ignore[no-untyped-def]
    """Log in with the form; return the session id the cookie carries (never the token)."""
    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review", r.text
    sid = r.cookies[COOKIE]
    assert sid and token not in sid
    return sid


def session_row(url: str, sid: str) -> AdminSession | None:
    with session_scope(url) as s:
        return s.scalar(select(AdminSession).where(
            AdminSession.session_sha256 == hashlib.sha256(sid.encode()).hexdigest()))


def refused(app, sid: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether a browser holding only this cookie is sent to the login form and refused."""
    browser = TestClient(app, cookies={COOKIE: sid})
    page = browser.get("/review", follow_redirects=False)
    api = browser.get("/api/results")
    if (page.status_code, api.status_code) == (200, 200):
        return False
    assert page.status_code == 303 and page.headers["location"] == "/login", page.text
    assert api.status_code == 401, api.text
    return True


def test_login_cookie_is_an_expiring_session_id(admin):
    client, ids, _ = admin
    r = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    [cookie] = [c for c in r.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")]
    sid = r.cookies[COOKIE]
    assert sid != TOKEN and TOKEN not in cookie and len(sid) >= 43
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert attrs["max-age"] == "Max-Age=28800"  # ADMIN_SESSION_SECONDS' default, 8 h
    assert {"httponly", "path", "samesite"} <= set(attrs) and "secure" not in attrs
    assert attrs["samesite"].lower() == "samesite=strict" and attrs["path"] == "Path=/"
    # A browser that logged in before sessions held the token itself: that cookie is deleted.
    assert any(c.startswith(f'{LEGACY_COOKIE}=""') and "Max-Age=0" in c
               for c in r.headers.get_list("set-cookie"))
    # The cookie alone opens the pages and the JSON routes, with a logout button on each page.
    browser = TestClient(client.app, cookies={COOKIE: sid})
    page = browser.get("/review")
    assert page.status_code == 200 and "id='logout'" in page.text and "alice-1" in page.text
    assert "action='/logout'" in browser.get(f"/review/jobs/{ids['bob-1']}").text
    assert browser.get("/api/results").json()["rows"]
    row = session_row(client.app.state.database_url, sid)
    assert row.token_sha256 == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert row.ended_at is None and row.expires_at - row.created_at == timedelta(hours=8)
    # Over https the cookie is Secure.
    secure = TestClient(client.app, base_url="https://testserver").post(
        "/login", data={"token": TOKEN}, follow_redirects=False)
    assert "secure" in secure.headers["set-cookie"].lower()


def test_the_token_as_a_cookie_no_longer_authenticates(admin):
    client, _, _ = admin
    for name in (LEGACY_COOKIE, COOKIE):
        browser = TestClient(client.app, cookies={name: TOKEN})
        assert browser.get("/api/results").status_code == 401, name
        assert browser.get("/review", follow_redirects=False).headers["location"] == "/login"
    # Bearer is unchanged, for API clients.
    assert client.get("/api/results", headers=AUTH).status_code == 200


def test_logout_ends_the_session(admin):
    client, _, _ = admin
    url = client.app.state.database_url
    sid = log_in(client)
    other = log_in(TestClient(client.app))  # another browser, its own session
    assert client.get("/review").status_code == 200
    r = client.post("/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert any(c.startswith(f'{COOKIE}=""') and "Max-Age=0" in c
               for c in r.headers.get_list("set-cookie"))
    assert client.get("/review", follow_redirects=False).headers["location"] == "/login"
    # The same cookie, kept by whoever copied it, is dead: the session ended in the database.
    assert session_row(url, sid).ended_at is not None
    assert refused(client.app, sid)
    assert not refused(client.app, other)
    assert client.get("/logout").status_code == 405  # a POST only: a GET changes nothing


def test_an_expired_session_is_refused_and_old_ones_are_deleted(admin):
    client, _, _ = admin
    url = client.app.state.database_url
    sid = log_in(client)
    assert not refused(client.app, sid)
    now = session_row(url, sid).created_at
    with session_scope(url) as s:
        s.execute(update(AdminSession).values(expires_at=now - timedelta(seconds=1)))
    assert refused(client.app, sid)
    # The next login deletes the sessions that expired more than a day ago, and only those.
    with session_scope(url) as s:
        s.execute(update(AdminSession).values(expires_at=now - timedelta(days=2)))
    recent = log_in(TestClient(client.app))
    with session_scope(url) as s:
        s.execute(update(AdminSession).where(AdminSession.id == session_row(url, recent).id)
                  .values(expires_at=now - timedelta(hours=20)))
    log_in(TestClient(client.app))
    assert session_row(url, sid) is None
    assert session_row(url, recent) is not None


def test_revoking_the_token_or_changing_admin_token_ends_its_sessions(admin, simulator):
    client, _, _ = admin
    url = client.app.state.database_url
    carol = tokens.add(url, "carol")
    sid = log_in(TestClient(client.app), carol)
    mine = log_in(TestClient(client.app))  # opened with the bootstrap ADMIN_TOKEN
    assert not refused(client.app, sid)
    tokens.revoke(url, "carol")
    # Refused at once, though the session itself is neither ended nor expired.
    row = session_row(url, sid)
    assert row.ended_at is None and row.token_sha256 == tokens.digest(carol)
    assert refused(client.app, sid)
    # A restart with the same ADMIN_TOKEN keeps its sessions; a new ADMIN_TOKEN ends them.
    assert not refused(create_app(admin_settings(url, simulator)), mine)
    assert refused(create_app(admin_settings(url, simulator, "another-admin-token-987")), mine)


def test_the_database_holds_no_session_id(admin):
    client, _, _ = admin
    url = client.app.state.database_url
    sids = [log_in(TestClient(client.app)) for _ in range(3)]
    TestClient(client.app, cookies={COOKIE: sids[0]}).post("/logout")
    engine = get_engine(url)
    with engine.connect() as conn:
        everything = "\n".join(
            repr(tuple(r)) for table in inspect(engine).get_table_names()
            for r in conn.execute(text(f'SELECT * FROM "{table}"')))
    for sid in sids:
        assert hashlib.sha256(sid.encode()).hexdigest() in everything  # the scan sees them
        assert sid not in everything
    assert TOKEN not in everything
    if url.startswith("sqlite"):
        engine.dispose()
