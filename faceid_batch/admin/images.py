"""Face images for the review page: the best frame from the database, the ID photo from COS.

The ID photo is fetched server-side through a presigned GET and streamed back; the presigned
URL never reaches the browser or a log. Each method calls ``record`` (the access audit) once
it has the image and before any byte of it is sent: no row, no image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain

import requests
from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from faceid_batch.admin import queries
from faceid_batch.settings import Settings, SettingsError
from faceid_batch.stage.storage import MediaStager

CHUNK = 64 * 1024


def sniff(head: bytes) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


class ImageSource:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stager: MediaStager | None = None
        self.http = requests.Session()

    def _media_stager(self) -> MediaStager:
        if self._stager is None:
            try:
                self._stager = MediaStager(self.settings)
            except SettingsError as exc:
                raise HTTPException(503, f"COS is not configured: {exc}") from None
        return self._stager

    def best_frame(self, url: str, job_id: int, record: Callable[[], None]) -> Response:
        content = queries.best_frame_bytes(url, job_id)
        if not content:
            raise HTTPException(404, "no best frame stored for this job")
        record()
        return Response(content, media_type=sniff(content[:16]))

    def id_photo(self, url: str, job_id: int, record: Callable[[], None]) -> Response:
        key = queries.photo_key(url, job_id)
        if not key:
            raise HTTPException(404, "no ID photo staged for this job")
        signed = self._media_stager().presign(key)
        try:
            upstream = self.http.get(signed, stream=True, timeout=(5, 30))
        except requests.RequestException:
            raise HTTPException(502, "could not fetch the ID photo from COS") from None
        if upstream.status_code != 200:
            upstream.close()
            raise HTTPException(404 if upstream.status_code == 404 else 502,
                                f"COS answered {upstream.status_code} for the ID photo")
        body = upstream.iter_content(CHUNK)
        try:
            first = next(body, b"")
            record()
        except BaseException:
            upstream.close()
            raise

        def stream() -> Iterator[bytes]:
            try:
                yield from chain([first], body)
            finally:
                upstream.close()

        return StreamingResponse(stream(), media_type=sniff(first[:16]))
