"""What the simulated FaceID does with ImageUrl / VideoUrl: download, checksum, sniff, size.

Limits come from the API description: the photo must be JPG or PNG and at most 3 MB after
Base64; the video MP4, AVI or FLV, at most 8 MB after Base64 and downloadable within 4 s.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

MB = 1024 * 1024
PHOTO_MAX_B64 = 3 * MB
VIDEO_MAX_B64 = 8 * MB
# Never read more than this from a URL: bigger media are refused for size without hashing on.
HARD_CAP_BYTES = 32 * MB
CHUNK = 256 * 1024
HEAD_BYTES = 16

_local = threading.local()


@dataclass(frozen=True)
class MediaError(Exception):
    """A media problem, as the API code and message to answer."""

    code: str
    message: str


@dataclass
class Downloaded:
    """A fetched file: its MD5, size, first bytes, and what was kept: a file (photos, served
    later as the best frame) or, for an MP4 video, its ``moov`` box (read for its headers)."""

    md5: str
    size: int
    head: bytes
    path: str | None
    over_cap: bool
    data: bytes | None = None


def base64_size(n: int) -> int:
    """Length of the Base64 encoding of ``n`` bytes (the unit of the API's size limits)."""
    return (n + 2) // 3 * 4


def sniff_photo(head: bytes) -> str | None:
    """'jpg' or 'png' from magic bytes, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def sniff_video(head: bytes) -> str | None:
    """'mp4', 'avi' or 'flv' from magic bytes, else None."""
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    return None


def _session() -> requests.Session:
    # One pooled session per server thread: keep-alive to the store without sharing a pool
    # across threads. trust_env=False so a proxy variable never reroutes loopback fetches.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        _local.session = session
    return session


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def download(
    url: str, param: str, budget: float, keep_dir: Path | None, allow_remote: bool = False,
    keep_moov: bool = False,
) -> Downloaded:
    """Fetch ``url`` within ``budget`` seconds in total, hashing as it streams.

    ``param`` names the request parameter (ImageUrl/VideoUrl) for messages. With ``keep_dir``
    the bytes are also written to a temporary file there (the caller owns it afterwards);
    with ``keep_moov`` the MP4 ``moov`` box is kept in memory (``Downloaded.data``), read
    as the bytes stream past, and nothing else.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError("InvalidParameterValue", f"{param} is not a valid http(s) URL.")
    if not allow_remote and not _is_loopback(parts.hostname):
        # The simulator must never reach beyond this machine.
        raise MediaError("FailedOperation.DownLoadError", f"{param}: host is not reachable.")
    deadline = time.monotonic() + budget
    md5, size, head = hashlib.md5(), 0, b""
    fd, path = (-1, None)
    if keep_dir is not None:
        fd, path = tempfile.mkstemp(dir=keep_dir, suffix=".dl")
    out = os.fdopen(fd, "wb") if path else None
    moov = MoovCollector() if keep_moov else None
    ok = False
    try:
        try:
            with _session().get(url, stream=True, timeout=(budget, budget)) as resp:
                if not 200 <= resp.status_code < 300:
                    raise MediaError(
                        "FailedOperation.DownLoadError",
                        f"{param}: download failed with HTTP {resp.status_code}.",
                    )
                for chunk in resp.iter_content(CHUNK):
                    if time.monotonic() > deadline:
                        raise MediaError(
                            "FailedOperation.DownLoadTimeoutError",
                            f"{param}: download exceeded {budget:g} s.",
                        )
                    if len(head) < HEAD_BYTES:
                        head += chunk[: HEAD_BYTES - len(head)]
                    size += len(chunk)
                    if size > HARD_CAP_BYTES:
                        # ok stays False: the partial temp file is removed below.
                        return Downloaded("", size, head, None, over_cap=True)
                    md5.update(chunk)
                    if out is not None:
                        out.write(chunk)
                    if moov is not None:
                        moov.feed(chunk)
        except requests.exceptions.Timeout:
            raise MediaError(
                "FailedOperation.DownLoadTimeoutError", f"{param}: download exceeded {budget:g} s."
            ) from None
        except requests.exceptions.ConnectionError as exc:
            # A read timeout in the middle of the body surfaces as ConnectionError.
            timed_out = bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)
            if timed_out or time.monotonic() > deadline:
                raise MediaError(
                    "FailedOperation.DownLoadTimeoutError",
                    f"{param}: download exceeded {budget:g} s.",
                ) from None
            raise MediaError(
                "FailedOperation.DownLoadError", f"{param}: download failed."
            ) from None
        except requests.exceptions.RequestException:
            raise MediaError(
                "FailedOperation.DownLoadError", f"{param}: download failed."
            ) from None
        ok = True
        return Downloaded(md5.hexdigest(), size, head, path, over_cap=False,
                          data=moov.result() if moov is not None else None)
    finally:
        if out is not None:
            out.close()
        if path and not ok:
            os.unlink(path)


def check_photo(d: Downloaded, expected_md5: str) -> str:
    """Validate a downloaded photo; return its format or raise MediaError."""
    if d.over_cap:
        raise MediaError("FailedOperation.LifePhotoSizeError", "The photo exceeds 3 MB (Base64).")
    if d.md5 != expected_md5.lower():
        raise MediaError(
            "InvalidParameterValue", "ImageMd5 does not match the MD5 of the file at ImageUrl."
        )
    if d.size == 0:
        raise MediaError("FailedOperation.LifePhotoSizeError", "The photo is empty.")
    fmt = sniff_photo(d.head)
    if fmt is None:
        raise MediaError("InvalidParameterValue", "The photo at ImageUrl is not a JPG or PNG.")
    if base64_size(d.size) > PHOTO_MAX_B64:
        raise MediaError(
            "FailedOperation.LifePhotoSizeError", "The photo exceeds 3 MB after Base64 encoding."
        )
    return fmt


def check_video(d: Downloaded, expected_md5: str) -> str:
    """Validate a downloaded video; return its format or raise MediaError."""
    if d.over_cap:
        raise MediaError("FailedOperation.LipSizeError", "The video exceeds 8 MB (Base64).")
    if d.md5 != expected_md5.lower():
        raise MediaError(
            "InvalidParameterValue", "VideoMd5 does not match the MD5 of the file at VideoUrl."
        )
    if d.size == 0:
        raise MediaError("FailedOperation.LipSizeError", "The video is empty.")
    fmt = sniff_video(d.head)
    if fmt is None:
        raise MediaError("FailedOperation.LipVideoInvalid", "The video is not MP4, AVI or FLV.")
    if base64_size(d.size) > VIDEO_MAX_B64:
        raise MediaError(
            "FailedOperation.LipSizeError", "The video exceeds 8 MB after Base64 encoding."
        )
    return fmt


# --- what the engine reads from the media (its own minimal parsers) -------------------------
# The API's documented expectations: a video longer than 2 s; a LIP recording of "about
# 6 seconds" (the window is our reading of "about"); a photo big enough to hold a face.
MIN_VIDEO_SECONDS = 2.0
LIP_MIN_SECONDS = 3.0
LIP_MAX_SECONDS = 10.0
PHOTO_MIN_SIDE = 200
_CONTAINER_BOXES = (b"moov", b"trak", b"mdia")


@dataclass(frozen=True)
class VideoInfo:
    """Duration (mvhd) and whether a sound track ('soun' handler) exists."""

    seconds: float
    sound: bool


def _boxes(data: bytes, start: int, end: int):  # type: ignore[no-untyped-def]
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        header = 8
        if size == 1 and pos + 16 <= end:
            size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


class MoovCollector:
    """Follows an MP4's top-level boxes as its bytes stream past and keeps only ``moov``
    (a few KB wherever it lies), so a video is neither held nor written whole to read it."""

    MAX_MOOV = 8 * MB

    def __init__(self) -> None:
        self._header = b""
        self._skip = 0
        self._moov: bytearray | None = None
        self._need: int | None = 0  # moov bytes still to come (None: to the end)
        self.done = False

    def feed(self, chunk: bytes) -> None:
        i, n = 0, len(chunk)
        while i < n and not self.done:
            if self._moov is not None:
                take = n - i if self._need is None else min(self._need, n - i)
                self._moov += chunk[i:i + take]
                i += take
                if self._need is not None:
                    self._need -= take
                if self._need == 0 or len(self._moov) > self.MAX_MOOV:
                    self.done = True
            elif self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
            else:
                want = 16 if len(self._header) >= 8 and self._header[:4] == b"\0\0\0\1" else 8
                take = min(want - len(self._header), n - i)
                self._header += chunk[i:i + take]
                i += take
                if len(self._header) == 8 and self._header[:4] == b"\0\0\0\1":
                    continue  # a 64-bit size follows
                if len(self._header) == want:
                    self._box(self._header)
                    self._header = b""

    def _box(self, header: bytes) -> None:
        size = int.from_bytes(header[8:16] if len(header) == 16 else header[:4], "big")
        body = None if size == 0 else size - len(header)  # 0: the box runs to the end
        if body is not None and body < 0:
            self.done = True  # not an MP4 box structure
        elif header[4:8] == b"moov":
            self._moov, self._need = bytearray(header), body
            if body == 0:
                self.done = True
        elif body is None:
            self.done = True
        else:
            self._skip = body

    def result(self) -> bytes | None:
        """The ``moov`` box (header included), or None if the stream held none."""
        return bytes(self._moov) if self._moov is not None else None


def mp4_info(data: bytes) -> VideoInfo | None:
    """Read an MP4's moov (the file's bytes, or just its moov box, see MoovCollector): the
    mvhd duration and the track handlers. None if unreadable."""
    seconds: float | None = None
    sound = False

    def walk(start: int, end: int) -> None:
        nonlocal seconds, sound
        for kind, body, stop in _boxes(data, start, end):
            if kind in _CONTAINER_BOXES:
                walk(body, stop)
            elif kind == b"mvhd" and stop - body >= 20:
                version = data[body]
                if version == 1 and stop - body >= 32:
                    scale = int.from_bytes(data[body + 20:body + 24], "big")
                    length = int.from_bytes(data[body + 24:body + 32], "big")
                else:
                    scale = int.from_bytes(data[body + 12:body + 16], "big")
                    length = int.from_bytes(data[body + 16:body + 20], "big")
                seconds = length / scale if scale else None
            elif kind == b"hdlr" and data[body + 8:body + 12] == b"soun":
                sound = True

    walk(0, len(data))
    return None if seconds is None else VideoInfo(seconds, sound)


def photo_dimensions(path: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOFn segment; None if not found."""
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head) and head[pos] == 0xFF:
        marker = head[pos + 1]
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3) and pos + 9 <= len(head):
            return (int.from_bytes(head[pos + 7:pos + 9], "big"),
                    int.from_bytes(head[pos + 5:pos + 7], "big"))
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


def content_verdict(photo_path: str, video_moov: bytes | None, video_fmt: str,
                    liveness: str) -> MediaError | None:
    """What the engine answers from the media's own headers, before any face work.
    ``video_moov`` is the video's moov box (``Downloaded.data``)."""
    size = photo_dimensions(photo_path)
    if size is not None and min(size) < PHOTO_MIN_SIDE:
        return MediaError("FailedOperation.LifePhotoPoorQuality",
                          "The resolution of the image passed in is too low.")
    info = mp4_info(video_moov) if video_moov and video_fmt == "mp4" else None
    if info is None:
        return None
    if info.seconds < MIN_VIDEO_SECONDS:
        return MediaError("FailedOperation.SilentTooShort", "The video is too short.")
    if liveness == "LIP" and not info.sound:
        return MediaError("FailedOperation.LipVoiceDetect", "No sound is detected.")
    if liveness == "LIP" and not LIP_MIN_SECONDS <= info.seconds <= LIP_MAX_SECONDS:
        return MediaError("FailedOperation.LipSizeError",
                          "The recording duration should be about 6 seconds.")
    return None
