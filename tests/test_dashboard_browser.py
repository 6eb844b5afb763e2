"""A batch's dashboard in real headless Chromium, served by uvicorn on 127.0.0.1: the panels
update in place while jobs end, a retry of one code is a dry run then a confirmation, and
the report downloads with the hash its summary names."""

from __future__ import annotations

import hashlib

import pytest
from test_browser import browser, running  # noqa: F401 - browser: the fixture

from faceid_batch import migrate
from faceid_batch.admin.app import create_app
from faceid_batch.db import session_scope
from faceid_batch.models import Batch, BatchAction, BatchCalls, Job, JobState, Lane
from faceid_batch.settings import load_settings
from faceid_batch.times import utcnow
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

TOKEN = "dashboard-browser-token-0123456789"
CODE = "FailedOperation.DownLoadTimeoutError"


@pytest.fixture
def served(tmp_path, redis_server):
    url = f"sqlite:///{tmp_path}/faceid.db"
    migrate.upgrade(url)
    settings = load_settings(
        database_url=url, redis_url=redis_server.url, admin_token=TOKEN,
        faceid_secret_id=FAKE_SECRET_ID, faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET,
        faceid_price_per_call="0.05")
    now = utcnow()
    with session_scope(url) as s:
        batch = Batch(name="overnight", lane=Lane.BACKFILL, manifest_sha256="ab" * 32)
        s.add(batch)
        s.flush()
        rows = [(JobState.COMPLETED, "Success", True, 88.0)] * 3 + [
            (JobState.FAILED, CODE, None, None)] * 2 + [
            (JobState.FAILED, "Local.SourceTimeout", None, None)] + [
            (JobState.QUEUED, None, None, None)] * 14
        for i, (state, code, passed, sim) in enumerate(rows):
            s.add(Job(idempotency_key=f"night-{i:03d}", lane=Lane.BACKFILL, state=state,
                      liveness_type="SILENT", photo_source="/p.jpg", video_source="/v.mp4",
                      result_code=code, passed=passed, sim=sim, batch_id=batch.id,
                      attempts=1 if code else 0, batch_row=i + 1, created_at=now,
                      finished_at=now if code else None,
                      due_at=now if state == JobState.QUEUED else None))
        s.add(BatchCalls(batch_id=batch.id, minute=now.replace(second=0, microsecond=0),
                         code="Success", billable=True, calls=3, waited_ms=600))
        batch_id = batch.id
    with running(create_app(settings)) as base:
        yield base, batch_id, url


def test_dashboard_updates_retries_after_a_dry_run_and_downloads_the_report(
        served, browser):  # noqa: F811 - browser: test_browser's fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, batch_id, url = served
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/review"))

    browser.get(f"{base}/batches")
    browser.find_element(By.LINK_TEXT, str(batch_id)).click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith(f"/batches/{batch_id}"))
    progress = browser.find_element(By.ID, "progress").text
    assert "6 / 20" in progress
    for panel in ("calls", "held", "outcomes", "codes", "sim", "attempts", "money"):
        assert browser.find_element(By.ID, panel).is_displayed(), panel
    first_read = browser.find_element(By.ID, "read-at").get_attribute("data-read-at")

    # The batch runs on: four more jobs end, with their calls. The page reads them by itself.
    now = utcnow()
    with session_scope(url) as s:
        for job in s.query(Job).filter(Job.state == JobState.QUEUED).limit(4):
            job.state, job.result_code, job.passed, job.sim = (JobState.COMPLETED, "Success",
                                                               True, 75.0)
            job.attempts, job.due_at, job.finished_at = 1, None, now
        row = s.get(BatchCalls, (batch_id, now.replace(second=0, microsecond=0), "Success",
                                 True, "default"))
        if row is None:
            s.add(BatchCalls(batch_id=batch_id, minute=now.replace(second=0, microsecond=0),
                             code="Success", billable=True, calls=4, waited_ms=100))
        else:
            row.calls += 4
    WebDriverWait(browser, 20).until(
        lambda d: "10 / 20" in d.find_element(By.ID, "progress").text)
    assert browser.find_element(By.ID, "read-at").get_attribute("data-read-at") != first_read
    assert browser.current_url.endswith(f"/batches/{batch_id}")  # updated in place

    # Retry the jobs that failed with one code: first what it will take, then the act.
    Select(browser.find_element(By.ID, "retry-code")).select_by_value(CODE)
    browser.find_element(By.ID, "retry").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "confirm"))
    plan = browser.find_element(By.ID, "plan").text
    assert "Retry 2 failed jobs" in browser.find_element(By.ID, "title").text
    assert CODE in plan
    with session_scope(url) as s:  # the dry run changed nothing
        assert s.query(Job).filter(Job.result_code == CODE,
                                   Job.state == JobState.FAILED).count() == 2
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 10).until(lambda d: "done=retry" in d.current_url)
    assert browser.find_element(By.ID, "flash").is_displayed()
    with session_scope(url) as s:
        assert s.query(Job).filter(Job.result_code == CODE).count() == 0
        assert s.query(Job).filter(Job.result_code == "Local.SourceTimeout",
                                   Job.state == JobState.FAILED).count() == 1
        [action] = s.query(BatchAction).all()
        assert (action.action, action.actor, action.surface) == ("retry", "ADMIN_TOKEN", "web")

    # The report, as the browser downloads it, and the summary that names its hash.
    csv_text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/batches/{batch_id}/report.csv').then(r => r.text()).then(done);")
    assert csv_text.splitlines()[0].startswith("key,")
    assert "night-000" in csv_text and len(csv_text.splitlines()) == 21
    summary = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/batches/{batch_id}/summary.json').then(r => r.json()).then(done);")
    assert summary["manifest_sha256"] == "ab" * 32
    assert summary["report_sha256"] == hashlib.sha256(csv_text.encode()).hexdigest()
