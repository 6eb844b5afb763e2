"""Manifests: what is refused whole, what is refused per row, and that good rows run.

The mixed manifest goes through the real command line, a real worker and the simulator:
the report names every bad row with its reason and the simulator never hears of one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from faceid_batch.bulk.backfill import run_backfill
from faceid_batch.bulk.manifest import Manifest, ManifestError
from faceid_batch.db import session_scope
from faceid_batch.intake.submit import JobSpec, insert_job, validate_spec
from faceid_batch.local.samples import jpeg_bytes, mp4_bytes, png_bytes, write_pair
from faceid_batch.models import Batch, Job
from helpers import BUCKET, file_md5, sim_calls, wait_until

HEADER = "key,photo,video,liveness_type,validate_data,metadata\n"


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceid_batch.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _report(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- whole-file refusals (no services) --------------------------------------------------
@pytest.mark.parametrize("name,content,expected", [
    ("m.csv", b"id,photo,video\n1,a.jpg,b.mp4\n", "missing required column(s) key, liveness_type"),
    ("m.jsonl", b'[{"key": "a"}]\n', "a JSON array"),
    ("m.jsonl", b"key,photo,video,liveness_type\n", "one JSON object per line"),
    ("m.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data, not a CSV or JSONL"),
    ("m.txt", b"\xff\xfe\xfa not utf8 at all", "not UTF-8 text"),
    ("m.csv", b"\n\n", "the file is empty"),
])
def test_a_file_that_is_not_a_manifest_is_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Manifest(path)


def test_rows_keep_file_line_numbers_and_extra_columns_become_metadata(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "Key;Photo;Video;Liveness_Type;customer\n"
        "a;p.jpg;v.mp4;SILENT;\"multi\nline\"\n"
        "\n"
        "b;/abs/p.jpg;cos://bkt/v.mp4;LIP;c2\n"
    )
    m = Manifest(path)
    rows = list(m.rows())
    assert [r.line for r in rows] == [2, 5]  # a quoted newline and a blank line counted
    spec = m.to_spec(rows[0], "backfill")
    assert spec.metadata == {"customer": "multi\nline"}
    assert spec.photo == str(tmp_path / "p.jpg")  # relative to the manifest
    assert m.to_spec(rows[1], "backfill").video == "cos://bkt/v.mp4"


# -- the mixed manifest, end to end ---------------------------------------------------------
def test_mixed_manifest_runs_good_rows_and_reports_each_bad_one(
        configured, sim_control, start_worker, tmp_path, app_env, database_url):
    settings = configured
    media = tmp_path / "media"
    pairs = [write_pair(media, i) for i in range(4)]
    renamed = media / "renamed.mp4"
    renamed.write_bytes(png_bytes(1, 3000))
    big = media / "big.mp4"
    big.write_bytes(mp4_bytes(2, 9 * 1024 * 1024))
    # An object already in the bucket, given as cos://bucket/key.
    from faceid_batch.stage.storage import make_cos_client

    cos = make_cos_client(settings)
    cos_photo, cos_video = jpeg_bytes(91, 15_000), mp4_bytes(92, 150_000)
    cos.put_object(Bucket=BUCKET, Key="old/p-91.jpg", Body=cos_photo)
    cos.put_object(Bucket=BUCKET, Key="old/v-92.mp4", Body=cos_video)
    (p0, v0), (p1, v1), (p2, v2), (p3, v3) = pairs
    manifest = tmp_path / "kyc.csv"
    manifest.write_text(HEADER + "".join([
        f"good-silent,{p0},{v0},SILENT,,\"{{\"\"customer\"\": 1}}\"\n",       # line 2
        f"good-lip,{p1},{v1},LIP,4721,\n",                                     # 3
        f"good-action,{p2},{v2},ACTION,\"2,1\",\n",                            # 4
        f"good-relative,media/{p3.name},media/{v3.name},SILENT,,\n",            # 5
        f"good-cos,cos://{BUCKET}/old/p-91.jpg,cos://{BUCKET}/old/v-92.mp4,SILENT,,\n",  # 6
        f"bad-short,{p0}\n",                                                   # 7
        f"bad-type,{p0},{v0},BLINK,,\n",                                        # 8
        f"bad-lip,{p0},{v0},LIP,12a,\n",                                        # 9
        f"bad-action,{p0},{v0},ACTION,\"1,3\",\n",                              # 10
        f"bad-missing,{p0},{media / 'nope.mp4'},SILENT,,\n",                   # 11
        f"bad-format,{p0},{renamed},SILENT,,\n",                                # 12
        f"bad-big,{p0},{big},SILENT,,\n",                                       # 13
        f"good-lip,{p0},{v0},SILENT,,\n",                                       # 14: key again
        f"bad-bucket,{p0},cos://other-1250000000/v.mp4,SILENT,,\n",            # 15
        f"bad-meta,{p0},{v0},SILENT,,{{oops\n",                                 # 16
    ]))
    env = {**os.environ, **app_env, "DATABASE_URL": database_url}
    proc = _cli(env, "backfill", str(manifest), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("batch ") and first.endswith(" created"), proc.stdout
    batch_id = int(first.split()[1])
    assert "5 accepted" in proc.stdout and "10 bad" in proc.stdout, proc.stdout

    report = _report(tmp_path / "kyc.errors.csv")
    expected = {
        ("7", "bad-short"): "missing column video",
        ("8", "bad-type"): "must be one of LIP, ACTION, SILENT",
        ("9", "bad-lip"): "LIP needs a 4-digit code",
        ("10", "bad-action"): "ACTION needs an action sequence",
        ("11", "bad-missing"): "file not found",
        ("12", "bad-format"): "content is a PNG file",
        ("13", "bad-big"): "8 MB limit",
        ("14", "good-lip"): "duplicate key: already on row 3",
        ("15", "bad-bucket"): "is not COS_BUCKET",
        ("16", "bad-meta"): "metadata: not valid JSON",
    }
    assert {(r["row"], r["key"]) for r in report} == set(expected)
    for r in report:
        assert expected[(r["row"], r["key"])] in r["reason"], r

    start_worker()
    good = ["good-silent", "good-lip", "good-action", "good-relative", "good-cos"]

    def finished():
        with session_scope(database_url) as s:
            jobs = s.scalars(select(Job).where(Job.batch_id == batch_id)).all()
        return jobs if all(j.state in ("completed", "failed") for j in jobs) else None

    jobs = wait_until(finished, 60, what="the batch's jobs to finish")
    assert sorted(j.idempotency_key for j in jobs) == sorted(good)
    assert all(j.state == "completed" for j in jobs), [(j.idempotency_key, j.error_message)
                                                       for j in jobs]
    by_key = {j.idempotency_key: j for j in jobs}
    assert by_key["good-silent"].meta == {"customer": 1}
    assert by_key["good-lip"].batch_row == 3
    # The simulator heard about the good rows' videos only, once each.
    calls = sim_calls(sim_control)
    want = {file_md5(v) for v in (v0, v1, v2, v3)} | {hashlib.md5(cos_video).hexdigest()}
    assert sorted(c["video_md5"] for c in calls) == sorted(want)
    assert file_md5(renamed) not in {c["video_md5"] for c in calls}
    with session_scope(database_url) as s:
        batch = s.get(Batch, batch_id)
        assert (batch.rows_read, batch.rows_accepted, batch.rows_bad) == (15, 5, 10)
        assert batch.lane == "backfill" and batch.enqueue_finished_at is not None


def test_jsonl_rows_shape_errors_are_reported(configured, tmp_path):
    settings = configured
    photo, video = write_pair(tmp_path / "m", 1)
    lines = [
        {"key": "j-ok", "photo": str(photo), "video": str(video), "liveness_type": "LIP",
         "validate_data": 1234, "metadata": {"source": "crm"}, "branch": "north"},
        {"key": "j-novideo", "photo": str(photo), "liveness_type": "SILENT"},
        "not json at all",
        ["a", "list"],
        {"key": "j-typed", "photo": str(photo), "video": 5.5, "liveness_type": "SILENT"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
                        + "\n")
    result = run_backfill(settings, manifest, report_path=tmp_path / "r.csv")
    assert (result.read, result.accepted, result.bad) == (5, 1, 4)
    reasons = {r["row"]: r["reason"] for r in _report(tmp_path / "r.csv")}
    assert reasons["2"] == "missing column video"
    assert reasons["3"].startswith("not valid JSON")
    assert reasons["4"] == "not a JSON object"
    assert reasons["5"] == "video: expected text, got float"
    with session_scope(settings.database_url) as s:
        job = s.scalars(select(Job).where(Job.idempotency_key == "j-ok")).one()
    assert job.validate_data == "1234" and job.meta == {"source": "crm", "branch": "north"}


def test_cli_refuses_a_manifest_without_required_columns(tmp_path, app_env, configured,
                                                        database_url):
    manifest = tmp_path / "m.csv"
    manifest.write_text("customer,photo\n1,a.jpg\n")
    env = {**os.environ, **app_env, "DATABASE_URL": database_url}
    proc = _cli(env, "backfill", str(manifest))
    assert proc.returncode == 2
    assert "missing required column(s) key, video, liveness_type" in proc.stderr
    assert "Traceback" not in proc.stderr
    with session_scope(database_url) as s:
        assert s.scalars(select(Batch)).all() == []


def test_backfill_rows_store_what_submit_stores(configured, tmp_path):
    """A backfill row and a submitted job of the same media get the same columns from the
    spec: the MD5s of local files among them (staging then does not hash them again)."""
    settings = configured
    photo, video = write_pair(tmp_path / "m", 2)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"key,photo,video,liveness_type\nb-1,{photo},{video},SILENT\n")
    assert run_backfill(settings, manifest, report_path=tmp_path / "r.csv").accepted == 1
    submitted, _ = insert_job(settings, validate_spec(JobSpec(
        idempotency_key="s-1", photo=str(photo), video=str(video), liveness_type="SILENT",
        lane="backfill"), settings))
    with session_scope(settings.database_url) as s:
        fed = s.scalars(select(Job).where(Job.idempotency_key == "b-1")).one()
        direct = s.get(Job, submitted)
        assert (fed.photo_md5, fed.video_md5) == (file_md5(photo), file_md5(video))
        for column in ("photo_md5", "video_md5", "liveness_type", "validate_data", "state",
                       "preflight", "photo_source", "video_source"):
            assert getattr(fed, column) == getattr(direct, column), column
        assert fed.due_at is not None and fed.enqueued_at is None
