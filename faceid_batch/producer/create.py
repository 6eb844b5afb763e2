"""Creating a verification (``POST /v1/verifications``): one ``Creation`` per request.

A new submission is checked in this order, and nothing is stored or charged before the last
step: the token (routes); the body as it streams (size, format, field names); the fields
(``models.JsonSubmission``/``Fields``); the idempotency key (a known key with the same
content answers that job, with other content 409); the lane's admission (429); preflight
(422 with the predicted FaceID code); the media put in COS, content-addressed; the job
stored and, on the onboarding lane, sent at once.

Everything that may block (the database, Redis, COS, a name lookup) runs in the thread
pool; the event loop only reads the body and waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from sqlalchemy.exc import DBAPIError
from starlette.requests import ClientDisconnect

from faceid_batch.admin import tokens
from faceid_batch.intake.submit import (
    JobSpec,
    SubmitError,
    check_callback,
    check_key,
    check_region,
    check_source_url,
    submit,
    validate_liveness,
)
from faceid_batch.producer import resource
from faceid_batch.producer.models import Fields, JsonSubmission, invalid
from faceid_batch.producer.problems import Problem
from faceid_batch.producer.service import Places, Producer
from faceid_batch.producer.uploads import Form, UploadedFile, read_form
from faceid_batch.settings import Settings
from faceid_batch.stage import ledger, preflight
from faceid_batch.stage.media import MediaError
from faceid_batch.stage.storage import MediaStager

# The stagers of regions other than FACEID_REGION (COS_BUCKETS), one per producer app.
_STAGERS: dict[tuple[int, str], MediaStager] = {}
_STAGERS_LOCK = threading.Lock()
log = logging.getLogger(__name__)

JSON_LIMIT = 64 * 1024
NO_STORE = {"Cache-Control": "no-store"}
BODY_IDLE_SECONDS = 10.0  # the longest wait between two chunks of a body


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


def strict_json(text: str | bytes | bytearray) -> Any:
    """JSON as the RFC has it: NaN and Infinity (which Python would take, and could not
    write back as JSON) are refused."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def check_cos_source(settings: Settings, field: str, url: str, who: tokens.Principal,
                     region: str | None = None) -> None:
    """A ``cos://`` source a producer may name: in the bucket of the job's region
    (COS_BUCKET for FACEID_REGION), a plain key, and (for a submit token) not one of the
    objects this product wrote, whose faces belong to other verifications."""
    if region is None or region == settings.faceid_region:
        bucket, name = settings.cos_bucket, "COS_BUCKET"
    else:
        bucket, name = settings.buckets.get(region), f"the bucket of {region}"
    prefix = f"cos://{bucket}/"
    if not url.startswith(prefix):
        raise Problem("invalid-field", f"{field}: the bucket must be {name} "
                      f"({bucket}): FaceID downloads only from the bucket in its "
                      "region", field)
    key = url[len(prefix):]
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise Problem("invalid-field", f"{field}: not a plain object key", field)
    if not who.is_admin and settings.cos_key_prefix and key.startswith(settings.cos_key_prefix):
        raise Problem("invalid-field", f"{field}: objects under {settings.cos_key_prefix} are "
                      "this service's own; upload the file instead", field)


def checked(fields: Fields, header_key: str | None) -> Fields:
    """The fields once the rules pydantic does not know are checked: one idempotency key
    (header or field), its form, the liveness rules; ValidateData comes back cleaned."""
    if header_key and fields.key and header_key != fields.key:
        raise Problem("invalid-field", "the Idempotency-Key header and the key field differ",
                      "key")
    key = header_key or fields.key
    if not key:
        raise Problem("invalid-field", "an idempotency key is required: the Idempotency-Key "
                      "header or the key field", "key")
    try:
        check_key(key)
        validate = validate_liveness(fields.liveness_type, fields.validate_data)
    except SubmitError as exc:
        raise Problem.invalid(exc) from None
    return fields.model_copy(update={"key": key, "validate_data": validate})


class Creation:
    """One POST: who sends it, what it asks, and the admission places it holds."""

    def __init__(self, p: Producer, who: tokens.Principal, wait: int | None,
                 header_key: str | None) -> None:
        self.p = p
        self.settings = p.settings
        self.who = who
        self.wait = wait
        self.header_key = header_key
        self.places = Places(tenant=who.tenant)

    async def run(self, request: Request) -> Response:
        """Answer the POST; an admitted request that stored no job gives its place back."""
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("multipart/form-data"):
                return await self._multipart(request)
            if ctype.split(";")[0].strip() == "application/json":
                return await self._json(request)
            raise Problem("unsupported-media-type", f"Content-Type {ctype or '(none)'!r}: "
                          "send multipart/form-data (files photo, video) or "
                          "application/json (photo_url, video_url)")
        finally:
            if self.places.lanes and not self.places.stored:
                await run_in_threadpool(self.p.give_back, self.places)

    # -- multipart: the media as files ------------------------------------------------------
    async def _multipart(self, request: Request) -> Response:
        p = self.p
        if p.uploads >= self.settings.api_max_uploads:
            raise Problem("unavailable", f"uploads in progress: {p.uploads}, the most this "
                          "server takes at once (API_MAX_UPLOADS); retry in a moment with the "
                          "same idempotency key", headers={"Retry-After": "1"})
        p.uploads += 1
        try:
            with tempfile.TemporaryDirectory(prefix="faceid-upload-") as tmp:
                workdir = Path(tmp)
                try:
                    form = await read_form(
                        within(request.stream(), self.settings.api_body_timeout_seconds),
                        request.headers["content-type"], _length(request), workdir,
                        self._before_files)
                except ClientDisconnect:
                    log.info("a client went away mid-upload: nothing was stored")
                    return Response(status_code=400)
                return await self._upload(form)
        finally:
            p.uploads -= 1

    async def _before_files(self, fields: dict[str, str]) -> None:
        # The admission check runs when the first file starts: a refused submission is
        # answered before its media are read. Fields sent after the files are checked after.
        key = self.header_key or fields.get("key")
        lane = fields.get("lane") or "onboarding"
        if key and lane in ("onboarding", "backfill") \
                and await run_in_threadpool(self.p.known, key, self.who) is None:
            await run_in_threadpool(self.p.admit, lane, self.places)

    async def _upload(self, form: Form) -> Response:
        values: dict[str, Any] = dict(form.fields)
        if "metadata" in values:
            try:
                values["metadata"] = strict_json(values["metadata"]) \
                    if values["metadata"].strip() else None
            except (ValueError, RecursionError):
                raise Problem("invalid-field", "metadata: not JSON", "metadata") from None
        try:
            fields = checked(Fields.model_validate(values), self.header_key)
        except ValidationError as err:
            raise invalid(err) from None
        self._check_region(fields)
        photo, video = form.files["photo"], form.files["video"]
        stager = self._stager(fields.region)
        sources = {up.kind: f"cos://{stager.bucket}/{stager.content_key(up.md5, up.fmt)}"
                   for up in (photo, video)}
        fields, mine, repeat = await self._known(fields, sources["photo"], sources["video"])
        if repeat is not None:
            return repeat
        await run_in_threadpool(self.p.admit, fields.lane, self.places)
        findings = await run_in_threadpool(
            preflight.check, self.settings, fields.liveness_type, str(photo.path),
            str(video.path), {"photo": photo.filename, "video": video.filename})
        refusal = findings.refusal
        if refusal is not None:
            # Every finding's detail starts with the kind of file it is about.
            field = "photo" if refusal["detail"].startswith("photo") else "video"
            raise Problem("preflight-refused", preflight.describe(refusal), field,
                          extra={"code": refusal["code"], "rule": refusal["rule"]})
        written = [await self._stage(up, sources[up.kind], stager) for up in (photo, video)]
        spec = self._spec(fields, sources["photo"], sources["video"], photo_md5=photo.md5,
                          video_md5=video.md5, preflight=findings.stored())
        return await self._store(spec, mine, [w for w in written if w is not None])

    def _check_region(self, fields: Fields) -> None:
        """The job's region is served by an account, has a bucket and is one the token's
        tenant may use (422 otherwise), before anything is stored."""
        try:
            check_region(self.settings, fields.region, self.who.tenant)
        except SubmitError as exc:
            raise Problem.invalid(exc) from None

    def _stager(self, region: str | None) -> MediaStager:
        """The stager of the job's region's bucket (uploads stay in their region)."""
        if region is None or region == self.settings.faceid_region:
            return self.p.stager
        key = (id(self.p), region)
        with _STAGERS_LOCK:
            found = _STAGERS.get(key)
            if found is None:
                found = _STAGERS[key] = MediaStager(self.settings, region=region)
        return found

    async def _stage(self, up: UploadedFile, source: str,
                     stager: MediaStager) -> int | None:
        """Put one upload in COS under its content address; its ledger row's id."""
        try:
            staged = await run_in_threadpool(stager.stage, up.kind, str(up.path),
                                             up.md5, None, False)
        except MediaError as exc:
            raise Problem("invalid-field", str(exc), None) from None
        except (CosClientError, CosServiceError, OSError) as exc:
            raise Problem("unavailable", f"the media store: {type(exc).__name__}") from None
        if f"cos://{stager.bucket}/{staged.key}" != source:
            raise RuntimeError(f"{up.kind} staged under {staged.key}, not its content address")
        return staged.ledger_id

    # -- JSON: the media as URLs ------------------------------------------------------------
    async def _json(self, request: Request) -> Response:
        raw = bytearray()
        async for chunk in within(request.stream(), self.settings.api_body_timeout_seconds):
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
        try:
            body = JsonSubmission.model_validate(values)
        except ValidationError as err:
            raise invalid(err) from None
        fields = checked(body, self.header_key)
        self._check_region(fields)
        for field, url in (("photo_url", body.photo_url), ("video_url", body.video_url)):
            await self._check_url(field, url, fields.region)
        fields, mine, repeat = await self._known(fields, body.photo_url, body.video_url)
        if repeat is not None:
            return repeat
        await run_in_threadpool(self.p.admit, fields.lane, self.places)
        return await self._store(self._spec(fields, body.photo_url, body.video_url), mine)

    async def _check_url(self, field: str, url: str, region: str | None = None) -> None:
        if not url.startswith(("https://", "cos://")):
            raise Problem("invalid-field", f"{field}: an https:// URL or cos://bucket/key is "
                          "required", field)
        if "?" in url or "#" in url:
            # A query string may carry a signature; we never keep one.
            raise Problem("invalid-field", f"{field}: URLs with a query string are not "
                          "accepted", field)
        if url.startswith("cos://"):
            check_cos_source(self.settings, field, url, self.who, region)
            return
        try:
            await run_in_threadpool(check_source_url, self.settings, field.split("_")[0], url)
        except SubmitError as exc:
            raise Problem("invalid-field", str(exc), field) from None

    # -- both: the key, the store, the answer -----------------------------------------------
    async def _known(self, fields: Fields, photo: str, video: str
                     ) -> tuple[Fields, tuple[Any, ...], Response | None]:
        """The fields with the callback URL checked (and normalised, as it is stored), the
        submission's fingerprint, and the answer if its key is known already."""
        try:
            callback = await run_in_threadpool(check_callback, self.settings,
                                               fields.callback_url, self.who.tenant)
        except SubmitError as exc:
            raise Problem.invalid(exc) from None
        fields = fields.model_copy(update={"callback_url": callback})
        mine = resource.fingerprint(photo, video, fields.liveness_type, fields.validate_data,
                                    fields.lane, fields.callback_url, fields.metadata,
                                    fields.region or self.settings.faceid_region)
        return fields, mine, await self._repeat(self._key(fields), mine)

    def _key(self, fields: Fields) -> str:
        if fields.key is None:  # pragma: no cover - ``checked`` set it
            raise Problem("invalid-field", "an idempotency key is required", "key")
        return fields.key

    def _spec(self, fields: Fields, photo: str, video: str, **checked: Any) -> JobSpec:
        return JobSpec(idempotency_key=self._key(fields), photo=photo, video=video,
                       liveness_type=fields.liveness_type, validate_data=fields.validate_data,
                       lane=fields.lane, callback_url=fields.callback_url,
                       metadata=fields.metadata, submitted_by=self.who.token_id or None,
                       tenant_id=self.who.tenant, region=fields.region, **checked)

    async def _repeat(self, key: str, mine: tuple[Any, ...]) -> Response | None:
        """The answer to a key already known: the same job for the same content, else 409."""
        found = await run_in_threadpool(self.p.known, key, self.who)
        if found is None:
            return None
        job, _ = found
        if resource.fingerprint_of(job, self.settings.faceid_region) != mine:
            raise Problem("idempotency-key-reused", f"verification {job.id} has this key and "
                          "other content; a retry must send the same request", "key",
                          extra={"verification": f"/v1/verifications/{job.id}"})
        return await self._answer(job.id, created=False)

    async def _store(self, spec: JobSpec, mine: tuple[Any, ...],
                     written: list[int] | None = None) -> Response:
        try:
            job_id, created = await run_in_threadpool(submit, self.settings, spec, "http")
            if created and written:
                # The uploads' ledger rows name their job; a request that stored none
                # leaves them to the purge (ledger.ORPHAN_GRACE).
                await run_in_threadpool(ledger.link, self.settings.database_url, written,
                                        job_id)
        except SubmitError as exc:
            raise Problem.invalid(exc) from None
        except DBAPIError as exc:
            raise Problem("unavailable", f"the database: {type(exc.orig).__name__}") from None
        self.places.stored = created
        if not created:
            # Another request with this key won the insert a moment ago.
            repeat = await self._repeat(spec.idempotency_key, mine)
            if repeat is not None:
                return repeat
        return await self._answer(job_id, created=True)

    async def _answer(self, job_id: int, created: bool) -> Response:
        wait = self.wait
        body = await self._wait_for(job_id, wait) if wait else \
            await run_in_threadpool(self.p.show, job_id)
        final = body["outcome"] is not None
        headers = {"Location": f"/v1/verifications/{job_id}", **NO_STORE}
        if wait:
            headers["Preference-Applied"] = f"wait={wait}"
        status = 200 if (final and wait) or not created else 202
        return JSONResponse(body, status_code=status, headers=headers)

    async def _wait_for(self, job_id: int, seconds: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        pause = 0.05
        while True:
            body = await run_in_threadpool(self.p.show, job_id)
            left = deadline - loop.time()
            if body["outcome"] is not None or left <= 0:
                return body
            await asyncio.sleep(min(pause, left))
            # At most 0.1 s late with the answer: a sign-up waits on this, and one poll is a
            # primary-key read.
            pause = min(pause * 1.5, 0.1)


def _length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"]) \
            if "content-length" in request.headers else None
    except ValueError:
        raise Problem("malformed-request", "Content-Length is not a number") from None
