"""Stage media in the COS bucket of the FaceID region with cos-python-sdk-v5.

Objects are content-addressed (``<prefix><md5><ext>``): uploading a file again only writes
the same bytes under the same key. A video is checked for (HEAD) before upload only when the
caller knows it was staged before (a retry); small files are uploaded without a check.
FaceID gets short-lived presigned GET URLs; those URLs are never stored or logged (they
carry a signature).

A producer's http(s) source is fetched through the egress policy (egress.py): checked
addresses only, bounded in bytes and in time (SOURCE_FETCH_SECONDS), and at most a share
of the process's threads waiting on producers' servers at once (EGRESS_SHARE), so sources
that hang
cannot take the threads sign-ups need. A source that fails says why with a Local.* code
(``SourceError``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from faceid_batch.call.clock import bucket_endpoint, endpoint_clock
from faceid_batch.call.httpenv import environ_proxies, pinned_session
from faceid_batch.egress import Egress, EgressError, EgressRefused, Policy
from faceid_batch.settings import Settings
from faceid_batch.stage import ledger
from faceid_batch.stage.cos_signing import ClockedAdapter, presigned_url
from faceid_batch.stage.media import (
    CHUNK,
    EXTENSIONS,
    PHOTO_FORMATS,
    VIDEO_FORMATS,
    MediaError,
    MediaInfo,
    file_md5,
    inspect_local,
    max_raw_size,
    peek_local,
)

log = logging.getLogger(__name__)
UPLOAD_READ = 1024 * 1024
# Below this size a PUT costs about what the HEAD that could save it costs (the SDK's request
# work dominates, not the bytes), so small files (ID photos) are uploaded without a check.
CHECK_EXISTING_FROM = 1024 * 1024
# The SDK logs full request URLs and headers at INFO/DEBUG (they carry signatures), and a
# WARNING for every expected 404 of the HEAD that checks whether an object is there.
logging.getLogger("qcloud_cos").setLevel(logging.ERROR)


SOURCE_REFUSED = "Local.SourceRefused"
SOURCE_UNAVAILABLE = "Local.SourceUnavailable"
SOURCE_TIMEOUT = "Local.SourceTimeout"


class SourceError(Exception):
    """A producer's source could not be fetched; ``code`` names the cause. ``final``: the
    same fetch would be refused again (the egress policy), so it is not retried."""

    def __init__(self, code: str, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.final = final


class SourcesBusy(Exception):
    """Every fetch slot of this process is taken: the job waits in the schedule."""


@dataclass(frozen=True)
class StagedMedia:
    """One file in the bucket, ready to be presigned."""

    key: str
    info: MediaInfo
    uploaded: bool  # False when the object was already there
    ledger_id: int | None = None  # its use in media_objects (None: not an object of ours)


def make_cos_client(settings: Settings, pool_size: int = 32,
                    region: str | None = None) -> CosS3Client:
    """One COS client per process and region (None: FACEID_REGION); the SDK's session is
    pooled and thread-safe."""
    secret_id, secret_key, token = settings.cos_credentials
    region = region or settings.faceid_region
    endpoint = cos_endpoint(settings, region)
    config = CosConfig(
        Region=region,
        SecretId=secret_id,
        SecretKey=secret_key,
        Token=token,
        Scheme=settings.cos_scheme,
        Domain=settings.domains.get(region),
        Timeout=60,
        PoolConnections=4,
        PoolMaxSize=pool_size,
        Proxies=environ_proxies(endpoint) or None,
    )
    # Our own pooled session instead of the SDK's built-in one, so that requests does not
    # read the environment again on every upload (see httpenv).
    session = pinned_session(endpoint)
    # It signs the SDK's requests on the bucket endpoint's clock (stage/cos_signing.py).
    adapter = ClockedAdapter(endpoint_clock(bucket_endpoint(endpoint)), secret_key,
                             pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return CosS3Client(config, retry=2, session=session)


def cos_endpoint(settings: Settings, region: str | None = None) -> str:
    """The base URL of the COS endpoint of ``region``'s bucket (None: FACEID_REGION)."""
    region = region or settings.faceid_region
    domain = settings.domains.get(region) or (
        f"{settings.buckets.get(region, '')}.cos.{region}.myqcloud.com")
    return f"{settings.cos_scheme}://{domain}/"


def parse_cos_uri(source: str) -> tuple[str, str]:
    """Split ``cos://bucket/key`` into (bucket, key)."""
    rest = source[len("cos://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise MediaError(f"{source}: expected cos://BUCKET/KEY")
    return bucket, key


class MediaStager:
    """Reads a job's sources, checks them, uploads them to the bucket of one region
    (``region``, None: FACEID_REGION; COS_BUCKETS) and presigns GET URLs."""

    def __init__(self, settings: Settings, client: CosS3Client | None = None,
                 egress: Egress | None = None,
                 slots: threading.BoundedSemaphore | None = None,
                 region: str | None = None) -> None:
        self.settings = settings
        self.region = region or settings.faceid_region
        self.bucket = settings.buckets.get(self.region, "")
        self.client = client or make_cos_client(settings, region=self.region)
        # The bucket endpoint's clock (call/clock.py), learned from the client's answers.
        self.clock = endpoint_clock(bucket_endpoint(cos_endpoint(settings, self.region)))
        # Producers' URLs (and best frames): through the egress policy only.
        self.egress = egress or Egress(Policy(settings.egress_networks))
        # Shared with the callbacks' deliveries (Resources.egress_slots); none: no bound.
        self._fetching = slots or threading.BoundedSemaphore(1_000_000)

    # -- reading sources -------------------------------------------------------
    @contextmanager
    def _local_copy(self, kind: str, source: str) -> Iterator[str]:
        """A local path for ``source``; remote sources are streamed to a temp file."""
        if source.startswith(("http://", "https://")):
            yield from self._download_http(kind, source)
        elif source.startswith("cos://"):
            yield from self._download_cos(kind, source)
        else:
            yield source

    def _tmpfile(self) -> tuple[int, str]:
        return tempfile.mkstemp(prefix="faceid-media-")

    def _download_http(self, kind: str, url: str) -> Iterator[str]:
        if not self._fetching.acquire(blocking=False):
            raise SourcesBusy(kind)
        label = f"{kind} {display_source(url)}"
        fd, path = self._tmpfile()
        try:
            try:
                with os.fdopen(fd, "wb") as out, self.egress.get(
                        url, max_bytes=max_raw_size(kind),
                        timeout=self.settings.source_fetch_seconds) as r:
                    if r.status != 200:
                        raise SourceError(SOURCE_UNAVAILABLE, f"{label}: HTTP {r.status}")
                    for chunk in r.iter_bytes(CHUNK):
                        out.write(chunk)
            except EgressRefused as exc:
                # What the policy refused, never what is there.
                raise SourceError(SOURCE_REFUSED, f"{label}: refused by the egress policy: "
                                  f"{exc}", final=True) from None
            except EgressError as exc:
                if exc.kind == "too-large":
                    raise MediaError(f"{label}: larger than the API limit") from None
                code = SOURCE_TIMEOUT if exc.kind == "timeout" else SOURCE_UNAVAILABLE
                raise SourceError(code, f"{label}: {exc}") from None
            finally:
                self._fetching.release()
            yield path
        finally:
            os.unlink(path)

    def _download_cos(self, kind: str, source: str) -> Iterator[str]:
        bucket, key = parse_cos_uri(source)
        if bucket != self.bucket:
            raise MediaError(
                f"{kind} {source}: bucket {bucket!r} is not "
                + ("COS_BUCKET" if self.region == self.settings.faceid_region
                   else f"the bucket of {self.region} (COS_BUCKETS)")
                + "; FaceID downloads only from the bucket in its region"
            )
        fd, path = self._tmpfile()
        os.close(fd)
        try:
            try:
                resp = self.client.get_object(Bucket=bucket, Key=key)
            except CosServiceError as exc:
                raise MediaError(f"{kind} {source}: {exc.get_error_code()}") from None
            with open(path, "wb") as out:
                shutil.copyfileobj(resp["Body"].get_raw_stream(), out, CHUNK)
            yield path
        finally:
            os.unlink(path)

    # -- staging -----------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except CosServiceError as exc:
            if exc.get_status_code() == 404:
                return False
            raise

    def stage(self, kind: str, source: str, known_md5: str | None = None,
              inspect: Callable[[str], None] | None = None,
              check_existing: bool = True, job_id: int | None = None) -> StagedMedia:
        """Check and upload one file for ``job_id`` (None: a job not stored yet); raise
        MediaError. Every object written or reused is on the ledger first (ledger.py).

        ``known_md5`` is the MD5 computed when the job was submitted: with it a file already
        in the bucket is not read again, and an upload is checked against it on the way.
        ``inspect`` is called with the local copy's path before anything is uploaded (the
        worker's preflight of remote sources). With ``check_existing`` a file of at least
        CHECK_EXISTING_FROM bytes already in the bucket is not uploaded again; without it
        (a selfie video on its job's first attempt is new: the HEAD would only miss) the
        file is uploaded straight away.
        """
        label = display_source(source)
        self.hear_from_bucket()
        if source.startswith("cos://") and known_md5 is not None:
            ours = self.submitted(kind, source, known_md5)
            if ours is not None:
                return ours
        with self._local_copy(kind, source) as path:
            if inspect is not None:
                inspect(path)
            if source.startswith("cos://"):
                # Already in the bucket: FaceID can read it where it is.
                info = inspect_local(kind, path, label=label)
                return StagedMedia(parse_cos_uri(source)[1], info, uploaded=False)
            if known_md5 is None:
                info = inspect_local(kind, path, label=label)
            else:
                info = peek_local(kind, path, known_md5, label=label)
            key = self.content_key(info.md5, info.fmt)
            # On the ledger before it is in the bucket: the purge can always find it.
            used = ledger.record(self.settings.database_url, self.bucket, key, job_id)
            if check_existing and (info.size or 0) >= CHECK_EXISTING_FROM and self.exists(key):
                return StagedMedia(key, info, uploaded=False, ledger_id=used)
            sent_md5 = self._upload(path, key, hash_locally=known_md5 is None)
            if sent_md5 != info.md5:
                # The file changed after it was checked: the object is not what its key says.
                self.delete(key)
                raise MediaError(f"{kind} {label}: file changed after it was submitted "
                                 f"(MD5 {sent_md5}, expected {info.md5})")
            return StagedMedia(key, info, uploaded=True, ledger_id=used)

    def submitted(self, kind: str, source: str, md5: str) -> StagedMedia | None:
        """The object the producer API put in the bucket for a job, or None if ``source`` is
        not one: its key is ``<COS_KEY_PREFIX><md5><ext>`` of our bucket, its content was
        hashed, sniffed, size-checked and preflighted on the way in, and the store checked
        its MD5 (the ETag). Nothing is read again."""
        bucket, key = parse_cos_uri(source)
        if bucket != self.bucket:
            return None
        for fmt in PHOTO_FORMATS if kind == "photo" else VIDEO_FORMATS:
            if key == self.content_key(md5, fmt):
                return StagedMedia(key, MediaInfo(kind, fmt, None, md5), uploaded=False)
        return None

    def content_key(self, md5: str, fmt: str) -> str:
        """The object key of a file with this MD5 and format (content-addressed)."""
        return f"{self.settings.cos_key_prefix}{md5}{EXTENSIONS[fmt]}"

    def _upload(self, path: str, key: str, hash_locally: bool) -> str:
        """Simple PUT (media are at most 8 MB); return the MD5 of what the store received.

        COS answers a simple PUT with ETag = the MD5 of the object, so a file whose MD5 was
        taken at submit is checked by the store's ETag and not hashed again here.
        """
        with open(path, "rb") as fh:
            reader = _HashingReader(fh, hashing=hash_locally)
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=reader)
        etag = str(resp.get("ETag", "")).strip('"').lower()
        if hash_locally or not _MD5_HEX.match(etag):
            return reader.hexdigest() if hash_locally else file_md5(path)
        return etag

    def hear_from_bucket(self) -> None:
        """Make sure the bucket endpoint has answered this process once, so its clock is
        known before a URL is presigned (a job whose media are in the bucket already makes
        no other request to it): one HEAD of the bucket, whatever it answers, the first time
        only; the process's other threads wait for that answer."""
        with self.clock.first_answer(timeout=10.0):
            if self.clock.answered:  # this process has heard from it (or just did)
                return
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except (CosServiceError, CosClientError) as exc:
                # Refused or not reached: the answer's Date was read all the same, if any.
                log.info("COS: the first HEAD of the bucket: %s", type(exc).__name__)

    def presign(self, key: str) -> str:
        """A GET URL FaceID can download for PRESIGN_EXPIRY_SECONDS, on COS's clock (signed
        here: the SDK signs only on this host's). Never store it."""
        self.hear_from_bucket()
        secret_id, secret_key, _token = self.settings.cos_credentials
        return presigned_url(
            base_url=cos_endpoint(self.settings, self.region), key=key, secret_id=secret_id,
            secret_key=secret_key, now=self.clock.now(),
            expires=self.settings.presign_expiry_seconds)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class EveryBucket:
    """Deletes an object from the bucket of every region (COS_BUCKETS): the purge's way to
    reach a content-addressed object whichever region's jobs staged it (a key no job uses
    any more is no one's in any bucket; deleting a missing object is not an error)."""

    def __init__(self, settings: Settings, first: MediaStager | None = None) -> None:
        self.settings = settings
        self._stagers = {} if first is None else {first.region: first}

    def delete(self, key: str) -> None:
        for region in self.settings.buckets:
            stager = self._stagers.get(region)
            if stager is None:
                stager = self._stagers[region] = MediaStager(self.settings, region=region)
            stager.delete(key)


class _HashingReader:
    """A file for upload bodies: 1 MiB reads instead of http.client's 8 KiB blocks (far
    fewer system calls per 5 MB video), hashing what is sent on the way."""

    mode = "rb"  # requests checks it to warn about text-mode files

    def __init__(self, fh: BinaryIO, hashing: bool = True) -> None:
        self._fh = fh
        self._hashing = hashing
        self._md5 = hashlib.md5()

    def read(self, size: int | None = -1) -> bytes:
        chunk = self._fh.read(-1 if size is None or size < 0 else max(size, UPLOAD_READ))
        if self._hashing:
            self._md5.update(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self._md5 = hashlib.md5()  # the SDK rewinds before a retry
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


def display_source(source: str) -> str:
    """A source as shown or stored: never with its query string (it may hold a signature)."""
    return source.split("?", 1)[0]
