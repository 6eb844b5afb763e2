"""Error codes the simulated VideoLivenessCompare can answer, with Tencent's descriptions.

The FailedOperation.* descriptions are the ones in the API's documented error table (seed); the
common codes are TencentCloud API 3.0 common error codes. Both are data, so scripting and the
random error knob can name any of them.
"""

from __future__ import annotations

import re

SUCCESS = "Success"

FAILED_OPERATION: dict[str, str] = {
    "FailedOperation.ActionCloseEye": "No motions of eye closing are detected.",
    "FailedOperation.ActionFaceClose": "The face is too close to the screen.",
    "FailedOperation.ActionFaceFar": "The face is too far from the screen.",
    "FailedOperation.ActionFaceLeft": "The face is too far left from the screen.",
    "FailedOperation.ActionFaceRight": "The face is too far right from the screen.",
    "FailedOperation.ActionFirstAction": "No movement is detected.",
    "FailedOperation.ActionLightDark": "The lighting is too dim.",
    "FailedOperation.ActionLightStrong": "The lighting is too strong.",
    "FailedOperation.ActionNodetectFace": "Failed to detect a full face.",
    "FailedOperation.ActionOpenMouth": "No motions of mouth opening are detected.",
    "FailedOperation.CompareFail": "Comparison failed.",
    "FailedOperation.CompareLowSimilarity": (
        "The comparison similarity did not reach the passing standard."
    ),
    "FailedOperation.CompareSystemError": "Error calling the comparison engine API.",
    "FailedOperation.DownLoadError": "File download failed.",
    "FailedOperation.DownLoadTimeoutError": "File download timed out.",
    "FailedOperation.LifePhotoDetectFaces": "Multiple faces are detected.",
    "FailedOperation.LifePhotoDetectFake": "Real person comparison failed.",
    "FailedOperation.LifePhotoDetectNoFaces": "Failed to detect a full face.",
    "FailedOperation.LifePhotoPoorQuality": (
        "The resolution of the image passed in is too low. Please upload a new one."
    ),
    "FailedOperation.LifePhotoSizeError": "The image passed in is too large or too small.",
    "FailedOperation.LipFaceIncomplete": "The face is not fully exposed.",
    "FailedOperation.LipMoveSmall": "The lip movement range is too small.",
    "FailedOperation.LipNetFailed": "Failed to pull the video. Please try again.",
    "FailedOperation.LipSizeError": (
        "The video is empty or its size is inappropriate. "
        "The recording duration should be about 6 seconds."
    ),
    "FailedOperation.LipVideoInvalid": "The video format is incorrect.",
    "FailedOperation.LipVideoQuaility": "The video definition is too low.",
    "FailedOperation.LipVoiceDetect": "No sound is detected.",
    "FailedOperation.LipVoiceLow": "The volume of the video is too low.",
    "FailedOperation.LipVoiceRecognize": "Speech recognition failed.",
    "FailedOperation.LivessBestFrameError": (
        "Face detection failed. Unable to extract the photo for comparison."
    ),
    "FailedOperation.LivessDetectFail": "Liveness detection failed.",
    "FailedOperation.LivessDetectFake": "Suspected spoofed recording.",
    "FailedOperation.LivessSystemError": "Error calling the liveness engine API.",
    "FailedOperation.LivessUnknownError": "Video-based real person detection failed.",
    "FailedOperation.SilentDetectFail": "Real person detection failed.",
    "FailedOperation.SilentEyeLiveFail": "Eye detection failed.",
    "FailedOperation.SilentFaceDetectFail": "No face is detected in the video.",
    "FailedOperation.SilentFaceQualityFail": "Low face quality.",
    "FailedOperation.SilentFaceWithMaskFail": "A face mask is detected.",
    "FailedOperation.SilentMouthLiveFail": "Mouth detection failed.",
    "FailedOperation.SilentMultiFaceFail": "Multiple faces are detected in the video.",
    "FailedOperation.SilentPictureLiveFail": "The video might be spoofed.",
    "FailedOperation.SilentThreshold": "Real person detection did not reach the passing standard.",
    "FailedOperation.SilentTooShort": (
        "The video is too short. Please capture a video longer than 2 seconds."
    ),
    "FailedOperation.UnKnown": "Unknown internal error.",
}

# Codes documented for this API outside FailedOperation, plus the common API 3.0 codes.
OTHER_CODES: dict[str, str] = {
    "InvalidParameter": "Invalid parameter.",
    "InvalidParameterValue": "Incorrect parameter value.",
    "UnauthorizedOperation": "Unauthorized operation.",
    "UnauthorizedOperation.Arrears": "The account is in arrears.",
    "UnauthorizedOperation.NonAuthorize": (
        "Identity verification has not been completed for the account."
    ),
    "UnauthorizedOperation.Nonactivated": "The service has not been activated.",
    "UnsupportedOperation": "Unsupported operation.",
    "ActionOffline": "This API has been deprecated.",
    "AuthFailure.InvalidAuthorization": "Authorization in the request header is invalid.",
    "AuthFailure.InvalidSecretId": "Invalid key (not a TencentCloud API key type).",
    "AuthFailure.MFAFailure": "MFA failed.",
    "AuthFailure.SecretIdNotFound": "Key does not exist.",
    "AuthFailure.SignatureExpire": "Signature expired.",
    "AuthFailure.SignatureFailure": "Invalid signature.",
    "AuthFailure.TokenFailure": "Token error.",
    "AuthFailure.UnauthorizedOperation": "The request is not authorized.",
    "DryRunOperation": "DryRun operation.",
    "FailedOperation": "Operation failed.",
    "InternalError": "Internal error.",
    "InvalidAction": "The API does not exist.",
    "InvalidRequest": "The multipart format of the request body is incorrect.",
    "IpInBlacklist": "Your IP is in uin IP blacklist.",
    "IpNotInWhitelist": "Your IP is not in uin IP whitelist.",
    "LimitExceeded": "Quota limit exceeded.",
    "MissingParameter": "A parameter is missing.",
    "NoSuchProduct": "The product does not exist.",
    "NoSuchVersion": "The API version does not exist.",
    "RequestLimitExceeded": "The number of requests exceeds the frequency limit.",
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded": "Uin exceeds the frequency limit.",
    "RequestLimitExceeded.IPLimitExceeded": "The number of IP requests exceeds the limit.",
    "RequestLimitExceeded.UinLimitExceeded": "The number of Uin requests exceeds the limit.",
    "RequestSizeLimitExceeded": "The request size exceeds the upper limit.",
    "ResourceInUse": "Resource is in use.",
    "ResourceInsufficient": "Insufficient resource.",
    "ResourceNotFound": "The resource does not exist.",
    "ResourceUnavailable": "Resource is unavailable.",
    "ResponseSizeLimitExceeded": "The response size exceeds the upper limit.",
    "ServiceUnavailable": "Service is unavailable now.",
    "UnknownParameter": "Unknown parameter.",
    "UnsupportedProtocol": "HTTP(S) request protocol error; only GET and POST are supported.",
    "UnsupportedRegion": "API does not support the requested region.",
}

_CODE_RE = re.compile(r"^[A-Za-z]+(\.[A-Za-z0-9]+)*$")


def is_failed_operation(code: str) -> bool:
    """FailedOperation.* verdicts may travel in Response.Result instead of an error envelope."""
    return code.startswith("FailedOperation.")


def description(code: str) -> str:
    """Tencent's description of ``code`` (a generic one for codes outside the tables)."""
    if code == SUCCESS:
        return "Success"
    return FAILED_OPERATION.get(code) or OTHER_CODES.get(code) or f"Simulated error {code}."


def looks_like_code(code: str) -> bool:
    """Whether ``code`` is shaped like a Tencent error code (used to validate scripts)."""
    return code == SUCCESS or bool(_CODE_RE.match(code))
