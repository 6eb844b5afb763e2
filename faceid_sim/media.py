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
    """A fetched file: its MD5, size, first bytes, and (for photos) where it was kept."""

    md5: str
    size: int
    head: bytes
    path: str | None
    over_cap: bool


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
    url: str, param: str, budget: float, keep_dir: Path | None, allow_remote: bool = False
) -> Downloaded:
    """Fetch ``url`` within ``budget`` seconds in total, hashing as it streams.

    ``param`` names the request parameter (ImageUrl/VideoUrl) for messages. With ``keep_dir``
    the bytes are also written to a temporary file there (the caller owns it afterwards).
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
        return Downloaded(md5.hexdigest(), size, head, path, over_cap=False)
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
