"""Preflight: predict, from the media's own metadata, what the API would refuse and charge for.

A call that FaceID answers with ``FailedOperation.SilentTooShort`` is paid for like a pass.
Reading a container's header costs well under a millisecond (``python -m bench.preflight``),
so local files are read before the job is stored: PyAV (libavformat) for the video's
duration and streams — it reads MP4, AVI and FLV, the API's three containers — and
``imagesize`` for a photo's pixel size from its header.

The rules are data: name → predicted code, default action. ``PREFLIGHT_RULES`` overrides
actions ("lip_duration=warn,photo_too_small=off"). A finding of a rule set to ``refuse``
stores the job as ``refused`` with the predicted code, and nothing is sent or called; a
``warn`` finding is kept in ``Job.preflight`` and the job runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceid_batch.stage.media import NAME_ALIASES, sniff
from faceid_batch.stage.preflight_rules import ACTIONS, RULES, Check, parse_rules

__all__ = ["ACTIONS", "RULES", "Check", "Findings", "check", "parse_rules"]

if TYPE_CHECKING:
    from faceid_batch.settings import Settings

# The API's own floor ("Please capture a video longer than 2 seconds").
MIN_VIDEO_SECONDS = 2.0


def rule_actions(settings: Settings) -> dict[str, str]:
    """Every rule's action: its default, overridden by PREFLIGHT_RULES."""
    return {name: rule.default for name, rule in RULES.items()} | parse_rules(
        settings.preflight_rules)


# -- reading metadata --------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFacts:
    """What the container says; ``error`` when it could not be read."""

    duration: float | None = None
    audio: bool = False
    video: bool = False
    width: int | None = None
    height: int | None = None
    error: str | None = None


def read_video(path: str | os.PathLike[str]) -> VideoFacts:
    """Duration and streams of a video from its container headers (PyAV)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams
            duration = container.duration / 1_000_000 if container.duration else None
            if duration is None:
                spans = [float(s.duration * s.time_base) for s in streams
                         if s.duration and s.time_base]
                duration = max(spans) if spans else None
            first = streams.video[0] if streams.video else None
            return VideoFacts(
                duration=duration, audio=bool(streams.audio), video=first is not None,
                width=first.codec_context.width or None if first else None,
                height=first.codec_context.height or None if first else None,
            )
    except Exception as exc:  # noqa: BLE001 - any file a producer sends is read here
        # A container crafted to break the reader (a stream PyAV gives no codec context,
        # say) is a video we cannot read, never an error of the worker.
        return VideoFacts(error=f"{type(exc).__name__}: {exc}"[:200])


def read_photo_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) from a JPEG/PNG header, or None if the header does not say."""
    import imagesize

    try:
        width, height = imagesize.get(str(path))
    except Exception:  # noqa: BLE001 - as read_video: a hostile header is an unreadable one
        return None
    return (width, height) if width > 0 and height > 0 else None


# -- the rules ---------------------------------------------------------------------------
@dataclass
class Findings:
    """The findings of one job: each {"rule", "code", "action", "detail"}."""

    items: list[dict[str, Any]]

    @property
    def refusal(self) -> dict[str, Any] | None:
        """The first finding whose rule refuses, or None if the job may run."""
        return next((f for f in self.items if f["action"] == "refuse"), None)

    def stored(self) -> list[dict[str, Any]] | None:
        """What goes in ``Job.preflight`` (NULL when nothing was found)."""
        return list(self.items) or None


def _content_format(path: str) -> str | None:
    with open(path, "rb") as fh:
        return sniff(fh.read(16))


def check(settings: Settings, liveness_type: str, photo: str | None,
          video: str | None, names: dict[str, str] | None = None) -> Findings:
    """Run every rule that is not off on the local files given (None: not checked here).

    The files have passed ``media.peek_local`` (exist, accepted format, size). ``names``
    gives, per kind, the name to judge the extension by and to show, when the file read is
    a temporary copy of a remote source (the worker's staging).
    """
    actions = rule_actions(settings)
    items: list[dict[str, Any]] = []
    names = names or {}

    def find(rule: str, detail: str, kind: str = "video") -> None:
        if actions[rule] == "off":
            return
        spec = RULES[rule]
        code = spec.photo_code if kind == "photo" and spec.photo_code else spec.code
        items.append({"rule": rule, "code": code, "action": actions[rule], "detail": detail})

    for kind, path in (("photo", photo), ("video", video)):
        if path is None:
            continue
        name = names.get(kind, path)
        suffix = Path(name.split("?", 1)[0]).suffix
        named = NAME_ALIASES.get(suffix.lower())
        fmt = _content_format(path)
        if named is not None and fmt is not None and named != fmt:
            find("format_mismatch", f"{kind} {name}: named {suffix} but the "
                                    f"content is {fmt.upper()}", kind)
    if video is not None:
        video_name = names.get("video", video)
    if photo is not None:
        photo_name = names.get("photo", photo)

    if video is not None and _wants_video(actions):
        facts = read_video(video)
        if facts.error is not None or facts.duration is None:
            find("video_unreadable", f"video {video_name}: "
                 + (facts.error or "the container gives no duration"))
        else:
            seconds = facts.duration
            if seconds < MIN_VIDEO_SECONDS:
                find("video_too_short", f"video {video_name}: {seconds:.2f} s, the API needs "
                                        f"more than {MIN_VIDEO_SECONDS:g} s")
            if liveness_type == "LIP" and not facts.audio:
                find("lip_no_audio", f"video {video_name}: no audio stream; LIP needs the "
                                     "spoken code")
            low, high = settings.preflight_lip_min_seconds, settings.preflight_lip_max_seconds
            if liveness_type == "LIP" and not low <= seconds <= high:
                find("lip_duration", f"video {video_name}: {seconds:.2f} s, LIP expects about "
                                     f"6 s ({low:g}-{high:g} s)")

    if photo is not None and actions["photo_too_small"] != "off":
        size = read_photo_size(photo)
        floor = settings.preflight_photo_min_side
        if size is not None and min(size) < floor:
            find("photo_too_small", f"photo {photo_name}: {size[0]}x{size[1]} px, the shorter "
                                    f"side is under {floor} px", "photo")
    return Findings(items)


def _wants_video(actions: dict[str, str]) -> bool:
    video_rules = ("video_unreadable", "video_too_short", "lip_no_audio", "lip_duration")
    return any(actions[r] != "off" for r in video_rules)


def describe(finding: dict[str, Any]) -> str:
    """One line for a report or an error message."""
    return f"preflight {finding['action']}: {finding['code']} ({finding['detail']})"
