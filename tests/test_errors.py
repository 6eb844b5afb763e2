"""Walk the whole error table: every seed code is mapped, and each kind behaves as promised."""

import re
from pathlib import Path

import pytest

from faceid_batch.errors import EXACT, Kind, classify

# A copy of ../shared/seed/000_c33f264b792dbe5a.txt (the API contract) is kept in docs/.
SEED = Path(__file__).resolve().parents[1] / "docs" / "api-contract.txt"
TRANSIENT_FROM_DESIGN = {
    "FailedOperation.DownLoadTimeoutError", "FailedOperation.DownLoadError",
    "FailedOperation.LipNetFailed", "FailedOperation.CompareSystemError",
    "FailedOperation.LivessSystemError", "FailedOperation.UnKnown", "InternalError",
}


def seed_codes() -> list[str]:
    return re.findall(r"^\| ((?:FailedOperation|Invalid|Unauthorized|Unsupported)[\w.]*) \|",
                      SEED.read_text(), flags=re.M)


def test_every_seed_code_is_in_the_table():
    codes = seed_codes()
    assert len(codes) >= 50
    missing = [c for c in codes if c not in EXACT]
    assert missing == []


@pytest.mark.parametrize("code", sorted(EXACT))
def test_table_rows_classify_to_themselves(code):
    assert classify(code) is EXACT[code]


def test_transient_codes_named_by_design_retry():
    for code in TRANSIENT_FROM_DESIGN:
        assert classify(code).kind == Kind.TRANSIENT and classify(code).retry


@pytest.mark.parametrize("code,kind", [
    ("UnauthorizedOperation.Arrears", Kind.ACCOUNT),
    ("UnauthorizedOperation.Nonactivated", Kind.ACCOUNT),
    ("UnauthorizedOperation.SomethingNew", Kind.ACCOUNT),
    ("AuthFailure.SecretIdNotFound", Kind.ACCOUNT),
    ("AuthFailure.SignatureFailure", Kind.ACCOUNT),
    ("AuthFailure.SignatureExpire", Kind.TRANSIENT),
    ("RequestLimitExceeded", Kind.THROTTLED),
    ("RequestLimitExceeded.UinLimitExceeded", Kind.THROTTLED),
    ("InvalidParameterValue.Whatever", Kind.REQUEST),
    ("InvalidParameter", Kind.REQUEST),
    ("FailedOperation.LivessDetectFake", Kind.VERDICT),
    ("FailedOperation.CompareLowSimilarity", Kind.VERDICT),
    ("Success", Kind.SUCCESS),
    ("ClientError.ReadTimeout", Kind.TRANSIENT),
])
def test_families(code, kind):
    assert classify(code).kind == kind


def test_unknown_codes_get_a_final_default_and_are_logged(caplog):
    assert classify("FailedOperation.BrandNew").kind == Kind.VERDICT
    assert classify("TotallyNew.Code").kind == Kind.REQUEST
    assert not classify("TotallyNew.Code").retry
    assert "TotallyNew.Code" in caplog.text
