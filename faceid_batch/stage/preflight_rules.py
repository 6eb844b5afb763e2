"""The preflight rules as data (name -> predicted code, default action) and the parser of
PREFLIGHT_RULES. Apart from preflight.py so that settings can check PREFLIGHT_RULES without
importing what reads settings."""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("refuse", "warn", "off")


@dataclass(frozen=True)
class Check:
    """One prediction: the code the API would answer, and what we do by default."""

    code: str
    default: str
    what: str
    photo_code: str | None = None  # when the rule also applies to the photo


RULES: dict[str, Check] = {
    "format_mismatch": Check(
        "FailedOperation.LipVideoInvalid", "refuse",
        "the file's content is another container than its name says",
        photo_code="Local.PhotoFormatMismatch"),
    "video_unreadable": Check(
        "FailedOperation.LipVideoInvalid", "warn",
        "the video's container metadata cannot be read"),
    "video_too_short": Check(
        "FailedOperation.SilentTooShort", "refuse", "the video is shorter than 2 s"),
    "lip_no_audio": Check(
        "FailedOperation.LipVoiceDetect", "refuse", "a LIP video has no audio stream"),
    "lip_duration": Check(
        "FailedOperation.LipSizeError", "refuse",
        "a LIP video is far from the ~6 s the API expects "
        "(PREFLIGHT_LIP_MIN_SECONDS..PREFLIGHT_LIP_MAX_SECONDS)"),
    "photo_too_small": Check(
        "FailedOperation.LifePhotoPoorQuality", "refuse",
        "the photo's shorter side is below PREFLIGHT_PHOTO_MIN_SIDE pixels"),
}


def parse_rules(text: str | None) -> dict[str, str]:
    """``"rule=action,..."`` → {rule: action}; ValueError naming the bad part."""
    actions: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, action = (s.strip() for s in part.partition("="))
        if not sep or name not in RULES:
            raise ValueError(f"{part.strip()!r}: expected rule=action with rule one of "
                             + ", ".join(RULES))
        if action not in ACTIONS:
            raise ValueError(f"{part.strip()!r}: action must be one of {', '.join(ACTIONS)}")
        actions[name] = action
    return actions
