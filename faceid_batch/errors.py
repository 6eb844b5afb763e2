"""The FaceID error table: every known code mapped, in one place, to what we do about it.

Kinds:
- ``success``   the call answered ``Success``; the verdict depends on Sim and the threshold.
- ``verdict``   a final outcome about the person or the media (stored as the job's outcome).
- ``transient`` worth retrying with backoff; counts as an attempt.
- ``throttled`` the account's request rate was exceeded; retried without counting an attempt.
- ``request``   the request itself is wrong; final, never retried (it would fail the same way).
- ``account``   the account cannot call (arrears, not activated, bad key): stop spending,
                keep the job queued, do not mark it failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class Kind(StrEnum):
    SUCCESS = "success"
    VERDICT = "verdict"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    REQUEST = "request"
    ACCOUNT = "account"


@dataclass(frozen=True)
class Rule:
    kind: Kind
    why: str = ""

    @property
    def retry(self) -> bool:
        return self.kind in (Kind.TRANSIENT, Kind.THROTTLED)


_V, _T, _R, _A = Kind.VERDICT, Kind.TRANSIENT, Kind.REQUEST, Kind.ACCOUNT

# Exact codes. The FailedOperation.* rows are the seed's list, in its order.
EXACT: dict[str, Rule] = {
    "Success": Rule(Kind.SUCCESS),
    "FailedOperation.ActionCloseEye": Rule(_V, "no eye closing detected"),
    "FailedOperation.ActionFaceClose": Rule(_V, "face too close"),
    "FailedOperation.ActionFaceFar": Rule(_V, "face too far"),
    "FailedOperation.ActionFaceLeft": Rule(_V, "face too far left"),
    "FailedOperation.ActionFaceRight": Rule(_V, "face too far right"),
    "FailedOperation.ActionFirstAction": Rule(_V, "no movement detected"),
    "FailedOperation.ActionLightDark": Rule(_V, "lighting too dim"),
    "FailedOperation.ActionLightStrong": Rule(_V, "lighting too strong"),
    "FailedOperation.ActionNodetectFace": Rule(_V, "no full face"),
    "FailedOperation.ActionOpenMouth": Rule(_V, "no mouth opening detected"),
    "FailedOperation.CompareFail": Rule(_V, "comparison failed"),
    "FailedOperation.CompareLowSimilarity": Rule(_V, "similarity below the passing standard"),
    "FailedOperation.CompareSystemError": Rule(_T, "comparison engine error"),
    "FailedOperation.DownLoadError": Rule(_T, "FaceID could not download the media"),
    "FailedOperation.DownLoadTimeoutError": Rule(_T, "FaceID download timed out"),
    "FailedOperation.LifePhotoDetectFaces": Rule(_V, "multiple faces in the photo"),
    "FailedOperation.LifePhotoDetectFake": Rule(_V, "real person comparison failed"),
    "FailedOperation.LifePhotoDetectNoFaces": Rule(_V, "no full face in the photo"),
    "FailedOperation.LifePhotoPoorQuality": Rule(_V, "photo resolution too low"),
    "FailedOperation.LifePhotoSizeError": Rule(_V, "photo too large or too small"),
    "FailedOperation.LipFaceIncomplete": Rule(_V, "face not fully exposed"),
    "FailedOperation.LipMoveSmall": Rule(_V, "lip movement too small"),
    "FailedOperation.LipNetFailed": Rule(_T, "FaceID failed to pull the video"),
    "FailedOperation.LipSizeError": Rule(_V, "video empty or of the wrong size"),
    "FailedOperation.LipVideoInvalid": Rule(_V, "video format incorrect"),
    "FailedOperation.LipVideoQuaility": Rule(_V, "video definition too low"),
    "FailedOperation.LipVoiceDetect": Rule(_V, "no sound detected"),
    "FailedOperation.LipVoiceLow": Rule(_V, "volume too low"),
    "FailedOperation.LipVoiceRecognize": Rule(_V, "speech recognition failed"),
    "FailedOperation.LivessBestFrameError": Rule(_V, "no face for the comparison frame"),
    "FailedOperation.LivessDetectFail": Rule(_V, "liveness detection failed"),
    "FailedOperation.LivessDetectFake": Rule(_V, "suspected spoofed recording"),
    "FailedOperation.LivessSystemError": Rule(_T, "liveness engine error"),
    "FailedOperation.LivessUnknownError": Rule(_V, "video-based detection failed"),
    "FailedOperation.SilentDetectFail": Rule(_V, "real person detection failed"),
    "FailedOperation.SilentEyeLiveFail": Rule(_V, "eye detection failed"),
    "FailedOperation.SilentFaceDetectFail": Rule(_V, "no face in the video"),
    "FailedOperation.SilentFaceQualityFail": Rule(_V, "low face quality"),
    "FailedOperation.SilentFaceWithMaskFail": Rule(_V, "face mask detected"),
    "FailedOperation.SilentMouthLiveFail": Rule(_V, "mouth detection failed"),
    "FailedOperation.SilentMultiFaceFail": Rule(_V, "multiple faces in the video"),
    "FailedOperation.SilentPictureLiveFail": Rule(_V, "video might be spoofed"),
    "FailedOperation.SilentThreshold": Rule(_V, "real person detection below standard"),
    "FailedOperation.SilentTooShort": Rule(_V, "video shorter than 2 seconds"),
    "FailedOperation.UnKnown": Rule(_T, "unknown internal error"),
    # Common API 3.0 codes.
    "InternalError": Rule(_T, "Tencent internal error"),
    "ServiceUnavailable": Rule(_T, "service temporarily unavailable"),
    "ResourceUnavailable": Rule(_T, "resource temporarily unavailable"),
    "RequestLimitExceeded": Rule(Kind.THROTTLED, "account request rate exceeded"),
    "AuthFailure.SignatureExpire": Rule(_T, "timestamp out of window; re-signed on retry"),
    "InvalidParameter": Rule(_R, "invalid parameter"),
    "InvalidParameterValue": Rule(_R, "incorrect parameter value"),
    "MissingParameter": Rule(_R, "missing parameter"),
    "UnknownParameter": Rule(_R, "unknown parameter"),
    "InvalidAction": Rule(_R, "unknown action"),
    "NoSuchVersion": Rule(_R, "unknown API version"),
    "UnsupportedRegion": Rule(_R, "region not supported by the API"),
    "UnsupportedOperation": Rule(_R, "unsupported operation"),
    "UnsupportedProtocol": Rule(_R, "unsupported protocol"),
    "RequestSizeLimitExceeded": Rule(_R, "request body too large"),
    "UnauthorizedOperation": Rule(_A, "unauthorized"),
    "UnauthorizedOperation.Arrears": Rule(_A, "account in arrears"),
    "UnauthorizedOperation.NonAuthorize": Rule(_A, "account identity not verified"),
    "UnauthorizedOperation.Nonactivated": Rule(_A, "service not activated"),
    # Our own codes for answers that never reached a Tencent verdict.
    "ClientError.ConnectTimeout": Rule(_T, "could not connect in time"),
    "ClientError.ReadTimeout": Rule(_T, "no answer in time (the call may have run)"),
    "ClientError.ConnectionError": Rule(_T, "network error"),
    "ClientError.HttpStatus": Rule(_T, "non-200 HTTP answer"),
    "ClientError.BadResponse": Rule(_T, "answer was not the expected JSON"),
}

# Families, longest prefix first. A code not in EXACT falls back to these.
PREFIXES: tuple[tuple[str, Rule], ...] = (
    ("RequestLimitExceeded", Rule(Kind.THROTTLED, "rate limited")),
    ("AuthFailure", Rule(_A, "credentials rejected")),
    ("UnauthorizedOperation", Rule(_A, "account cannot call")),
    ("InvalidParameterValue", Rule(_R, "incorrect parameter value")),
    ("InvalidParameter", Rule(_R, "invalid parameter")),
    ("MissingParameter", Rule(_R, "missing parameter")),
    ("InternalError", Rule(_T, "Tencent internal error")),
    ("ResourceUnavailable", Rule(_T, "resource unavailable")),
    ("ClientError", Rule(_T, "network error")),
)

# Never seen before: a new FailedOperation is most likely a verdict about the media, and
# anything else most likely a request problem. Both are final, because retrying an unknown
# code spends money on every attempt without any reason to expect another answer.
UNKNOWN_FAILED_OPERATION = Rule(_V, "unknown FailedOperation code")
UNKNOWN_OTHER = Rule(_R, "unknown error code")


def classify(code: str) -> Rule:
    """The rule for ``code``; unknown codes get a safe final default and are logged."""
    rule = EXACT.get(code)
    if rule is not None:
        return rule
    for prefix, family in PREFIXES:
        if code == prefix or code.startswith(prefix + "."):
            return family
    log.warning("unknown FaceID code %r: using the safe default (final, not retried)", code)
    if code.startswith("FailedOperation."):
        return UNKNOWN_FAILED_OPERATION
    return UNKNOWN_OTHER
