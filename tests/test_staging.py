"""Media staging with cos-python-sdk-v5 against the simulator's COS-compatible store."""

from __future__ import annotations

import hashlib

import pytest
import requests

from faceid_batch.local.samples import jpeg_bytes, mp4_bytes
from faceid_batch.settings import load_settings
from faceid_batch.stage.media import MediaError
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY


@pytest.fixture
def stager(simulator, sqlite_url):
    settings = load_settings(
        faceid_secret_id=FAKE_SECRET_ID, faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET,
        cos_domain=simulator.cos_domain, cos_scheme="http", presign_expiry_seconds=60,
        cos_key_prefix="staging-test/", database_url=sqlite_url,
    )
    return MediaStager(settings)


def test_upload_once_then_skip_and_presigned_get(stager, tmp_path):
    data = mp4_bytes(11, 3 * 1024 * 1024 + 17)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    first = stager.stage("video", str(path))
    second = stager.stage("video", str(path))
    assert first.uploaded and not second.uploaded
    assert first.key == second.key == f"staging-test/{hashlib.md5(data).hexdigest()}.mp4"
    url = stager.presign(first.key)
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == data
    # The presigned URL is checked: a tampered signature is refused.
    assert requests.get(url.replace("q-signature=", "q-signature=0"), timeout=10).status_code == 403


def test_checks_for_an_existing_object_only_for_large_files_when_asked(stager, tmp_path,
                                                                     monkeypatch):
    heads: list[str] = []
    head = stager.client.head_object

    def counting_head(**kwargs):
        heads.append(kwargs["Key"])
        return head(**kwargs)

    monkeypatch.setattr(stager.client, "head_object", counting_head)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(5, 50_000))
    video = tmp_path / "v.mp4"
    video.write_bytes(mp4_bytes(14, 2 * 1024 * 1024))
    # A small file is uploaded every time, without a HEAD first.
    assert [stager.stage("photo", str(photo)).uploaded for _ in range(2)] == [True, True]
    assert heads == []
    # A video on its first attempt: uploaded straight away, again if asked again.
    first = stager.stage("video", str(video), check_existing=False)
    assert first.uploaded and heads == []
    # A retry (staged before): one HEAD finds it and nothing is uploaded.
    again = stager.stage("video", str(video), check_existing=True)
    assert not again.uploaded and heads == [first.key]
    got = requests.get(stager.presign(first.key), timeout=10)
    assert got.status_code == 200 and got.content == video.read_bytes()


def test_a_video_is_sent_in_large_writes(stager, tmp_path, monkeypatch):
    """urllib3 would send a file body 16 KiB at a time (a read and a send through Python
    each); the upload reader hands it UPLOAD_READ at a time, and that is what is sent."""
    from urllib3.connection import HTTPConnection

    from faceid_batch.stage.storage import UPLOAD_READ

    writes: list[int] = []
    send = HTTPConnection.send

    def counting_send(self, data):  # type: ignore[no-untyped-def]
        writes.append(len(data))
        return send(self, data)

    monkeypatch.setattr(HTTPConnection, "send", counting_send)
    video = tmp_path / "v.mp4"
    video.write_bytes(mp4_bytes(15, 3 * 1024 * 1024))
    staged = stager.stage("video", str(video), check_existing=False)
    assert staged.uploaded
    body = [n for n in writes if n > 64 * 1024]
    assert sum(body) == video.stat().st_size and max(body) == UPLOAD_READ
    assert len(writes) <= video.stat().st_size // UPLOAD_READ + 3  # + headers
    got = requests.get(stager.presign(staged.key), timeout=10)
    assert got.content == video.read_bytes()


def test_known_md5_skips_reading_and_detects_a_changed_file(stager, tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4_bytes(12, 100_000))
    submitted_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    path.write_bytes(mp4_bytes(13, 100_000))  # changed after it was submitted
    with pytest.raises(MediaError, match="file changed after it was submitted"):
        stager.stage("video", str(path), known_md5=submitted_md5)
    # Nothing is left under a key whose content does not match its name.
    assert not stager.exists(f"staging-test/{submitted_md5}.mp4")


def test_cos_source_must_be_our_bucket(stager):
    with pytest.raises(MediaError, match="is not COS_BUCKET"):
        stager.stage("video", "cos://someone-else-1250000000/v.mp4")
