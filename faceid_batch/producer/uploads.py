"""Read a ``multipart/form-data`` submission as it arrives, never whole in memory.

Each file part is written to a file in the request's own temporary directory while it is
hashed (MD5), counted against the API's limit for its kind (``413`` the moment it is over,
without reading the rest) and sniffed from its first bytes (``415`` at once for a content
that is not JPG/PNG or MP4/AVI/FLV). Text fields are small and bounded. The directory is
removed when the request ends, however it ends, so a request cut mid-upload leaves no file.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from faceid_batch.producer.models import FIELD_LIMIT, MultipartSubmission
from faceid_batch.producer.problems import Problem

if TYPE_CHECKING:  # declared for type checkers only
    from python_multipart.multipart import MultipartCallbacks
from faceid_batch.stage.media import (
    PHOTO_FORMATS,
    VIDEO_FORMATS,
    MiB,
    max_raw_size,
    sniff,
)

FILES = ("photo", "video")
# The text parts of the form, as the model that documents it names them.
FIELDS = tuple(name for name in MultipartSubmission.model_fields if name not in FILES)
SNIFF_BYTES = 16
# The largest body that can be valid: both files at their limits, every field at its own,
# and room for the part headers and boundaries.
MAX_BODY = max_raw_size("photo") + max_raw_size("video") + len(FIELDS) * FIELD_LIMIT + 64 * 1024


@dataclass
class UploadedFile:
    """One file of the request, on disk in the request's directory."""

    kind: str
    filename: str
    path: Path
    size: int = 0
    fmt: str = ""  # set once its first bytes are sniffed
    md5: str = ""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


class _Reader:
    """python-multipart callbacks that fill a Form; a Problem raised here stops the read."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # The fields read before the first file part started (None: no file part yet).
        self.before_files: dict[str, str] | None = None
        self.form = Form()
        self._headers: dict[bytes, bytes] = {}
        self._name_buf = b""
        self._value_buf = b""
        self._name = ""
        self._text: bytearray | None = None
        self._file: UploadedFile | None = None
        self._out: BinaryIO | None = None
        self._md5: Any = None
        self._head = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add(data[start:end], True),
            "on_header_value": lambda data, start, end: self._add(data[start:end], False),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name_buf, self._value_buf = {}, b"", b""

    def _add(self, data: bytes, is_name: bool) -> None:
        if is_name:
            self._name_buf += data
        else:
            self._value_buf += data

    def _header_end(self) -> None:
        self._headers[self._name_buf.strip().lower()] = self._value_buf.strip()
        self._name_buf, self._value_buf = b"", b""

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition",
                                                                     b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise Problem("malformed-request", "a part without Content-Disposition: form-data "
                                               "and a name")
        if name in self.form.fields or name in self.form.files:
            raise Problem("invalid-field", f"{name}: given twice", name)
        self._name = name
        if name in FILES:
            if self.before_files is None:
                self.before_files = dict(self.form.fields)
            filename = params.get(b"filename", b"").decode("utf-8", "replace")
            suffix = Path(filename).suffix.lower()[:8] if filename else ""
            path = self.workdir / f"{name}{suffix}"
            self._file = UploadedFile(name, Path(filename).name or name, path)
            self._out = open(path, "wb")  # noqa: SIM115 - closed in _part_end or close()
            self._md5 = hashlib.md5()
            self._head = b""
        elif name in FIELDS:
            self._text = bytearray()
        else:
            raise Problem("invalid-field", f"{name}: not a field of this request (files: "
                          f"{', '.join(FILES)}; fields: {', '.join(FIELDS)})", name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None and self._out is not None:
            f = self._file
            f.size += len(chunk)
            limit = max_raw_size(f.kind)
            if f.size > limit:
                raise Problem("payload-too-large",
                              f"{f.kind}: over {limit:,} bytes, {limit * 4 // 3 // MiB} MB "
                              "after Base64, the API's limit", f.kind)
            if not f.fmt:
                self._head += chunk[:SNIFF_BYTES]
                if len(self._head) >= SNIFF_BYTES:
                    self._sniff(f)
            self._md5.update(chunk)
            self._out.write(chunk)
        elif self._text is not None:
            self._text += chunk
            if len(self._text) > FIELD_LIMIT:
                raise Problem("payload-too-large", f"{self._name}: over {FIELD_LIMIT:,} bytes",
                              self._name)

    def _sniff(self, f: UploadedFile) -> None:
        fmt = sniff(self._head)
        allowed = PHOTO_FORMATS if f.kind == "photo" else VIDEO_FORMATS
        if fmt is None or fmt not in allowed:
            found = f"a {fmt.upper()} file" if fmt else "not a recognised format"
            raise Problem("unsupported-media-type",
                          f"{f.kind}: the content is {found}; the API takes "
                          + "/".join(a.upper() for a in allowed), f.kind)
        f.fmt = fmt

    def _part_end(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            self.close()
            if f.size == 0:
                raise Problem("invalid-field", f"{f.kind}: the file is empty", f.kind)
            if not f.fmt:
                self._sniff(f)
            f.md5 = self._md5.hexdigest()
            self.form.files[f.kind] = f
        elif self._text is not None:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise Problem("invalid-field", f"{self._name}: not UTF-8 text",
                              self._name) from None
            self._text = None

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise Problem("malformed-request", "multipart/form-data needs a boundary parameter")
    return boundary


async def read_form(chunks: AsyncIterator[bytes], content_type: str,
                    content_length: int | None, workdir: Path,
                    before_files: Callable[[dict[str, str]], Awaitable[None]]) -> Form:
    """Read the whole form from ``chunks`` into ``workdir``; raise a Problem at the first
    thing wrong, without reading further. ``await before_files(fields so far)`` runs once
    the first file part has started, before the next chunk is read (admission control: a
    refused submission's media are not read)."""
    if content_length is not None and content_length > MAX_BODY:
        raise Problem("payload-too-large", f"a body of {content_length:,} bytes is over what "
                      f"a valid submission can be ({MAX_BODY:,})")
    reader = _Reader(workdir)
    parser = MultipartParser(boundary_of(content_type), reader.callbacks())
    received = 0
    asked = False
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > MAX_BODY:
                raise Problem("payload-too-large", f"the body is over {MAX_BODY:,} bytes")
            parser.write(chunk)
            if reader.before_files is not None and not asked:
                asked = True
                await before_files(reader.before_files)
        parser.finalize()
    except MultipartParseError as exc:
        raise Problem("malformed-request", f"multipart body: {exc}") from None
    finally:
        reader.close()
    for kind in FILES:
        if kind not in reader.form.files:
            raise Problem("invalid-field", f"{kind}: a file part named {kind} is required", kind)
    return reader.form
