"""Regions and buckets: a job is refused at submit when no account serves its region or it
has no bucket; its media are staged only in its region's bucket and it is called only by
accounts of its region. The end-to-end test runs its own simulator with two fake accounts
and a second bucket, so that the account, region and bucket of every call are known."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import func, select

from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, SubmitError, check_region, submit
from faceid_batch.local.samples import write_pair
from faceid_batch.models import Attempt, Job, MediaObject
from faceid_batch.settings import get_settings, load_settings
from faceid_sim.runner import start as start_sim
from helpers import FAKE_SECRET_ID, FAKE_SECRET_KEY, accounts_env, file_md5, wait_until

BKK_ID, BKK_KEY = "AKIDtestFAKEbangkokNOTreal0000001", "testFAKEbangkokKEYnotREAL0000001"
SG2_ID, SG2_KEY = "AKIDtestFAKEsingaporeNOTreal00002", "testFAKEsingaporeKEYnotREAL00002"
SG_BUCKET, BKK_BUCKET = "faceid-sg-1250000000", "faceid-bkk-1250000000"
ACCOUNTS = f"""
[accounts.bkk]
secret_id = "{BKK_ID}"
secret_key_env = "TEST_FAKE_KEY_BKK"
regions = ["ap-bangkok"]
owner = "uin-1"

[accounts.sg-a]
secret_id = "{FAKE_SECRET_ID}"
secret_key_env = "TEST_FAKE_KEY_SG_A"
regions = ["ap-singapore"]
owner = "uin-1"

[accounts.sg-b]
secret_id = "{SG2_ID}"
secret_key_env = "TEST_FAKE_KEY_SG_B"
regions = ["ap-singapore"]
owner = "uin-1"
"""


def _file(tmp_path, text=ACCOUNTS):
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return str(path)


def test_a_region_is_checked_at_submit(tmp_path):
    base = {"database_url": f"sqlite:///{tmp_path}/x.db", "cos_bucket": SG_BUCKET}
    s = load_settings(**base, faceid_accounts_file=_file(tmp_path),
                      cos_buckets=f"ap-bangkok={BKK_BUCKET}")
    assert check_region(s, "ap-bangkok") == "ap-bangkok"
    assert check_region(s, None) is None  # FACEID_REGION (ap-singapore)
    with pytest.raises(SubmitError, match="region ap-hongkong: no account serves it"):
        check_region(s, "ap-hongkong")
    with pytest.raises(SubmitError, match="region 'eu-frankfurt': must be one of"):
        check_region(s, "eu-frankfurt")
    # Served, but no bucket for it.
    s = load_settings(**base, faceid_accounts_file=_file(tmp_path))
    with pytest.raises(SubmitError, match=r"region ap-bangkok: no bucket for it \(COS_BUCKETS\)"):
        check_region(s, "ap-bangkok")
    # Without a file: the one account serves FACEID_REGION only, as before.
    s = load_settings(**base)
    assert check_region(s, None) is None
    with pytest.raises(SubmitError, match="region ap-bangkok: no account serves it"):
        check_region(s, "ap-bangkok")


def test_the_bucket_map_is_checked(tmp_path):
    with pytest.raises(Exception, match="COS_BUCKETS.*unknown region 'mars-1'"):
        load_settings(cos_buckets="mars-1=b-1250000000")
    with pytest.raises(Exception, match="COS_BUCKETS.*but COS_BUCKET is"):
        load_settings(cos_bucket="one-1250000000", cos_buckets="ap-singapore=two-1250000000")
    s = load_settings(cos_buckets=f"ap-singapore={SG_BUCKET},ap-bangkok={BKK_BUCKET}")
    assert s.cos_bucket == SG_BUCKET  # COS_BUCKET is FACEID_REGION's, however given
    assert s.buckets == {"ap-singapore": SG_BUCKET, "ap-bangkok": BKK_BUCKET}


@pytest.fixture
def two_regions(redis_server, tmp_path, monkeypatch, app_env, database_url):
    """A simulator of its own (two more fake accounts, a Bangkok bucket), and this process
    configured for it: accounts file, COS_BUCKETS, COS_DOMAINS."""
    sim = start_sim(secret_id=FAKE_SECRET_ID, secret_key=FAKE_SECRET_KEY,
                    extra_credentials={BKK_ID: BKK_KEY, SG2_ID: SG2_KEY},
                    bucket=SG_BUCKET, extra_buckets={BKK_BUCKET: "ap-bangkok"},
                    latency={"fixed": 0.2}, data_dir=tmp_path / "sim")
    env = {**app_env, "DATABASE_URL": database_url, "FACEID_ENDPOINT": sim.api_url,
           "FACEID_ACCOUNTS_FILE": _file(tmp_path), "TEST_FAKE_KEY_BKK": BKK_KEY,
           "TEST_FAKE_KEY_SG_A": FAKE_SECRET_KEY, "TEST_FAKE_KEY_SG_B": SG2_KEY,
           "COS_SECRET_ID": FAKE_SECRET_ID, "COS_SECRET_KEY": FAKE_SECRET_KEY,
           "COS_BUCKET": SG_BUCKET, "COS_BUCKETS": f"ap-bangkok={BKK_BUCKET}",
           "COS_DOMAIN": sim.cos_domains[SG_BUCKET],
           "COS_DOMAINS": f"ap-bangkok={sim.cos_domains[BKK_BUCKET]}"}
    yield from accounts_env(monkeypatch, env, app_env["REDIS_URL"], sim)


def _done(url, ids):
    with session_scope(url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
    return len(states) == len(ids) and all(st in ("completed", "failed") for st in states)


def test_each_job_is_staged_and_called_only_in_its_region(two_regions, start_worker,
                                                          tmp_path):
    sim, env = two_regions
    settings = get_settings()
    rows = [("ap-bangkok" if i % 2 else None) for i in range(12)]
    pairs = [write_pair(tmp_path / "media", i) for i in range(len(rows))]
    start_worker(**env, FACEID_SECRET_ID="", FACEID_SECRET_KEY="")
    ids = [submit(settings, JobSpec(f"r-{i}", str(p), str(v), "SILENT", region=region))[0]
           for i, ((p, v), region) in enumerate(zip(pairs, rows, strict=True))]
    # A region no account serves is refused at submit: nothing stored.
    with pytest.raises(SubmitError, match="ap-hongkong: no account serves it"):
        submit(settings, JobSpec("r-hk", str(pairs[0][0]), str(pairs[0][1]), "SILENT",
                                 region="ap-hongkong"))
    wait_until(lambda: _done(settings.database_url, ids), 90, what="jobs to finish")
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(
            Job.idempotency_key == "r-hk")) == 0
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        attempts = s.scalars(select(Attempt).where(Attempt.job_id.in_(ids))).all()
        ledger = s.scalars(select(MediaObject).where(MediaObject.job_id.in_(ids))).all()
    assert all(j.state == "completed" for j in jobs.values())
    bkk_jobs = {i for i, r in zip(ids, rows, strict=True) if r}
    # Every attempt says which account and region served it, and they fit the job.
    for a in attempts:
        if a.job_id in bkk_jobs:
            assert (a.account, a.region) == ("bkk", "ap-bangkok"), a
        else:
            assert a.account in ("sg-a", "sg-b") and a.region == "ap-singapore", a
    assert {a.account for a in attempts} == {"bkk", "sg-a", "sg-b"}  # both sg accounts used
    # The ledger's bucket, and the simulator's stores: each object in its region's only.
    for m in ledger:
        assert m.bucket == (BKK_BUCKET if m.job_id in bkk_jobs else SG_BUCKET), m
    bkk_keys = {m.object_key for m in ledger if m.job_id in bkk_jobs}
    sg_keys = {m.object_key for m in ledger if m.job_id not in bkk_jobs}
    in_bkk = {o.key for o in sim.extra_cos[BKK_BUCKET].objects.iter_objects()}
    in_sg = {o.key for o in sim.cos.objects.iter_objects()}
    assert bkk_keys <= in_bkk and not (bkk_keys & in_sg)
    assert sg_keys <= in_sg and not (sg_keys & in_bkk)
    # The simulator's view: SecretId, X-TC-Region and the host the media came from.
    by_md5 = {file_md5(v): region or "ap-singapore"
              for (_, v), region in zip(pairs, rows, strict=True)}
    calls = requests.get(f"{sim.control_url}/calls", timeout=5).json()
    assert len(calls) == len(ids)
    for call in calls:
        region = by_md5[call["video_md5"]]
        assert call["region"] == region
        if region == "ap-bangkok":
            assert call["secret_id"] == BKK_ID
            assert call["media_hosts"] == [sim.cos_domains[BKK_BUCKET]]
        else:
            assert call["secret_id"] in (FAKE_SECRET_ID, SG2_ID)
            assert call["media_hosts"] == [sim.cos_domains[SG_BUCKET]]


def test_an_account_in_arrears_hands_its_jobs_to_the_other(two_regions, start_worker,
                                                           tmp_path):
    sim, env = two_regions
    settings = get_settings()
    sim.sim.configure({"account_errors": {FAKE_SECRET_ID: "UnauthorizedOperation.Arrears"}})
    pairs = [write_pair(tmp_path / "media", 100 + i) for i in range(10)]
    start_worker(**env, FACEID_SECRET_ID="", FACEID_SECRET_KEY="")
    ids = [submit(settings, JobSpec(f"a-{i}", str(p), str(v), "SILENT"))[0]
           for i, (p, v) in enumerate(pairs)]
    # Well within BREAKER_PROBE_AFTER (30 s): a job answered Arrears goes straight back to
    # the other account, it does not wait for the breaker's probe.
    wait_until(lambda: _done(settings.database_url, ids), 20, what="jobs to finish")
    with session_scope(settings.database_url) as s:
        states = s.scalars(select(Job.state).where(Job.id.in_(ids))).all()
        attempts = s.scalars(select(Attempt).where(Attempt.job_id.in_(ids))).all()
    assert set(states) == {"completed"}
    arrears = [a for a in attempts if a.code == "UnauthorizedOperation.Arrears"]
    assert arrears and all(a.account == "sg-a" and not a.counted for a in arrears)
    done = [a for a in attempts if a.code == "Success"]
    assert len(done) == len(ids) and {a.account for a in done} == {"sg-b"}
