"""Access audit with named admin tokens (SQLite and PostgreSQL): each surface that shows a face
image writes exactly one audit row naming the token; revoked tokens and their links are
refused; no token is stored in plain text; the audit is append-only; ``audit`` filters."""

from __future__ import annotations

import hashlib
import html
import json
import re
import socket
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, inspect, select, text, update
from sqlalchemy.exc import DBAPIError
from test_queries import FRAME, seed
from typer.testing import CliRunner

from faceid_batch.admin import audit
from faceid_batch.admin.app import AdminConfigError, create_app
from faceid_batch.cli.main import app as cli_app
from faceid_batch.db import get_engine, session_scope
from faceid_batch.local.samples import png_bytes
from faceid_batch.models import AccessAudit, AdminToken, Job
from faceid_batch.settings import get_settings, load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

BOOTSTRAP = "bootstrap-admin-token-0123456789"


@pytest.fixture
def env(database_url, simulator, tmp_path, monkeypatch):
    """Seeded jobs (bob-1 with a best frame and a staged ID photo), settings for the admin app,
    and the same settings in this process's environment for the CLI."""
    values = {"DATABASE_URL": database_url, "ADMIN_TOKEN": BOOTSTRAP,
              "FACEID_SECRET_ID": FAKE_SECRET_ID, "FACEID_SECRET_KEY": FAKE_SECRET_KEY,
              "COS_BUCKET": BUCKET, "COS_DOMAIN": simulator.cos_domain, "COS_SCHEME": "http"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    settings = load_settings()
    ids = seed(database_url)
    photo = tmp_path / "id.png"
    photo.write_bytes(png_bytes(7, 4000))
    key = MediaStager(settings).stage("photo", str(photo)).key
    with session_scope(database_url) as s:
        s.execute(update(Job).where(Job.id == ids["bob-1"]).values(photo_key=key))
    yield settings, ids["bob-1"], photo.read_bytes()
    get_settings.cache_clear()


def cli(*args: str):  # type: ignore[no-untyped-def]
    get_settings.cache_clear()
    return CliRunner().invoke(cli_app, list(args))


def add_token(name: str) -> str:
    out = cli("token", "add", name)
    assert out.exit_code == 0, out.output
    return out.stdout.strip()


def rows(url: str) -> list[AccessAudit]:
    with session_scope(url) as s:
        return list(s.scalars(select(AccessAudit).order_by(AccessAudit.id)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def page_image(page: str, element: str) -> str:
    return html.unescape(re.search(rf"id='{element}' alt='[^']*' src='([^']+)'", page)[1])


def test_each_surface_adds_one_row_naming_the_token(env, tmp_path):
    settings, job, photo = env
    url = settings.database_url
    alice, bob = add_token("alice"), add_token("bob")
    app = create_app(settings)
    with session_scope(url) as s:
        alice_id = s.scalar(select(AdminToken.id).where(AdminToken.name == "alice"))

    # JSON API: the job's JSON carries links and is not a read of a face; the image fetch is.
    api = TestClient(app)
    links = api.get(f"/api/jobs/{job}", headers=bearer(alice)).json()["images"]
    assert rows(url) == []
    got = api.get(links["best_frame"], headers=bearer(alice))
    assert got.status_code == 200 and got.content == FRAME
    [row] = rows(url)
    assert (row.actor, row.token_id, row.surface, row.what, row.job_id, row.remote) == (
        "alice", alice_id, "api", "best_frame", job, "testclient")
    # alice's link is hers: bob cannot use it, and the refusal is not a read.
    assert api.get(links["best_frame"], headers=bearer(bob)).status_code == 403
    assert len(rows(url)) == 1

    # Web: bob logs in with the form; the page's <img> link is a read when it is fetched.
    web = TestClient(app)
    assert web.post("/login", data={"token": bob}, follow_redirects=False).status_code == 303
    page = web.get(f"/review/jobs/{job}").text
    assert len(rows(url)) == 1
    frame = web.get(page_image(page, "best-frame"))
    assert frame.status_code == 200 and frame.content == FRAME
    new = rows(url)[1:]
    assert [(r.actor, r.surface, r.what, r.job_id) for r in new] == [
        ("bob", "web", "best_frame", job)]
    assert web.get(page_image(page, "id-photo")).content == photo
    assert [(r.actor, r.surface, r.what) for r in rows(url)[2:]] == [("bob", "web", "id_photo")]

    # The bootstrap ADMIN_TOKEN still works and is audited under its name.
    links = api.get(f"/api/jobs/{job}", headers=bearer(BOOTSTRAP)).json()["images"]
    assert api.get(links["best_frame"], headers=bearer(BOOTSTRAP)).status_code == 200
    last = rows(url)[-1]
    assert (last.actor, last.token_id, last.surface) == ("ADMIN_TOKEN", None, "api")

    # CLI: `show --save-images` writes the images and one row each, as cli:<user>@<host>.
    before = len(rows(url))
    out = cli("show", str(job), "--save-images", str(tmp_path / "saved"))
    assert out.exit_code == 0, out.output
    saved = {p.name: p for p in (tmp_path / "saved").iterdir()}
    assert saved[f"job-{job}-best_frame.png"].read_bytes() == FRAME
    assert saved[f"job-{job}-id_photo.png"].read_bytes() == photo
    assert oct(saved[f"job-{job}-best_frame.png"].stat().st_mode & 0o777) == "0o600"
    actor, host = audit.cli_actor()
    assert actor.startswith("cli:") and actor.endswith(f"@{socket.gethostname()}")
    new = rows(url)[before:]
    assert sorted((r.actor, r.surface, r.what, r.job_id, r.remote) for r in new) == [
        (actor, "cli", "best_frame", job, host), (actor, "cli", "id_photo", job, host)]
    assert new[0].detail.endswith(f"job-{job}-best_frame.png")
    # `show` without --save-images reads no face and writes no row.
    assert cli("show", str(job)).exit_code == 0
    assert len(rows(url)) == before + 2


def test_revoked_token_is_refused_everywhere(env):
    settings, job, _ = env
    url = settings.database_url
    alice, bob = add_token("alice"), add_token("bob")
    app = create_app(settings)
    api, web = TestClient(app), TestClient(app)
    links = api.get(f"/api/jobs/{job}", headers=bearer(alice)).json()["images"]
    assert web.post("/login", data={"token": alice}, follow_redirects=False).status_code == 303
    page_link = page_image(web.get(f"/review/jobs/{job}").text, "best-frame")
    assert web.get(page_link).status_code == 200
    assert len(rows(url)) == 1

    out = cli("token", "revoke", "alice")
    assert out.exit_code == 0, out.output
    # No cache: the very next request is refused, on every surface.
    assert api.get("/api/results", headers=bearer(alice)).status_code == 401
    assert api.get(f"/api/jobs/{job}", headers=bearer(alice)).status_code == 401
    assert api.get(links["best_frame"], headers=bearer(alice)).status_code == 401
    assert web.get(page_link).status_code == 401
    review = web.get(f"/review/jobs/{job}", follow_redirects=False)
    assert review.status_code == 303 and review.headers["location"] == "/login"
    assert web.post("/login", data={"token": alice}).status_code == 401
    # Her links do not work for anyone else either; nothing was read.
    assert api.get(links["best_frame"], headers=bearer(bob)).status_code == 403
    assert len(rows(url)) == 1
    assert api.get("/api/results", headers=bearer(bob)).status_code == 200
    assert cli("token", "revoke", "alice").exit_code == 1  # already revoked
    assert cli("token", "revoke", "nobody").exit_code == 1


def test_no_token_stored_in_plain_text(env):
    settings, job, _ = env
    url = settings.database_url
    made = {name: add_token(name) for name in ("alice", "bob", "carol")}
    assert len(set(made.values())) == 3 and all(len(t) >= 43 for t in made.values())
    client = TestClient(create_app(settings))
    for token in made.values():  # use each once: last_used_at and an audit row get written
        link = client.get(f"/api/jobs/{job}", headers=bearer(token)).json()["images"]
        assert client.get(link["best_frame"], headers=bearer(token)).status_code == 200
    assert client.post("/login", data={"token": made["carol"]}).status_code == 200

    with session_scope(url) as s:
        stored = s.execute(select(AdminToken)).scalars().all()
        assert {t.name: t.token_sha256 for t in stored} == {
            n: hashlib.sha256(t.encode()).hexdigest() for n, t in made.items()}
        assert all(t.last_used_at is not None for t in stored)
    # Every column of every table, as text: no token, and no bootstrap token either.
    engine = get_engine(url)
    dump = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            dump += [repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
    everything = "\n".join(dump)
    assert "alice" in everything  # the scan does see the tables
    for secret in (*made.values(), BOOTSTRAP):
        assert secret not in everything
    if url.startswith("sqlite"):
        engine.dispose()  # checkpoint the WAL into the file
        path = Path(url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert hashlib.sha256(made["alice"].encode()).hexdigest().encode() in raw
        for secret in (*made.values(), BOOTSTRAP):
            assert secret.encode() not in raw


def test_token_list_never_prints_a_token(env):
    url = env[0].database_url
    alice, bob = add_token("alice"), add_token("bob")
    assert cli("token", "revoke", "bob").exit_code == 0
    out = cli("token", "list")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:4] == ["name", "scope", "tenant", "created"]
    byname = {line.split()[0]: line for line in lines[1:]}
    assert set(byname) == {"alice", "bob"}
    assert byname["alice"].rstrip().endswith("-") and not byname["bob"].rstrip().endswith("-")
    for token in (alice, bob):
        assert token not in out.output
        assert hashlib.sha256(token.encode()).hexdigest() not in out.output
    # Names are checked and never reused; the bootstrap name is reserved.
    for bad in ("ADMIN_TOKEN", "alice", "has space", "cli:me@host", ""):
        assert cli("token", "add", bad).exit_code == 2, bad
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(AdminToken)) == 2


def test_admin_starts_on_named_tokens_alone(env):
    settings, job, _ = env
    bare = load_settings(database_url=settings.database_url, admin_token=None)
    with pytest.raises(AdminConfigError, match="token add"):
        create_app(bare)
    alice = add_token("alice")
    client = TestClient(create_app(bare))  # no ADMIN_TOKEN: links keyed per process
    assert client.get("/api/results", headers=bearer(BOOTSTRAP)).status_code == 401
    link = client.get(f"/api/jobs/{job}", headers=bearer(alice)).json()["images"]["best_frame"]
    assert client.get(link, headers=bearer(alice)).content == FRAME
    # A link from another process (another random key) is refused.
    other = TestClient(create_app(bare))
    assert other.get(link, headers=bearer(alice)).status_code == 403


def test_audit_command_filters(env):
    url = env[0].database_url
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    spec = [("alice", "api", 1, 0), ("alice", "web", 2, 1), ("bob", "web", 1, 2),
            ("cli:ops@box", "cli", 3, 3), ("bob", "api", 2, 4)]
    with session_scope(url) as s:
        for actor, surface, job, minutes in spec:
            s.add(AccessAudit(at=t0 + timedelta(minutes=minutes), actor=actor, surface=surface,
                              what="best_frame", job_id=job, remote="10.0.0.9"))

    def jsonl(*args: str) -> list[dict]:
        out = cli("audit", "--format", "jsonl", *args)
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.stdout.splitlines()]

    everything = jsonl()
    assert [(r["actor"], r["job_id"]) for r in everything] == [
        (a, j) for a, _, j, _ in reversed(spec)]  # newest first
    assert datetime.fromisoformat(everything[0]["at"]) == t0 + timedelta(minutes=4)
    assert {r["actor"] for r in jsonl("--job", "1")} == {"alice", "bob"}
    assert [r["job_id"] for r in jsonl("--actor", "alice")] == [2, 1]
    assert [r["actor"] for r in jsonl("--actor", "cli:ops@box")] == ["cli:ops@box"]
    window = jsonl("--since", "2026-03-01T12:01:00", "--until", "2026-03-01T12:03:00")
    assert [(r["actor"], r["surface"]) for r in window] == [("bob", "web"), ("alice", "web")]
    offset = jsonl("--since", "2026-03-01T14:03:00+02:00")
    assert [r["actor"] for r in offset] == ["bob", "cli:ops@box"]
    assert [r["actor"] for r in jsonl("--limit", "2")] == ["bob", "cli:ops@box"]
    assert jsonl("--actor", "alice", "--job", "3") == []
    text_out = cli("audit", "--job", "3")
    assert text_out.exit_code == 0
    assert "cli:ops@box" in text_out.output and "10.0.0.9" in text_out.output
    assert cli("audit", "--since", "yesterday").exit_code == 2
    assert cli("audit", "--format", "xml").exit_code == 2


def test_audit_is_append_only(env):
    url = env[0].database_url
    audit.record(url, actor="alice", surface="web", what="best_frame", job_id=1)
    attempts = [update(AccessAudit).values(actor="mallory"), delete(AccessAudit)]
    if url.startswith("postgresql"):
        attempts.append(text("TRUNCATE access_audit"))
    for statement in attempts:
        with pytest.raises(DBAPIError, match="append-only"):
            with session_scope(url) as s:
                s.execute(statement)
    with pytest.raises(DBAPIError, match="append-only"):  # through the ORM unit of work too
        with session_scope(url) as s:
            s.delete(s.scalars(select(AccessAudit)).one())
    [row] = rows(url)
    assert row.actor == "alice"


def test_a_submit_token_is_for_the_producer_api_only(env):
    settings, job, _ = env
    out = cli("token", "add", "signup-service", "--scope", "submit")
    assert out.exit_code == 0, out.output
    token = out.stdout.strip().splitlines()[-1]  # alone on the last line
    assert len(token) >= 40 and " " not in token
    listed = {line.split()[0]: line.split()[1] for line in
              cli("token", "list").output.splitlines()[1:]}
    assert listed["signup-service"] == "submit"
    assert cli("token", "add", "x", "--scope", "root").exit_code == 2
    client = TestClient(create_app(settings))
    for path in ("/api/results", f"/api/jobs/{job}", "/api/stats", "/review"):
        assert client.get(path, headers=bearer(token)).status_code == 403, path
    login = client.post("/login", data={"token": token}, follow_redirects=False)
    assert login.status_code == 401
    admin = add_token("an-admin")
    assert client.get("/api/results", headers=bearer(admin)).status_code == 200
