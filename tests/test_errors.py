"""Walk the whole error table: every seed code is mapped, and each kind behaves as promised."""

import re
from pathlib import Path

import pytest

from faceid_batch.call import billing
from faceid_batch.call.errors import EXACT, PREFIXES, Kind, classify

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


# What each kind means is read from the rule, by every decision about an answer.
@pytest.mark.parametrize("kind,verdict,final,retry,counts,breaker", [
    (Kind.SUCCESS, True, True, False, True, False),
    (Kind.VERDICT, True, True, False, True, False),
    (Kind.REQUEST, False, True, False, True, False),
    (Kind.TRANSIENT, False, False, True, True, False),
    (Kind.THROTTLED, False, False, True, False, False),
    (Kind.ACCOUNT, False, False, False, False, True),
])
def test_a_kind_says_what_the_answer_does(kind, verdict, final, retry, counts, breaker):
    rule = next(r for r in EXACT.values() if r.kind == kind)
    assert (rule.verdict, rule.final, rule.retry, rule.counts_attempt, rule.trips_breaker) == (
        verdict, final, retry, counts, breaker)


def test_billing_is_read_from_the_row_that_classifies_a_code():
    table = billing.table()
    codes = [*EXACT, *(p + ".SomethingNew" for p, _ in PREFIXES), "FailedOperation.New",
             "Brand.NewCode"]
    for code in codes:
        rule = classify(code)
        assert table.billable(code) is rule.billed, code
        assert table.decide(code).why == rule.billed_why, code
