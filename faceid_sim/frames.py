"""Best frames served by the simulator at ``/_sim/frames/<request_id>.<ext>``.

The "best frame" is the downloaded photo itself (a real JPEG/PNG of the face), so its MD5 and
size are genuine. Files are content-addressed on disk and reference-counted; only the last
``max_frames`` request ids stay resolvable, which bounds disk use in long benchmarks.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}


class FrameStore:
    """A bounded LRU of request id -> frame file."""

    def __init__(self, root: Path, max_frames: int = 5000) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_frames = max_frames
        self._index: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._refs: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, md5: str, fmt: str) -> Path:
        return self.root / f"{md5}.{fmt}"

    def add(self, request_id: str, src_path: str, md5: str, fmt: str) -> str:
        """Adopt ``src_path`` (a downloaded photo) as the frame of ``request_id``; return the
        file name to put in the URL."""
        dest = self._path(md5, fmt)
        with self._lock:
            if dest.exists():
                os.unlink(src_path)
            else:
                os.replace(src_path, dest)
            self._index[request_id] = (md5, fmt)
            self._refs[dest.name] = self._refs.get(dest.name, 0) + 1
            while len(self._index) > self.max_frames:
                _, (old_md5, old_fmt) = self._index.popitem(last=False)
                self._release(self._path(old_md5, old_fmt))
        return f"{request_id}.{fmt}"

    def _release(self, path: Path) -> None:
        count = self._refs.get(path.name, 0) - 1
        if count > 0:
            self._refs[path.name] = count
            return
        self._refs.pop(path.name, None)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def open(self, request_id: str) -> tuple[BinaryIO, str, int] | None:
        """(open file, content type, size) of a frame, or None if unknown or evicted."""
        with self._lock:
            entry = self._index.get(request_id)
            if entry is None:
                return None
            md5, fmt = entry
            path = self._path(md5, fmt)
            try:
                fh = open(path, "rb")  # handed to the caller, who closes it
            except FileNotFoundError:
                return None
        return fh, CONTENT_TYPES.get(fmt, "application/octet-stream"), os.fstat(fh.fileno()).st_size

    def clear(self) -> None:
        """Forget every frame and delete the files."""
        with self._lock:
            for md5, fmt in self._index.values():
                try:
                    self._path(md5, fmt).unlink()
                except FileNotFoundError:
                    pass
            self._index.clear()
            self._refs.clear()
