"""Our signed client against the simulator's independent signature check, over real HTTP."""

from __future__ import annotations

import pytest

from faceid_batch.errors import Kind
from faceid_batch.faceid_client import CompareRequest, FaceIDClient
from faceid_batch.samples import write_pair
from faceid_batch.settings import load_settings
from faceid_batch.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY, sim_calls


@pytest.fixture
def staged_request(simulator, sim_control, tmp_path):
    settings = load_settings(faceid_secret_id=FAKE_SECRET_ID, faceid_secret_key=FAKE_SECRET_KEY,
                             cos_bucket=BUCKET, cos_domain=simulator.cos_domain,
                             cos_scheme="http")
    stager = MediaStager(settings)
    photo, video = write_pair(tmp_path, 1)
    p, v = stager.stage("photo", str(photo)), stager.stage("video", str(video))
    return CompareRequest(stager.presign(p.key), p.info.md5, stager.presign(v.key), v.info.md5,
                          "LIP", "4721")


def client(simulator, **kw) -> FaceIDClient:
    args = dict(endpoint=simulator.api_url, region="ap-singapore", secret_id=FAKE_SECRET_ID,
                secret_key=FAKE_SECRET_KEY)
    args.update(kw)
    return FaceIDClient(**args)


def test_signed_call_is_accepted(simulator, staged_request):
    answer = client(simulator).compare(staged_request)
    assert answer.code == "Success" and answer.rule.kind == Kind.SUCCESS
    assert answer.request_id and answer.sim is not None and answer.best_frame is not None
    assert answer.latency_ms >= 0 and answer.started_at is not None


def test_wrong_key_is_refused_by_the_signature_check(simulator, staged_request):
    answer = client(simulator, secret_key="wrongFAKEkey000000000000000000000").compare(
        staged_request)
    assert answer.code == "AuthFailure.SignatureFailure"
    assert answer.channel == "error" and answer.rule.kind == Kind.ACCOUNT


def test_unreachable_endpoint_is_a_transient_transport_error(staged_request):
    answer = FaceIDClient(endpoint="http://127.0.0.1:9", region="ap-singapore",
                          secret_id="x", secret_key="y", connect_timeout=0.5).compare(
        staged_request)
    assert answer.code.startswith("ClientError.") and answer.rule.kind == Kind.TRANSIENT


def test_repr_never_shows_the_key(simulator):
    assert FAKE_SECRET_KEY not in repr(client(simulator))


def test_on_sent_reports_when_the_first_bytes_left(simulator, sim_control, staged_request):
    """The limiter's write-back uses this moment: it must be the request's real departure,
    which the simulator stamps (kernel receive time) within a few ms, once per call."""
    import time

    c = client(simulator)
    sent: list[float] = []
    offset = time.time() - time.monotonic()
    before = time.monotonic()
    answer = c.send(c.prepare(staged_request), on_sent=sent.append)
    after = time.monotonic()
    assert answer.code == "Success"
    assert len(sent) == 1 and before <= sent[0] <= after
    (call,) = [k for k in sim_calls(sim_control) if k["request_id"] == answer.request_id]
    # The simulator's stamp is the kernel's receive time, not its handler thread's clock.
    assert call["t_start_source"] == "kernel"
    assert abs(call["t_start"] - (sent[0] + offset)) < 0.02
    # The attempt row's started_at is the same moment, on the wall clock.
    assert abs(call["t_start"] - answer.started_at) < 0.02


def test_a_request_past_its_send_by_time_is_not_sent(simulator, sim_control, staged_request):
    import time

    from faceid_batch.faceid_client import SendTooLate

    c = client(simulator)
    sent: list[float] = []
    # Warm a pooled connection, so the refused request is the one that would reuse it.
    assert c.send(c.prepare(staged_request)).code == "Success"
    with pytest.raises(SendTooLate):
        c.send(c.prepare(staged_request), on_sent=sent.append,
               send_by=time.monotonic() - 0.001)
    assert sent == [] and len(sim_calls(sim_control)) == 1  # the simulator saw nothing more
    # In time, the same client sends as usual.
    answer = c.send(c.prepare(staged_request), on_sent=sent.append,
                    send_by=time.monotonic() + 5)
    assert answer.code == "Success" and len(sent) == 1 and len(sim_calls(sim_control)) == 2


def test_on_sent_is_not_called_when_nothing_was_sent(staged_request):
    sent: list[float] = []
    c = FaceIDClient(endpoint="http://127.0.0.1:9", region="ap-singapore", secret_id="x",
                     secret_key="y", connect_timeout=0.5)
    c.send(c.prepare(staged_request), on_sent=sent.append)
    assert sent == []
