"""A clock we can trust: the offset of an endpoint's clock learned from its answers' Date
(call/clock.py), FaceID requests and COS signatures made on it, and what an
AuthFailure.SignatureExpire answer costs (nothing: not an attempt, not billed, no breaker).
No network: the simulator's own verifiers judge the signatures in-process."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from types import SimpleNamespace

import pytest
import requests
from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth
from sqlalchemy import select

from faceid_batch.call import billing
from faceid_batch.call import clock as clock_mod
from faceid_batch.call.clock import MAX_OFFSET, EndpointClock, parse_http_date
from faceid_batch.call.errors import Kind, classify
from faceid_batch.call.faceid_client import Answer, CompareRequest, FaceIDClient
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
from faceid_batch.models import Attempt, Job
from faceid_batch.ops import metrics
from faceid_batch.outcome import record
from faceid_batch.scheduling import schedule
from faceid_batch.settings import load_settings
from faceid_batch.stage.cos_signing import presigned_url, resign, signature_fields
from faceid_batch.worker import Resources
from faceid_sim.cos_sign import CosAuthError, CosRequest, verify_cos_request
from faceid_sim.tc3 import Tc3Error, verify_tc3
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

SIGNATURE_EXPIRE = "AuthFailure.SignatureExpire"


def date_header(server_time: float) -> dict[str, str]:
    """The Date header a server whose clock reads ``server_time`` sends (whole seconds)."""
    return {"Date": formatdate(server_time, usegmt=True)}


# --- the estimator ----------------------------------------------------------------------

def test_offset_is_server_date_minus_the_midpoint_of_the_round_trip():
    clock = EndpointClock("t")
    sent = 1_700_000_000.2
    received = sent + 0.4
    # The server's clock is 400.3 s ahead, read at the midpoint (…400.7); Date says the whole
    # second it was in (…400), taken as the middle of that second.
    sample = clock.observe(date_header(sent + 0.2 + 400.3), sent, received)
    midpoint = (sent + received) / 2
    assert sample is not None and abs(sample - (1_700_000_400 + 0.5 - midpoint)) < 1e-6
    assert abs(sample - 400.3) <= 0.5 + (received - sent) / 2
    assert clock.offset == sample and clock.samples == 1
    assert abs(clock.now() - (time.time() + sample)) < 0.05


def test_clocks_that_agree_keep_an_offset_of_exactly_zero():
    clock = EndpointClock("t")
    for fraction in (0.0, 0.3, 0.6, 0.99):
        for rtt in (0.001, 0.2, 1.0):
            sent = 1_700_000_000 + fraction
            assert clock.observe(date_header(sent + rtt / 2), sent, sent + rtt) is not None
    assert clock.offset == 0.0 and clock.samples == 12


def test_a_sample_within_its_uncertainty_of_the_offset_does_not_move_it():
    clock = EndpointClock("t")
    sent = 1_700_000_000.0
    clock.observe(date_header(sent + 400), sent, sent + 0.01)
    learned = clock.offset
    assert 399 < learned < 401
    clock.observe(date_header(sent + 5 + 400.9), sent + 5, sent + 5.01)
    assert clock.offset == learned  # within a second: the resolution of Date
    # A clock stepped by 30 s is a new offset; one back in step is 0 again.
    clock.observe(date_header(sent + 10 + 430), sent + 10, sent + 10.01)
    assert 429 < clock.offset < 431
    clock.observe(date_header(sent + 20), sent + 20, sent + 20.01)
    assert clock.offset == 0.0


def test_a_tighter_sample_refines_a_slow_first_one():
    clock = EndpointClock("t")
    sent = 1_700_000_000.0
    # A 5 s call dated at its end: its midpoint is 2.5 s early, within its uncertainty (3 s).
    clock.observe(date_header(sent + 5 + 400), sent, sent + 5)
    assert 402 < clock.offset < 403.5
    # A quick answer agrees within both uncertainties and is tighter: it is taken.
    clock.observe(date_header(sent + 10 + 400.2), sent + 10, sent + 10.02)
    assert 399.5 < clock.offset < 401
    tight = clock.offset
    # A slower one after it that agrees does not move it.
    clock.observe(date_header(sent + 20 + 402), sent + 20, sent + 24)
    assert clock.offset == tight


def test_negative_offsets():
    clock = EndpointClock("t")
    sent = 1_700_000_000.0
    clock.observe(date_header(sent - 400), sent, sent + 0.05)
    assert -401 < clock.offset < -399


def test_answers_with_an_age_header_are_discarded():
    clock = EndpointClock("t")
    sent = 1_700_000_000.0
    headers = {**date_header(sent + 400), "Age": "12"}
    assert clock.observe(headers, sent, sent + 0.1) is None
    assert clock.offset == 0.0 and clock.samples == 0


@pytest.mark.parametrize("headers, rtt", [
    ({}, 0.1),  # no Date
    ({"Date": "yesterday at noon"}, 0.1),  # unreadable
    ({"Date": "x" * 65}, 0.1),  # longer than any date
    ({"Date": formatdate(1_700_000_000 + MAX_OFFSET + 10, usegmt=True)}, 0.1),  # implausible
    (date_header(1_700_000_400), 61.0),  # a round trip too long to place the server's read
    (date_header(1_700_000_400), -1.0),  # this host's clock stepped back meanwhile
])
def test_unusable_samples_are_discarded(headers, rtt):
    clock = EndpointClock("t")
    assert clock.observe(headers, 1_700_000_000.0, 1_700_000_000.0 + rtt) is None
    assert clock.offset == 0.0 and clock.samples == 0


def test_http_date_forms():
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    assert parse_http_date(None) is None and parse_http_date("") is None


def test_concurrent_observers_agree():
    clock = EndpointClock("t")
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for j in range(200):
                now = time.time()
                clock.observe(date_header(now + 400 + (i + j) % 2 * 0.4), now, now + 0.01)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and clock.samples == 1600 and 399 < clock.offset < 401.5


def test_first_answer_lets_one_call_go_and_the_others_wait_for_its_answer():
    clock = EndpointClock("t")
    went: list[str] = []
    gate = threading.Event()

    def prober() -> None:
        with clock.first_answer():
            went.append("prober")
            gate.wait(5)
            now = time.time()
            clock.observe(date_header(now + 400), now, now + 0.01)

    def waiter() -> None:
        with clock.first_answer():
            went.append(f"waiter {clock.offset:.0f}")

    p = threading.Thread(target=prober)
    p.start()
    time.sleep(0.1)
    waiters = [threading.Thread(target=waiter) for _ in range(3)]
    for w in waiters:
        w.start()
    time.sleep(0.2)
    assert went == ["prober"]  # the others wait for its answer
    gate.set()
    p.join(5)
    for w in waiters:
        w.join(5)
    assert went[0] == "prober" and len(went) == 4
    assert all(w.startswith("waiter 40") for w in went[1:])  # signed on the learned clock


def test_a_first_call_without_an_answer_lets_the_next_one_go():
    clock = EndpointClock("t")
    order: list[str] = []
    with clock.first_answer():
        order.append("first (no answer: a network error)")
    with clock.first_answer(timeout=0.5):
        order.append("second")
    assert len(order) == 2
    # And a waiter that waited long enough goes without it.
    inside = threading.Event()
    release = threading.Event()

    def stuck() -> None:
        with clock.first_answer():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=stuck)
    t.start()
    inside.wait(5)
    started = time.monotonic()
    with clock.first_answer(timeout=0.3):
        waited = time.monotonic() - started
    release.set()
    t.join(5)
    assert 0.25 < waited < 2


def test_the_offset_is_a_gauge_per_endpoint():
    clock = clock_mod.endpoint_clock("gauge-test.example/ap-bangkok")
    assert clock is clock_mod.endpoint_clock("gauge-test.example/ap-bangkok")
    now = time.time()
    clock.observe(date_header(now - 400), now, now + 0.01)
    (family,) = metrics.ClockCollector().collect()
    assert family.name == "faceid_clock_offset_seconds"
    values = {s.labels["endpoint"]: s.value for s in family.samples}
    assert -401 < values["gauge-test.example/ap-bangkok"] < -399


def test_endpoint_names():
    assert clock_mod.faceid_endpoint("https://faceid.tencentcloudapi.com/",
                                     "ap-bangkok") == "faceid.tencentcloudapi.com/ap-bangkok"
    assert clock_mod.bucket_endpoint("http://127.0.0.1:9000/") == "127.0.0.1:9000"


# --- FaceID requests are signed on the API's clock -------------------------------------

class _Headers(dict):
    """A case-insensitive header mapping, as the simulator's handler has."""

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default


def _verify(prepared: requests.PreparedRequest, now: float) -> None:
    verify_tc3(method="POST", path="/", query="", headers=_Headers(prepared.headers),
               body=prepared.body, secrets={FAKE_SECRET_ID: FAKE_SECRET_KEY}, now=now)


def test_requests_are_signed_with_the_learned_offset():
    clock = EndpointClock("t")
    client = FaceIDClient(endpoint="http://127.0.0.1:9/", region="ap-singapore",
                          secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY, clock=clock)
    request = CompareRequest("http://i", "0" * 32, "http://v", "1" * 32, "SILENT")
    server_now = time.time() + 400
    # On this host's clock: the API 400 s ahead refuses it, as Tencent does (> 300 s).
    with pytest.raises(Tc3Error) as refused:
        _verify(client.prepare(request), server_now)
    assert refused.value.code == SIGNATURE_EXPIRE
    now = time.time()
    clock.observe(date_header(now + 400), now, now + 0.01)
    prepared = client.prepare(request)
    assert abs(int(prepared.headers["X-TC-Timestamp"]) - server_now) < 3
    _verify(prepared, server_now)  # accepted


def test_every_answer_teaches_the_clock_of_its_region():
    answered = {"Date": formatdate(time.time() + 400, usegmt=True)}

    class Session(requests.Session):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
            resp = requests.Response()
            resp.status_code = 200
            resp._content = (b'{"Response":{"Error":{"Code":"AuthFailure.SignatureExpire",'
                             b'"Message":"x"},"RequestId":"r"}}')
            resp.headers.update(answered)
            return resp

    client = FaceIDClient(endpoint="http://clock-test.invalid/", region="ap-singapore",
                          secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                          session=Session())
    request = CompareRequest("http://i", "0" * 32, "http://v", "1" * 32, "SILENT")
    answer = client.send(client.prepare(request, "ap-bangkok"))
    assert answer.code == SIGNATURE_EXPIRE
    assert 399 < client.clock_for("ap-bangkok").offset < 401
    assert client.clock_for("ap-singapore").offset == 0.0  # another endpoint's clock


# --- what SignatureExpire costs ----------------------------------------------------------

def test_signature_expire_is_re_signed_free_without_the_breaker():
    rule = classify(SIGNATURE_EXPIRE)
    assert rule.resign and not rule.billed and not rule.trips_breaker and not rule.final
    assert not billing.table().billable(SIGNATURE_EXPIRE)
    # Only this code is re-signed; a second one in a row is the try its kind says.
    assert rule.kind == Kind.TRANSIENT and rule.counts_attempt
    assert not classify("AuthFailure.SignatureFailure").resign
    assert not classify("RequestLimitExceeded").resign


@pytest.fixture
def res(database_url):
    settings = load_settings(
        database_url=database_url, faceid_secret_id=FAKE_SECRET_ID,
        faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET, cos_domain="127.0.0.1:9",
        cos_scheme="http", egress_allow_networks="127.0.0.1/32",
    )
    res = Resources(settings)
    res.__dict__["lease"] = SimpleNamespace(id="test-lease")  # no Redis heartbeat needed
    return res


def _claimed_job(res: Resources, tmp_path) -> int:
    photo, video = tmp_path / "p.jpg", tmp_path / "v.mp4"
    photo.write_bytes(jpeg_bytes(31, 20_000))
    video.write_bytes(mp4_bytes(32, 200_000))
    job_id = insert_job(res.settings, validate_spec(
        JobSpec("clock-1", str(photo), str(video), "SILENT"), res.settings))[0]
    with session_scope(res.settings.database_url) as s:
        assert schedule.claim(s, job_id, res.lease.id)
    return job_id


def _expired(request_id: str = "r-expired") -> Answer:
    answer = Answer(SIGNATURE_EXPIRE, "error", 200, request_id, message="Signature expired.")
    answer.started_at = time.time()
    return answer


def test_the_re_signed_call_is_recorded_not_counted_not_billed(res, tmp_path):
    job_id = _claimed_job(res, tmp_path)
    assert record.record_resigned(res, job_id, _expired())
    # The re-signed call is then answered: one counted attempt, the job completed.
    ok = Answer("Success", "result", 200, "r-ok", sim=90.0)
    ok.started_at = time.time()
    assert record.record_answer(res, job_id, ok) == "completed"
    with session_scope(res.settings.database_url) as s:
        job = s.get(Job, job_id)
        rows = s.scalars(select(Attempt).where(Attempt.job_id == job_id)
                         .order_by(Attempt.id)).all()
        assert job.state == "completed" and job.attempts == 1
        assert [(a.code, a.counted, a.billable, a.number) for a in rows] == [
            (SIGNATURE_EXPIRE, False, False, 0), ("Success", True, True, 1)]


def test_a_job_this_worker_lost_is_not_written(res, tmp_path):
    job_id = _claimed_job(res, tmp_path)
    res.__dict__["lease"] = SimpleNamespace(id="another-lease")
    assert not record.record_resigned(res, job_id, _expired())
    with session_scope(res.settings.database_url) as s:
        assert s.scalars(select(Attempt).where(Attempt.job_id == job_id)).all() == []


# --- COS signatures on COS's clock ------------------------------------------------------

class _CosHeaders(dict):
    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default


def _cos_verify(url: str, now: float, headers: dict[str, str] | None = None,
                method: str = "GET") -> str:
    from urllib.parse import parse_qsl, unquote, urlsplit

    parts = urlsplit(url)
    return verify_cos_request(
        CosRequest(method, unquote(parts.path), parse_qsl(parts.query, keep_blank_values=True),
                   _CosHeaders({"Host": parts.netloc, **(headers or {})})),
        {FAKE_SECRET_ID: FAKE_SECRET_KEY}, lambda _t: False, now=now)


@pytest.mark.parametrize("skew", [400.0, -400.0, 0.0])
def test_presigned_urls_are_valid_on_the_bucket_clock(skew):
    now = time.time()
    url = presigned_url(base_url="http://127.0.0.1:9000/", key="media/a b+c.mp4",
                        secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                        now=now + skew, expires=300)
    assert _cos_verify(url, now + skew) == FAKE_SECRET_ID
    assert _cos_verify(url, now + skew + 290) == FAKE_SECRET_ID
    with pytest.raises(CosAuthError):
        _cos_verify(url, now + skew + 310)  # expired on COS's clock
    if skew:
        with pytest.raises(CosAuthError):
            # Signed on this host's clock instead: refused on COS's.
            _cos_verify(presigned_url(
                base_url="http://127.0.0.1:9000/", key="media/a b+c.mp4",
                secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY, now=now,
                expires=300), now + skew)


def test_the_presigned_url_has_the_fields_the_sdk_makes():
    from qcloud_cos import CosS3Client

    config = CosConfig(Region="ap-singapore", SecretId=FAKE_SECRET_ID,
                       SecretKey=FAKE_SECRET_KEY, Scheme="http", Domain="127.0.0.1:9000")
    sdk = CosS3Client(config).get_presigned_url(Bucket=BUCKET, Key="k/v.mp4", Method="GET",
                                                Expired=300)
    ours = presigned_url(base_url="http://127.0.0.1:9000/", key="k/v.mp4",
                         secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                         now=time.time(), expires=300)
    # The same URL, field for field, but for the second the SDK signed in.
    from urllib.parse import parse_qsl, urlsplit

    a, b = (dict(parse_qsl(urlsplit(u).query, keep_blank_values=True)) for u in (sdk, ours))
    assert urlsplit(sdk).path == urlsplit(ours).path
    assert set(a) == set(b)
    for name in ("q-sign-algorithm", "q-ak", "q-header-list", "q-url-param-list"):
        assert a[name] == b[name]
    if a["q-sign-time"] == b["q-sign-time"]:
        assert a["q-signature"] == b["q-signature"]


def test_sdk_requests_are_signed_again_on_the_bucket_clock():
    config = CosConfig(Region="ap-singapore", SecretId=FAKE_SECRET_ID,
                       SecretKey=FAKE_SECRET_KEY, Scheme="http", Domain="127.0.0.1:9000")
    params = {"uploadId": "u1", "partNumber": "2"}
    prepared = requests.Request(
        "PUT", "http://127.0.0.1:9000/k/v.mp4", params=params, data=b"x" * 10,
        headers={"Content-MD5": "abc==", "x-cos-meta-a": "b c"},
        auth=CosS3Auth(config, "k/v.mp4", params=params)).prepare()
    now = time.time()
    _cos_verify(prepared.url, now, dict(prepared.headers), "PUT")  # as the SDK made it
    with pytest.raises(CosAuthError):
        _cos_verify(prepared.url, now - 400, dict(prepared.headers), "PUT")  # COS behind
    before = prepared.headers["Authorization"]
    assert resign(prepared, FAKE_SECRET_KEY, -400)
    after = prepared.headers["Authorization"]
    assert before != after
    for name in ("q-header-list", "q-url-param-list"):
        assert [f for f in before.split("&") if f.startswith(name)] == [
            f for f in after.split("&") if f.startswith(name)]
    assert _cos_verify(prepared.url, now - 400, dict(prepared.headers), "PUT")
    # Not a request this can read: left as it is.
    bare = requests.Request("GET", "http://127.0.0.1:9000/k").prepare()
    assert not resign(bare, FAKE_SECRET_KEY, 10) and "Authorization" not in bare.headers


def test_signature_fields_match_the_simulators_verifier():
    from faceid_sim.cos_sign import compute_signature

    fields = signature_fields(secret_id="id", secret_key="key", method="GET", path="/a",
                              params={"x": "1 2"}, headers={"Host": "h"}, start=1, end=2)
    http_string = "get\n/a\nx=1%202\nhost=h\n"
    assert fields["q-signature"] == compute_signature("key", "1;2", "1;2", http_string)
    assert fields["q-header-list"] == "host" and fields["q-url-param-list"] == "x"
