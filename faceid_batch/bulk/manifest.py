"""Read a backfill manifest (CSV or JSONL) one row at a time, and check each row for free.

One row is one job: ``key``, ``photo``, ``video``, ``liveness_type``, and optionally
``validate_data``, ``region`` (the FaceID region it is verified in; FACEID_REGION if empty)
and ``metadata`` (a JSON object; in CSV, JSON text). Any other column is
kept in the job's metadata. Sources are local paths (relative ones are taken from the
manifest's directory), http(s) URLs, or ``cos://bucket/key`` objects already in COS_BUCKET.

The file is streamed: memory does not grow with the manifest. A file that is not CSV/JSONL
at all, or a CSV without the required columns, is refused before any row is read
(``ManifestError``); a bad row is a ``RowError`` for the per-row report, and the run goes on.
Its bytes are hashed (SHA-256) as they are read, for the batch's end-of-run report.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceid_batch.intake.submit import JobSpec, SubmitError, is_remote, validate_spec
from faceid_batch.settings import Settings
from faceid_batch.stage.media import MediaError
from faceid_batch.stage.storage import parse_cos_uri

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

REQUIRED = ("key", "photo", "video", "liveness_type")
OPTIONAL = ("validate_data", "metadata", "region")
ALIASES = {"idempotency_key": "key", "livenesstype": "liveness_type",
           "validatedata": "validate_data", "meta": "metadata"}
CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
SNIFF_BYTES = 64 * 1024
HASH_CHUNK = 1024 * 1024
# csv's default (128 KiB) is far above any sane row; keep a bound so a stray quote cannot
# make one "field" swallow the rest of a huge file.
csv.field_size_limit(1024 * 1024)


class ManifestError(ValueError):
    """The file cannot be used as a manifest at all; the message says why."""


class RowError(ValueError):
    """One row is refused; the message is the reason written to the report."""


@dataclass(frozen=True)
class RawRow:
    """A row as read: its line in the file, its fields, or why it could not be read."""

    line: int
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        value = self.fields.get("key")
        return value if isinstance(value, str) else ("" if value is None else str(value))


def _dialect(delimiter: str) -> type[csv.Dialect]:
    class Dialect(csv.excel):
        pass

    Dialect.delimiter = delimiter
    return Dialect


def _normalise(name: str) -> str:
    name = name.strip().lower().replace("-", "_").replace(" ", "_")
    return ALIASES.get(name, name)


class _HashingReader(io.RawIOBase):
    """A file's bytes, each hashed (SHA-256) once as it is read; ``count`` of them so far."""

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__()
        self._raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        n = self._raw.readinto(buffer)
        if n:
            with memoryview(buffer) as view:
                self.digest.update(view[:n])
            self.count += n
        return n

    def tell(self) -> int:
        return self.count

    def close(self) -> None:
        self._raw.close()
        super().close()


class Manifest:
    """An opened manifest. Iterate ``rows()`` once; ``bytes_read`` tracks progress and
    ``sha256()`` is the file's hash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.base_dir = self.path.resolve().parent
        if not self.path.is_file():
            raise ManifestError(f"manifest {path}: file not found")
        self.size = self.path.stat().st_size
        self.format = self._detect()
        self._binary: io.BufferedReader[_HashingReader] | None = None
        self._hashing: _HashingReader | None = None
        self.columns: list[str] = []
        if self.format == "csv":
            self.columns, self._dialect = self._csv_header()

    # -- detection ---------------------------------------------------------------
    def _head_text(self) -> str:
        with self.path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        if not head.strip():
            raise ManifestError(f"manifest {self.path}: the file is empty")
        if b"\x00" in head:
            raise ManifestError(f"manifest {self.path}: binary data, not a CSV or JSONL file")
        if len(head) == SNIFF_BYTES:
            # Do not judge a multi-byte character cut at the end of the sample.
            head = head[: head.rfind(b"\n") + 1] or head
        try:
            return head.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ManifestError(
                f"manifest {self.path}: not UTF-8 text, so not a CSV or JSONL file"
            ) from None

    def _detect(self) -> str:
        text = self._head_text()
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        suffix = self.path.suffix.lower()
        looks_json = first.lstrip().startswith("{")
        if suffix in JSONL_SUFFIXES or (suffix not in CSV_SUFFIXES and looks_json):
            try:
                obj = json.loads(first)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                what = "a JSON array" if first.lstrip().startswith("[") else "not a JSON object"
                raise ManifestError(
                    f"manifest {self.path}: JSONL needs one JSON object per line; "
                    f"line 1 is {what}"
                )
            return "jsonl"
        return "csv"

    def _csv_header(self) -> tuple[list[str], type[csv.Dialect]]:
        text = self._head_text()
        first = next(iter(text.splitlines()), "")
        # Standard CSV quoting; the delimiter is whichever of , ; TAB | the header uses most
        # (csv.Sniffer guesses quoting wrongly from a header line alone).
        delimiter = max(",;\t|", key=first.count) if first else ","
        dialect = _dialect(delimiter if first.count(delimiter) else ",")
        header = next(csv.reader([first], dialect), [])
        columns = [_normalise(c) for c in header]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            shown = ", ".join(h.strip() for h in header if h.strip())[:200] or "(nothing)"
            raise ManifestError(
                f"manifest {self.path}: not a CSV manifest: missing required column(s) "
                f"{', '.join(missing)} (header has: {shown}; required: {', '.join(REQUIRED)})"
            )
        dupes = sorted({c for c in columns if c and columns.count(c) > 1})
        if dupes:
            raise ManifestError(f"manifest {self.path}: column(s) {', '.join(dupes)} repeated")
        return columns, dialect

    # -- reading -------------------------------------------------------------------
    @property
    def bytes_read(self) -> int:
        """How far into the file the reader is (for a progress bar)."""
        if self._binary is None or self._binary.closed:
            return self.size
        return min(self._binary.tell(), self.size)

    def rows(self) -> Iterator[RawRow]:
        """Every data row, streamed. Blank lines are skipped; line numbers are the file's."""
        self._hashing = _HashingReader(self.path.open("rb", buffering=0))
        with io.BufferedReader(self._hashing) as binary:
            self._binary = binary
            # Bytes that are not UTF-8 become U+FFFD: that row is refused by its checks
            # rather than the whole run dying half-way.
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
            if self.format == "csv":
                yield from self._csv_rows(text)
            else:
                yield from self._jsonl_rows(text)

    def sha256(self) -> str:
        """The SHA-256 of the file's bytes (hex). ``rows()`` hashes them as it reads; only
        what it has not read (a run stopped early, or no rows read) is read here."""
        digest = self._hashing.digest.copy() if self._hashing else hashlib.sha256()
        with self.path.open("rb") as fh:
            fh.seek(self._hashing.count if self._hashing else 0)
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _csv_rows(self, text: io.TextIOWrapper) -> Iterator[RawRow]:
        reader = csv.reader(text, self._dialect)
        next(reader, None)  # the header, checked in __init__
        columns = self.columns
        width = len(columns)
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield RawRow(start, error=f"unreadable CSV row: {exc}")
                continue
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            fields = {c: v for c, v in zip(columns, values, strict=False) if c}
            if len(values) > width:
                yield RawRow(start, fields, f"{len(values)} fields but the header has {width}")
            else:
                yield RawRow(start, fields)

    def _jsonl_rows(self, text: io.TextIOWrapper) -> Iterator[RawRow]:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield RawRow(number, error=f"not valid JSON: {exc.args[0][:80]}")
                continue
            if not isinstance(obj, dict):
                yield RawRow(number, error="not a JSON object")
                continue
            yield RawRow(number, {_normalise(str(k)): v for k, v in obj.items()})

    # -- rows to job specs ---------------------------------------------------------
    def to_spec(self, row: RawRow, lane: str) -> JobSpec:
        """The job a row asks for (shape only: columns, types, metadata); raise RowError."""
        if row.error:
            raise RowError(row.error)
        values: dict[str, str | None] = {}
        for name in (*REQUIRED, "validate_data", "region"):
            raw = row.fields.get(name)
            if raw is None:
                if name in REQUIRED:
                    raise RowError(f"missing column {name}")
                values[name] = None
            elif isinstance(raw, str):
                values[name] = raw.strip()
            elif isinstance(raw, int) and not isinstance(raw, bool):
                values[name] = str(raw)
            else:
                raise RowError(f"{name}: expected text, got {type(raw).__name__}")
            if name in REQUIRED and not values[name]:
                raise RowError(f"missing value for {name}")
        return JobSpec(
            idempotency_key=values["key"] or "",
            photo=self._source(values["photo"] or ""),
            video=self._source(values["video"] or ""),
            liveness_type=values["liveness_type"] or "",
            validate_data=values["validate_data"],
            lane=lane,
            metadata=self._metadata(row.fields),
            region=values["region"] or None,
        )

    def _source(self, source: str) -> str:
        if is_remote(source):
            return source
        # Workers may run elsewhere in the tree: keep an absolute path.
        path = Path(source).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)

    def _metadata(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        meta: dict[str, Any] = {}
        raw = fields.get("metadata")
        if isinstance(raw, str) and raw.strip():
            try:
                raw = json.loads(raw)
            except ValueError:
                raise RowError("metadata: not valid JSON") from None
        if isinstance(raw, dict):
            meta.update(raw)
        elif raw not in (None, ""):
            raise RowError("metadata: must be a JSON object")
        for name, value in fields.items():
            if name and name not in REQUIRED and name not in OPTIONAL:
                meta[name] = value
        return meta or None


def check_row(spec: JobSpec, bucket: str | None, settings: Settings | None = None) -> JobSpec:
    """Every free check of one job (``submit.validate_spec``, preflight included: see
    ``spec.refusal``) plus the COS bucket rule."""
    try:
        spec = validate_spec(spec, settings)
        if spec.region is not None and settings is not None \
                and spec.region != settings.faceid_region:
            # A job of another region: its own bucket (COS_BUCKETS).
            bucket, name = settings.buckets.get(spec.region), f"the bucket of {spec.region}"
        else:
            name = "COS_BUCKET"
        for kind, source in (("photo", spec.photo), ("video", spec.video)):
            if source.startswith("cos://"):
                src_bucket, _ = parse_cos_uri(source)
                if bucket is not None and src_bucket != bucket:
                    # The worker would refuse it too (storage.MediaStager); say so now.
                    raise RowError(
                        f"{kind} {source}: bucket {src_bucket!r} is not {name} ({bucket}); "
                        "FaceID downloads only from the bucket in its region"
                    )
    except (SubmitError, MediaError) as exc:
        raise RowError(str(exc)) from None
    return spec


class Report:
    """The per-row error report: a CSV of row, key, reason, written as rows are refused."""

    HEADER = ("row", "key", "reason")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._fh = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(self.HEADER)

    def add(self, line: int, key: str, reason: str) -> None:
        self._writer.writerow((line, key, reason))
        self.count += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_report_path(manifest: str | Path) -> Path:
    """``<manifest stem>.errors.csv`` next to the manifest."""
    path = Path(manifest)
    return path.with_name(f"{path.stem}.errors.csv")
