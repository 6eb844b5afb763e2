"""Preflight: refuse (or warn about) locally what the API would refuse and charge for.

End to end on real parts: the simulator's own call log shows that a refused job never
reached it, and, with the rule set to warn, that the simulator answers the predicted code.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.db import session_scope
from faceid_batch.intake import api
from faceid_batch.intake.submit import JobSpec, submit
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, write_pair
from faceid_batch.models import DedupeHit, Job
from faceid_batch.settings import get_settings, load_settings
from faceid_batch.stage import preflight
from helpers import file_md5, sim_calls, wait_until

FINAL = ("completed", "failed", "refused")


def bad_media(d: Path) -> dict[str, tuple[str, str, str, str | None, str]]:
    """name -> (photo, video, liveness type, validate data, predicted code)."""
    d.mkdir(parents=True, exist_ok=True)
    good_photo, good_video = write_pair(d, 0)
    (d / "short.mp4").write_bytes(mp4_bytes(11, 60_000, duration_s=1.2))
    (d / "mute.mp4").write_bytes(mp4_bytes(12, 60_000, duration_s=6.0, audio=False))
    (d / "clip.avi").write_bytes(mp4_bytes(13, 60_000))  # an MP4 named .avi
    (d / "tiny.jpg").write_bytes(jpeg_bytes(14, 3_000, width=120, height=90))
    return {
        "short": (str(good_photo), str(d / "short.mp4"), "SILENT", None,
                  "FailedOperation.SilentTooShort"),
        "mute": (str(good_photo), str(d / "mute.mp4"), "LIP", "4721",
                 "FailedOperation.LipVoiceDetect"),
        "misnamed": (str(good_photo), str(d / "clip.avi"), "SILENT", None,
                     "FailedOperation.LipVideoInvalid"),
        "tiny": (str(d / "tiny.jpg"), str(good_video), "SILENT", None,
                 "FailedOperation.LifePhotoPoorQuality"),
    }


# -- the rule table ----------------------------------------------------------------------
def test_rule_table_codes_defaults_and_overrides():
    assert {n: r.code for n, r in preflight.RULES.items()} == {
        "format_mismatch": "FailedOperation.LipVideoInvalid",
        "video_unreadable": "FailedOperation.LipVideoInvalid",
        "video_too_short": "FailedOperation.SilentTooShort",
        "lip_no_audio": "FailedOperation.LipVoiceDetect",
        "lip_duration": "FailedOperation.LipSizeError",
        "photo_too_small": "FailedOperation.LifePhotoPoorQuality",
    }
    assert all(r.default in preflight.ACTIONS for r in preflight.RULES.values())
    s = load_settings(preflight_rules=" lip_duration=warn , photo_too_small=off")
    actions = preflight.rule_actions(s)
    assert actions["lip_duration"] == "warn" and actions["photo_too_small"] == "off"
    assert actions["video_too_short"] == "refuse"
    for bad in ("lip_duration", "nope=warn", "lip_duration=later"):
        with pytest.raises(ValueError):
            preflight.parse_rules(bad)


@pytest.mark.parametrize("case", ["short", "mute", "misnamed", "tiny"])
def test_each_rule_finds_its_case_and_nothing_else(tmp_path, case):
    media = bad_media(tmp_path)
    photo, video, lt, _, code = media[case]
    found = preflight.check(load_settings(), lt, photo, video)
    assert found.refusal is not None and found.refusal["code"] == code
    assert [f["code"] for f in found.items] == [code]
    warned = preflight.check(load_settings(preflight_rules=",".join(
        f"{r}=warn" for r in preflight.RULES)), lt, photo, video)
    assert warned.refusal is None and [f["action"] for f in warned.items] == ["warn"]
    off = preflight.check(load_settings(preflight_rules=",".join(
        f"{r}=off" for r in preflight.RULES)), lt, photo, video)
    assert off.items == []


def test_lip_window_photo_floor_and_good_media(tmp_path):
    photo, video = write_pair(tmp_path, 1)
    assert preflight.check(load_settings(), "LIP", str(photo), str(video)).items == []
    long = tmp_path / "long.mp4"
    long.write_bytes(mp4_bytes(3, 50_000, duration_s=14.0))
    found = preflight.check(load_settings(), "LIP", str(photo), str(long)).items
    assert [f["code"] for f in found] == ["FailedOperation.LipSizeError"]
    # SILENT has no duration window; the thresholds are settings.
    assert preflight.check(load_settings(), "SILENT", str(photo), str(long)).items == []
    assert preflight.check(load_settings(preflight_lip_max_seconds=15), "LIP", str(photo),
                           str(long)).items == []
    assert preflight.check(load_settings(preflight_photo_min_side=500), "SILENT", str(photo),
                           str(video)).refusal["rule"] == "photo_too_small"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    found = preflight.check(load_settings(), "SILENT", str(photo), str(garbage))
    assert [(f["rule"], f["action"]) for f in found.items] == [("video_unreadable", "warn")]
    # Remote sources are not read at submit.
    assert preflight.check(load_settings(), "LIP", None, None).items == []


# -- end to end --------------------------------------------------------------------------
def _jobs(url: str, ids: list[int]) -> dict[int, Job]:
    with session_scope(url) as s:
        return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


def test_refused_jobs_are_stored_with_the_code_and_never_called(
        configured, sim_control, start_worker, tmp_path):
    settings = configured
    media = bad_media(tmp_path / "m")
    start_worker()
    good_photo, good_video = write_pair(tmp_path / "g", 5)
    good_id, created = submit(settings, JobSpec("pf-good", str(good_photo), str(good_video),
                                                "LIP", "4721"))
    assert created
    ids = {}
    for name, (photo, video, lt, data, _) in media.items():
        ids[name], created = submit(settings, JobSpec(f"pf-{name}", photo, video, lt, data))
        assert not created  # stored, not sent
    wait_until(lambda: _jobs(settings.database_url, [good_id])[good_id].state in FINAL, 60,
               what="the good job")
    jobs = _jobs(settings.database_url, list(ids.values()))
    for name, job_id in ids.items():
        job = jobs[job_id]
        code = media[name][4]
        assert (job.state, job.result_code) == ("refused", code), (name, job.error_message)
        assert job.finished_at is not None and job.enqueued_at is None and job.attempts == 0
        assert job.preflight[0]["code"] == code and job.preflight[0]["action"] == "refuse"
        assert code in job.error_message
        assert api.outcome(job_id, settings=settings).final
    calls = sim_calls(sim_control)
    assert [c["video_md5"] for c in calls] == [file_md5(good_video)]


def test_warned_jobs_run_and_the_simulator_answers_the_predicted_code(
        configured, sim_control, start_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLIGHT_RULES", ",".join(f"{r}=warn" for r in preflight.RULES))
    get_settings.cache_clear()
    settings = get_settings()
    media = bad_media(tmp_path / "m")
    start_worker()
    ids = {name: submit(settings, JobSpec(f"pw-{name}", photo, video, lt, data))
           for name, (photo, video, lt, data, _) in media.items()}
    assert all(created for _, created in ids.values())
    wait_until(lambda: all(j.state in FINAL for j in _jobs(
        settings.database_url, [i for i, _ in ids.values()]).values()), 60, what="jobs")
    jobs = _jobs(settings.database_url, [i for i, _ in ids.values()])
    answered = {c["video_md5"]: c["code"] for c in sim_calls(sim_control)}
    for name, (job_id, _) in ids.items():
        job, code = jobs[job_id], media[name][4]
        assert [(f["code"], f["action"]) for f in job.preflight] == [(code, "warn")]
        assert job.attempts >= 1
        if name == "misnamed":
            # Staging names the object after its real format: the API never sees the name.
            assert job.result_code == "Success"
        else:
            assert job.result_code == code == answered[file_md5(Path(media[name][1]))]


def test_manifest_reports_refusals_per_row_and_reruns_recheck_them(
        configured, sim_control, start_worker, tmp_path):
    settings = configured
    media = bad_media(tmp_path / "m")
    good_photo, good_video = write_pair(tmp_path / "g", 6)
    manifest = tmp_path / "kyc.csv"
    lines = ["key,photo,video,liveness_type,validate_data",
             f"m-good,{good_photo},{good_video},SILENT,"]
    lines += [f"m-{n},{p},{v},{lt},{d or ''}" for n, (p, v, lt, d, _) in media.items()]
    manifest.write_text("\n".join(lines) + "\n")
    report = tmp_path / "r.csv"
    result = run_backfill(settings, manifest, report_path=report)
    assert (result.read, result.accepted, result.bad, result.refused) == (5, 1, 4, 4)
    with report.open() as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {f"m-{n}" for n in media}
    for name, (*_, code) in media.items():
        assert code in rows[f"m-{name}"]["reason"]
    with session_scope(settings.database_url) as s:
        jobs = {j.idempotency_key: j for j in s.scalars(select(Job))}
    assert {k: j.state for k, j in jobs.items()} == {
        "m-good": "queued", **{f"m-{n}": "refused" for n in media}}
    assert all(j.batch_id == result.batch_id for j in jobs.values())
    start_worker()
    wait_until(lambda: _jobs(settings.database_url, [jobs["m-good"].id])[
        jobs["m-good"].id].state in FINAL, 60, what="the good row")
    assert [c["video_md5"] for c in sim_calls(sim_control)] == [file_md5(good_video)]

    # The user fixes one file and runs the manifest again: the refused row is checked
    # again and, passing now, its job is reused and sent; the good row is a dedupe hit.
    Path(media["short"][1]).write_bytes(mp4_bytes(21, 60_000, duration_s=4.0))
    again = run_backfill(settings, manifest, report_path=report)
    assert (again.known, again.accepted, again.bad, again.refused) == (1, 1, 3, 3)
    short_id = jobs["m-short"].id
    wait_until(lambda: _jobs(settings.database_url, [short_id])[short_id].state
               in ("completed", "failed"), 60, what="the fixed row")
    assert _jobs(settings.database_url, [short_id])[short_id].result_code == "Success"
    with session_scope(settings.database_url) as s:
        hits = s.scalars(select(DedupeHit)).all()
        assert [(h.source, h.count, h.batch_id) for h in hits] == [
            ("backfill", 1, result.batch_id)]


def test_dedupe_hits_and_refused_resubmission(configured, tmp_path):
    settings = configured
    media = bad_media(tmp_path / "m")
    photo, video, lt, data, _ = media["mute"]
    refused_id, created = submit(settings, JobSpec("d-mute", photo, video, lt, data))
    again_id, created_again = submit(settings, JobSpec("d-mute", photo, video, lt, data))
    assert refused_id == again_id and not created and not created_again
    good_photo, good_video = write_pair(tmp_path / "g", 7)
    job_id, _ = submit(settings, JobSpec("d-good", str(good_photo), str(good_video), "SILENT"))
    assert submit(settings, JobSpec("d-good", str(good_photo), str(good_video),
                                    "SILENT")) == (job_id, False)
    assert api.submit(str(good_photo), str(good_video), "SILENT", key="d-good",
                      settings=settings) == job_id
    with session_scope(settings.database_url) as s:
        hits = [(h.source, h.count, h.job_id, h.idempotency_key)
                for h in s.scalars(select(DedupeHit).order_by(DedupeHit.id))]
    # Re-submitting a refused key is a new check, not a dedupe hit.
    assert hits == [("submit", 1, job_id, "d-good"), ("api", 1, job_id, "d-good")]
    # Fixed file: the same job is reused and sent.
    Path(video).write_bytes(mp4_bytes(22, 60_000, duration_s=6.0, audio=True))
    fixed_id, created = submit(settings, JobSpec("d-mute", photo, video, lt, data))
    assert (fixed_id, created) == (refused_id, True)
    job = _jobs(settings.database_url, [fixed_id])[fixed_id]
    assert (job.state, job.result_code, job.preflight, job.finished_at) == (
        "queued", None, None, None)
    assert job.enqueued_at is not None


def test_remote_sources_are_preflighted_by_the_worker_before_any_call(
        configured, sim_control, start_worker, tmp_path):
    """cos:// (and http) sources are not read at submit; the worker reads the copy it stages
    and refuses there, before the call: the simulator sees only the good job."""
    from faceid_batch.stage.storage import make_cos_client
    from helpers import BUCKET

    settings = configured
    cos = make_cos_client(settings)
    good_photo, good_video = jpeg_bytes(31, 15_000), mp4_bytes(32, 150_000)
    short = mp4_bytes(33, 60_000, duration_s=1.2)
    for key, body in (("old/p-31.jpg", good_photo), ("old/v-32.mp4", good_video),
                      ("old/v-33.mp4", short)):
        cos.put_object(Bucket=BUCKET, Key=key, Body=body)
    start_worker()
    good, _ = submit(settings, JobSpec("pf-remote-good", f"cos://{BUCKET}/old/p-31.jpg",
                                       f"cos://{BUCKET}/old/v-32.mp4", "SILENT"))
    bad, created = submit(settings, JobSpec("pf-remote-short", f"cos://{BUCKET}/old/p-31.jpg",
                                            f"cos://{BUCKET}/old/v-33.mp4", "SILENT"))
    assert created  # nothing could be read at submit: the job is sent
    wait_until(lambda: all(j.state in FINAL
                           for j in _jobs(settings.database_url, [good, bad]).values()),
               60, what="both remote jobs")
    jobs = _jobs(settings.database_url, [good, bad])
    assert jobs[good].state == "completed"
    job = jobs[bad]
    assert (job.state, job.result_code) == ("refused", "FailedOperation.SilentTooShort")
    assert job.attempts == 0 and job.preflight[0]["rule"] == "video_too_short"
    assert f"cos://{BUCKET}/old/v-33.mp4" in job.error_message  # named, not a temp path
    import hashlib

    assert [c["video_md5"] for c in sim_calls(sim_control)] == [
        hashlib.md5(good_video).hexdigest()]
