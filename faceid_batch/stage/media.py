"""Media checks: the real format from magic bytes, the API's size limits, streaming MD5.

The API takes a photo (JPG/PNG, at most 3 MB after Base64) and a video (MP4/AVI/FLV,
at most 8 MB after Base64). Checking here costs nothing; a refusal by the API costs a call.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
PHOTO_LIMIT_B64 = 3 * MiB
VIDEO_LIMIT_B64 = 8 * MiB
PHOTO_FORMATS = ("jpg", "png")
VIDEO_FORMATS = ("mp4", "avi", "flv")
EXTENSIONS = {"jpg": ".jpg", "png": ".png", "mp4": ".mp4", "avi": ".avi", "flv": ".flv"}
NAME_ALIASES = {".jpeg": "jpg", ".jpg": "jpg", ".png": "png", ".mp4": "mp4", ".m4v": "mp4",
                ".avi": "avi", ".flv": "flv"}
CHUNK = 1024 * 1024


class MediaError(ValueError):
    """The media cannot be sent: the message names the file and the problem."""


def sniff(head: bytes) -> str | None:
    """The container format of a file from its first bytes, or None if not one we accept."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    return None


def base64_size(n: int) -> int:
    """Size of ``n`` bytes after Base64 encoding (with padding)."""
    return 4 * ((n + 2) // 3)


def max_raw_size(kind: str) -> int:
    """The largest raw file whose Base64 fits the API's limit for ``kind``."""
    limit = PHOTO_LIMIT_B64 if kind == "photo" else VIDEO_LIMIT_B64
    return (limit // 4) * 3


@dataclass(frozen=True)
class MediaInfo:
    """What staging needs to know about one file."""

    kind: str  # "photo" | "video"
    fmt: str
    size: int | None  # None: not read here (put in the bucket, checked, by the producer API)
    md5: str


def check_format_and_size(kind: str, label: str, head: bytes, size: int) -> str:
    """Validate the sniffed format and the size; return the format or raise MediaError."""
    fmt = sniff(head)
    allowed = PHOTO_FORMATS if kind == "photo" else VIDEO_FORMATS
    if size == 0:
        raise MediaError(f"{kind} {label}: file is empty")
    if fmt is None or fmt not in allowed:
        found = f"a {fmt.upper()} file" if fmt else "not a recognised format"
        raise MediaError(
            f"{kind} {label}: content is {found}; the API accepts "
            + "/".join(f.upper() for f in allowed)
        )
    limit = PHOTO_LIMIT_B64 if kind == "photo" else VIDEO_LIMIT_B64
    if base64_size(size) > limit:
        raise MediaError(
            f"{kind} {label}: {size / MiB:.1f} MiB is {base64_size(size) / MiB:.1f} MiB after "
            f"Base64, over the API's {limit // MiB} MB limit"
        )
    return fmt


def check_name_matches(kind: str, path: str, fmt: str) -> None:
    """Refuse a file whose extension says another format than its content (a renamed file)."""
    named = NAME_ALIASES.get(Path(path).suffix.lower())
    if named is not None and named != fmt:
        raise MediaError(
            f"{kind} {path}: named {Path(path).suffix} but the content is {fmt.upper()}"
        )


def peek_local(kind: str, path: str | os.PathLike[str], md5: str,
               label: str | None = None) -> MediaInfo:
    """Check a local file (exists, format, size) reading only its head; ``md5`` is
    the file's MD5 when already known (see ``inspect_local``)."""
    p = Path(path)
    label = label or str(path)
    if not p.is_file():
        raise MediaError(f"{kind} {label}: file not found")
    with p.open("rb") as fh:
        head = fh.read(16)
        size = os.fstat(fh.fileno()).st_size
    fmt = check_format_and_size(kind, label, head, size)
    # A name that says another accepted format than the content is preflight's
    # format_mismatch rule (refuse, warn or off), checked at submit; staging names the
    # object after its real format, so the API never sees the wrong name.
    return MediaInfo(kind, fmt, size, md5)


def inspect_local(
    kind: str, path: str | os.PathLike[str], label: str | None = None
) -> MediaInfo:
    """Check a local file (format, size), then compute its MD5 streaming."""
    info = peek_local(kind, path, "", label)
    return MediaInfo(kind, info.fmt, info.size, file_md5(path))


def file_md5(path: str | os.PathLike[str]) -> str:
    """MD5 of a file, read in chunks (never whole in memory)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
