"""Disk-backed objects and multipart uploads for the simulated COS bucket.

Objects live as files so that 5-8 MB media are never held in RAM several times over; each
object is a ``.data`` file plus a small ``.meta`` JSON sidecar, so a restarted store on the same
directory still serves what was uploaded before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
# COS refuses to complete an upload whose non-final parts are under 1 MB.
MIN_PART_SIZE = 1024 * 1024
MAX_PART_NUMBER = 10000


@dataclass(frozen=True)
class StoreError(Exception):
    """A COS-level failure with its error code, message and HTTP status."""

    code: str
    message: str
    status: int = 400


@dataclass
class ObjectMeta:
    """What HEAD returns about an object."""

    key: str
    size: int
    etag: str  # quoted, as sent in the ETag header
    content_type: str
    last_modified: float
    meta: dict[str, str] = field(default_factory=dict)  # x-cos-meta-* headers


@dataclass
class PartInfo:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    size: int
    last_modified: float


@dataclass
class Upload:
    """An initiated, not yet completed multipart upload."""

    upload_id: str
    key: str
    initiated: float
    content_type: str
    meta: dict[str, str]
    parts: dict[int, PartInfo] = field(default_factory=dict)


def _copy_stream(src: BinaryIO, dst: BinaryIO, length: int) -> str:
    """Copy exactly ``length`` bytes; return the hex MD5. Raises StoreError on a short body."""
    md5 = hashlib.md5()
    remaining = length
    while remaining > 0:
        chunk = src.read(min(CHUNK, remaining))
        if not chunk:
            raise StoreError("IncompleteBody", "The request body is shorter than Content-Length.")
        md5.update(chunk)
        dst.write(chunk)
        remaining -= len(chunk)
    return md5.hexdigest()


class ObjectStore:
    """One bucket's objects and multipart uploads under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._uploads_dir = self.root / "uploads"
        for d in (self._objects, self._tmp, self._uploads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._uploads: dict[str, Upload] = {}

    # --- layout ---------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        folder = self._objects / digest[:2]
        return folder / f"{digest}.data", folder / f"{digest}.meta"

    def _temp_file(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self._tmp, suffix=".part")

    def _publish(self, key: str, tmp_path: str, meta: ObjectMeta) -> None:
        data_path, meta_path = self._paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = f"{tmp_path}.meta"
        with open(meta_tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(meta), fh)
        # Data and sidecar are swapped together under the lock so a reader never pairs new
        # bytes with old metadata; an already-open reader keeps its old inode.
        with self._lock:
            os.replace(tmp_path, data_path)
            os.replace(meta_tmp, meta_path)

    @staticmethod
    def _load_meta(meta_path: Path) -> ObjectMeta | None:
        try:
            with open(meta_path, encoding="utf-8") as fh:
                return ObjectMeta(**json.load(fh))
        except FileNotFoundError:
            return None

    # --- simple objects -------------------------------------------------------------------
    def put(
        self,
        key: str,
        body: BinaryIO,
        length: int,
        content_type: str,
        meta: dict[str, str],
        content_md5_b64: str | None = None,
    ) -> ObjectMeta:
        """Stream ``length`` bytes from ``body`` into ``key``; verify Content-MD5 if given."""
        fd, tmp_path = self._temp_file()
        try:
            with os.fdopen(fd, "wb") as out:
                hexmd5 = _copy_stream(body, out, length)
            if content_md5_b64 is not None:
                if base64.b64encode(bytes.fromhex(hexmd5)).decode() != content_md5_b64.strip():
                    raise StoreError("BadDigest", "The Content-MD5 you specified did not match.")
            info = ObjectMeta(key, length, f'"{hexmd5}"', content_type, time.time(), meta)
            self._publish(key, tmp_path, info)
            return info
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)

    def head(self, key: str) -> ObjectMeta | None:
        """Metadata of ``key`` or None."""
        with self._lock:
            return self._load_meta(self._paths(key)[1])

    def open(self, key: str) -> tuple[ObjectMeta, BinaryIO] | None:
        """Metadata and an open binary file of ``key``, or None. The caller closes the file."""
        data_path, meta_path = self._paths(key)
        with self._lock:
            meta = self._load_meta(meta_path)
            if meta is None:
                return None
            try:
                fh = open(data_path, "rb")  # handed to the caller, who closes it
            except FileNotFoundError:
                return None
        return meta, fh

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        data_path, meta_path = self._paths(key)
        with self._lock:
            existed = meta_path.exists()
            for p in (meta_path, data_path):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        return existed

    def iter_objects(self) -> Iterator[ObjectMeta]:
        """Every stored object's metadata, in no particular order."""
        for meta_path in self._objects.glob("*/*.meta"):
            meta = self._load_meta(meta_path)
            if meta is not None:
                yield meta

    def list(self, prefix: str, marker: str, max_keys: int) -> tuple[list[ObjectMeta], bool]:
        """Keys with ``prefix`` sorting after ``marker``: (page, truncated)."""
        keys = sorted(
            (m for m in self.iter_objects() if m.key.startswith(prefix) and m.key > marker),
            key=lambda m: m.key,
        )
        return keys[:max_keys], len(keys) > max_keys

    # --- multipart ------------------------------------------------------------------------
    def initiate(self, key: str, content_type: str, meta: dict[str, str]) -> Upload:
        """Start a multipart upload for ``key``."""
        upload = Upload(uuid.uuid4().hex, key, time.time(), content_type, meta)
        (self._uploads_dir / upload.upload_id).mkdir()
        with self._lock:
            self._uploads[upload.upload_id] = upload
        return upload

    def _upload(self, upload_id: str, key: str) -> Upload:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise StoreError("NoSuchUpload", "The specified upload does not exist.", 404)
        return upload

    def put_part(self, upload_id: str, key: str, number: int, body: BinaryIO, length: int) -> str:
        """Store part ``number``; return its quoted ETag."""
        upload = self._upload(upload_id, key)
        if not 1 <= number <= MAX_PART_NUMBER:
            raise StoreError("InvalidArgument", "Part number must be an integer in [1, 10000].")
        part_path = self._uploads_dir / upload_id / f"{number}.part"
        fd, tmp_path = self._temp_file()
        try:
            with os.fdopen(fd, "wb") as out:
                hexmd5 = _copy_stream(body, out, length)
            os.replace(tmp_path, part_path)
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
        etag = f'"{hexmd5}"'
        with self._lock:
            upload.parts[number] = PartInfo(number, etag, length, time.time())
        return etag

    def list_uploads(self, prefix: str) -> list[Upload]:
        """In-progress uploads whose key starts with ``prefix``, oldest first."""
        with self._lock:
            ups = [u for u in self._uploads.values() if u.key.startswith(prefix)]
        return sorted(ups, key=lambda u: (u.key, u.initiated))

    def list_parts(self, upload_id: str, key: str) -> list[PartInfo]:
        """Parts uploaded so far, by part number."""
        upload = self._upload(upload_id, key)
        with self._lock:
            return [upload.parts[n] for n in sorted(upload.parts)]

    def complete(self, upload_id: str, key: str, wanted: list[tuple[int, str]]) -> ObjectMeta:
        """Assemble the listed parts (number, etag) into the object."""
        upload = self._upload(upload_id, key)
        if not wanted:
            raise StoreError("MalformedXML", "The CompleteMultipartUpload body lists no part.")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise StoreError("InvalidPartOrder", "Parts must be listed in ascending order.")
        with self._lock:
            parts = dict(upload.parts)
        chosen: list[PartInfo] = []
        for number, etag in wanted:
            part = parts.get(number)
            if part is None or part.etag.strip('"') != etag.strip().strip('"'):
                raise StoreError("InvalidPart", f"Part {number} was not found or ETag differs.")
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise StoreError("EntityTooSmall", f"Part {part.number} is smaller than 1 MB.")
        fd, tmp_path = self._temp_file()
        combined = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out:
                for part in chosen:
                    with open(self._uploads_dir / upload_id / f"{part.number}.part", "rb") as src:
                        shutil.copyfileobj(src, out, CHUNK)
                    combined.update(bytes.fromhex(part.etag.strip('"')))
            size = sum(p.size for p in chosen)
            etag = f'"{combined.hexdigest()}-{len(chosen)}"'
            info = ObjectMeta(key, size, etag, upload.content_type, time.time(), upload.meta)
            self._publish(key, tmp_path, info)
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
        self._drop_upload(upload_id)
        return info

    def abort(self, upload_id: str, key: str) -> None:
        """Discard an upload and its parts."""
        self._upload(upload_id, key)
        self._drop_upload(upload_id)

    def _drop_upload(self, upload_id: str) -> None:
        with self._lock:
            self._uploads.pop(upload_id, None)
        shutil.rmtree(self._uploads_dir / upload_id, ignore_errors=True)
