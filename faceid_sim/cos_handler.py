"""HTTP handler of the simulated COS bucket (state lives in ``cos_store.CosStore``)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from faceid_sim.cos_objects import ObjectMeta, StoreError
from faceid_sim.cos_sign import CosAuthError, CosRequest, verify_cos_request
from faceid_sim.cos_store import CosStore
from faceid_sim.cos_xml import (
    error_xml,
    list_bucket_xml,
    list_parts_xml,
    list_uploads_xml,
    parse_complete,
    parse_delete,
    xml_body,
)
from faceid_sim.httpbase import SimHandler, SimHTTPServer

CHUNK = 256 * 1024
MAX_XML_BODY = 4 * 1024 * 1024
XML = "application/xml"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single "bytes=" range; None if unsatisfiable/unsupported."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first_s, _, last_s = spec.strip().partition("-")
    try:
        if first_s == "":
            length = int(last_s)
            if length <= 0:
                return None
            return max(size - length, 0), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)


class CosHandler(SimHandler):
    """Request handler; ``store`` is bound by ``make_server``."""

    store: CosStore
    server_version = "tencent-cos"

    def clock(self) -> float:
        return self.store.now()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # --- plumbing -------------------------------------------------------------------------
    def _headers_with_id(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"x-cos-request-id": self._request_id}
        headers.update(extra or {})
        return headers

    def _reply(self, status: int, body: bytes = b"", extra: dict[str, str] | None = None) -> None:
        self.send_bytes(status, body, XML, self._headers_with_id(extra))

    def _error(self, status: int, code: str, message: str) -> None:
        resource = f"{self.headers.get('Host', '')}{self._raw_path}"
        body = error_xml(code, message, resource, self._request_id, uuid.uuid4().hex)
        self._reply(status, body)

    def _dispatch(self) -> None:
        self._request_id = base64.b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        parts = urlsplit(self.path)
        self._raw_path = parts.path
        path = unquote(parts.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if path.startswith("/_cos/"):
            self._control(path)
            return
        try:
            verify_cos_request(
                CosRequest(self.command, path, query, self.headers),
                self.store.secrets,
                self.store.token_accepted,
                now=self.store.now(),
            )
        except CosAuthError as exc:
            self.store.count(self.command, auth_failed=True)
            self._error(exc.status, exc.code, exc.message)
            return
        self._query = dict(query)
        try:
            self._route(path)
        except StoreError as exc:
            self._error(exc.status, exc.code, exc.message)
        except (ValueError, KeyError) as exc:
            # Malformed numeric/query arguments from the client, not a simulator fault.
            self._error(400, "InvalidArgument", f"Invalid request argument: {exc}")

    def _control(self, path: str) -> None:
        method = self.command
        if path == "/_cos/stats" and method == "GET":
            self.send_json(200, self.store.stats())
        elif path == "/_cos/reset" and method == "POST":
            self.store.reset()
            self.send_json(200, {"ok": True})
        elif path == "/_cos/config" and method in ("GET", "POST"):
            try:
                changes = (
                    json.loads(self.read_body(1024 * 1024) or b"{}") if method == "POST" else {}
                )
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self.send_json(200, self.store.configure(**changes))
            except (ValueError, TypeError) as exc:
                self.send_json(400, {"error": str(exc)})
        else:
            self.send_json(404, {"error": f"no control endpoint {method} {path}"})

    def _route(self, path: str) -> None:
        q, method = self._query, self.command
        if path == "/":
            if method == "GET" and "uploads" in q:
                return self._list_uploads()
            if method == "GET":
                return self._list_objects()
            if method == "POST" and "delete" in q:
                return self._delete_many()
            if method == "HEAD":
                self.store.count(method, "HeadBucket")
                return self._reply(200)
            raise StoreError("MethodNotAllowed", "Unsupported bucket operation.", 405)
        key = path[1:]
        if method == "PUT" and "partNumber" in q and "uploadId" in q:
            return self._put_part(key)
        if method == "PUT":
            if self.headers.get("x-cos-copy-source"):
                raise StoreError("NotImplemented", "Copy is not simulated.", 501)
            return self._put_object(key)
        if method == "GET" and "uploadId" in q:
            return self._list_parts(key)
        if method in ("GET", "HEAD"):
            return self._get_object(key, head=method == "HEAD")
        if method == "DELETE" and "uploadId" in q:
            self.store.count(method, "AbortMultipartUpload")
            self.store.objects.abort(q["uploadId"], key)
            return self._reply(204)
        if method == "DELETE":
            self.store.count(method, "DeleteObject")
            self.store.objects.delete(key)
            return self._reply(204)
        if method == "POST" and "uploads" in q:
            return self._initiate(key)
        if method == "POST" and "uploadId" in q:
            return self._complete(key)
        raise StoreError("MethodNotAllowed", "Unsupported object operation.", 405)

    def _require_length(self) -> int:
        length = self.content_length()
        if length is None:
            # Chunked uploads are not simulated; the SDK always sends a length.
            self.close_connection = True
            raise StoreError("MissingContentLength", "Content-Length is required.", 411)
        return length

    def _user_meta(self) -> dict[str, str]:
        return {
            k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-cos-meta-")
        }

    def _mark_body(self, exc: StoreError, body_started: bool) -> None:
        # A short body leaves the stream unusable; an unread one is drained before answering.
        if exc.code == "IncompleteBody":
            self.close_connection = True
        elif not body_started:
            self._body_consumed = False

    # --- objects --------------------------------------------------------------------------
    def _put_object(self, key: str) -> None:
        self.store.count("PUT", "PutObject")
        length = self._require_length()
        self._body_consumed = True
        try:
            info = self.store.objects.put(
                key,
                self.rfile,
                length,
                self.headers.get("Content-Type") or "application/octet-stream",
                self._user_meta(),
                self.headers.get("Content-MD5"),
            )
        except StoreError as exc:
            self._mark_body(exc, body_started=True)
            raise
        self.store.add_bytes(inbound=length)
        self._reply(200, extra={"ETag": info.etag})

    def _object_headers(self, info: ObjectMeta) -> dict[str, str]:
        headers = {
            "ETag": info.etag,
            "Last-Modified": formatdate(info.last_modified, usegmt=True),
            "Accept-Ranges": "bytes",
            "x-cos-storage-class": "STANDARD",
        }
        headers.update(info.meta)
        return self._headers_with_id(headers)

    def _get_object(self, key: str, head: bool) -> None:
        self.store.count(self.command, "HeadObject" if head else "GetObject")
        opened = self.store.objects.open(key)
        if opened is None:
            if head:
                # HEAD answers carry no body, even for errors (the SDK maps 404 itself).
                return self._reply(404)
            raise StoreError("NoSuchKey", "The specified key does not exist.", 404)
        info, fh = opened
        with fh:
            status, first, last = 200, 0, info.size - 1
            headers = self._object_headers(info)
            rng = self.headers.get("Range")
            if rng and not head and info.size > 0:
                parsed = parse_range(rng, info.size)
                if parsed is None:
                    raise StoreError("InvalidRange", "The requested range is not satisfiable.", 416)
                status, (first, last) = 206, parsed
                headers["Content-Range"] = f"bytes {first}-{last}/{info.size}"
            if not head and (delay := self.store.get_delay_for(key)) > 0:
                time.sleep(delay)
            length = max(last - first + 1, 0)
            self.send_response(status)
            self.send_header("Content-Type", info.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if head:
                return
            self.wfile.flush()
            # sendfile: the kernel copies the object to the socket, without the GIL (this
            # process also runs the API, whose arrival times must not be delayed).
            sent = self.connection.sendfile(fh, first, length) if length else 0
            self.store.add_bytes(outbound=sent)

    def _list_objects(self) -> None:
        self.store.count("GET", "GetBucket")
        q = self._query
        prefix, marker = q.get("prefix", ""), q.get("marker", "")
        max_keys = int(q.get("max-keys") or 1000)
        page, truncated = self.store.objects.list(prefix, marker, max_keys)
        url_enc = q.get("encoding-type") == "url"
        body = list_bucket_xml(
            self.store.bucket, prefix, marker, max_keys, page, truncated, url_enc
        )
        self._reply(200, body)

    def _delete_many(self) -> None:
        self.store.count("POST", "DeleteMultipleObjects")
        raw = self.read_body(MAX_XML_BODY)
        if raw is None:
            raise StoreError("EntityTooLarge", "Delete request body is too large.")
        md5_b64 = self.headers.get("Content-MD5")
        if md5_b64 and base64.b64encode(hashlib.md5(raw).digest()).decode() != md5_b64.strip():
            raise StoreError("BadDigest", "The Content-MD5 you specified did not match.")
        keys, quiet = parse_delete(raw)
        for key in keys:
            self.store.objects.delete(key)
        deleted: list[tuple[str, Any]] = [("Deleted", [("Key", k)]) for k in keys]
        self._reply(200, xml_body("DeleteResult", [] if quiet else deleted))

    # --- multipart ------------------------------------------------------------------------
    def _initiate(self, key: str) -> None:
        self.store.count("POST", "InitiateMultipartUpload")
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        upload = self.store.objects.initiate(key, content_type, self._user_meta())
        body = xml_body(
            "InitiateMultipartUploadResult",
            [("Bucket", self.store.bucket), ("Key", key), ("UploadId", upload.upload_id)],
        )
        self._reply(200, body)

    def _put_part(self, key: str) -> None:
        self.store.count("PUT", "UploadPart")
        try:
            number = int(self._query["partNumber"])
        except ValueError:
            raise StoreError("InvalidArgument", "partNumber must be an integer.") from None
        length = self._require_length()
        self._body_consumed = True
        try:
            etag = self.store.objects.put_part(
                self._query["uploadId"], key, number, self.rfile, length
            )
        except StoreError as exc:
            # put_part validates the upload and number before it reads anything.
            self._mark_body(exc, body_started=exc.code == "IncompleteBody")
            raise
        self.store.add_bytes(inbound=length)
        self._reply(200, extra={"ETag": etag})

    def _complete(self, key: str) -> None:
        self.store.count("POST", "CompleteMultipartUpload")
        raw = self.read_body(MAX_XML_BODY)
        if raw is None:
            raise StoreError("EntityTooLarge", "CompleteMultipartUpload body is too large.")
        info = self.store.objects.complete(self._query["uploadId"], key, parse_complete(raw))
        body = xml_body(
            "CompleteMultipartUploadResult",
            [
                ("Location", f"{self.headers.get('Host', '')}/{key}"),
                ("Bucket", self.store.bucket),
                ("Key", key),
                ("ETag", info.etag),
            ],
        )
        self._reply(200, body)

    def _list_parts(self, key: str) -> None:
        self.store.count("GET", "ListParts")
        q = self._query
        marker = int(q.get("part-number-marker") or 0)
        max_parts = int(q.get("max-parts") or 1000)
        parts = [p for p in self.store.objects.list_parts(q["uploadId"], key) if p.number > marker]
        body = list_parts_xml(
            self.store.bucket,
            key,
            q["uploadId"],
            marker,
            max_parts,
            parts[:max_parts],
            len(parts) > max_parts,
            q.get("encoding-type") == "url",
        )
        self._reply(200, body)

    def _list_uploads(self) -> None:
        self.store.count("GET", "ListMultipartUploads")
        q = self._query
        prefix = q.get("prefix", "")
        body = list_uploads_xml(
            self.store.bucket,
            prefix,
            q.get("max-uploads") or "1000",
            self.store.objects.list_uploads(prefix),
            q.get("encoding-type") == "url",
        )
        self._reply(200, body)


def make_server(store: CosStore, host: str, port: int) -> SimHTTPServer:
    """A server bound to (host, port) serving ``store``."""
    handler = type("BoundCosHandler", (CosHandler,), {"store": store})
    return SimHTTPServer((host, port), handler)
