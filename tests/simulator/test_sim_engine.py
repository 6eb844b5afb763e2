"""The simulated engine: rate limit, media checks, scripting, random errors, latency, frames."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from faceid_sim.control import Simulator

from .sim_helpers import OTHER_ID, OTHER_KEY, avi, flv, jpeg, md5, mp4, png

MB = 1024 * 1024


def _code(resp: dict) -> str:
    return resp["Error"]["Code"] if "Error" in resp else resp["Result"]


def test_rate_limit_is_20_per_second_per_account(sim, upload, call_api):
    media = upload()
    barrier = threading.Barrier(25)
    codes: list[str] = []

    def one() -> None:
        barrier.wait()
        codes.append(_code(call_api(media.params)))

    threads = [threading.Thread(target=one) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count("Success") == 20
    assert codes.count("RequestLimitExceeded") == 5
    calls = sim.sim.calls()
    assert len(calls) == 25
    assert sum(c["charged"] for c in calls) == 20
    refused = [c for c in calls if c["code"] == "RequestLimitExceeded"]
    assert all(c["video_md5"] == media.params["VideoMd5"] for c in refused)
    # Another account has its own budget within the same second.
    assert _code(call_api(media.params, secret_id=OTHER_ID, secret_key=OTHER_KEY)) == "Success"
    time.sleep(1.05)
    assert _code(call_api(media.params)) == "Success"


def test_rate_limit_knob(sim, upload, call_api):
    media = upload()
    sim.sim.configure({"rate_limit": 2})
    codes = [_code(call_api(media.params)) for _ in range(4)]
    assert codes == ["Success", "Success", "RequestLimitExceeded", "RequestLimitExceeded"]


def test_download_timeout_from_slow_store(sim, upload, call_api):
    media = upload()
    sim.cos.configure(get_delay_seconds=1.0, get_delay_key_contains=".mp4")
    sim.sim.configure({"download_timeout": 0.3})
    t0 = time.monotonic()
    resp = call_api(media.params)
    assert resp["Result"] == "FailedOperation.DownLoadTimeoutError"
    assert resp["Sim"] == 0.0 and resp["BestFrame"] is None
    assert time.monotonic() - t0 < 1.0
    sim.sim.configure({"failed_operation_channel": "error"})
    assert call_api(media.params)["Error"]["Code"] == "FailedOperation.DownLoadTimeoutError"


def test_download_error_for_bad_presign_or_missing_object(sim, upload, call_api):
    media = upload()
    bad = {
        **media.params,
        "VideoUrl": media.params["VideoUrl"].replace("q-signature=", "q-signature=f"),
    }
    assert _code(call_api(bad)) == "FailedOperation.DownLoadError"
    gone = {**media.params, "ImageUrl": f"http://{sim.cos_domain}/no/such/key.jpg"}
    assert _code(call_api(gone)) == "FailedOperation.DownLoadError"
    expired = upload(expired=-5)
    assert _code(call_api(expired.params)) == "FailedOperation.DownLoadError"


def test_md5_mismatch_names_the_parameter(upload, call_api):
    media = upload()
    resp = call_api({**media.params, "VideoMd5": md5(b"something else")})
    assert resp["Error"]["Code"] == "InvalidParameterValue"
    assert "VideoMd5" in resp["Error"]["Message"]
    resp = call_api({**media.params, "ImageMd5": md5(b"something else")})
    assert "ImageMd5" in resp["Error"]["Message"]


@pytest.mark.parametrize(
    ("photo", "video", "code"),
    [
        (b"GIF89a" + b"\x00" * 100, None, "InvalidParameterValue"),
        (None, b"\x1a\x45\xdf\xa3" + b"\x00" * 100, "FailedOperation.LipVideoInvalid"),
        (png(), avi(), "Success"),
        (None, flv(), "Success"),
        (b"", None, "FailedOperation.LifePhotoSizeError"),
        (None, b"", "FailedOperation.LipSizeError"),
    ],
)
def test_formats_by_magic_bytes(upload, call_api, photo, video, code):
    assert _code(call_api(upload(photo=photo, video=video).params)) == code


def test_size_limits_after_base64(upload, call_api):
    at_limit = jpeg(3 * MB * 3 // 4)  # Base64 of this is exactly 3 MB
    assert _code(call_api(upload(photo=at_limit).params)) == "Success"
    over = jpeg(3 * MB * 3 // 4 + 1)
    assert _code(call_api(upload(photo=over).params)) == "FailedOperation.LifePhotoSizeError"
    video_over = mp4(8 * MB * 3 // 4 + 1)
    assert _code(call_api(upload(video=video_over).params)) == "FailedOperation.LipSizeError"


def test_png_best_frame_is_served_with_its_type(upload, call_api, http):
    media = upload(photo=png(5000))
    resp = call_api(media.params)
    frame = http.get(resp["BestFrame"]["Url"])
    assert frame.headers["Content-Type"] == "image/png"
    assert md5(frame.content) == resp["BestFrame"]["MD5"] == md5(media.photo)
    assert http.get(resp["BestFrame"]["Url"].replace(resp["RequestId"], "nope")).status_code == 404


def test_scripted_sequence_then_default(sim, upload, call_api, http):
    media = upload()
    scripted = http.post(
        f"{sim.control_url}/script",
        json={
            "video_md5": media.params["VideoMd5"].upper(),
            "responses": [
                "FailedOperation.DownLoadTimeoutError",
                {"code": "FailedOperation.LivessDetectFake", "channel": "error"},
                {"code": "Success", "sim": 42.0},
                "InternalError",
            ],
        },
    )
    assert scripted.json()["pending"] == 4
    other = upload()
    assert _code(call_api(other.params)) == "Success"  # another video is not affected
    r1, r2, r3, r4, r5 = (call_api(media.params) for _ in range(5))
    assert r1["Result"] == "FailedOperation.DownLoadTimeoutError"
    assert r2["Error"]["Code"] == "FailedOperation.LivessDetectFake"
    assert r3["Result"] == "Success" and r3["Sim"] == 42.0 and r3["BestFrame"]["MD5"]
    assert r4["Error"]["Code"] == "InternalError"
    assert r5["Result"] == "Success" and r5["Sim"] != 42.0
    calls = http.get(f"{sim.control_url}/calls").json()
    assert [c["scripted"] for c in calls] == [False, True, True, True, True, False]
    assert [c["channel"] for c in calls[1:]] == ["result", "error", "result", "error", "result"]
    assert [c["charged"] for c in calls[1:]] == [True, True, True, False, True]


def test_wildcard_script_and_bad_script(sim, upload, call_api, http):
    sim.sim.script("*", ["FailedOperation.CompareLowSimilarity"])
    assert _code(call_api(upload().params)) == "FailedOperation.CompareLowSimilarity"
    assert _code(call_api(upload().params)) == "Success"
    bad = http.post(f"{sim.control_url}/script", json={"video_md5": "x", "responses": [{"c": 1}]})
    assert bad.status_code == 400


def test_error_rate(sim, upload, call_api):
    media = upload()
    sim.sim.configure(
        {"error_rate": 1.0, "error_codes": ["InternalError", "FailedOperation.LivessSystemError"]}
    )
    codes = {_code(call_api(media.params)) for _ in range(12)}
    assert codes == {"InternalError", "FailedOperation.LivessSystemError"}
    sim.sim.configure({"error_rate": 0.5, "rate_limit": 0})
    mixed = [_code(call_api(media.params)) for _ in range(40)]
    assert 5 < mixed.count("Success") < 35


def test_account_error_answers_every_call_until_cleared(sim, upload, call_api, http):
    media = upload()
    http.post(f"{sim.control_url}/config", json={"account_error": "UnauthorizedOperation.Arrears"})
    for _ in range(3):
        assert call_api(media.params)["Error"]["Code"] == "UnauthorizedOperation.Arrears"
    assert not any(c["charged"] for c in sim.sim.calls())
    http.post(f"{sim.control_url}/config", json={"account_error": None})
    assert _code(call_api(media.params)) == "Success"


def test_fixed_latency_shows_in_call_log(sim, upload, call_api):
    media = upload()
    sim.sim.configure({"latency": {"fixed": 0.3}})
    t0 = time.monotonic()
    call_api(media.params)
    assert time.monotonic() - t0 >= 0.3
    [call] = sim.sim.calls()
    assert call["t_end"] - call["t_start"] >= 0.3


def test_lognormal_latency_matches_median_and_p99(tmp_path):
    def make() -> Simulator:
        spec = {"lognormal": {"median": 1.5, "p99": 5.0}}
        return Simulator({"a": "b"}, frames_dir=tmp_path, seed=7, latency=spec)

    sim = make()
    samples = sorted(sim.sample_latency() for _ in range(20000))
    assert statistics.median(samples) == pytest.approx(1.5, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(5.0, rel=0.1)
    assert make().sample_latency() == make().sample_latency()  # seeded: reproducible


def test_control_api_over_http(sim, upload, call_api, http):
    assert http.get(f"{sim.control_url}/health").json() == {"ok": True}
    config = http.get(f"{sim.control_url}/config").json()
    assert config["rate_limit"] == 20 and config["failed_operation_channel"] == "result"
    updated = http.post(
        f"{sim.control_url}/config", json={"latency": {"lognormal": {"median": 0.01, "p99": 0.02}}}
    ).json()
    assert updated["latency"] == {"lognormal": {"median": 0.01, "p99": 0.02}}
    assert http.post(f"{sim.control_url}/config", json={"rate_limit": -1}).status_code == 400
    assert http.post(f"{sim.control_url}/config", json={"bogus": 1}).status_code == 400
    media = upload()
    for _ in range(3):
        call_api(media.params)
    since = http.get(f"{sim.control_url}/calls", params={"since": 2})
    assert [c["seq"] for c in since.json()] == [2]
    assert since.headers["X-Sim-Calls-Next"] == "3"
    assert http.post(f"{sim.control_url}/reset").json() == {"ok": True}
    assert http.get(f"{sim.control_url}/calls").json() == []
    assert http.get(f"{sim.control_url}/config").json()["latency"] is None


def test_call_record_fields(sim, upload, call_api):
    media = upload(liveness="ACTION", validate="1,2")
    resp = call_api(media.params)
    [call] = sim.sim.calls()
    assert set(call) >= {
        "request_id",
        "t_start",
        "t_end",
        "secret_id",
        "action",
        "region",
        "video_md5",
        "image_md5",
        "liveness_type",
        "code",
        "channel",
        "sim",
        "scripted",
    }
    assert call["request_id"] == resp["RequestId"]
    assert call["video_md5"] == media.params["VideoMd5"]
    assert call["image_md5"] == media.params["ImageMd5"]
    assert (call["action"], call["region"], call["liveness_type"]) == (
        "VideoLivenessCompare",
        "ap-singapore",
        "ACTION",
    )
    assert call["sim"] == resp["Sim"] and call["t_start"] <= call["t_end"]


def test_arrival_is_stamped_when_the_first_bytes_arrive(sim, upload):
    """The rate-limit window counts when a request reached the host (kernel receive time),
    not when a handler thread got round to it: here the request line arrives, the rest of
    the request 0.4 s later, and the call is stamped at the request line."""
    import json
    import socket

    from .sim_helpers import tc3_headers

    media = upload()
    host = sim.api_url.split("//", 1)[1]
    body = json.dumps(media.params).encode()
    headers = tc3_headers(body, host)
    head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as conn:
        sent_head = time.time()
        conn.sendall(b"POST / HTTP/1.1\r\n")
        time.sleep(0.4)
        conn.sendall(head.split("\r\n", 1)[1].encode() + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert b"200 OK" in reply.split(b"\r\n", 1)[0]
    (call,) = sim.sim.calls()
    assert call["code"] == "Success"
    assert abs(call["t_start"] - sent_head) < 0.1, call["t_start"] - sent_head
    assert call["t_start_source"] == "kernel"



def test_rate_window_holds_for_calls_handled_out_of_arrival_order(tmp_path):
    """Handler threads can reach the limiter out of arrival order: no sliding second may
    hold more admitted calls than the limit, and calls a second apart are all admitted."""
    engine = Simulator({"id": "key"}, frames_dir=tmp_path, rate_limit=3)
    # Handled in this order; arrivals 10.0 .. 10.9 s.
    order = [10.5, 10.0, 10.9, 10.2, 10.7, 11.05, 11.6, 12.3]
    admitted = [t for t in order if engine.admit("id", t)]
    assert sorted(admitted) == [10.0, 10.5, 10.9, 11.05, 11.6, 12.3]
    admitted.sort()
    assert all(sum(s <= a < s + 1.0 for a in admitted) <= 3 for s in admitted)


def test_arrival_jitter_counts_calls_later_within_its_bound(sim, upload, call_api):
    """Each call is counted (and logged) up to ``arrival_jitter`` after it arrived."""
    media = upload()
    sim.sim.configure({"arrival_jitter": 0.2})
    sent = []
    for _ in range(8):
        sent.append(time.time())
        call_api(media.params)
    calls = sim.sim.calls()
    delays = [c["t_start"] - s for c, s in zip(calls, sent, strict=True)]
    assert all(-0.01 <= d <= 0.25 for d in delays), delays
    assert max(delays) > 0.03, delays  # some were counted later than they arrived
    for bad in (-0.1, 0.6, "x", True):
        with pytest.raises(ValueError, match="arrival_jitter"):
            sim.sim.configure({"arrival_jitter": bad})
