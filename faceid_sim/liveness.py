"""The simulated VideoLivenessCompare engine: parameter checks, scripts, media and verdict.

Runs after the gateway checks (signature, action, version, region, account, rate limit) have
let a call through; decides the code, where it travels (Result or Error) and the verdict.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from faceid_sim.codes import SUCCESS, description, is_failed_operation
from faceid_sim.control import ScriptItem, Simulator
from faceid_sim.media import MediaError, check_photo, check_video, content_verdict, download

REQUIRED = ("ImageUrl", "ImageMd5", "VideoUrl", "VideoMd5", "LivenessType")
OPTIONAL = ("ValidateData",)
LIVENESS_TYPES = ("LIP", "ACTION", "SILENT")
_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
_LIP_RE = re.compile(r"^[0-9]{4}$")
# The API documents exactly two action sequences.
ACTION_SEQUENCES = ("1,2", "2,1")


@dataclass(frozen=True)
class ParamError(Exception):
    """The request's parameters are wrong: answered in an error envelope, not charged."""

    code: str
    message: str


@dataclass
class Outcome:
    """What one call answers."""

    code: str
    channel: str  # "result" or "error"
    message: str  # Description (result channel) or Error.Message (error channel)
    sim: float
    best_frame: dict[str, Any] | None
    scripted: bool
    engine: bool = True  # False when the gateway refused the call before the engine ran

    @property
    def charged(self) -> bool:
        """The engine produced a verdict (Success or FailedOperation.*): a billable call."""
        return self.engine and (self.code == SUCCESS or is_failed_operation(self.code))


def validate_params(params: dict[str, Any]) -> None:
    """Check VideoLivenessCompare's own parameters or raise ParamError."""
    for name in params:
        if name not in REQUIRED and name not in OPTIONAL:
            raise ParamError("UnknownParameter", f"The parameter `{name}` is not recognized.")
    for name in REQUIRED:
        if params.get(name) in (None, ""):
            raise ParamError(
                "MissingParameter", f"The request is missing a required parameter `{name}`."
            )
    for name, value in params.items():
        if value is not None and not isinstance(value, str):
            raise ParamError("InvalidParameter", f"The parameter `{name}` must be a String.")
    for name in ("ImageMd5", "VideoMd5"):
        if not _MD5_RE.match(params[name]):
            raise ParamError(
                "InvalidParameterValue", f"`{name}` must be a 32-character hex MD5 checksum."
            )
    liveness = params["LivenessType"]
    if liveness not in LIVENESS_TYPES:
        raise ParamError(
            "InvalidParameterValue", "`LivenessType` must be one of LIP, ACTION, SILENT."
        )
    data = params.get("ValidateData") or ""
    if liveness == "LIP" and not _LIP_RE.match(data):
        raise ParamError("InvalidParameterValue", "`ValidateData` must be a 4-digit code for LIP.")
    if liveness == "ACTION" and data not in ACTION_SEQUENCES:
        raise ParamError(
            "InvalidParameterValue", '`ValidateData` must be "1,2" or "2,1" for ACTION.'
        )
    if liveness == "SILENT" and data:
        raise ParamError("InvalidParameterValue", "`ValidateData` must be empty for SILENT.")


def default_sim(image_md5: str, video_md5: str) -> float:
    """Deterministic similarity in [75, 99) derived from the two checksums."""
    digest = hashlib.sha256(f"{image_md5.lower()}:{video_md5.lower()}".encode()).hexdigest()
    return 75.0 + (int(digest[:8], 16) % 2400) / 100.0


def _failure(sim: Simulator, code: str, item: ScriptItem | None, detail: str | None) -> Outcome:
    channel = sim.channel_for(code, item.channel if item else None)
    text = item.description if item and item.description else None
    if text is None:
        # Result.Description carries Tencent's table text; an Error.Message may be specific.
        text = description(code) if channel == "result" or detail is None else detail
    return Outcome(code, channel, text, 0.0, None, scripted=item is not None)


def _media_verdict(
    sim: Simulator, params: dict[str, Any], request_id: str, item: ScriptItem | None
) -> Outcome:
    budget = float(sim.knob("download_timeout"))
    remote = bool(sim.knob("allow_remote_downloads"))
    try:
        photo = download(params["ImageUrl"], "ImageUrl", budget, sim.frames.root, remote)
    except MediaError as exc:
        return _failure(sim, exc.code, item, exc.message)
    try:
        fmt = check_photo(photo, params["ImageMd5"])
        # Its moov box is kept: the engine reads the container's duration and tracks there.
        video = download(params["VideoUrl"], "VideoUrl", budget, None, remote, keep_moov=True)
        video_fmt = check_video(video, params["VideoMd5"])
        assert photo.path is not None
        if item is None:  # a scripted answer is the script's, whatever the media say
            refusal = content_verdict(photo.path, video.data, video_fmt,
                                      params["LivenessType"])
            if refusal is not None:
                raise refusal
    except MediaError as exc:
        if photo.path:
            os.unlink(photo.path)
        return _failure(sim, exc.code, item, exc.message)
    best_frame = None
    assert photo.path is not None
    if item is None or item.best_frame:
        name = sim.frames.add(request_id, photo.path, photo.md5, fmt)
        best_frame = {
            "Url": f"{sim.frame_base_url}/_sim/frames/{name}",
            "MD5": photo.md5,
            "Size": photo.size,
        }
    else:
        os.unlink(photo.path)
    score = (
        item.sim
        if item and item.sim is not None
        else default_sim(params["ImageMd5"], params["VideoMd5"])
    )
    text = item.description if item and item.description else description(SUCCESS)
    return Outcome(SUCCESS, "result", text, round(score, 2), best_frame, item is not None)


def evaluate(sim: Simulator, params: dict[str, Any], request_id: str) -> Outcome:
    """Decide a validated call: scripted answer, random error, or the real media pipeline.

    A scripted failure skips the downloads; a scripted Success still downloads and checks the
    media so that its BestFrame is a real, downloadable file.
    """
    item = sim.take_script(params["VideoMd5"])
    started = time.monotonic()
    if item is not None and item.code != SUCCESS:
        outcome = _failure(sim, item.code, item, None)
    elif item is None and (random_code := sim.draw_random_error()) is not None:
        outcome = _failure(sim, random_code, None, None)
    else:
        outcome = _media_verdict(sim, params, request_id, item)
    delay = item.latency if item is not None and item.latency is not None else None
    if delay is None:
        delay = sim.sample_latency()
    # The latency knob models engine time, so downloads already spent count towards it.
    remaining = delay - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    return outcome
