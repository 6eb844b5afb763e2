"""Media validation: real format from magic bytes, size after Base64, renamed files."""

import hashlib

import pytest

from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, png_bytes
from faceid_batch.stage.media import MediaError, base64_size, inspect_local, max_raw_size, sniff


def test_sniff_each_format():
    assert sniff(jpeg_bytes(1, 100)) == "jpg"
    assert sniff(png_bytes(1, 100)) == "png"
    assert sniff(mp4_bytes(1, 100)) == "mp4"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff(b"FLV\x01\x05\x00\x00\x00\x09") == "flv"
    assert sniff(b"GIF89a.........") is None


def test_base64_limits():
    assert base64_size(3) == 4 and base64_size(4) == 8
    assert base64_size(max_raw_size("video")) <= 8 * 1024 * 1024
    assert base64_size(max_raw_size("video") + 1) > 8 * 1024 * 1024
    assert base64_size(max_raw_size("photo") + 1) > 3 * 1024 * 1024


def test_good_files_give_md5(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(mp4_bytes(3, 50_000))
    info = inspect_local("video", p)
    assert info.md5 == hashlib.md5(p.read_bytes()).hexdigest()
    assert (info.fmt, info.size) == ("mp4", 50_000)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        inspect_local("photo", tmp_path / "nope.jpg")


def test_png_renamed_mp4_is_refused_as_video(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(png_bytes(2, 1000))
    with pytest.raises(MediaError, match="content is a PNG file"):
        inspect_local("video", p)


def test_a_wrong_name_is_preflights_business_not_stagings(tmp_path):
    # Staging names the object after the real format; preflight's format_mismatch rule
    # (tests/test_preflight.py) decides whether a misnamed file is refused at submit.
    p = tmp_path / "face.png"
    p.write_bytes(jpeg_bytes(2, 1000))
    assert inspect_local("photo", p).fmt == "jpg"


def test_samples_are_exactly_the_size_asked_and_real_containers(tmp_path):
    import av
    import imagesize

    for size in (100, 50_000, 8 * 1024 * 1024 * 3 // 4 - 5):
        assert len(mp4_bytes(1, size)) == size
    assert len(jpeg_bytes(1, 1000)) == 1000 and len(png_bytes(1, 1000)) == 1000
    p = tmp_path / "v.mp4"
    p.write_bytes(mp4_bytes(1, 300_000, duration_s=6.5, audio=False, width=320, height=240))
    with av.open(str(p)) as c:
        assert c.duration / 1e6 == pytest.approx(6.5)
        assert len(c.streams.audio) == 0
        assert (c.streams.video[0].codec_context.width,
                c.streams.video[0].codec_context.height) == (320, 240)
    p.write_bytes(mp4_bytes(1, 300_000))
    with av.open(str(p)) as c:
        assert c.duration / 1e6 == pytest.approx(5.0) and len(c.streams.audio) == 1
    for name, data in (("a.jpg", jpeg_bytes(1, 5000, 300, 150)),
                       ("a.png", png_bytes(1, 5000, 300, 150))):
        (tmp_path / name).write_bytes(data)
        assert imagesize.get(str(tmp_path / name)) == (300, 150)


def test_nine_mb_video_is_refused(tmp_path):
    p = tmp_path / "big.mp4"
    p.write_bytes(mp4_bytes(4, 9 * 1024 * 1024))
    with pytest.raises(MediaError, match="over the API's 8 MB limit"):
        inspect_local("video", p)


def test_photo_over_3mb_after_base64(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(jpeg_bytes(5, max_raw_size("photo") + 3))
    with pytest.raises(MediaError, match="3 MB limit"):
        inspect_local("photo", p)


def test_empty_file(tmp_path):
    p = tmp_path / "e.jpg"
    p.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        inspect_local("photo", p)
