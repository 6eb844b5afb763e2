"""TC3-HMAC-SHA256 verification and the gateway checks, with requests signed in the tests."""

from __future__ import annotations

import json
import time

import pytest

from .sim_helpers import OTHER_ID, OTHER_KEY, tc3_headers


def test_signed_request_is_accepted(sim, upload, call_api):
    media = upload()
    resp = call_api(media.params)
    assert resp["Result"] == "Success"
    assert len(resp["RequestId"]) == 36
    [call] = sim.sim.calls()
    assert call["secret_id"] == sim.secret_id and call["code"] == "Success"


def test_second_account_signs_with_its_own_key(sim, upload, call_api):
    media = upload()
    assert call_api(media.params, secret_id=OTHER_ID, secret_key=OTHER_KEY)["Result"] == "Success"
    wrong = call_api(media.params, secret_id=OTHER_ID)  # signed with the first account's key
    assert wrong["Error"]["Code"] == "AuthFailure.SignatureFailure"


def test_tampered_body_fails_signature(sim, upload, call_api):
    media = upload()
    signed = json.dumps(media.params).encode()
    tampered = json.dumps({**media.params, "LivenessType": "ACTION"}).encode()
    resp = call_api({}, body=tampered, signed_body=signed)
    assert resp["Error"]["Code"] == "AuthFailure.SignatureFailure"
    # Byte-exact: the same JSON with different whitespace is a different payload.
    resp = call_api({}, body=json.dumps(media.params, indent=1).encode(), signed_body=signed)
    assert resp["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert sim.sim.calls()[-1]["charged"] is False


def test_host_header_is_part_of_the_signature(sim, upload, call_api):
    media = upload()
    resp = call_api(media.params, signed_host="faceid.intl.tencentcloudapi.com")
    assert resp["Error"]["Code"] == "AuthFailure.SignatureFailure"


def test_content_type_with_charset_is_verified_as_sent(upload, call_api):
    media = upload()
    resp = call_api(media.params, content_type="application/json; charset=utf-8")
    assert resp["Result"] == "Success"


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (-301 - 60, "AuthFailure.SignatureExpire"),
        (400, "AuthFailure.SignatureExpire"),
        (-120, None),
    ],
)
def test_timestamp_window(upload, call_api, offset, code):
    media = upload()
    resp = call_api(media.params, timestamp=int(time.time()) + offset)
    if code is None:
        assert resp["Result"] == "Success"
    else:
        assert resp["Error"]["Code"] == code


def test_credential_date_must_be_the_timestamps_utc_date(upload, call_api):
    resp = call_api(upload().params, date="2001-01-01")
    assert resp["Error"]["Code"] == "AuthFailure.SignatureFailure"


def test_unknown_secret_id(upload, call_api):
    resp = call_api(upload().params, secret_id="AKIDnobodyHere")
    assert resp["Error"]["Code"] == "AuthFailure.SecretIdNotFound"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer abc", "TC3-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=zz"],
)
def test_missing_or_garbled_authorization(sim, http, authorization):
    body = b"{}"
    headers = tc3_headers(body, sim.api_url.split("//")[1])
    if authorization is None:
        del headers["Authorization"]
    else:
        headers["Authorization"] = authorization
    resp = http.post(sim.api_url + "/", data=body, headers=headers).json()["Response"]
    assert resp["Error"]["Code"] == "AuthFailure.InvalidAuthorization"
    assert resp["RequestId"]


def test_token_is_refused_unless_token_mode(upload, call_api):
    resp = call_api(upload().params, token="temporary-token")
    assert resp["Error"]["Code"] == "AuthFailure.TokenFailure"


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"action": "DetectAuth"}, "InvalidAction"),
        ({"version": "2017-01-01"}, "NoSuchVersion"),
        ({"region": "ap-guangzhou"}, "UnsupportedRegion"),
        ({"region": None}, "MissingParameter"),
        ({"service": "cvm"}, "AuthFailure.SignatureFailure"),
    ],
)
def test_action_version_region(upload, call_api, override, code):
    resp = call_api(upload().params, **override)
    assert resp["Error"]["Code"] == code


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"ImageUrl": None}, "MissingParameter"),
        ({"VideoMd5": ""}, "MissingParameter"),
        ({"LivenessType": None}, "MissingParameter"),
        ({"LivenessType": "BLINK"}, "InvalidParameterValue"),
        ({"LivenessType": "LIP", "ValidateData": "12a4"}, "InvalidParameterValue"),
        ({"LivenessType": "LIP"}, "InvalidParameterValue"),
        ({"LivenessType": "ACTION", "ValidateData": "1,3"}, "InvalidParameterValue"),
        ({"LivenessType": "SILENT", "ValidateData": "1234"}, "InvalidParameterValue"),
        ({"ImageMd5": "xyz"}, "InvalidParameterValue"),
        ({"Extra": "1"}, "UnknownParameter"),
        ({"ImageUrl": 5}, "InvalidParameter"),
        ({"LivenessType": "LIP", "ValidateData": "0427"}, "Success"),
        ({"LivenessType": "ACTION", "ValidateData": "2,1"}, "Success"),
    ],
)
def test_parameter_checks(sim, upload, call_api, change, code):
    params = {**upload().params, **change}
    params = {k: v for k, v in params.items() if v is not None}
    resp = call_api(params)
    assert resp.get("Result", resp.get("Error", {}).get("Code")) == code
    assert sim.sim.calls()[-1]["charged"] is (code == "Success")


def test_bad_json_body(call_api):
    resp = call_api({}, body=b"{not json")
    assert resp["Error"]["Code"] == "InvalidParameter"
