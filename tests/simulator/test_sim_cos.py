"""The COS store against cos-python-sdk-v5, unmodified, and against plain presigned GETs."""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from qcloud_cos.cos_exception import CosServiceError

import faceid_sim

from .conftest import make_cos_client
from .sim_helpers import OTHER_ID, SECRET_ID, SECRET_KEY


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_put_head_get_delete_round_trip(sim, cos):
    body = os.urandom(70_000)
    put = cos.put_object(Bucket=sim.bucket, Body=body, Key="dir/a b+c.bin", EnableMD5=True)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'

    head = cos.head_object(Bucket=sim.bucket, Key="dir/a b+c.bin")
    assert int(head["Content-Length"]) == len(body)
    assert head["ETag"] == put["ETag"]

    got = cos.get_object(Bucket=sim.bucket, Key="dir/a b+c.bin")
    assert got["Body"].get_raw_stream().read() == body

    cos.delete_object(Bucket=sim.bucket, Key="dir/a b+c.bin")
    with pytest.raises(CosServiceError) as missing:
        cos.head_object(Bucket=sim.bucket, Key="dir/a b+c.bin")
    assert missing.value.get_status_code() == 404
    with pytest.raises(CosServiceError) as gone:
        cos.get_object(Bucket=sim.bucket, Key="dir/a b+c.bin")
    assert gone.value.get_error_code() == "NoSuchKey"


def test_head_of_missing_object_is_404_without_body(sim, http):
    client = make_cos_client(sim.cos_domain)
    url = client.get_presigned_url(sim.bucket, "never-there", "HEAD", Expired=60)
    resp = http.head(url)
    assert resp.status_code == 404
    assert resp.headers["Content-Length"] == "0"


def test_multipart_upload_file(sim, cos, tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 600_000)
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    result = cos.upload_file(
        Bucket=sim.bucket, Key="big/video.mp4", LocalFilePath=str(path), PartSize=1, MAXThread=2
    )
    assert result["ETag"].strip('"').endswith("-3")
    ops = sim.cos.stats()["operations"]
    assert ops["InitiateMultipartUpload"] == 1
    assert ops["UploadPart"] == 3
    assert ops["CompleteMultipartUpload"] == 1
    got = cos.get_object(Bucket=sim.bucket, Key="big/video.mp4")
    assert got["Body"].get_raw_stream().read() == data
    assert sim.cos.objects.list_uploads("") == []


def test_multipart_abort_and_small_part_rejected(sim, cos):
    upload = cos.create_multipart_upload(Bucket=sim.bucket, Key="parts.bin")
    uid = upload["UploadId"]
    e1 = cos.upload_part(sim.bucket, "parts.bin", b"a" * 1000, 1, uid)["ETag"]
    e2 = cos.upload_part(sim.bucket, "parts.bin", b"b" * 1000, 2, uid)["ETag"]
    listed = cos.list_parts(Bucket=sim.bucket, Key="parts.bin", UploadId=uid)
    assert [p["PartNumber"] for p in listed["Part"]] == ["1", "2"]
    with pytest.raises(CosServiceError) as small:
        cos.complete_multipart_upload(
            Bucket=sim.bucket,
            Key="parts.bin",
            UploadId=uid,
            MultipartUpload={
                "Part": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]
            },
        )
    assert small.value.get_error_code() == "EntityTooSmall"
    cos.abort_multipart_upload(Bucket=sim.bucket, Key="parts.bin", UploadId=uid)
    with pytest.raises(CosServiceError) as aborted:
        cos.list_parts(Bucket=sim.bucket, Key="parts.bin", UploadId=uid)
    assert aborted.value.get_error_code() == "NoSuchUpload"


def test_presigned_get_works_with_plain_requests(sim, cos, http):
    cos.put_object(Bucket=sim.bucket, Body=b"0123456789", Key="p/file.txt")
    url = cos.get_presigned_url(sim.bucket, "p/file.txt", "GET", Expired=120)
    resp = http.get(url)
    assert resp.status_code == 200 and resp.content == b"0123456789"
    ranged = http.get(url, headers={"Range": "bytes=2-4"})
    assert ranged.status_code == 206 and ranged.content == b"234"
    assert ranged.headers["Content-Range"] == "bytes 2-4/10"


def test_tampered_or_expired_presigned_url_is_403(sim, cos, http):
    cos.put_object(Bucket=sim.bucket, Body=b"secret", Key="p/one.txt")
    cos.put_object(Bucket=sim.bucket, Body=b"other", Key="p/two.txt")
    url = cos.get_presigned_url(sim.bucket, "p/one.txt", "GET", Expired=120)

    bad_sig = _with_query(url, **{"q-signature": "0" * 40})
    resp = http.get(bad_sig)
    assert resp.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in resp.content

    other_key = url.replace("/p/one.txt?", "/p/two.txt?")
    assert http.get(other_key).status_code == 403

    start, end = dict(parse_qsl(urlsplit(url).query))["q-sign-time"].split(";")
    extended = _with_query(url, **{"q-sign-time": f"{start};{int(end) + 3600}"})
    assert http.get(extended).status_code == 403

    expired = cos.get_presigned_url(sim.bucket, "p/one.txt", "GET", Expired=-5)
    resp = http.get(expired)
    assert resp.status_code == 403
    assert b"<Code>AccessDenied</Code>" in resp.content and b"expired" in resp.content


def test_wrong_key_unknown_id_and_anonymous_are_403(sim, http):
    wrong = make_cos_client(sim.cos_domain, SECRET_ID, "not-the-key")
    with pytest.raises(CosServiceError) as bad:
        wrong.put_object(Bucket=sim.bucket, Body=b"x", Key="x")
    assert (bad.value.get_status_code(), bad.value.get_error_code()) == (
        403,
        "SignatureDoesNotMatch",
    )

    unknown = make_cos_client(sim.cos_domain, "AKIDnobody", SECRET_KEY)
    with pytest.raises(CosServiceError) as nobody:
        unknown.head_object(Bucket=sim.bucket, Key="x")
    assert nobody.value.get_status_code() == 403

    anon = http.get(f"http://{sim.cos_domain}/x")
    assert anon.status_code == 403 and b"<Code>AccessDenied</Code>" in anon.content
    assert sim.cos.stats()["auth_failures"] == 3


def test_second_account_is_accepted(sim):
    other = make_cos_client(sim.cos_domain, OTHER_ID, "fakeTESTsecondKEYdoNotUse0000000")
    other.put_object(Bucket=sim.bucket, Body=b"hi", Key="second.txt")
    assert other.head_object(Bucket=sim.bucket, Key="second.txt")["Content-Length"] == "2"


def test_security_token_needs_token_mode(tmp_path):
    with faceid_sim.start(
        secret_id=SECRET_ID, secret_key=SECRET_KEY, data_dir=tmp_path / "a", token_ok=True
    ) as tok:
        client = make_cos_client(tok.cos_domain, token="temporary-session-token")
        client.put_object(Bucket=tok.bucket, Body=b"t", Key="t.txt")
        assert client.head_object(Bucket=tok.bucket, Key="t.txt")["Content-Length"] == "1"
    with faceid_sim.start(
        secret_id=SECRET_ID, secret_key=SECRET_KEY, data_dir=tmp_path / "b"
    ) as strict:
        client = make_cos_client(strict.cos_domain, token="temporary-session-token")
        with pytest.raises(CosServiceError) as refused:
            client.put_object(Bucket=strict.bucket, Body=b"t", Key="t.txt")
        assert refused.value.get_status_code() == 403


def test_get_delay_knob_and_stats_endpoint(sim, cos, http):
    cos.put_object(Bucket=sim.bucket, Body=b"slow", Key="slow/video.mp4")
    cos.put_object(Bucket=sim.bucket, Body=b"fast", Key="fast/photo.jpg")
    resp = http.post(
        f"http://{sim.cos_domain}/_cos/config",
        json={"get_delay_seconds": 0.4, "get_delay_key_contains": "slow/"},
    )
    assert resp.json()["get_delay_seconds"] == 0.4
    t0 = time.monotonic()
    cos.get_object(Bucket=sim.bucket, Key="fast/photo.jpg")["Body"].get_raw_stream().read()
    fast = time.monotonic() - t0
    t0 = time.monotonic()
    cos.get_object(Bucket=sim.bucket, Key="slow/video.mp4")["Body"].get_raw_stream().read()
    slow = time.monotonic() - t0
    assert slow >= 0.4 > fast
    stats = http.get(f"http://{sim.cos_domain}/_cos/stats").json()
    assert stats["requests"] == {"PUT": 2, "GET": 2}
    assert stats["operations"]["GetObject"] == 2
    bad = http.post(f"http://{sim.cos_domain}/_cos/config", json={"nope": 1})
    assert bad.status_code == 400


def test_list_objects_and_batch_delete(sim, cos):
    for name in ("l/1", "l/2", "m/3"):
        cos.put_object(Bucket=sim.bucket, Body=b"z", Key=name)
    listed = cos.list_objects(Bucket=sim.bucket, Prefix="l/")
    assert sorted(c["Key"] for c in listed["Contents"]) == ["l/1", "l/2"]
    cos.delete_objects(
        Bucket=sim.bucket, Delete={"Object": [{"Key": "l/1"}, {"Key": "l/2"}], "Quiet": "true"}
    )
    assert "Contents" not in cos.list_objects(Bucket=sim.bucket, Prefix="l/")


def test_keep_alive_connection_survives_a_rejected_upload(sim):
    # An early 403 must not leave the unread body on the connection for the next request.
    session = requests.Session()
    session.trust_env = False
    good = make_cos_client(sim.cos_domain)
    url = good.get_presigned_url(sim.bucket, "ka.bin", "PUT", Expired=60)
    assert session.put(url + "0", data=b"x" * 50_000).status_code == 403
    assert session.put(url, data=b"y" * 50_000).status_code == 200
    assert good.head_object(Bucket=sim.bucket, Key="ka.bin")["Content-Length"] == "50000"
