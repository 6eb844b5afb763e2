"""The producer API (``faceid-batch api``), driven over real HTTP against a real server process.

The server runs with its temporary directory in the test's own folder, so a test can check
that a refused or cut request left no file behind; the simulator's COS store is listed to
check that it left no object, and the jobs table that it left no job.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select, update

from faceid_batch.admin import tokens
from faceid_batch.db import session_scope
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, write_pair
from faceid_batch.local.services import free_port
from faceid_batch.models import Job
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, sim_calls, wait_until

SECRET = "whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs"
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "faceid-batch/media/"


@dataclass
class Api:
    url: str
    tmp: Path
    proc: subprocess.Popen
    log: Path

    def post(self, token: str | None, files: dict | None = None, data: dict | None = None,
             json_body: dict | None = None, headers: dict | None = None,
             timeout: float = 60) -> requests.Response:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return requests.post(f"{self.url}/v1/verifications", files=files, data=data,
                             json=json_body, headers=h, timeout=timeout)

    def get(self, path: str, token: str | None) -> requests.Response:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.url}{path}", headers=h, timeout=30)


def start_api(env: dict[str, str], tmp_path: Path, *extra: str) -> Api:
    port = free_port()
    tmp = tmp_path / "api-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "api.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "faceid_batch.cli", "api", "--port", str(port), *extra],
        env={**os.environ, **env, "TMPDIR": str(tmp)}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/openapi.json", timeout=1).status_code == 200
        except requests.ConnectionError:
            assert proc.poll() is None, log.read_text()[-3000:]
            return False

    wait_until(up, 30, interval=0.1, what="the API server")
    return Api(url, tmp, proc, log)


@pytest.fixture
def api_env(app_env, database_url):
    return {**app_env, "DATABASE_URL": database_url, "WEBHOOK_SECRET": SECRET}


@pytest.fixture
def api(api_env, tmp_path, configured):
    server = start_api(api_env, tmp_path)
    yield server
    server.proc.terminate()
    server.proc.wait(10)


@pytest.fixture
def token(database_url):
    return tokens.add(database_url, f"producer-{uuid.uuid4().hex[:6]}", tokens.SUBMIT)


def media(tmp_path: Path, i: int) -> dict:
    photo, video = write_pair(tmp_path / "media", i)
    return {"photo": (photo.name, photo.read_bytes(), "image/jpeg"),
            "video": (video.name, video.read_bytes(), "video/mp4")}


def jobs_count(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Job))


def stored_objects(settings) -> set[str]:
    client = MediaStager(settings).client
    resp = client.list_objects(Bucket=BUCKET, Prefix=PREFIX, MaxKeys=1000)
    return {o["Key"] for o in resp.get("Contents", [])}


def assert_nothing_left(api: Api, url: str, jobs_before: int, objects_before: set[str],
                        settings) -> None:
    assert jobs_count(url) == jobs_before
    assert stored_objects(settings) == objects_before
    assert list(api.tmp.iterdir()) == [], list(api.tmp.iterdir())


def is_problem(resp: requests.Response, status: int, kind: str, field: str | None = None):
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["type"] == f"/problems/{kind}" and body["status"] == status, body
    assert body["title"] and body["detail"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- creating and reading ---------------------------------------------------------------
def test_a_multipart_submission_is_stored_in_cos_and_answered_202(api, token, configured,
                                                                  tmp_path):
    settings = configured
    files = media(tmp_path, 1)
    resp = api.post(token, files=files, data={"liveness_type": "SILENT",
                                              "metadata": '{"user": 42}'},
                    headers={"Idempotency-Key": "signup-1"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert resp.headers["Location"] == f"/v1/verifications/{body['id']}"
    assert (body["key"], body["status"], body["lane"], body["outcome"]) == (
        "signup-1", "queued", "onboarding", None)
    assert body["metadata"] == {"user": 42}
    # Content-addressed in the bucket before the answer; the row points there.
    import hashlib

    md5s = {k: hashlib.md5(v[1]).hexdigest() for k, v in files.items()}
    assert {f"{PREFIX}{md5s['photo']}.jpg", f"{PREFIX}{md5s['video']}.mp4"} <= \
        stored_objects(settings)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, body["id"])
        assert job.photo_source == f"cos://{BUCKET}/{PREFIX}{md5s['photo']}.jpg"
        assert (job.photo_md5, job.video_md5) == (md5s["photo"], md5s["video"])
        assert job.enqueued_at is not None  # onboarding: sent at once
    # Read back by id and by key; the same status resource.
    assert api.get(resp.headers["Location"], token).json() == body
    assert api.get("/v1/verifications?key=signup-1", token).json() == body
    assert list(api.tmp.iterdir()) == []


def test_the_same_key_answers_the_same_job_and_other_content_is_409(api, token, configured,
                                                                     tmp_path):
    files = media(tmp_path, 2)
    first = api.post(token, files=files, data={"liveness_type": "SILENT", "key": "k-2"})
    assert first.status_code == 202
    again = api.post(token, files=files, data={"liveness_type": "SILENT", "key": "k-2"})
    assert again.status_code == 200 and again.json() == first.json()
    other = api.post(token, files=media(tmp_path, 3), data={"liveness_type": "SILENT",
                                                            "key": "k-2"})
    body = is_problem(other, 409, "idempotency-key-reused", "key")
    assert body["verification"] == f"/v1/verifications/{first.json()['id']}"
    lip = api.post(token, files=files, data={"liveness_type": "LIP", "validate_data": "1234",
                                             "key": "k-2"})
    is_problem(lip, 409, "idempotency-key-reused", "key")


def test_concurrent_posts_with_one_key_make_one_job_and_one_call(api, token, configured,
                                                                 sim_control, start_worker,
                                                                 tmp_path):
    settings = configured
    files = media(tmp_path, 4)
    answers: list[requests.Response] = []

    def post() -> None:
        answers.append(api.post(token, files=files, data={"liveness_type": "SILENT"},
                                headers={"Idempotency-Key": "race-1"}))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers).count(202) <= 1
    assert {r.json()["id"] for r in answers} == {answers[0].json()["id"]}
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.idempotency_key == "race-1")) == 1
    start_worker()
    job_id = answers[0].json()["id"]
    wait_until(lambda: api.get(f"/v1/verifications/{job_id}", token).json()["outcome"], 60,
               what="the outcome")
    assert len(sim_calls(sim_control)) == 1


def test_prefer_wait_answers_the_outcome_in_one_request(api, token, configured, sim_control,
                                                        start_worker, tmp_path):
    start_worker()
    cos_stats = f"http://{configured.cos_domain}/_cos/stats"
    requests.post(f"http://{configured.cos_domain}/_cos/reset", timeout=5)
    resp = api.post(token, files=media(tmp_path, 5), data={"liveness_type": "SILENT"},
                    headers={"Idempotency-Key": "wait-1", "Prefer": "wait=20"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Preference-Applied"] == "wait=20"
    body = resp.json()
    assert body["status"] == "completed"
    outcome = body["outcome"]
    assert outcome["passed"] is True and outcome["code"] == "Success"
    assert outcome["attempts"] == 1 and outcome["request_id"] and outcome["sim"] >= 70
    # The worker used the objects the API stored: only FaceID read them (one GET each).
    assert requests.get(cos_stats, timeout=5).json()["requests"].get("GET", 0) == 2
    # A known key with Prefer: wait answers its outcome too.
    again = api.post(token, files=media(tmp_path, 5), data={"liveness_type": "SILENT"},
                     headers={"Idempotency-Key": "wait-1", "Prefer": "wait=5"})
    assert again.status_code == 200 and again.json()["outcome"] == outcome
    # Without a worker answer in time, 202 after the wait.
    assert prefer_wait_parsed("respond-async, wait=100") == 30


def prefer_wait_parsed(header: str) -> int | None:
    from faceid_batch.producer.service import prefer_wait

    return prefer_wait(header)


def test_json_submissions_take_https_or_cos_urls(api, token, configured):
    ok = api.post(token, json_body={"photo_url": f"cos://{BUCKET}/old/1.jpg",
                                    "video_url": "https://media.example/v/1.mp4",
                                    "liveness_type": "ACTION", "validate_data": "1,2",
                                    "lane": "backfill", "metadata": {"crm": 7}},
                  headers={"Idempotency-Key": "json-1"})
    assert ok.status_code == 202, ok.text
    body = ok.json()
    assert (body["lane"], body["liveness_type"], body["metadata"]) == ("backfill", "ACTION",
                                                                       {"crm": 7})
    url = configured.database_url
    before = jobs_count(url)
    for values, field in (
            ({"photo_url": "http://media.example/p.jpg"}, "photo_url"),
            ({"photo_url": "https://media.example/p.jpg?sig=abc"}, "photo_url"),
            ({"video_url": "cos://another-bucket-1250000000/v.mp4"}, "video_url"),
            ({"metadata": [1, 2]}, "metadata"),
            ({"colour": "red"}, "colour")):
        base = {"photo_url": f"cos://{BUCKET}/p.jpg", "video_url": f"cos://{BUCKET}/v.mp4",
                "liveness_type": "SILENT", "key": f"json-bad-{field}"}
        is_problem(api.post(token, json_body={**base, **values}), 422, "invalid-field", field)
    assert jobs_count(url) == before


# -- tokens and scopes ------------------------------------------------------------------
def test_tokens_scopes_and_whose_verifications_a_token_sees(api, configured, tmp_path,
                                                            api_env):
    url = configured.database_url
    token = tokens.add(url, "producer-mine", tokens.SUBMIT)
    files = media(tmp_path, 6)
    for bad in (None, "not-a-token"):
        body = is_problem(api.post(bad, files=files, data={"liveness_type": "SILENT",
                                                           "key": "t-1"}), 401, "unauthorized")
        assert "token" in body["detail"]
    created = api.post(token, files=files, data={"liveness_type": "SILENT", "key": "t-1"})
    job = created.json()["id"]
    other = tokens.add(url, "producer-other", tokens.SUBMIT)
    is_problem(api.get(f"/v1/verifications/{job}", other), 404, "not-found")
    is_problem(api.get("/v1/verifications?key=t-1", other), 404, "not-found")
    # Another producer cannot take over the key either.
    is_problem(api.post(other, files=files, data={"liveness_type": "SILENT", "key": "t-1"}),
               409, "idempotency-key-reused", "key")
    admin = tokens.add(url, "an-admin", tokens.ADMIN)
    assert api.get(f"/v1/verifications/{job}", admin).status_code == 200
    tokens.revoke(url, "producer-mine")
    is_problem(api.get(f"/v1/verifications/{job}", token), 401, "unauthorized")
    # A submit token is no admin token: the admin routes, mounted beside, refuse it.
    both = start_api({**api_env, "ADMIN_TOKEN": "an-obviously-fake-admin-token-0123"},
                     tmp_path / "with-admin", "--with-admin")
    try:
        r = requests.get(f"{both.url}/api/results",
                         headers={"Authorization": f"Bearer {other}"}, timeout=10)
        assert r.status_code == 403, r.text
        assert requests.get(f"{both.url}/api/results", timeout=10,
                            headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        assert requests.get(f"{both.url}/v1/verifications/{job}", timeout=10,
                            headers={"Authorization": f"Bearer {other}"}).status_code == 404
    finally:
        both.proc.terminate()
        both.proc.wait(10)


# -- every error a problem detail, nothing stored ---------------------------------------
def test_each_bad_submission_is_a_problem_and_stores_nothing(api, token, configured,
                                                             tmp_path):
    settings = configured
    url = settings.database_url
    files = media(tmp_path, 7)
    jobs_before, objects_before = jobs_count(url), stored_objects(settings)
    ok_fields = {"liveness_type": "SILENT"}

    def post(files_=files, data=None, headers=None, key="bad-1"):
        return api.post(token, files=files_, data={**ok_fields, **(data or {})},
                        headers={"Idempotency-Key": key, **(headers or {})})

    cases = [
        (post(data={"liveness_type": "BLINK"}), 422, "invalid-field", "liveness_type"),
        (post(data={"liveness_type": "LIP", "validate_data": "12"}), 422, "invalid-field",
         "validate_data"),
        (post(data={"validate_data": "1234"}), 422, "invalid-field", "validate_data"),
        (post(data={"lane": "express"}), 422, "invalid-field", "lane"),
        (post(data={"metadata": "{not json"}), 422, "invalid-field", "metadata"),
        (post(data={"metadata": "[1]"}), 422, "invalid-field", "metadata"),
        (post(data={"callback_url": "ftp://x/y"}), 422, "invalid-field", "callback_url"),
        (post(data={"key": "another"}), 422, "invalid-field", "key"),
        (post(data={"colour": "red"}), 422, "invalid-field", "colour"),
        (api.post(token, files=files, data=ok_fields), 422, "invalid-field", "key"),
        (post(key="has space"), 422, "invalid-field", "key"),
        (post(files_={"photo": files["photo"]}), 422, "invalid-field", "video"),
        (post(files_={**files, "video": ("v.mp4", b"hello, not a video at all", "video/mp4")}),
         415, "unsupported-media-type", "video"),
        (post(files_={**files, "photo": ("p.jpg", files["video"][1], "image/jpeg")}),
         415, "unsupported-media-type", "photo"),
        (post(files_={**files, "video": ("v.mp4", b"", "video/mp4")}), 422, "invalid-field",
         "video"),
        (post(files_={**files, "photo": ("p.jpg", jpeg_bytes(1, 2_400_000), "image/jpeg")}),
         413, "payload-too-large", "photo"),
        (requests.post(f"{api.url}/v1/verifications", data="x=1", timeout=10,
                       headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "text/plain"}), 415,
         "unsupported-media-type", None),
        (requests.post(f"{api.url}/v1/verifications", data=b"--nope\r\n\r\n", timeout=10,
                       headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "multipart/form-data; boundary=xyz"}),
         400, "malformed-request", None),
    ]
    for resp, status, kind, field in cases:
        is_problem(resp, status, kind, field)
    # The API's preflight: a 1 s video would be refused (and charged) as SilentTooShort.
    short = mp4_bytes(9, 200_000, duration_s=1.0)
    refused = post(files_={**files, "video": ("v.mp4", short, "video/mp4")}, key="short-1")
    body = is_problem(refused, 422, "preflight-refused", "video")
    assert body["code"] == "FailedOperation.SilentTooShort"
    assert_nothing_left(api, url, jobs_before, objects_before, settings)


def test_an_upload_over_the_limit_is_refused_without_reading_the_rest(api, token, configured):
    """A chunked body (no Content-Length to judge up front): the answer comes as soon as the
    video is over its limit, while the client is still sending."""
    settings = configured
    jobs_before, objects_before = jobs_count(settings.database_url), stored_objects(settings)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"liveness_type\"\r\n\r\n"
            f"SILENT\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"v.mp4\"\r\nContent-Type: video/mp4\r\n\r\n").encode()
    video_start = mp4_bytes(3, 1024 * 1024)
    sent = {"bytes": 0}

    def body():
        yield head
        yield video_start
        sent["bytes"] += len(head) + len(video_start)
        for _ in range(64):  # 64 MiB more, far past the 6 MiB raw limit
            chunk = b"\0" * (1024 * 1024)
            sent["bytes"] += len(chunk)
            yield chunk
            time.sleep(0.02)

    conn = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=30)
    try:
        conn.putrequest("POST", "/v1/verifications")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Idempotency-Key", "too-big-1")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        answered = None
        for chunk in body():
            try:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            if answered is None and conn.sock is not None:
                conn.sock.settimeout(0.0)
                try:
                    if conn.sock.recv(1, socket.MSG_PEEK):
                        answered = sent["bytes"]
                        break
                except BlockingIOError:
                    pass
                finally:
                    conn.sock.settimeout(30)
        resp = conn.getresponse()
        problem = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413 and problem["field"] == "video", problem
    assert (answered or sent["bytes"]) < 12 * 1024 * 1024, sent
    assert_nothing_left(api, settings.database_url, jobs_before, objects_before, settings)


def test_a_request_cut_mid_upload_leaves_no_job_object_or_file(api, token, configured,
                                                               tmp_path):
    settings = configured
    jobs_before, objects_before = jobs_count(settings.database_url), stored_objects(settings)
    files = media(tmp_path, 8)
    prepared = requests.Request("POST", f"{api.url}/v1/verifications", files=files,
                                data={"liveness_type": "SILENT"},
                                headers={"Authorization": f"Bearer {token}",
                                         "Idempotency-Key": "cut-1"}).prepare()
    raw = ("POST /v1/verifications HTTP/1.1\r\nHost: x\r\n"
           + "".join(f"{k}: {v}\r\n" for k, v in prepared.headers.items()) + "\r\n").encode()
    host, port = api.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(raw + prepared.body[: len(prepared.body) // 2])
    time.sleep(0.5)  # the server has read half the video into its temporary file
    sock.close()
    wait_until(lambda: list(api.tmp.iterdir()) == [], 10, what="the temporary files to go")
    assert_nothing_left(api, settings.database_url, jobs_before, objects_before, settings)
    assert api.proc.poll() is None


# -- admission control ------------------------------------------------------------------
def test_a_lane_whose_backlog_is_too_long_answers_429_with_retry_after(
        api_env, tmp_path, configured, token):
    """With a backlog longer than the budget answers in ONBOARDING_MAX_WAIT_SECONDS (here
    2 jobs a second for 1.5 s, less the half second admission keeps for a job's way to its
    slot: 2 jobs), a new submission is refused with a Retry-After that says when there is
    room; refused submissions do not move the line."""
    settings = configured
    api = start_api({**api_env, "FACEID_RATE_LIMIT": "2",
                     "ONBOARDING_MAX_WAIT_SECONDS": "1.5"}, tmp_path)
    try:
        url = settings.database_url
        body = {"photo_url": f"cos://{BUCKET}/p.jpg", "video_url": f"cos://{BUCKET}/v.mp4",
                "liveness_type": "SILENT"}
        for i in range(2):
            assert api.post(token, json_body={**body, "key": f"adm-{i}"}).status_code == 202
        time.sleep(0.3)  # the backlog count is cached a quarter of a second
        refused = [api.post(token, json_body={**body, "key": f"adm-late-{i}"})
                   for i in range(3)]
        for resp in refused:
            problem = is_problem(resp, 429, "too-many-requests")
            wait = int(resp.headers["Retry-After"])
            assert problem["retry_after"] == wait and 1 <= wait <= 3
        assert jobs_count(url) == 2
        # A known key is never refused: it is not new work.
        assert api.post(token, json_body={**body, "key": "adm-0"}).status_code == 200
        # The backfill lane has its own wait (BACKFILL_MAX_WAIT_SECONDS, an hour by default).
        backfill = api.post(token, json_body={**body, "key": "adm-b", "lane": "backfill"})
        assert backfill.status_code == 202
        # The backlog answered: the refused ones took no place, a new one is admitted now.
        with session_scope(url) as s:
            s.execute(update(Job).values(state="completed", due_at=None, enqueued_at=None))
        time.sleep(1.3)  # the admitted ones' own places pass
        assert api.post(token, json_body={**body, "key": "adm-new"}).status_code == 202
    finally:
        api.proc.terminate()
        api.proc.wait(10)


def test_a_flood_of_refused_and_failed_requests_moves_no_one_back(api_env, tmp_path,
                                                                  configured, token):
    """One producer sends garbage (uploads whose content is not an image, submissions the
    preflight refuses) and a flood of new keys into a full lane; another producer's
    sign-up is admitted as soon as the real backlog allows."""
    settings = configured
    api = start_api({**api_env, "FACEID_RATE_LIMIT": "2",
                     "ONBOARDING_MAX_WAIT_SECONDS": "3"}, tmp_path)
    try:
        url = settings.database_url
        garbage = {"photo": ("p.jpg", b"<html>not an image</html>" * 10, "image/jpeg"),
                   "video": ("v.mp4", mp4_bytes(1, 50_000), "video/mp4")}
        for i in range(40):
            resp = api.post(token, files=garbage, data={"liveness_type": "SILENT",
                                                        "key": f"junk-{i}"})
            is_problem(resp, 415, "unsupported-media-type", "photo")
        short = {"photo": ("p.jpg", jpeg_bytes(3, 20_000), "image/jpeg"),
                 "video": ("v.mp4", mp4_bytes(9, 200_000, duration_s=1.0), "video/mp4")}
        for i in range(20):
            resp = api.post(token, files=short, data={"liveness_type": "SILENT",
                                                      "key": f"short-{i}"})
            is_problem(resp, 422, "preflight-refused", "video")
        assert jobs_count(url) == 0
        body = {"photo_url": f"cos://{BUCKET}/p.jpg", "video_url": f"cos://{BUCKET}/v.mp4",
                "liveness_type": "SILENT"}
        # The lane fills (5 places: 2 a second for 2.5 s), then a flood is refused.
        admitted = sum(api.post(token, json_body={**body, "key": f"fill-{i}"}).status_code
                       == 202 for i in range(5))
        assert admitted == 5
        time.sleep(0.3)
        assert all(api.post(token, json_body={**body, "key": f"flood-{i}"}).status_code == 429
                   for i in range(60))
        # The backlog is answered: the next producer's sign-up gets in at once.
        with session_scope(url) as s:
            s.execute(update(Job).values(state="completed", due_at=None, enqueued_at=None))
        time.sleep(2.6)  # the admitted ones' own places pass; the flood took none
        other = tokens.add(url, f"other-{uuid.uuid4().hex[:6]}", tokens.SUBMIT)
        resp = api.post(other, json_body={**body, "key": "real-signup"})
        assert resp.status_code == 202, resp.text
    finally:
        api.proc.terminate()
        api.proc.wait(10)


# -- the API's edges --------------------------------------------------------------------
def test_odd_bodies_and_headers_get_problem_details(api, token, configured):
    body = {"photo_url": f"cos://{BUCKET}/p.jpg", "video_url": f"cos://{BUCKET}/v.mp4",
            "liveness_type": "SILENT", "key": "edge-1"}
    nested = api.post(token, data=b"[" * 30_000, headers={"Content-Type": "application/json"})
    is_problem(nested, 400, "malformed-request")
    huge_wait = api.post(token, json_body=body, headers={"Prefer": "wait=" + "9" * 5000})
    assert huge_wait.status_code in (200, 202), huge_wait.text
    assert huge_wait.headers["Preference-Applied"] == "wait=30"
    for values, field in (({**body, "key": "edge-2", "metadata": {"x": float("inf")}},
                           "metadata"),
                          ({**body, "key": 5}, "key"),
                          ({**body, "key": "edge-3",
                            "photo_url": f"cos://{BUCKET}/{PREFIX}0123abcd.jpg"}, "photo_url"),
                          ({**body, "key": "edge-4", "photo_url": f"cos://{BUCKET}/a/../b.jpg"},
                           "photo_url")):
        raw = json.dumps(values).encode()  # Infinity, as a JSON library may write it
        resp = api.post(token, data=raw, headers={"Content-Type": "application/json"})
        is_problem(resp, 422 if field != "metadata" else 400,
                   "invalid-field" if field != "metadata" else "malformed-request",
                   field if field != "metadata" else None)
    is_problem(api.get("/v1/verifications/" + "9" * 24, token), 404, "not-found")
    is_problem(requests.delete(f"{api.url}/v1/verifications/1", timeout=10,
                               headers={"Authorization": f"Bearer {token}"}),
               405, "method-not-allowed")
    length = api.post(token, data=b"{}", headers={"Content-Type": "multipart/form-data; "
                                                  "boundary=x", "Content-Length": "9" * 5000})
    assert length.status_code in (400, 413) and length.headers["content-type"].startswith(
        "application/problem+json")


def test_an_unexpected_error_is_a_problem_detail(configured, token, monkeypatch):
    import warnings

    from faceid_batch.producer import app as producer_app
    from faceid_batch.producer import resource

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(resource, "load", broken)
    client = TestClient(producer_app.create_app(configured), raise_server_exceptions=False)
    resp = client.get("/v1/verifications/1", headers={"Authorization": f"Bearer {token}"})
    body = is_problem(resp, 500, "internal-error")
    assert "a bug" not in body["detail"]  # nothing of the inside is told


def test_a_stalled_upload_is_cut_and_uploads_are_capped(api_env, tmp_path, configured, token,
                                                        monkeypatch):
    api = start_api({**api_env, "API_BODY_TIMEOUT_SECONDS": "1.5", "API_MAX_UPLOADS": "1"},
                    tmp_path)
    try:
        host, port = api.url.removeprefix("http://").split(":")
        files = media(tmp_path, 21)
        prepared = requests.Request("POST", f"{api.url}/v1/verifications", files=files,
                                    data={"liveness_type": "SILENT", "key": "stall-1"},
                                    headers={"Authorization": f"Bearer {token}"}).prepare()
        head = (f"POST /v1/verifications HTTP/1.1\r\nHost: {host}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in prepared.headers.items())
                + "\r\n").encode()
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(head + prepared.body[:2000])  # and then nothing more
        time.sleep(0.3)
        # While it holds the only upload slot, another upload is turned away at once.
        busy = api.post(token, files=media(tmp_path, 22), data={"liveness_type": "SILENT"},
                        headers={"Idempotency-Key": "stall-2"})
        is_problem(busy, 503, "unavailable")
        assert busy.headers["Retry-After"] == "1"
        stalled.settimeout(5)
        answer = ""
        while "request-timeout" not in answer:
            more = stalled.recv(65536).decode("latin-1")
            if not more:
                break
            answer += more
        stalled.close()
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "application/problem+json" in answer and "request-timeout" in answer
        wait_until(lambda: list(api.tmp.iterdir()) == [], 10, what="the temporary files")
        # The slot is free again.
        again = api.post(token, files=media(tmp_path, 22), data={"liveness_type": "SILENT"},
                         headers={"Idempotency-Key": "stall-2"})
        assert again.status_code == 202, again.text
        assert jobs_count(configured.database_url) == 1
    finally:
        api.proc.terminate()
        api.proc.wait(10)


# -- the OpenAPI document and clients that are not our Python -----------------------------
def test_the_openapi_document_is_served_and_committed(api):
    served = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == committed, ("docs/openapi.json is stale: regenerate it with "
                                 "`python -m faceid_batch.producer.openapi > docs/openapi.json`")
    assert served["openapi"].startswith("3.1")
    from openapi_spec_validator import validate

    validate(served)  # a valid OpenAPI 3.1 document, by a validator nobody here wrote
    assert {"/v1/verifications", "/v1/verifications/{job_id}"} <= set(served["paths"])
    assert "job.finished" in served["webhooks"]
    body = served["paths"]["/v1/verifications"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
needs_node = pytest.mark.skipif(not shutil.which("node"), reason="no node")


@needs_curl
def test_curl_submits_multipart_and_gets_the_outcome_with_prefer_wait(
        api, token, configured, sim_control, start_worker, tmp_path):
    photo, video = write_pair(tmp_path / "curl", 11)
    start_worker()
    cmd = ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}",
           "-F", f"photo=@{photo}", "-F", f"video=@{video}", "-F", "liveness_type=SILENT"]
    out = subprocess.run([*cmd, "-H", "Idempotency-Key: curl-1",
                          f"{api.url}/v1/verifications"], capture_output=True, text=True,
                         timeout=60)
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "202", out
    job_id = json.loads(body)["id"]
    out = subprocess.run([*cmd, "-H", "Idempotency-Key: curl-2", "-H", "Prefer: wait=20",
                          f"{api.url}/v1/verifications"], capture_output=True, text=True,
                         timeout=60)
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "200", out
    assert json.loads(body)["outcome"]["passed"] is True
    # An error answer, as curl sees it: a problem detail.
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-F", f"photo=@{photo}",
                          f"{api.url}/v1/verifications"], capture_output=True, text=True,
                         timeout=30)
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "401" and json.loads(body)["type"] == "/problems/unauthorized"
    assert job_id


@needs_node
def test_node_fetch_submits_and_reads_the_outcome(api, token, configured, sim_control,
                                                  start_worker, tmp_path):
    photo, video = write_pair(tmp_path / "node", 12)
    start_worker()
    out = subprocess.run(["node", str(ROOT / "tests" / "node" / "submit.mjs"), api.url, token,
                          str(photo), str(video)], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["created"]["status"] == 202 and result["created"]["location"]
    assert result["waited"]["status"] == 200
    assert result["waited"]["body"]["outcome"]["passed"] is True
    assert result["error"]["status"] == 422
    assert result["error"]["body"]["field"] == "liveness_type"
    assert result["error"]["type"].startswith("application/problem+json")


def test_settings_name_the_admission_waits():
    s = load_settings()
    assert (s.onboarding_max_wait_seconds, s.backfill_max_wait_seconds) == (10, 3600)


def test_an_upload_that_stalls_is_cut_after_ten_seconds_at_the_defaults(api, token):
    host, port = api.url.removeprefix("http://").split(":")
    head = (f"POST /v1/verifications HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(head + b"--b\r\nContent-Disposition: form-data; name=\"liveness_type\"")
    started = time.monotonic()
    stalled.settimeout(30)
    answer = stalled.recv(65536).decode("latin-1")
    waited = time.monotonic() - started
    stalled.close()
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert 9 < waited < 13, waited  # the whole-body timeout (60 s) never came into it
