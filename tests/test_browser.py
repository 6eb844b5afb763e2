"""The review page in real headless Chromium, served by uvicorn on 127.0.0.1: log in, filter,
open one job, see the ID photo (from COS) and the best frame (from the database) load, and
log out; move through the listing and the pages with the keyboard, to a job and back."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from test_queries import seed

from faceid_batch.admin import audit
from faceid_batch.admin.app import create_app
from faceid_batch.admin.auth import COOKIE
from faceid_batch.db import session_scope
from faceid_batch.models import BestFrame, Job
from faceid_batch.settings import load_settings
from faceid_batch.stage.storage import MediaStager
from helpers import BUCKET, FAKE_SECRET_ID, FAKE_SECRET_KEY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real, decodable PNG (the sample media are not images a browser can draw)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, simulator):
    """The admin app on a real uvicorn server (SQLite), with one job's two images in place."""

    url = f"sqlite:///{tmp_path}/faceid.db"
    from faceid_batch import migrate

    migrate.upgrade(url)
    settings = load_settings(
        database_url=url, admin_token=TOKEN, faceid_secret_id=FAKE_SECRET_ID,
        faceid_secret_key=FAKE_SECRET_KEY, cos_bucket=BUCKET, cos_domain=simulator.cos_domain,
        cos_scheme="http")
    ids = seed(url)
    photo = tmp_path / "id.png"
    photo.write_bytes(png(40, 50, (200, 120, 40)))
    key = MediaStager(settings).stage("photo", str(photo)).key
    job = ids["bob-1"]
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job).values(photo_key=key))
        s.execute(update(BestFrame).where(BestFrame.job_id == job)
                  .values(content=png(32, 24, (30, 90, 200))))
    with running(create_app(settings)) as base:
        yield base, job, url


@contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free loopback port; its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_review_page_shows_both_images(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, job, url = served
    browser.get(f"{base}/review")  # no cookie yet: sent to the login form
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/review"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.job")) == 9
    # The browser holds a session id that expires, not the token.
    [cookie] = browser.get_cookies()
    assert cookie["name"] == COOKIE and cookie["value"] != TOKEN and cookie["httpOnly"]
    assert 0 < cookie["expiry"] - time.time() <= 8 * 3600

    browser.find_element(By.ID, "f-key_prefix").send_keys("bob-")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, 10).until(lambda d: "key_prefix=bob-" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job")
    assert len(rows) == 2
    browser.find_element(By.LINK_TEXT, str(job)).click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith(f"/review/jobs/{job}"))
    assert "40.00" in browser.find_element(By.ID, "sim").text
    assert "fail" in browser.find_element(By.ID, "verdict").text

    def loaded(img_id: str) -> int:
        return browser.execute_script(
            "const i = document.getElementById(arguments[0]);"
            "return i.complete ? i.naturalWidth : -1;", img_id)

    WebDriverWait(browser, 10).until(lambda d: loaded("id-photo") >= 0
                                     and loaded("best-frame") >= 0)
    assert loaded("id-photo") == 40
    assert loaded("best-frame") == 32
    src = browser.find_element(By.ID, "id-photo").get_attribute("src")
    assert "/media/" in src and "sig=" in src and BUCKET not in src
    # Each image the browser was shown is one audit row: who, which job, from where.
    seen = [(r.actor, r.surface, r.what, r.job_id, r.remote)
            for r in audit.entries(url, audit.Query(job_id=job))]
    assert sorted(seen) == [("ADMIN_TOKEN", "web", "best_frame", job, "127.0.0.1"),
                            ("ADMIN_TOKEN", "web", "id_photo", job, "127.0.0.1")]

    # Log out: back to the form, the cookie gone, and the pages closed again.
    browser.find_element(By.ID, "logout").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/login"))
    assert browser.get_cookies() == []
    browser.get(f"{base}/review/jobs/{job}")
    assert browser.current_url.endswith("/login")


def log_in(browser, base: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base}/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/review"))


def test_keyboard_through_the_listing_to_a_job_and_back(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, job, _ = served
    log_in(browser, base)
    browser.get(f"{base}/review?lane=backfill")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job")
    second = rows[1].find_element(By.TAG_NAME, "a").text
    assert browser.find_element(By.ID, "keys").is_displayed()

    def current() -> list[str]:
        return [r.find_element(By.TAG_NAME, "a").text
                for r in browser.find_elements(By.CSS_SELECTOR, "tr.job.current")]

    keys = ActionChains(browser)
    keys.send_keys("j").perform()
    assert current() == [rows[0].find_element(By.TAG_NAME, "a").text]
    keys.send_keys("j").perform()
    assert current() == [second]
    # The highlight is visible: the row's background differs from an unmarked row's.
    assert (rows[1].value_of_css_property("background-color")
            != rows[2].value_of_css_property("background-color"))
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith(f"/review/jobs/{second}"))

    # The job page: the Sim bar against the threshold and every attempt on the timeline.
    bar = browser.find_element(By.CSS_SELECTOR, "#sim-bar svg[role=img]")
    assert bar.find_elements(By.CSS_SELECTOR, "line.threshold")
    assert bar.find_elements(By.CSS_SELECTOR, "rect.value")
    timeline = browser.find_element(By.CSS_SELECTOR, "#timeline svg[role=img]")
    marks = timeline.find_elements(By.CSS_SELECTOR, "g.mark")
    table = browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    assert len(marks) == len(table) >= 1
    assert timeline.size["width"] > 300 and timeline.is_displayed()

    # u: back to the listing the job was opened from, filters included.
    ActionChains(browser).send_keys("u").perform()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/review?lane=backfill"))
    # Backspace does the same.
    browser.get(f"{base}/review/jobs/{job}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline g.mark")) == 3
    ActionChains(browser).send_keys(Keys.BACKSPACE).perform()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/review?lane=backfill"))

    # Arrow keys move the highlight too, and it stops at the first row.
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job")
    ActionChains(browser).send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_UP,
                                    Keys.ARROW_UP, Keys.ARROW_UP).perform()
    assert current() == [rows[0].find_element(By.TAG_NAME, "a").text]
    # "/" puts the cursor in the first filter field; typing there moves nothing.
    ActionChains(browser).send_keys("/").perform()
    assert browser.switch_to.active_element.get_attribute("id") == "f-batch"
    ActionChains(browser).send_keys("j").perform()
    assert current() == [rows[0].find_element(By.TAG_NAME, "a").text]
    assert browser.find_element(By.ID, "f-batch").get_attribute("value") == "j"


def test_keyboard_pages_with_n_and_p(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = served
    log_in(browser, base)
    browser.get(f"{base}/review?limit=4")
    ActionChains(browser).send_keys("n").perform()
    WebDriverWait(browser, 10).until(lambda d: "page=2" in d.current_url)
    ActionChains(browser).send_keys("p").perform()
    WebDriverWait(browser, 10).until(lambda d: "page=1" in d.current_url)
