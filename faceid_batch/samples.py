"""Generated sample media: small files with the real magic bytes of each container.

They are enough for the format, size and MD5 checks of this product and of the simulator;
they are not decodable pictures or films.
"""

from __future__ import annotations

import random
from pathlib import Path


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(max(0, size))


def jpeg_bytes(seed: int, size: int = 20_000) -> bytes:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + _payload(seed, size - len(head) - 2) + b"\xff\xd9"


def png_bytes(seed: int, size: int = 20_000) -> bytes:
    head = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    return head + _payload(seed, size - len(head))


def mp4_bytes(seed: int, size: int = 200_000) -> bytes:
    ftyp = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    body = _payload(seed, size - len(ftyp) - 8)
    mdat = (len(body) + 8).to_bytes(4, "big") + b"mdat"
    return ftyp + mdat + body


def write_pair(directory: Path, index: int, photo_size: int = 20_000,
               video_size: int = 200_000) -> tuple[Path, Path]:
    """Write photo ``sample-<i>.jpg`` and video ``sample-<i>.mp4``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    photo = directory / f"sample-{index}.jpg"
    video = directory / f"sample-{index}.mp4"
    photo.write_bytes(jpeg_bytes(index * 2 + 1, photo_size))
    video.write_bytes(mp4_bytes(index * 2 + 2, video_size))
    return photo, video
