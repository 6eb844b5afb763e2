"""Bad input is refused before any row, message or call exists."""

import pytest

from faceid_batch.intake.submit import JobSpec, SubmitError, validate_liveness, validate_spec
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, png_bytes


@pytest.fixture
def media(tmp_path):
    photo, video = tmp_path / "p.jpg", tmp_path / "v.mp4"
    photo.write_bytes(jpeg_bytes(1, 2000))
    video.write_bytes(mp4_bytes(2, 20_000))
    return str(photo), str(video)


def spec(media, **kw):
    args = dict(idempotency_key="k-1", photo=media[0], video=media[1], liveness_type="SILENT")
    args.update(kw)
    return JobSpec(**args)


@pytest.mark.parametrize("lt,data,ok", [
    ("SILENT", None, True), ("SILENT", "", True), ("SILENT", "1234", False),
    ("LIP", "1234", True), ("LIP", "123", False), ("LIP", "12a4", False), ("LIP", None, False),
    ("ACTION", "1,2", True), ("ACTION", "2,1", True), ("ACTION", "1,3", False),
    ("ACTION", "1;2", False), ("ACTION", None, False), ("BLINK", None, False),
    ("silent", None, False),
])
def test_liveness_rules(lt, data, ok):
    if ok:
        validate_liveness(lt, data)
    else:
        with pytest.raises(SubmitError):
            validate_liveness(lt, data)


def test_unknown_liveness_type_names_the_choices(media):
    with pytest.raises(SubmitError, match="must be one of LIP, ACTION, SILENT"):
        validate_spec(spec(media, liveness_type="BLINK"))


def test_missing_file(media, tmp_path):
    with pytest.raises(SubmitError, match="video .*nope.mp4: file not found"):
        validate_spec(spec(media, video=str(tmp_path / "nope.mp4")))


def test_png_renamed_mp4(media, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(png_bytes(3, 500))
    with pytest.raises(SubmitError, match="content is a PNG file"):
        validate_spec(spec(media, video=str(fake)))


def test_nine_mb_video(media, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(mp4_bytes(4, 9 * 1024 * 1024))
    with pytest.raises(SubmitError, match="8 MB limit"):
        validate_spec(spec(media, video=str(big)))


def test_key_lane_and_signed_urls(media):
    with pytest.raises(SubmitError, match="idempotency key"):
        validate_spec(spec(media, idempotency_key="has space"))
    with pytest.raises(SubmitError, match="lane"):
        validate_spec(spec(media, lane="vip"))
    with pytest.raises(SubmitError, match="query string"):
        validate_spec(spec(media, photo="https://h.example/p.jpg?sign=abc"))


def test_good_spec_passes_and_normalises(media):
    assert validate_spec(spec(media, validate_data="  ")).validate_data is None
