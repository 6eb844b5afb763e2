"""The producer API app: create a verification, read its status and outcome.

    POST /v1/verifications          multipart (files photo, video) or JSON (photo_url,
                                    video_url); Idempotency-Key; Prefer: wait=N
    GET  /v1/verifications/{id}     status and, once final, outcome
    GET  /v1/verifications?key=K    the same, by idempotency key
    GET  /openapi.json              OpenAPI 3.1 of these routes and of the webhook payload

Every route needs ``Authorization: Bearer <token>``: a ``submit`` token sees only the
verifications it created; an ``admin`` token sees all. Every error is a problem detail.
A new submission is checked in this order, and nothing is stored or charged before the
last step: the token; the body as it streams (size, format, field names); the fields; the
idempotency key (a known key with the same content answers that job, with other content
409); the lane's admission (429); preflight (422 with the predicted FaceID code); the media
put in COS, content-addressed; the job stored and, on the onboarding lane, sent at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from faceid_batch.admin import tokens
from faceid_batch.admin.app import create_app as admin_app
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import (
    JobSpec,
    SubmitError,
    check_callback,
    check_key,
    check_lane,
    check_source_url,
    submit,
    validate_liveness,
)
from faceid_batch.models import Lane
from faceid_batch.producer import resource
from faceid_batch.producer.admission import Admission, retry_after
from faceid_batch.producer.problems import KINDS, MEDIA_TYPE, SCHEMA, Problem
from faceid_batch.producer.uploads import FIELD_LIMIT, Form, read_form
from faceid_batch.settings import Settings
from faceid_batch.stage import ledger, preflight
from faceid_batch.stage.media import MediaError
from faceid_batch.stage.storage import MediaStager

log = logging.getLogger(__name__)

MAX_WAIT = 30  # seconds a client may ask to wait for the outcome (Prefer: wait=N)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.I)
JSON_LIMIT = 64 * 1024
NO_STORE = {"Cache-Control": "no-store"}
BODY_IDLE_SECONDS = 10.0  # the longest wait between two chunks of a body


def prefer_wait(header: str | None) -> int | None:
    """N of ``Prefer: wait=N`` (RFC 7240), capped at MAX_WAIT; None if not asked."""
    match = _PREFER_WAIT.search(header or "")
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    # Any number of digits is a number: more than a few is simply more than MAX_WAIT.
    return MAX_WAIT if len(digits) > 4 else min(int(digits), MAX_WAIT)


@dataclass
class Places:
    """The admission places a request holds (admission.py): given back when the request
    ends without storing a job, kept once it stored one."""

    lanes: list[str] = field(default_factory=list)
    stored: bool = False


async def within(chunks: AsyncIterator[bytes], seconds: float,
                 idle: float = BODY_IDLE_SECONDS) -> AsyncIterator[bytes]:
    """The request body's chunks, as long as the whole body arrives within ``seconds``
    (API_BODY_TIMEOUT_SECONDS) and no wait between two chunks is longer than ``idle``: a
    client that stalls does not hold its connection, its upload slot and its temporary
    file for long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    source = chunks.__aiter__()
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(source.__anext__(), timeout=min(left, idle))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise Problem("request-timeout", f"the body did not arrive within {seconds:g} s "
                          f"(API_BODY_TIMEOUT_SECONDS), or stalled for {idle:g} s; nothing "
                          "was stored") from None
        yield chunk


class Producer:
    """What the routes share: settings, the token check, storage, admission."""

    def __init__(self, settings: Settings) -> None:
        settings.require_api()
        self.settings = settings
        token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
        self.tokens = tokens.Authenticator(settings.database_url, token or None)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.admission = Admission(settings, self.redis)
        self.uploads = 0  # multipart uploads in progress (API_MAX_UPLOADS)
        self._stager: MediaStager | None = None

    @property
    def stager(self) -> MediaStager:
        if self._stager is None:
            self._stager = MediaStager(self.settings)
        return self._stager

    def who(self, request: Request) -> tokens.Principal:
        header = request.headers.get("authorization") or ""
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        principal = self.tokens.principal(presented or None)
        if principal is None:
            raise Problem("unauthorized", "missing, wrong or revoked token",
                          headers={"WWW-Authenticate": "Bearer"})
        if principal.scope not in (tokens.SUBMIT, tokens.ADMIN):
            raise Problem("forbidden", f"scope {principal.scope!r} cannot use this API")
        return principal

    # -- one new submission ----------------------------------------------------------------
    def content_source(self, md5: str, fmt: str) -> str:
        """Where an upload is kept: content-addressed in the bucket, as staging keeps it."""
        return f"cos://{self.settings.cos_bucket}/{self.stager.content_key(md5, fmt)}"

    def known(self, key: str, who: tokens.Principal) -> tuple[Any, Any] | None:
        with session_scope(self.settings.database_url) as session:
            found = resource.load(session, key=key)
        if found is not None and not visible(found[0], who):
            # Keys are per deployment: another producer's key is not this one's to reuse.
            raise Problem("idempotency-key-reused", "this idempotency key belongs to "
                          "another token's verification", "key")
        return found

    def admit(self, lane: str, places: Places) -> None:
        """Take a place in ``lane``'s line for this request, or refuse it (429)."""
        if lane in places.lanes:
            return
        wait = self.admission.check(lane)
        if wait is not None:
            raise Problem(
                "too-many-requests",
                f"the {lane} lane's backlog is longer than the budget answers in "
                f"{self.admission.max_wait(lane):g} s; come back in {retry_after(wait)} s "
                "with the same idempotency key", extra={"retry_after": int(retry_after(wait))},
                headers={"Retry-After": retry_after(wait)})
        places.lanes.append(lane)

    def give_back(self, places: Places) -> None:
        if not places.stored:
            for lane in places.lanes:
                self.admission.release(lane)
        places.lanes.clear()


def strict_json(text: str | bytes | bytearray) -> Any:
    """JSON as the RFC has it: NaN and Infinity (which Python would take, and could not
    write back as JSON) are refused."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def check_cos_source(settings: Settings, kind: str, url: str, who: tokens.Principal) -> None:
    """A ``cos://`` source a producer may name: in COS_BUCKET, a plain key, and (for a
    submit token) not one of the objects this product wrote, whose faces belong to other
    verifications."""
    field = f"{kind}_url"
    prefix = f"cos://{settings.cos_bucket}/"
    if not url.startswith(prefix):
        raise Problem("invalid-field", f"{field}: the bucket must be COS_BUCKET "
                      f"({settings.cos_bucket}): FaceID downloads only from the bucket in its "
                      "region", field)
    key = url[len(prefix):]
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise Problem("invalid-field", f"{field}: not a plain object key", field)
    if not who.is_admin and settings.cos_key_prefix and key.startswith(settings.cos_key_prefix):
        raise Problem("invalid-field", f"{field}: objects under {settings.cos_key_prefix} are "
                      "this service's own; upload the file instead", field)


def visible(job: Any, who: tokens.Principal) -> bool:
    return who.is_admin or (job.submitted_by is not None and job.submitted_by == who.token_id)


def _fields_of(values: dict[str, Any], header_key: str | None) -> dict[str, Any]:
    """The submission's fields checked: liveness rules, key, lane, callback, metadata."""
    key = values.get("key") or None
    if key is not None and not isinstance(key, str):
        raise Problem("invalid-field", "key: must be a string", "key")
    if header_key and key and header_key != key:
        raise Problem("invalid-field", "the Idempotency-Key header and the key field differ",
                      "key")
    key = header_key or key
    if not key:
        raise Problem("invalid-field", "an idempotency key is required: the Idempotency-Key "
                      "header or the key field", "key")
    lane = values.get("lane") or Lane.ONBOARDING.value
    try:
        check_key(key)
        check_lane(lane)
    except SubmitError as exc:
        raise Problem.invalid(exc) from None
    liveness = values.get("liveness_type")
    if not isinstance(liveness, str) or not liveness:
        raise Problem("invalid-field", "liveness_type is required: LIP, ACTION or SILENT",
                      "liveness_type")
    validate = values.get("validate_data")
    if validate is not None and not isinstance(validate, str):
        raise Problem("invalid-field", "validate_data: must be a string", "validate_data")
    try:
        validate = validate_liveness(liveness, validate)
    except SubmitError as exc:
        raise Problem.invalid(exc) from None
    metadata = values.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = strict_json(metadata) if metadata.strip() else None
        except (ValueError, RecursionError):
            raise Problem("invalid-field", "metadata: not JSON", "metadata") from None
    if metadata is not None and not isinstance(metadata, dict):
        raise Problem("invalid-field", "metadata: must be a JSON object", "metadata")
    callback = values.get("callback_url") or None
    if callback is not None and not isinstance(callback, str):
        raise Problem("invalid-field", "callback_url: must be a string", "callback_url")
    return {"key": key, "lane": lane, "liveness_type": liveness, "validate_data": validate,
            "metadata": metadata, "callback_url": callback}


def create_app(settings: Settings, with_admin: bool = False) -> FastAPI:
    """Build the producer API (and, with ``with_admin``, the admin routes beside it)."""
    p = Producer(settings)
    app = FastAPI(
        title="faceid-batch producer API",
        version="1",
        summary="Submit identity verifications (an ID photo and a selfie video) to Tencent "
                "Cloud FaceID VideoLivenessCompare through faceid-batch, and read their "
                "outcome.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.producer = p

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return exc.response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {401: "unauthorized", 403: "forbidden", 404: "not-found",
                405: "method-not-allowed", 415: "unsupported-media-type",
                }.get(exc.status_code, "malformed-request")
        problem = Problem(kind, str(exc.detail))
        body = problem.body(request.url.path)
        body["status"] = exc.status_code
        return JSONResponse(body, status_code=exc.status_code, media_type=MEDIA_TYPE)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Whatever went wrong, the client gets a problem detail, never a plain-text 500;
        # the exception is logged by the server (with its traceback).
        return Problem("internal-error", "the request could not be completed; nothing was "
                       "stored, retry with the same idempotency key"
                       ).response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body")]
        return Problem("invalid-field", first.get("msg", "invalid request"),
                       where[-1] if where else None).response(request.url.path)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(openapi(app))

    @app.get("/problems/{kind}", include_in_schema=False, response_class=PlainTextResponse)
    def problem_page(kind: str) -> str:
        if kind not in KINDS:
            raise Problem("not-found", f"no problem type {kind!r}")
        status, title, meaning = KINDS[kind]
        return f"{status} {title}\n\n{meaning}\n"

    @app.post("/v1/verifications", openapi_extra=CREATE_OPENAPI, tags=["verifications"],
              summary="Create a verification", response_model=None)
    async def create(request: Request) -> Response:
        who = await run_in_threadpool(p.who, request)
        wait = prefer_wait(request.headers.get("prefer"))
        header_key = request.headers.get("idempotency-key") or None
        ctype = request.headers.get("content-type", "")
        places = Places()
        try:
            if ctype.startswith("multipart/form-data"):
                if p.uploads >= settings.api_max_uploads:
                    raise Problem("unavailable", f"uploads in progress: {p.uploads}, the "
                                  "most this server takes at once (API_MAX_UPLOADS); retry "
                                  "in a moment with the same idempotency key",
                                  headers={"Retry-After": "1"})
                p.uploads += 1
                try:
                    with tempfile.TemporaryDirectory(prefix="faceid-upload-") as workdir:
                        return await _create_multipart(request, who, wait, header_key,
                                                       Path(workdir), places)
                finally:
                    p.uploads -= 1
            if ctype.split(";")[0].strip() == "application/json":
                return await _create_json(request, who, wait, header_key, places)
            raise Problem("unsupported-media-type", f"Content-Type {ctype or '(none)'!r}: "
                          "send multipart/form-data (files photo, video) or "
                          "application/json (photo_url, video_url)")
        finally:
            # An admitted request that stored no job gives its place in line back.
            if places.lanes and not places.stored:
                await run_in_threadpool(p.give_back, places)

    async def _create_multipart(request: Request, who: tokens.Principal, wait: int | None,
                                header_key: str | None, workdir: Path,
                                places: Places) -> Response:
        # The admission check runs when the first file starts: a refused submission is
        # answered before its media are read. Fields sent after the files are checked after.
        def before_files(fields: dict[str, str]) -> None:
            key = header_key or fields.get("key")
            lane = fields.get("lane") or Lane.ONBOARDING.value
            if key and lane in (Lane.ONBOARDING.value, Lane.BACKFILL.value) \
                    and p.known(key, who) is None:
                p.admit(lane, places)

        try:
            length = int(request.headers["content-length"]) \
                if "content-length" in request.headers else None
        except ValueError:
            raise Problem("malformed-request", "Content-Length is not a number") from None
        try:
            form = await read_form(within(request.stream(), settings.api_body_timeout_seconds),
                                   request.headers["content-type"], length, workdir,
                                   before_files)
        except ClientDisconnect:
            log.info("a client went away mid-upload: nothing was stored")
            return Response(status_code=400)
        return await _submit_upload(form, who, wait, header_key, places)

    async def _submit_upload(form: Form, who: tokens.Principal, wait: int | None,
                             header_key: str | None, places: Places) -> Response:
        f = _fields_of(form.fields, header_key)
        photo, video = form.files["photo"], form.files["video"]
        sources = {kind: p.content_source(up.md5, up.fmt)
                   for kind, up in (("photo", photo), ("video", video))}
        mine, repeat = await _known(f, sources["photo"], sources["video"], who, wait)
        if repeat is not None:
            return repeat
        await run_in_threadpool(p.admit, f["lane"], places)
        findings = await run_in_threadpool(
            preflight.check, settings, f["liveness_type"], str(photo.path), str(video.path),
            {"photo": photo.filename, "video": video.filename})
        refusal = findings.refusal
        if refusal is not None:
            # Every finding's detail starts with the kind of file it is about.
            field = "photo" if refusal["detail"].startswith("photo") else "video"
            raise Problem("preflight-refused", preflight.describe(refusal), field,
                          extra={"code": refusal["code"], "rule": refusal["rule"]})
        written: list[int] = []
        try:
            for up in (photo, video):
                staged = await run_in_threadpool(p.stager.stage, up.kind, str(up.path), up.md5,
                                                 None, False)
                if staged.ledger_id is not None:
                    written.append(staged.ledger_id)
                if f"cos://{settings.cos_bucket}/{staged.key}" != sources[up.kind]:
                    raise RuntimeError(f"{up.kind} staged under {staged.key}, not its "
                                       "content address")
        except MediaError as exc:
            raise Problem("invalid-field", str(exc), None) from None
        except (CosClientError, CosServiceError, OSError) as exc:
            raise Problem("unavailable", f"the media store: {type(exc).__name__}") from None
        spec = _spec(f, sources["photo"], sources["video"], who, photo_md5=photo.md5,
                     video_md5=video.md5, preflight=findings.stored())
        return await _store(spec, who, mine, wait, places, written)

    async def _create_json(request: Request, who: tokens.Principal, wait: int | None,
                           header_key: str | None, places: Places) -> Response:
        raw = bytearray()
        async for chunk in within(request.stream(), settings.api_body_timeout_seconds):
            raw += chunk
            if len(raw) > JSON_LIMIT:
                raise Problem("payload-too-large", f"a JSON body is at most {JSON_LIMIT:,} "
                              "bytes (send files as multipart/form-data)")
        try:
            values = strict_json(raw)
        except (ValueError, RecursionError):
            raise Problem("malformed-request", "the body is not JSON (or nests too deep)"
                          ) from None
        if not isinstance(values, dict):
            raise Problem("malformed-request", "the body must be a JSON object")
        unknown = set(values) - {"photo_url", "video_url", "liveness_type", "validate_data",
                                 "key", "lane", "callback_url", "metadata"}
        if unknown:
            name = sorted(unknown)[0]
            raise Problem("invalid-field", f"{name}: not a field of this request", name)
        f = _fields_of(values, header_key)
        urls = {}
        for kind in ("photo", "video"):
            url = values.get(f"{kind}_url")
            if not isinstance(url, str) or not url.startswith(("https://", "cos://")):
                raise Problem("invalid-field", f"{kind}_url: an https:// URL or "
                              "cos://bucket/key is required", f"{kind}_url")
            if "?" in url or "#" in url:
                # A query string may carry a signature; we never keep one.
                raise Problem("invalid-field", f"{kind}_url: URLs with a query string are "
                              "not accepted", f"{kind}_url")
            if url.startswith("cos://"):
                check_cos_source(settings, kind, url, who)
            if url.startswith("https://"):
                try:
                    await run_in_threadpool(check_source_url, settings, kind, url)
                except SubmitError as exc:
                    raise Problem("invalid-field", str(exc), f"{kind}_url") from None
            urls[kind] = url
        mine, repeat = await _known(f, urls["photo"], urls["video"], who, wait)
        if repeat is not None:
            return repeat
        await run_in_threadpool(p.admit, f["lane"], places)
        return await _store(_spec(f, urls["photo"], urls["video"], who), who, mine, wait,
                            places)

    async def _known(f: dict[str, Any], photo: str, video: str, who: tokens.Principal,
                     wait: int | None) -> tuple[tuple[Any, ...], Response | None]:
        """The submission's fingerprint, and the answer if its key is known already. The
        callback URL is checked (and normalised, as it is stored) first."""
        try:
            f["callback_url"] = await run_in_threadpool(check_callback, settings,
                                                        f["callback_url"])
        except SubmitError as exc:
            raise Problem.invalid(exc) from None
        mine = resource.fingerprint(photo, video, f["liveness_type"], f["validate_data"],
                                    f["lane"], f["callback_url"], f["metadata"])
        return mine, await _repeat(f["key"], who, mine, wait)

    def _spec(f: dict[str, Any], photo: str, video: str, who: tokens.Principal,
              **checked: Any) -> JobSpec:
        return JobSpec(idempotency_key=f["key"], photo=photo, video=video,
                       liveness_type=f["liveness_type"], validate_data=f["validate_data"],
                       lane=f["lane"], callback_url=f["callback_url"],
                       metadata=f["metadata"], submitted_by=who.token_id or None, **checked)

    async def _repeat(key: str, who: tokens.Principal, mine: tuple[Any, ...],
                      wait: int | None) -> Response | None:
        """The answer to a key already known: the same job for the same content, else 409."""
        found = await run_in_threadpool(p.known, key, who)
        if found is None:
            return None
        job, _ = found
        if resource.fingerprint_of(job) != mine:
            raise Problem("idempotency-key-reused", f"verification {job.id} has this key and "
                          "other content; a retry must send the same request", "key",
                          extra={"verification": f"/v1/verifications/{job.id}"})
        return await _answer(job.id, who, wait, created=False)

    async def _store(spec: JobSpec, who: tokens.Principal, mine: tuple[Any, ...],
                     wait: int | None, places: Places, written: list[int] | None = None
                     ) -> Response:
        try:
            job_id, created = await run_in_threadpool(submit, settings, spec, "http")
            if created and written:
                # The uploads' ledger rows name their job; a request that stored none
                # leaves them to the purge (ledger.ORPHAN_GRACE).
                await run_in_threadpool(ledger.link, settings.database_url, written, job_id)
        except SubmitError as exc:
            raise Problem.invalid(exc) from None
        except DBAPIError as exc:
            raise Problem("unavailable", f"the database: {type(exc.orig).__name__}") from None
        places.stored = created
        if not created:
            # Another request with this key won the insert a moment ago.
            repeat = await _repeat(spec.idempotency_key, who, mine, wait)
            if repeat is not None:
                return repeat
        return await _answer(job_id, who, wait, created=True)

    async def _answer(job_id: int, who: tokens.Principal, wait: int | None,
                      created: bool) -> Response:
        body = await _wait_for(job_id, wait) if wait else await run_in_threadpool(_show, job_id)
        final = body["outcome"] is not None
        headers = {"Location": f"/v1/verifications/{job_id}", **NO_STORE}
        if wait:
            headers["Preference-Applied"] = f"wait={wait}"
        status = 200 if (final and wait) or not created else 202
        return JSONResponse(body, status_code=status, headers=headers)

    def _show(job_id: int) -> dict[str, Any]:
        with session_scope(settings.database_url) as session:
            found = resource.load(session, job_id=job_id)
            if found is None:
                raise Problem("not-found", f"no verification {job_id}")
            return resource.show(*found)

    async def _wait_for(job_id: int, seconds: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        pause = 0.05
        while True:
            body = await run_in_threadpool(_show, job_id)
            left = deadline - loop.time()
            if body["outcome"] is not None or left <= 0:
                return body
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, 0.25)

    @app.get("/v1/verifications/{job_id}", tags=["verifications"], response_model=None,
             summary="A verification's status and outcome", openapi_extra=READ_OPENAPI)
    def read(job_id: int, request: Request) -> Response:
        who = p.who(request)
        if not 0 < job_id < 2**63:  # no such id can exist, and the database would overflow
            raise Problem("not-found", f"no verification {job_id} for this token")
        with session_scope(settings.database_url) as session:
            found = resource.load(session, job_id=job_id)
            if found is None or not visible(found[0], who):
                raise Problem("not-found", f"no verification {job_id} for this token")
            body = resource.show(*found)
        return JSONResponse(body, headers=NO_STORE)

    @app.get("/v1/verifications", tags=["verifications"], response_model=None,
             summary="A verification by its idempotency key", openapi_extra=BY_KEY_OPENAPI)
    def by_key(request: Request, key: str | None = None) -> Response:
        who = p.who(request)
        if not key:
            raise Problem("invalid-field", "key: the idempotency key to look up is required",
                          "key")
        with session_scope(settings.database_url) as session:
            found = resource.load(session, key=key)
            if found is None or not visible(found[0], who):
                raise Problem("not-found", "no verification with this key for this token")
            body = resource.show(*found)
        return JSONResponse(body, headers=NO_STORE)

    app.webhooks.post("job.finished", summary="A verification ended",
                      openapi_extra=WEBHOOK_OPENAPI)(lambda: None)

    if with_admin:
        app.mount("/", admin_app(settings))
    return app


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document (also committed as docs/openapi.json)."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                      routes=app.routes, webhooks=app.webhooks.routes)
    doc.setdefault("components", {})
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A token from `faceid-batch token add NAME --scope submit` "
                                  "(or an admin token)."}}
    schemas = doc["components"].setdefault("schemas", {})
    schemas.update({"Verification": resource.SCHEMA, "Problem": SCHEMA,
                    "WebhookPayload": WEBHOOK_PAYLOAD})
    # FastAPI documents its own validation errors; ours are problem details (see
    # _invalid), so its JSON schema for them is dropped.
    for methods in doc.get("paths", {}).values():
        for operation in methods.values():
            content = operation.get("responses", {}).get("422", {}).get("content", {})
            if "HTTPValidationError" in json.dumps(content.get("application/json", {})):
                del content["application/json"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    doc["security"] = [{"bearer": []}]
    return doc


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": ", ".join(t for st, t, _ in KINDS.values() if st == s),
                     "content": {MEDIA_TYPE: {"schema": _ref("Problem")}}} for s in statuses}


_FIELDS_SCHEMA: dict[str, Any] = {
    "liveness_type": {"type": "string", "enum": ["LIP", "ACTION", "SILENT"]},
    "validate_data": {"type": "string", "description": "LIP: a 4-digit code; ACTION: an "
                                                       "action sequence such as 1,2; SILENT: "
                                                       "none."},
    "key": {"type": "string", "maxLength": 200,
            "description": "The idempotency key, if no Idempotency-Key header is sent."},
    "lane": {"type": "string", "enum": ["onboarding", "backfill"], "default": "onboarding"},
    "callback_url": {"type": "string", "format": "uri",
                     "description": "Where the outcome is POSTed, signed the Standard "
                                    "Webhooks way (see webhooks)."},
}
CREATE_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "Idempotency-Key", "in": "header", "required": False,
         "schema": {"type": "string", "maxLength": 200},
         "description": "One per verification (or the key field). The same key with the "
                        "same content answers the same verification (200); with other "
                        "content, 409."},
        {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
         "description": f"wait=N (N <= {MAX_WAIT}): answer 200 with the outcome if the "
                        "verification ends within N seconds, else 202."},
    ],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["photo", "video", "liveness_type"],
            "properties": {
                "photo": {"type": "string", "contentMediaType": "application/octet-stream",
                          "description": "JPG or PNG, at most 3 MB after Base64."},
                "video": {"type": "string", "contentMediaType": "application/octet-stream",
                          "description": "MP4, AVI or FLV, at most 8 MB after Base64."},
                **_FIELDS_SCHEMA,
                "metadata": {"type": "string", "maxLength": FIELD_LIMIT,
                             "description": "A JSON object, kept with the verification."},
            }}},
        "application/json": {"schema": {
            "type": "object", "required": ["photo_url", "video_url", "liveness_type"],
            "properties": {
                "photo_url": {"type": "string", "description": "https:// or cos://BUCKET/KEY "
                                                             "in COS_BUCKET"},
                "video_url": {"type": "string", "description": "https:// or cos://BUCKET/KEY "
                                                             "in COS_BUCKET"},
                **_FIELDS_SCHEMA,
                "metadata": {"type": "object"},
            }}},
    }},
    "responses": {
        "200": {"description": "A known key with the same content, or (Prefer: wait) the "
                               "outcome within the wait.",
                "content": {"application/json": {"schema": _ref("Verification")}}},
        "202": {"description": "Accepted: see Location for its status.",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": _ref("Verification")}}},
        **_problems(400, 401, 403, 408, 409, 413, 415, 422, 429, 500, 503),
    },
}
READ_OPENAPI: dict[str, Any] = {"responses": {
    "200": {"description": "The verification.",
            "content": {"application/json": {"schema": _ref("Verification")}}},
    **_problems(401, 404)}}
BY_KEY_OPENAPI: dict[str, Any] = {"responses": {
    "200": {"description": "The verification with this idempotency key.",
            "content": {"application/json": {"schema": _ref("Verification")}}},
    **_problems(401, 404, 422)}}
WEBHOOK_PAYLOAD: dict[str, Any] = {
    "type": "object",
    "description": "POSTed to callback_url when the verification ends. Headers webhook-id "
                   "(the same on every retry), webhook-timestamp and webhook-signature "
                   "(v1,<base64 HMAC-SHA256 of id.timestamp.body>, one per WEBHOOK_SECRET): "
                   "verify with any Standard Webhooks library.",
    "properties": {
        "event": {"type": "string", "const": "job.finished"},
        "timestamp": {"type": "integer", "description": "= webhook-timestamp"},
        "job_id": {"type": "integer"}, "key": {"type": "string"},
        "state": {"type": "string", "enum": resource.STATUSES},
        "passed": {"type": ["boolean", "null"]}, "result": {"type": ["string", "null"]},
        "sim": {"type": ["number", "null"]}, "description": {"type": ["string", "null"]},
        "request_id": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
        "lane": {"type": "string"}, "batch_id": {"type": ["integer", "null"]},
        "metadata": {"type": ["object", "null"]},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
WEBHOOK_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": _ref("WebhookPayload")}}},
    "responses": {"2XX": {"description": "Delivered. Anything else is retried with backoff "
                                         "(WEBHOOK_MAX_ATTEMPTS)."}},
}
