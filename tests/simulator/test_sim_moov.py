"""The simulator's engine reads an MP4's moov from the stream, wherever the box lies."""

from __future__ import annotations

import random
import struct

import pytest

from faceid_batch.local.samples import mp4_bytes
from faceid_sim.media import MoovCollector, mp4_info


def boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """Top-level (kind, whole box) of an MP4 with 32-bit sizes."""
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos:pos + size]))
        pos += size
    return out


def moov_last(data: bytes) -> bytes:
    """The same file with moov after mdat (as many phones write it)."""
    parts = boxes(data)
    return b"".join(b for k, b in parts if k != b"moov") + dict(parts)[b"moov"]


def large_mdat(data: bytes) -> bytes:
    """mdat with a 64-bit size (size field 1, then the real size)."""
    out = b""
    for kind, whole in boxes(data):
        if kind == b"mdat":
            whole = struct.pack(">I", 1) + b"mdat" + struct.pack(">Q", len(whole) + 8) + whole[8:]
        out += whole
    return out


def streamed(data: bytes, rng: random.Random, max_chunk: int) -> bytes | None:
    collector = MoovCollector()
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max_chunk)
        collector.feed(data[pos:pos + step])
        pos += step
    return collector.result()


@pytest.mark.parametrize("layout", [lambda d: d, moov_last, large_mdat,
                                    lambda d: large_mdat(moov_last(d))],
                         ids=["moov-first", "moov-last", "64-bit-mdat", "64-bit-mdat-moov-last"])
@pytest.mark.parametrize("audio", [True, False])
def test_moov_from_any_chunking_reads_like_the_whole_file(layout, audio):
    data = layout(mp4_bytes(3, 300_000, duration_s=6.5, audio=audio))
    whole = mp4_info(data)
    assert whole is not None and whole.seconds == pytest.approx(6.5) and whole.sound is audio
    rng = random.Random(7)
    for max_chunk in (1, 7, 16, 4096, 1 << 20):
        moov = streamed(data, rng, max_chunk)
        assert moov is not None and moov[4:8] == b"moov"
        assert mp4_info(moov) == whole, max_chunk


def test_no_moov_and_garbage_give_nothing():
    no_moov = b"".join(b for k, b in boxes(mp4_bytes(4, 50_000)) if k != b"moov")
    assert streamed(no_moov, random.Random(1), 999) is None
    assert streamed(b"\x00\x00\x00\x03junkjunkjunk" * 10, random.Random(1), 5) is None
