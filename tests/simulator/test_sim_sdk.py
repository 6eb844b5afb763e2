"""Tencent's own SDK (tencentcloud-sdk-python-intl-en) against the simulator.

The SDK sets the Host header to its configured endpoint ("127.0.0.1:PORT") and signs that
value, so these tests also prove the simulator verifies the Host actually sent.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.faceid.v20180301 import faceid_client, models

from .sim_helpers import SECRET_ID, SECRET_KEY


def _client(
    sim,
    secret_key: str = SECRET_KEY,
    region: str = "ap-singapore",
    method: str = "POST",
    unsigned_payload: bool = False,
):
    http_profile = HttpProfile(
        protocol="http", endpoint=sim.api_url.split("//", 1)[1], reqMethod=method
    )
    http_profile.reqTimeout = 30
    profile = ClientProfile(httpProfile=http_profile)
    profile.unsignedPayload = unsigned_payload
    return faceid_client.FaceidClient(credential.Credential(SECRET_ID, secret_key), region, profile)


def _request(params: dict[str, str]) -> models.VideoLivenessCompareRequest:
    req = models.VideoLivenessCompareRequest()
    req.from_json_string(json.dumps(params))
    return req


def test_sdk_parses_a_success(sim, upload, http):
    media = upload(liveness="LIP", validate="1234")
    resp = _client(sim).VideoLivenessCompare(_request(media.params))
    assert resp.Result == "Success"
    assert resp.Description == "Success"
    assert 75.0 <= resp.Sim < 99.0
    assert resp.BestFrame.MD5 == hashlib.md5(media.photo).hexdigest()
    assert resp.BestFrame.Size == len(media.photo)
    [call] = sim.sim.calls()
    assert resp.RequestId == call["request_id"]
    frame = http.get(resp.BestFrame.Url)
    assert frame.status_code == 200 and frame.headers["Content-Type"] == "image/jpeg"
    assert hashlib.md5(frame.content).hexdigest() == resp.BestFrame.MD5


def test_sdk_raises_scripted_error_envelope(sim, upload):
    media = upload()
    sim.sim.script(
        media.params["VideoMd5"],
        [
            {"code": "FailedOperation.LivessDetectFake", "channel": "error"},
            "UnauthorizedOperation.Arrears",
        ],
    )
    client = _client(sim)
    with pytest.raises(TencentCloudSDKException) as first:
        client.VideoLivenessCompare(_request(media.params))
    assert first.value.get_code() == "FailedOperation.LivessDetectFake"
    assert first.value.get_request_id() == sim.sim.calls()[-1]["request_id"]
    with pytest.raises(TencentCloudSDKException) as second:
        client.VideoLivenessCompare(_request(media.params))
    assert second.value.get_code() == "UnauthorizedOperation.Arrears"


def test_sdk_parses_failed_operation_in_result(sim, upload):
    media = upload()
    sim.sim.script(media.params["VideoMd5"], ["FailedOperation.SilentThreshold"])
    resp = _client(sim).VideoLivenessCompare(_request(media.params))
    assert resp.Result == "FailedOperation.SilentThreshold"
    assert resp.Sim == 0.0 and resp.BestFrame is None
    assert resp.Description == "Real person detection did not reach the passing standard."


def test_sdk_with_wrong_key_gets_signature_failure(sim, upload):
    with pytest.raises(TencentCloudSDKException) as exc:
        _client(sim, secret_key="wrong-key").VideoLivenessCompare(_request(upload().params))
    assert exc.value.get_code() == "AuthFailure.SignatureFailure"


def test_sdk_region_is_checked(sim, upload):
    with pytest.raises(TencentCloudSDKException) as exc:
        _client(sim, region="ap-guangzhou").VideoLivenessCompare(_request(upload().params))
    assert exc.value.get_code() == "UnsupportedRegion"


@pytest.mark.parametrize(
    ("method", "unsigned"), [("GET", False), ("POST", True)], ids=["get", "unsigned-payload"]
)
def test_sdk_other_signing_variants(sim, upload, method, unsigned):
    media = upload()
    client = _client(sim, method=method, unsigned_payload=unsigned)
    assert client.VideoLivenessCompare(_request(media.params)).Result == "Success"
