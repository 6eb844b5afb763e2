"""Media validation: real format from magic bytes, size after Base64, renamed files."""

import hashlib

import pytest

from faceid_batch.media import MediaError, base64_size, inspect_local, max_raw_size, sniff
from faceid_batch.samples import jpeg_bytes, mp4_bytes, png_bytes


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


def test_extension_must_match_content(tmp_path):
    p = tmp_path / "face.png"
    p.write_bytes(jpeg_bytes(2, 1000))
    with pytest.raises(MediaError, match="named .png but the content is JPG"):
        inspect_local("photo", p)


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
