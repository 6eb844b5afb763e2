"""The FaceID error table: every known code mapped, in one place, to what we do about it
and whether Tencent bills it. Every decision about an answer reads it: the job's next
state, what counts as an attempt, the account breaker, the billable flag of the attempt.

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
import random
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
    # Whether Tencent bills an answer with this code, and why (billing.py puts
    # BILLING_OVERRIDES in front of what these say).
    billed: bool = True
    billed_why: str = ""
    # Refused for the request's timestamp, not the job: the call is signed again at once
    # with the endpoint's clock as its answer taught it (pipeline.py), not counted, not
    # billed; only a second such answer in a row is the try its kind says.
    resign: bool = False

    # What a kind means, read by every decision about an answer: the job's next state
    # (outcome.record), what counts as an attempt (outcome.persist), the account breaker.
    @property
    def verdict(self) -> bool:
        """The service answered about the person or the media: the job is completed."""
        return self.kind in (Kind.SUCCESS, Kind.VERDICT)

    @property
    def final(self) -> bool:
        """No other answer is to be expected for this request: the job ends now."""
        return self.kind in (Kind.SUCCESS, Kind.VERDICT, Kind.REQUEST)

    @property
    def retry(self) -> bool:
        """Worth the same call again after a wait (with backoff when it counts)."""
        return self.kind in (Kind.TRANSIENT, Kind.THROTTLED)

    @property
    def counts_attempt(self) -> bool:
        """Uses up one of the job's MAX_ATTEMPTS: not when the budget or the account, and
        not the job, stopped the call."""
        return self.kind not in (Kind.THROTTLED, Kind.ACCOUNT)

    @property
    def trips_breaker(self) -> bool:
        """The account cannot call: the breaker opens, the job waits for it, not failed."""
        return self.kind == Kind.ACCOUNT


_V, _T, _R, _A = Kind.VERDICT, Kind.TRANSIENT, Kind.REQUEST, Kind.ACCOUNT

# Which answers Tencent bills: Success and every FailedOperation.* (a verdict, and also the
# transient ones such as DownLoadTimeoutError: the service ran and answered). Its billing
# table does not bill InvalidParameter*, InternalError* and UnauthorizedOperation*; we
# extend that to every code the API gateway answers before the service runs, and to calls
# that got no answer at all.
_SERVED = "the service ran and answered (verdict or transient failure alike)"
_TENCENTS_FAULT = "not billed (Tencent's billing table): Tencent's fault"
_INVALID = "not billed (Tencent's billing table; also covers InvalidParameterValue*)"
_ACCOUNT_CANNOT = "not billed (Tencent's billing table): the account may not call"
_OUTAGE = "Tencent-side outage: no service result"
_RATE_LIMITED = "rate limit refused it at the gateway; the service never ran"
_CREDENTIALS = "credentials rejected at the gateway; the service never ran"
_BAD_REQUEST = "a bad request, like InvalidParameter"
_GATEWAY = "refused at the gateway"


def _served(kind: Kind, why: str) -> Rule:
    return Rule(kind, why, True, _SERVED)


def _billed(kind: Kind, why: str, billed_why: str) -> Rule:
    return Rule(kind, why, True, billed_why)


def _free(kind: Kind, why: str, billed_why: str) -> Rule:
    return Rule(kind, why, False, billed_why)


# Exact codes. The FailedOperation.* rows are the seed's list, in its order.
EXACT: dict[str, Rule] = {
    "Success": _billed(Kind.SUCCESS, "", "the service answered with a verdict"),
    "FailedOperation.ActionCloseEye": _served(_V, "no eye closing detected"),
    "FailedOperation.ActionFaceClose": _served(_V, "face too close"),
    "FailedOperation.ActionFaceFar": _served(_V, "face too far"),
    "FailedOperation.ActionFaceLeft": _served(_V, "face too far left"),
    "FailedOperation.ActionFaceRight": _served(_V, "face too far right"),
    "FailedOperation.ActionFirstAction": _served(_V, "no movement detected"),
    "FailedOperation.ActionLightDark": _served(_V, "lighting too dim"),
    "FailedOperation.ActionLightStrong": _served(_V, "lighting too strong"),
    "FailedOperation.ActionNodetectFace": _served(_V, "no full face"),
    "FailedOperation.ActionOpenMouth": _served(_V, "no mouth opening detected"),
    "FailedOperation.CompareFail": _served(_V, "comparison failed"),
    "FailedOperation.CompareLowSimilarity": _served(_V, "similarity below the passing standard"),
    "FailedOperation.CompareSystemError": _served(_T, "comparison engine error"),
    "FailedOperation.DownLoadError": _served(_T, "FaceID could not download the media"),
    "FailedOperation.DownLoadTimeoutError": _served(_T, "FaceID download timed out"),
    "FailedOperation.LifePhotoDetectFaces": _served(_V, "multiple faces in the photo"),
    "FailedOperation.LifePhotoDetectFake": _served(_V, "real person comparison failed"),
    "FailedOperation.LifePhotoDetectNoFaces": _served(_V, "no full face in the photo"),
    "FailedOperation.LifePhotoPoorQuality": _served(_V, "photo resolution too low"),
    "FailedOperation.LifePhotoSizeError": _served(_V, "photo too large or too small"),
    "FailedOperation.LipFaceIncomplete": _served(_V, "face not fully exposed"),
    "FailedOperation.LipMoveSmall": _served(_V, "lip movement too small"),
    "FailedOperation.LipNetFailed": _served(_T, "FaceID failed to pull the video"),
    "FailedOperation.LipSizeError": _served(_V, "video empty or of the wrong size"),
    "FailedOperation.LipVideoInvalid": _served(_V, "video format incorrect"),
    "FailedOperation.LipVideoQuaility": _served(_V, "video definition too low"),
    "FailedOperation.LipVoiceDetect": _served(_V, "no sound detected"),
    "FailedOperation.LipVoiceLow": _served(_V, "volume too low"),
    "FailedOperation.LipVoiceRecognize": _served(_V, "speech recognition failed"),
    "FailedOperation.LivessBestFrameError": _served(_V, "no face for the comparison frame"),
    "FailedOperation.LivessDetectFail": _served(_V, "liveness detection failed"),
    "FailedOperation.LivessDetectFake": _served(_V, "suspected spoofed recording"),
    "FailedOperation.LivessSystemError": _served(_T, "liveness engine error"),
    "FailedOperation.LivessUnknownError": _served(_V, "video-based detection failed"),
    "FailedOperation.SilentDetectFail": _served(_V, "real person detection failed"),
    "FailedOperation.SilentEyeLiveFail": _served(_V, "eye detection failed"),
    "FailedOperation.SilentFaceDetectFail": _served(_V, "no face in the video"),
    "FailedOperation.SilentFaceQualityFail": _served(_V, "low face quality"),
    "FailedOperation.SilentFaceWithMaskFail": _served(_V, "face mask detected"),
    "FailedOperation.SilentMouthLiveFail": _served(_V, "mouth detection failed"),
    "FailedOperation.SilentMultiFaceFail": _served(_V, "multiple faces in the video"),
    "FailedOperation.SilentPictureLiveFail": _served(_V, "video might be spoofed"),
    "FailedOperation.SilentThreshold": _served(_V, "real person detection below standard"),
    "FailedOperation.SilentTooShort": _served(_V, "video shorter than 2 seconds"),
    "FailedOperation.UnKnown": _served(_T, "unknown internal error"),
    # Common API 3.0 codes.
    "InternalError": _free(_T, "Tencent internal error", _TENCENTS_FAULT),
    "ServiceUnavailable": _free(_T, "service temporarily unavailable", _OUTAGE),
    "ResourceUnavailable": _free(_T, "resource temporarily unavailable", _OUTAGE),
    "RequestLimitExceeded": _free(Kind.THROTTLED, "account request rate exceeded", _RATE_LIMITED),
    "AuthFailure.SignatureExpire": Rule(
        _T, "timestamp outside the API's 300 s window: re-signed at once on the API's "
        "clock, then a try if it comes again", False, _CREDENTIALS, resign=True),
    "InvalidParameter": _free(_R, "invalid parameter", _INVALID),
    "InvalidParameterValue": _free(_R, "incorrect parameter value", _INVALID),
    "MissingParameter": _free(_R, "missing parameter", _BAD_REQUEST),
    "UnknownParameter": _free(_R, "unknown parameter", _BAD_REQUEST),
    "InvalidAction": _free(_R, "unknown action", f"unknown action: {_GATEWAY}"),
    "NoSuchVersion": _free(_R, "unknown API version", f"unknown version: {_GATEWAY}"),
    "UnsupportedRegion": _free(
        _R, "region not supported by the API", f"unsupported region: {_GATEWAY}"),
    "UnsupportedOperation": _free(
        _R, "unsupported operation", "unsupported operation: refused, no service result"),
    "UnsupportedProtocol": _free(
        _R, "unsupported protocol", f"unsupported protocol: {_GATEWAY}"),
    "RequestSizeLimitExceeded": _free(
        _R, "request body too large", f"body too large: {_GATEWAY}"),
    "UnauthorizedOperation": _free(_A, "unauthorized", _ACCOUNT_CANNOT),
    "UnauthorizedOperation.Arrears": _free(_A, "account in arrears", _ACCOUNT_CANNOT),
    "UnauthorizedOperation.NonAuthorize": _free(
        _A, "account identity not verified", _ACCOUNT_CANNOT),
    "UnauthorizedOperation.Nonactivated": _free(_A, "service not activated", _ACCOUNT_CANNOT),
    # Our own codes for answers that never reached a Tencent verdict.
    "ClientError.ConnectTimeout": _free(
        _T, "could not connect in time", "never connected: nothing reached Tencent"),
    "ClientError.ReadTimeout": _free(
        _T, "no answer in time (the call may have run)",
        "no answer came back; Tencent may still have run and "
        "billed it (override to billable to count the worst case)"),
    "ClientError.ConnectionError": _free(
        _T, "network error", "network error: no answer came back"),
    "ClientError.HttpStatus": _free(
        _T, "non-200 HTTP answer", "non-200 from the gateway: no service result"),
    "ClientError.BadResponse": _free(
        _T, "answer was not the expected JSON", "no readable code to bill by"),
}

# Families, longest prefix first. A code not in EXACT falls back to these.
PREFIXES: tuple[tuple[str, Rule], ...] = (
    ("RequestLimitExceeded", _free(Kind.THROTTLED, "rate limited", _RATE_LIMITED)),
    ("AuthFailure", _free(_A, "credentials rejected", _CREDENTIALS)),
    ("UnauthorizedOperation", _free(_A, "account cannot call", _ACCOUNT_CANNOT)),
    ("InvalidParameterValue", _free(_R, "incorrect parameter value", _INVALID)),
    ("InvalidParameter", _free(_R, "invalid parameter", _INVALID)),
    ("MissingParameter", _free(_R, "missing parameter", _BAD_REQUEST)),
    ("UnknownParameter", _free(_R, "unknown parameter", _BAD_REQUEST)),
    ("InvalidAction", _free(_R, "unknown action", f"unknown action: {_GATEWAY}")),
    ("NoSuchVersion", _free(_R, "unknown API version", f"unknown version: {_GATEWAY}")),
    ("UnsupportedRegion", _free(_R, "region not supported", f"unsupported region: {_GATEWAY}")),
    ("UnsupportedOperation", _free(_R, "unsupported operation",
                                   "unsupported operation: refused, no service result")),
    ("UnsupportedProtocol", _free(_R, "unsupported protocol",
                                  f"unsupported protocol: {_GATEWAY}")),
    ("RequestSizeLimitExceeded", _free(_R, "request body too large",
                                       f"body too large: {_GATEWAY}")),
    ("InternalError", _free(_T, "Tencent internal error", _TENCENTS_FAULT)),
    ("ResourceUnavailable", _free(_T, "resource unavailable", _OUTAGE)),
    # Final, as every unknown code is (see below); not billed, as ServiceUnavailable is not.
    ("ServiceUnavailable", _free(_R, "unknown ServiceUnavailable code", _OUTAGE)),
    ("ClientError", _free(_T, "network error", "no answer from Tencent")),
)

# Never seen before: a new FailedOperation is most likely a verdict about the media, and
# anything else most likely a request problem. Both are final, because retrying an unknown
# code spends money on every attempt without any reason to expect another answer.
# Billed all the same: a FailedOperation is the service's answer, and any other unknown
# code is counted as billed so that a cost estimate errs high rather than low.
UNKNOWN_FAILED_OPERATION = _served(_V, "unknown FailedOperation code")
UNKNOWN_OTHER = _billed(_R, "unknown error code",
                        "unknown code: counted as billed so the estimate errs high")


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


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))
