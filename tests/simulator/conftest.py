"""Fixtures for the simulator's own tests: an in-process simulator on free ports, a COS client
from cos-python-sdk-v5 and uploaded sample media. Nothing here imports faceid_batch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client

import faceid_sim

from .sim_helpers import (
    OTHER_ID,
    OTHER_KEY,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    jpeg,
    md5,
    mp4,
    tc3_headers,
)


@dataclass
class Media:
    """One uploaded photo + video pair and the request parameters naming them."""

    photo: bytes
    video: bytes
    params: dict[str, str]


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sim_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[faceid_sim.RunningSimulator]:
    running = faceid_sim.start(
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        extra_credentials={OTHER_ID: OTHER_KEY},
        data_dir=tmp_path_factory.mktemp("faceid-sim"),
        seed=1234,
    )
    yield running
    running.stop()


@pytest.fixture
def sim(sim_running: faceid_sim.RunningSimulator) -> Iterator[faceid_sim.RunningSimulator]:
    """The shared simulator, with calls, scripts, knobs and store knobs reset for each test."""
    sim_running.sim.reset()
    sim_running.cos.reset()
    yield sim_running
    sim_running.sim.reset()
    sim_running.cos.reset()


def make_cos_client(
    domain: str, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY, token: str | None = None
) -> CosS3Client:
    config = CosConfig(
        Region=REGION,
        SecretId=secret_id,
        SecretKey=secret_key,
        Token=token,
        Scheme="http",
        Domain=domain,
    )
    return CosS3Client(config, retry=1)


@pytest.fixture
def cos(sim: faceid_sim.RunningSimulator) -> CosS3Client:
    return make_cos_client(sim.cos_domain)


@pytest.fixture
def upload(sim: faceid_sim.RunningSimulator, cos: CosS3Client) -> Callable[..., Media]:
    """Upload a photo and a video; return presigned URLs and MD5s as request parameters."""
    counter = iter(range(10**6))

    def _upload(
        photo: bytes | None = None,
        video: bytes | None = None,
        liveness: str = "SILENT",
        validate: str | None = None,
        expired: int = 300,
    ) -> Media:
        n = next(counter)
        photo = jpeg(tag=str(n).encode()) if photo is None else photo
        video = mp4(tag=f"{n}-{time.time_ns()}".encode()) if video is None else video
        keys = (f"media/{time.time_ns()}-{n}.jpg", f"media/{time.time_ns()}-{n}.mp4")
        for key, data in zip(keys, (photo, video), strict=True):
            cos.put_object(Bucket=sim.bucket, Body=data, Key=key)
        params = {
            "ImageUrl": cos.get_presigned_url(sim.bucket, keys[0], "GET", Expired=expired),
            "ImageMd5": md5(photo),
            "VideoUrl": cos.get_presigned_url(sim.bucket, keys[1], "GET", Expired=expired),
            "VideoMd5": md5(video),
            "LivenessType": liveness,
        }
        if validate is not None:
            params["ValidateData"] = validate
        return Media(photo, video, params)

    return _upload


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


@pytest.fixture
def call_api(
    sim: faceid_sim.RunningSimulator, http: requests.Session
) -> Callable[..., dict[str, Any]]:
    """POST a signed VideoLivenessCompare; return ``Response`` (HTTP 200 asserted)."""
    host = sim.api_url.split("//", 1)[1]

    def _call(params: dict[str, Any], body: bytes | None = None, **sign: Any) -> dict[str, Any]:
        raw = json.dumps(params).encode() if body is None else body
        signed_body = sign.pop("signed_body", raw)
        headers = tc3_headers(signed_body, host, **sign)
        resp = http.post(sim.api_url + "/", data=raw, headers=headers, timeout=30)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "application/json"
        return resp.json()["Response"]

    return _call
