"""Writing a paid answer: attempt, result, job and best frame in one transaction; a best
frame that cannot be read never costs the verdict."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from faceid_batch.call.faceid_client import Answer, BestFrameInfo
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
from faceid_batch.models import Attempt, BestFrame, Job, JobState, Result
from faceid_batch.outcome import record
from faceid_batch.scheduling import schedule
from faceid_batch.settings import load_settings
from faceid_batch.worker import Resources
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

FRAME = jpeg_bytes(21, 30_000)


@pytest.fixture(scope="module")
def frame_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/frame.jpg":
                self.send_response(200)
                self.send_header("Content-Length", str(len(FRAME)))
                self.end_headers()
                self.wfile.write(FRAME)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


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


def _job(res: Resources, tmp_path, key: str) -> int:
    photo, video = tmp_path / f"{key}.jpg", tmp_path / f"{key}.mp4"
    photo.write_bytes(jpeg_bytes(22, 20_000))
    video.write_bytes(mp4_bytes(23, 200_000))
    spec = validate_spec(JobSpec(key, str(photo), str(video), "SILENT"), res.settings)
    job_id = insert_job(res.settings, spec)[0]
    # Held by this process's lease, as a worker's claim leaves it (an answer is written
    # only to a job its writer's lease holds).
    with session_scope(res.settings.database_url) as s:
        assert schedule.claim(s, job_id, res.lease.id)
    return job_id


def _stored(res: Resources, job_id: int):  # type: ignore[no-untyped-def]
    with session_scope(res.settings.database_url) as s:
        job = s.get(Job, job_id)
        frames = s.scalars(select(BestFrame).where(BestFrame.job_id == job_id)).all()
        return (job.state, job.passed, job.attempts,
                s.scalar(select(func.count()).select_from(Attempt)
                         .where(Attempt.job_id == job_id)),
                s.scalar(select(Result.sim).where(Result.job_id == job_id)),
                [(f.md5, f.size, f.content) for f in frames])


def test_the_best_frame_is_stored_with_the_answer(res, tmp_path, frame_server):
    job_id = _job(res, tmp_path, "frame-ok")
    md5 = hashlib.md5(FRAME).hexdigest()
    answer = Answer("Success", "result", 200, "req-ok", sim=91.5,
                    best_frame=BestFrameInfo(f"{frame_server}/frame.jpg", md5, len(FRAME)))
    assert record.record_answer(res, job_id, answer) == JobState.COMPLETED.value
    assert _stored(res, job_id) == (JobState.COMPLETED.value, True, 1, 1, 91.5,
                                    [(md5, len(FRAME), FRAME)])
    # A redelivered answer for a job already final writes nothing more: the job is not
    # this writer's any more, and the call (the same RequestId) is recorded once.
    assert record.record_answer(res, job_id, answer) == schedule.LOST
    assert _stored(res, job_id)[3] == 1


@pytest.mark.parametrize("path, md5", [
    ("/gone.jpg", None),  # the download fails
    ("/frame.jpg", "0" * 32),  # the bytes do not match the API's MD5
])
def test_a_best_frame_that_cannot_be_read_leaves_the_verdict(res, tmp_path, frame_server,
                                                            path, md5):
    job_id = _job(res, tmp_path, f"frame-bad-{path.strip('/.')}-{md5 is None}")
    answer = Answer("Success", "result", 200, "req-bad", sim=40.0,
                    best_frame=BestFrameInfo(f"{frame_server}{path}", md5, None))
    assert record.record_answer(res, job_id, answer) == JobState.COMPLETED.value
    assert _stored(res, job_id) == (JobState.COMPLETED.value, False, 1, 1, 40.0, [])
