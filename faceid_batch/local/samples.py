"""Generated sample media with real container headers, for the demo, the tests and benches.

An MP4 sample is a real ISO-BMFF file: ``ftyp``, a ``moov`` whose ``mvhd`` holds the
duration, a video track (``hdlr`` 'vide', ``tkhd`` width/height) and optionally a sound
track (``hdlr`` 'soun'), then an ``mdat`` of random bytes padding the file to the requested
size. Metadata parsers (ours and the simulator's) read duration and tracks from it; the
frames are not decodable. JPEG and PNG samples carry real pixel dimensions (JPEG SOF0, PNG
IHDR). A requested size smaller than the headers gives the headers cut to that size.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

MOVIE_TIMESCALE = 1000
AUDIO_RATE = 44_100


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(max(0, size))


def _fit(head: bytes, seed: int, size: int, tail: bytes = b"") -> bytes:
    """``head`` + random filler + ``tail``, exactly ``size`` bytes (cut if too small)."""
    filler = size - len(head) - len(tail)
    if filler < 0:
        return (head + tail)[:size]
    return head + _payload(seed, filler) + tail


# -- photos -------------------------------------------------------------------------------
def jpeg_bytes(seed: int, size: int = 20_000, width: int = 640, height: int = 480) -> bytes:
    """A JPEG of ``size`` bytes whose SOF0 says ``width`` x ``height`` (3 components)."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(
        [1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    # Start of scan: readers stop parsing headers here; random "entropy data" follows.
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    head = b"\xff\xd8" + app0 + sof0 + sos
    return _fit(head, seed, size, b"\xff\xd9")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(seed: int, size: int = 20_000, width: int = 640, height: int = 480) -> bytes:
    """A PNG of ``size`` bytes whose IHDR says ``width`` x ``height`` (8-bit RGB)."""
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    filler = size - len(head) - len(tail) - 12
    if filler < 0:
        return (head + tail)[:size]
    # An ancillary private chunk ("faKe") holds the padding: readers skip it.
    return head + _png_chunk(b"faKe", _payload(seed, filler)) + tail


# -- MP4 ----------------------------------------------------------------------------------
def box(kind: bytes, *parts: bytes) -> bytes:
    """One ISO-BMFF box: 32-bit size, four-character type, payload."""
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _mvhd(duration: int, next_track: int) -> bytes:
    return _full(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, duration),
                 struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24),
                 struct.pack(">I", next_track))


def _tkhd(track_id: int, duration: int, width: int, height: int, audio: bool) -> bytes:
    return _full(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track_id, 0, duration), bytes(8),
                 struct.pack(">hhhH", 0, 0, 0x100 if audio else 0, 0), _MATRIX,
                 struct.pack(">II", width << 16, height << 16))


def _mdia(handler: bytes, timescale: int, duration: int, name: bytes, header: bytes,
          entry: bytes) -> bytes:
    mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, duration),
                 struct.pack(">HH", 0x55C4, 0))  # language "und"
    hdlr = _full(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name + b"\x00")
    dinf = box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    stbl = box(b"stbl",
               _full(b"stsd", 0, 0, struct.pack(">I", 1), entry),
               _full(b"stts", 0, 0, struct.pack(">I", 0)),
               _full(b"stsc", 0, 0, struct.pack(">I", 0)),
               _full(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
               _full(b"stco", 0, 0, struct.pack(">I", 0)))
    return box(b"mdia", mdhd, hdlr, box(b"minf", header, dinf, stbl))


def _video_trak(duration_ms: int, width: int, height: int) -> bytes:
    # An 'avc1' sample entry without its avcC: enough to name the codec, not to decode.
    avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
               struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1),
               bytes(32), struct.pack(">Hh", 0x18, -1))
    vmhd = _full(b"vmhd", 0, 1, bytes(8))
    return box(b"trak", _tkhd(1, duration_ms, width, height, audio=False),
               _mdia(b"vide", 25 * 40, duration_ms, b"VideoHandler", vmhd, avc1))


def _sound_trak(duration_s: float) -> bytes:
    # AAC LC, mono: ES descriptor > decoder config (+ AudioSpecificConfig) > SL config.
    esds = _full(b"esds", 0, 0, bytes.fromhex(
        "031900010004114015000000" "0001f4000001f400" "05021208" "060102"))
    mp4a = box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8),
               struct.pack(">HHHHI", 1, 16, 0, 0, AUDIO_RATE << 16), esds)
    smhd = _full(b"smhd", 0, 0, bytes(4))
    return box(b"trak", _tkhd(2, round(duration_s * MOVIE_TIMESCALE), 0, 0, audio=True),
               _mdia(b"soun", AUDIO_RATE, round(duration_s * AUDIO_RATE), b"SoundHandler",
                     smhd, mp4a))


def mp4_bytes(seed: int, size: int = 200_000, duration_s: float = 5.0, audio: bool = True,
              width: int = 640, height: int = 480) -> bytes:
    """An MP4 of ``size`` bytes: ``duration_s`` seconds, a video track of ``width`` x
    ``height`` and, with ``audio``, a sound track; random bytes in ``mdat``."""
    duration_ms = round(duration_s * MOVIE_TIMESCALE)
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    traks = _video_trak(duration_ms, width, height) + (_sound_trak(duration_s) if audio else b"")
    moov = box(b"moov", _mvhd(duration_ms, 3 if audio else 2), traks)
    head = ftyp + moov
    body = size - len(head) - 8
    if body < 0:
        return head[:size]
    return head + struct.pack(">I", body + 8) + b"mdat" + _payload(seed, body)


def write_pair(directory: Path, index: int, photo_size: int = 20_000,
               video_size: int = 200_000) -> tuple[Path, Path]:
    """Write photo ``sample-<i>.jpg`` and video ``sample-<i>.mp4``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    photo = directory / f"sample-{index}.jpg"
    video = directory / f"sample-{index}.mp4"
    photo.write_bytes(jpeg_bytes(index * 2 + 1, photo_size))
    video.write_bytes(mp4_bytes(index * 2 + 2, video_size))
    return photo, video
