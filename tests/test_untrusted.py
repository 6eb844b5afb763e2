"""A producer we do not trust: its URLs reach only what the egress policy allows, its jobs
always end, slow sources cannot take the threads sign-ups need.

Real workers fetch from real servers on loopback addresses. The tests' environment allows
127.0.0.1/32 (the simulator and these servers listen there); targets on 127.0.0.2, ::1 and
other ranges stay refused, as in a deployment where EGRESS_ALLOW_NETWORKS is empty.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from faceid_batch.db import session_scope
from faceid_batch.intake import api
from faceid_batch.intake.submit import JobSpec, SubmitError, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job
from helpers import sim_calls, wait_until

FAST = dict(SOURCE_FETCH_SECONDS="1.5", STAGE_MAX_ATTEMPTS="2")


class MediaServer:
    """Serves files, redirects and hangs; records every request and how many are open."""

    def __init__(self, host: str, files: dict[str, bytes] | None = None) -> None:
        self.files = files or {}
        self.hits: list[str] = []
        self.open = 0
        self.most_open = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with outer.lock:
                    outer.hits.append(self.path)
                    outer.open += 1
                    outer.most_open = max(outer.most_open, outer.open)
                try:
                    path = self.path
                    if path.startswith("/to/"):
                        # /to/<URL>: a redirect there (a query string is refused at submit)
                        self.send_response(302)
                        self.send_header("Location", path[len("/to/"):])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif path == "/hang":
                        time.sleep(30)
                    elif path in outer.files:
                        body = outer.files[path]
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    else:
                        body = b"internal secret page"
                        self.send_response(404)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.open -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def media_server(tmp_path):
    photo, video = write_pair(tmp_path / "src", 301)
    server = MediaServer("127.0.0.1", {"/photo.jpg": photo.read_bytes(),
                                       "/video.mp4": video.read_bytes()})
    yield server
    server.close()


@pytest.fixture
def internal():
    """An internal service on 127.0.0.2: loopback, outside EGRESS_ALLOW_NETWORKS."""
    server = MediaServer("127.0.0.2")
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_rows(url: str, ids: list[int]) -> dict[int, Job]:
    with session_scope(url) as s:
        return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


def attempts_of(url: str, ids: list[int]) -> int:
    with session_scope(url) as s:
        return len(s.scalars(select(Attempt.id).where(Attempt.job_id.in_(ids))).all())


# -- refused at submit --------------------------------------------------------------------
@pytest.mark.parametrize("source", [
    "https://127.0.0.2/photo.jpg",
    "http://localhost:8080/photo.jpg",
    "https://user@media.example/photo.jpg",
    "https://user:pass@media.example/photo.jpg",
    "http://2130706433/photo.jpg",  # 127.0.0.1, written as one decimal number
    "http://[::1]/photo.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/photo.jpg",
    "http://100.64.0.1/photo.jpg",
])
def test_a_source_the_policy_refuses_is_refused_at_submit(configured, tmp_path, source,
                                                          monkeypatch):
    settings = configured.model_copy(update={"egress_allow_networks": ""})
    _, video = write_pair(tmp_path / "m", 1)
    with pytest.raises(SubmitError, match="egress policy") as info:
        submit(settings, JobSpec("ssrf", source, str(video), "SILENT"))
    assert info.value.field == "photo"
    assert "user:pass@" not in str(info.value)  # a credential is never echoed back
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(Job.id)) is None


@pytest.mark.parametrize("callback", [
    "http://127.0.0.1/hook", "http://169.254.169.254/hook", "http://[::1]/hook",
    "http://10.1.2.3/hook", "http://2130706433/hook", "http://172.16.0.1:6379/",
    "http://192.168.1.1/hook",
])
def test_a_callback_the_policy_refuses_is_refused_at_submit(configured, tmp_path, callback):
    from pydantic import SecretStr

    settings = configured.model_copy(update={
        "egress_allow_networks": "",
        "webhook_secret": SecretStr("whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs")})
    photo, video = write_pair(tmp_path / "m", 2)
    with pytest.raises(SubmitError, match="egress policy") as info:
        submit(settings, JobSpec("hook", str(photo), str(video), "SILENT",
                                 callback_url=callback))
    assert info.value.field == "callback_url"


# -- refused or bounded in the worker -----------------------------------------------------
def test_a_redirect_into_the_network_behind_ends_the_job_and_reaches_nothing(
        configured, sim_control, start_worker, media_server, internal):
    settings = configured
    start_worker(**FAST)
    photo = f"{media_server.url}/photo.jpg"
    video = f"{media_server.url}/to/{internal.url}/latest/meta-data/"
    job_id = submit(settings, JobSpec("redirected", photo, video, "SILENT"))[0]
    outcome = api.wait(job_id, timeout=30, settings=settings)
    assert outcome.state == "failed" and outcome.result == "Local.SourceRefused"
    assert "egress policy" in outcome.error and "loopback" in outcome.error
    # Nothing of what lives there is told: no status, no content.
    # (A port number may hold "404": look for a status as it would be told.)
    told = outcome.error.replace(internal.url, "").replace(media_server.url, "")
    assert "404" not in told and "secret" not in told
    assert internal.hits == []
    assert attempts_of(settings.database_url, [job_id]) == 0
    assert sim_calls(sim_control) == []


def test_every_job_ends_whatever_its_source_does(configured, sim_control, start_worker,
                                                 media_server):
    settings = configured
    start_worker(**FAST)
    photo = f"{media_server.url}/photo.jpg"
    cases = {
        "closed-port": (f"{media_server.url}/to/http://127.0.0.1:{closed_port()}/v.mp4",
                        "Local.SourceUnavailable"),
        "ipv6-loopback": (f"{media_server.url}/to/http://[::1]:{closed_port()}/v.mp4",
                          "Local.SourceRefused"),
        "file": (f"{media_server.url}/to/file:///etc/passwd", "Local.SourceRefused"),
        "tls-to-plain": (f"https://127.0.0.1:{media_server.url.rsplit(':', 1)[1]}/video.mp4",
                         "Local.SourceUnavailable"),
        "hangs": (f"{media_server.url}/hang", "Local.SourceTimeout"),
        "not-found": (f"{media_server.url}/nothing.mp4", "Local.SourceUnavailable"),
    }
    ids = {name: submit(settings, JobSpec(f"poison-{name}", photo, video, "SILENT"))[0]
           for name, (video, _) in cases.items()}
    started = time.monotonic()
    wait_until(lambda: all(j.state == "failed" for j in job_rows(
        settings.database_url, list(ids.values())).values()), 45, what="every job to end")
    rows = job_rows(settings.database_url, list(ids.values()))
    for name, (_, code) in cases.items():
        job = rows[ids[name]]
        assert job.result_code == code, (name, job.result_code, job.error_message)
        assert job.attempts == 0 and job.finished_at is not None, name
    assert time.monotonic() - started < 45
    assert attempts_of(settings.database_url, list(ids.values())) == 0
    assert sim_calls(sim_control) == []


def test_sources_that_hang_leave_threads_for_sign_ups(configured, sim_control, start_worker,
                                                      media_server, tmp_path):
    """Four threads, four jobs whose video hangs: one thread fetches (a quarter of four),
    the others stay free, and a sign-up with local media is answered in seconds."""
    settings = configured
    start_worker(concurrency=4, SOURCE_FETCH_SECONDS="10")
    photo = f"{media_server.url}/photo.jpg"
    hung = [submit(settings, JobSpec(f"hang-{i}", photo, f"{media_server.url}/hang",
                                     "SILENT"))[0] for i in range(4)]
    wait_until(lambda: media_server.open >= 1, 15, what="a fetch to hang")
    p, v = write_pair(tmp_path / "m", 7)
    started = time.monotonic()
    signup = submit(settings, JobSpec("signup", str(p), str(v), "SILENT"))[0]
    outcome = api.wait(signup, timeout=20, settings=settings)
    took = time.monotonic() - started
    assert outcome.state == "completed" and took < 8, took
    assert media_server.most_open == 1  # never more than its share fetching
    assert all(j.state != "failed" for j in job_rows(settings.database_url, hung).values())


CRAFTED = Path(__file__).resolve().parent / "data" / "codec-without-context.mp4"


def test_a_video_crafted_against_the_reader_is_read_as_unreadable():
    from faceid_batch.stage import preflight

    facts = preflight.read_video(CRAFTED)  # PyAV gives its stream no codec context
    assert facts.error is not None


def test_a_job_whose_video_is_crafted_against_the_reader_ends(
        configured, sim_control, start_worker, media_server):
    settings = configured
    media_server.files["/crafted.mp4"] = CRAFTED.read_bytes()
    start_worker(**FAST)
    job_id = submit(settings, JobSpec("crafted", f"{media_server.url}/photo.jpg",
                                      f"{media_server.url}/crafted.mp4", "SILENT"))[0]
    wait_until(lambda: job_rows(settings.database_url, [job_id])[job_id].finished_at,
               45, what="the job to end")


class SlowReceiver:
    """A callback receiver that takes ``delay`` seconds to answer; counts open requests."""

    def __init__(self, delay: float) -> None:
        self.open = self.most_open = self.seen = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                with outer.lock:
                    outer.open += 1
                    outer.seen += 1
                    outer.most_open = max(outer.most_open, outer.open)
                try:
                    self.rfile.read(int(self.headers["Content-Length"]))
                    time.sleep(delay)
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.open -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_slow_receivers_leave_threads_for_sign_ups(configured, sim_control, start_worker,
                                                   tmp_path, monkeypatch):
    """Four threads, callbacks to a receiver that takes 5 s each: one thread waits on it at
    a time, and a sign-up is answered in seconds."""
    from pydantic import SecretStr

    secret = "whsec_dGVzdC1GQUtFLXdlYmhvb2stc2VjcmV0LW5vdC1yZWFs"
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    settings = configured.model_copy(update={"webhook_secret": SecretStr(secret)})
    receiver = SlowReceiver(5.0)
    start_worker(concurrency=4, WEBHOOK_SECRET=secret)
    for i in range(6):
        p, v = write_pair(tmp_path / "m", 40 + i)
        submit(settings, JobSpec(f"slow-cb-{i}", str(p), str(v), "SILENT",
                                 callback_url=receiver.url))
    wait_until(lambda: receiver.seen >= 1, 30, what="a callback to reach the receiver")
    p, v = write_pair(tmp_path / "m", 60)
    started = time.monotonic()
    signup = submit(settings, JobSpec("signup-cb", str(p), str(v), "SILENT"))[0]
    outcome = api.wait(signup, timeout=20, settings=settings)
    took = time.monotonic() - started
    assert outcome.state == "completed" and took < 8, took
    assert receiver.most_open == 1
    receiver.httpd.shutdown()
