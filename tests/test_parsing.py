"""Both failure channels of the API, and the transport failures, parse into one Answer."""

import json

from faceid_batch.call.errors import Kind
from faceid_batch.call.faceid_client import parse_response


def body(resp: dict) -> bytes:
    return json.dumps({"Response": resp}).encode()


def test_success_answer_from_the_seed():
    a = parse_response(200, body({
        "Result": "Success", "Description": "Success", "Sim": 89.88,
        "BestFrame": {"Url": "https://x.example/frame.jpg",
                      "MD5": "682e24b207acf1825286c1fceef5631c", "Size": 9430792},
        "RequestId": "f904f4cf-75db-4f8f-a5ec-dc4f942c7f7a"}))
    assert (a.code, a.channel, a.sim, a.request_id) == (
        "Success", "result", 89.88, "f904f4cf-75db-4f8f-a5ec-dc4f942c7f7a")
    assert a.best_frame.md5 == "682e24b207acf1825286c1fceef5631c"
    assert a.best_frame.size == 9430792
    assert a.rule.kind == Kind.SUCCESS


def test_failed_operation_in_result_channel():
    a = parse_response(200, body({"Result": "FailedOperation.DownLoadTimeoutError",
                                  "Description": "timeout", "Sim": 0, "BestFrame": None,
                                  "RequestId": "r1"}))
    assert a.code == "FailedOperation.DownLoadTimeoutError"
    assert a.channel == "result" and a.best_frame is None
    assert a.rule.kind == Kind.TRANSIENT


def test_error_envelope_with_http_200():
    a = parse_response(200, body({"Error": {"Code": "UnauthorizedOperation.Arrears",
                                            "Message": "in arrears"}, "RequestId": "r2"}))
    assert (a.code, a.channel, a.message, a.request_id) == (
        "UnauthorizedOperation.Arrears", "error", "in arrears", "r2")
    assert a.rule.kind == Kind.ACCOUNT


def test_failed_operation_in_error_envelope():
    a = parse_response(200, body({"Error": {"Code": "FailedOperation.LivessDetectFake",
                                            "Message": "spoof"}, "RequestId": "r3"}))
    assert a.code == "FailedOperation.LivessDetectFake" and a.channel == "error"
    assert a.rule.kind == Kind.VERDICT


def test_non_200_and_garbage_are_transient_transport_errors():
    for status, raw in ((502, b"bad gateway"), (200, b"not json"), (200, b'{"Response": 3}'),
                        (200, b'{"nope": {}}'), (200, body({"RequestId": "r"}))):
        a = parse_response(status, raw)
        assert a.channel == "transport", (status, raw)
        assert a.code.startswith("ClientError.")
        assert a.rule.kind == Kind.TRANSIENT
