"""The review pages and the SVG helpers, rendered without a server: structure, escaping,
positions of the marks."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from faceid_batch.admin import pages, svg
from faceid_batch.admin.queries import Listing, ResultRow

HOSTILE = "<script>alert('x')</script>&\"'"
T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
NS = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    """An SVG string as XML: it must be well formed."""
    return ET.fromstring(markup)


def assert_accessible(root: ET.Element) -> None:
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img" and root.get("aria-label")
    title = root.find(f"{NS}title")
    assert title is not None and title.text == root.get("aria-label")


class Elements(HTMLParser):
    """Tags, ids and the text of a page, and whether it runs any script but inline ones."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, tuple[str, dict[str, str | None]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids[str(a["id"])] = (tag, a)
        if tag == "script":
            self.scripts += 1
            assert "src" not in a

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def elements(html: str) -> Elements:
    p = Elements()
    p.feed(html)
    return p


# -- svg.py ------------------------------------------------------------------------------
@pytest.mark.parametrize(("threshold", "lo", "hi"), [(70.0, 0, 100), (0.5, 0, 1), (85, 50, 100)])
def test_bar_marks_the_threshold_and_the_value_where_they_are(threshold, lo, hi):
    width, pad = 260, 4
    value = lo + (hi - lo) * 0.8
    root = parse(svg.bar(value, threshold, lo, hi, width=width))
    assert_accessible(root)
    line = root.find(f".//{NS}line[@class='threshold']")
    bar = root.find(f".//{NS}rect[@class='value']")
    assert line is not None and bar is not None
    expected = pad + (threshold - lo) / (hi - lo) * (width - 2 * pad)
    assert float(line.get("x1", "nan")) == pytest.approx(expected, abs=0.06)
    assert float(bar.get("width", "nan")) == pytest.approx(0.8 * (width - 2 * pad), abs=0.06)
    # 80 % of the way is above each threshold here: the pass colour; and a tooltip each.
    assert svg.PASS in (bar.get("style") or "")
    assert line.find(f"{NS}title") is not None and bar.find(f"{NS}title") is not None


def test_bar_colours_and_edges():
    fail = parse(svg.bar(40, 70)).find(f".//{NS}rect[@class='value']")
    assert fail is not None and svg.FAIL in (fail.get("style") or "")
    # The verdict given wins over the comparison with the threshold.
    forced = parse(svg.bar(40, 70, passed=True)).find(f".//{NS}rect[@class='value']")
    assert forced is not None and svg.PASS in (forced.get("style") or "")
    # Out of range: clamped to the ends; no value: a note, no bar.
    over = parse(svg.bar(150, 70)).find(f".//{NS}rect[@class='value']")
    assert over is not None and float(over.get("width", "0")) == 252
    empty = parse(svg.bar(None, 70))
    assert empty.find(f".//{NS}rect[@class='value']") is None
    assert "no value" in (empty.get("aria-label") or "")
    assert parse(svg.bar(50, None)).find(f".//{NS}line[@class='threshold']") is None


def test_timeline_places_marks_along_the_span_and_escapes_tooltips():
    points = [svg.Mark(0, "#e07b00", HOSTILE), (50, svg.PASS, "half"), (100, "red", "end"),
              (-20, "red", "before"), (500, "red", "after")]
    markup = svg.timeline(points, 0, 100, width=220, start_label=HOSTILE, end_label="done")
    assert "<script>" not in markup
    root = parse(markup)
    assert_accessible(root)
    marks = root.findall(f".//{NS}g[@class='mark']")
    assert len(marks) == 5
    xs = [float(m.find(f"{NS}circle").get("cx", "nan")) for m in marks]
    assert xs == [10, 110, 210, 10, 210]  # 10 px padding each side; outside: at the ends
    assert marks[0].find(f"{NS}title").text == HOSTILE
    # A span of no length still draws (the marks in its middle... or at its start).
    parse(svg.timeline([(5, "red", "x")], 5, 5))


def test_colours_that_are_not_colours_are_refused():
    assert svg.colour("#1a7f37") == "#1a7f37"
    assert svg.colour("var(--pass, #1a7f37)") == "var(--pass, #1a7f37)"
    assert svg.colour("rgb(1, 2, 3)") == "rgb(1, 2, 3)"
    for bad in ("red' onload='x", "red;background:url(x)", "<b>", "x" * 200, ""):
        assert svg.colour(bad) == "currentColor"
    markup = svg.stacked_bar([("a", 1, "red' onload='alert(1)")])
    assert "onload" not in markup
    parse(markup)


def test_ticks_and_ceiling_are_round():
    assert svg.ticks(0, 17) == [0, 5, 10, 15]
    assert svg.ticks(0, 1, 10) == [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1]
    assert svg.ticks(-3, 12, 3) == [0, 5, 10]
    assert svg.ticks(3, 3) == [3]
    assert [svg.ceiling(v) for v in (17, 107, 0.3, 0, 1000)] == [20, 120, 0.3, 1, 1000]
    assert [svg.label(v) for v in (12, 0.25, 15000, 2_500_000, float("inf"))] == [
        "12", "0.25", "15k", "2.5M", "∞"]


def test_line_chart_series_axes_and_reference_line():
    series = [("calls/s <ok>", [(0, 1), (60, 4), (120, 2)]), ("errors", [(0, 0), (120, 1)])]
    root = parse(svg.line_chart(series, width=400, height=200, hline=5, hline_label="budget"))
    assert_accessible(root)
    assert "calls/s <ok>" in (root.get("aria-label") or "")
    groups = root.findall(f".//{NS}g[@class='series']")
    assert [g.get("data-name") for g in groups] == ["calls/s <ok>", "errors"]
    points = groups[0].find(f"{NS}polyline").get("points", "").split()
    assert len(points) == 3
    assert len(groups[0].findall(f"{NS}circle")) == 3  # a tooltip per point
    ticks = [t.text for t in root.findall(f".//{NS}text[@class='tick']")]
    assert ticks == ["0", "50", "100"]
    hline = root.find(f".//{NS}g[@class='hline']")
    assert hline is not None and hline.find(f"{NS}title").text == "budget 5"
    # The y axis reaches the budget line: it is inside the plot, above every point.
    y = float(hline.find(f"{NS}line").get("y1", "nan"))
    ys = [float(p.split(",")[1]) for p in points]
    assert 22 <= y < min(ys)
    # y_max fixes the top: the budget then sits at the top edge.
    fixed = parse(svg.line_chart(series, width=400, height=200, y_max=5, hline=5))
    line = fixed.find(f".//{NS}g[@class='hline']/{NS}line")
    assert line is not None and float(line.get("y1", "nan")) == 22
    assert "no data" in svg.line_chart([])
    many = parse(svg.line_chart([("s", [(float(i), 1.0) for i in range(500)])]))
    assert many.findall(f".//{NS}circle") == []


def test_histogram_buckets_marker_and_infinite_bucket():
    buckets = [(0, 0.5, 3), (0.5, 1, 10), (1, 2, 4), (2, float("inf"), 1)]
    root = parse(svg.histogram(buckets, marker=1.0, marker_label="p95 <x>", width=412))
    assert_accessible(root)
    bars = root.findall(f".//{NS}rect[@class='bucket']")
    assert len(bars) == 4
    assert [b.find(f"{NS}title").text for b in bars][-1] == "≥ 2: 1"
    heights = [float(b.get("height", "nan")) for b in bars]
    assert heights.index(max(heights)) == 1
    marker = root.find(f".//{NS}g[@class='marker']")
    assert marker is not None and marker.find(f"{NS}title").text == "p95 <x> 1"
    # x spans 0..3 (the +Inf bucket as wide as the one before) over 40..400: 1 is at 160.
    assert float(marker.get("data-x", "nan")) == pytest.approx(160, abs=0.06)
    assert "no data" in svg.histogram([])


def test_stacked_bar_shares_and_legend():
    parts = [("pass", 3, svg.PASS), ("fail", 1, svg.FAIL), ("none", 0, "#999")]
    root = parse(svg.stacked_bar(parts, width=404))
    assert_accessible(root)
    segments = root.findall(f".//{NS}rect[@class='part']")
    assert [float(s.get("width", "nan")) for s in segments] == [300, 100]
    assert [s.find(f"{NS}title").text for s in segments] == [
        "pass: 3 (75.0 %)", "fail: 1 (25.0 %)"]
    assert len(root.findall(f".//{NS}g[@class='legend']")) == 3
    assert "no data" in svg.stacked_bar([])
    assert "<script>" not in svg.stacked_bar([(HOSTILE, 2, "red")])


# -- pages.py ----------------------------------------------------------------------------
def row(job_id: int, key: str, **kw: Any) -> ResultRow:
    values: dict[str, Any] = dict(
        id=job_id, key=key, batch_id=None, lane="onboarding", state="completed", attempts=1,
        code="Success", passed=True, sim=91.5, request_id=None, description=None, error=None,
        created_at=T0, finished_at=T0)
    values.update(kw)
    return ResultRow(**values)


def test_listing_escapes_and_keeps_the_ids_tests_use():
    out = Listing([row(2, HOSTILE, lane=HOSTILE, code=HOSTILE), row(1, "plain", passed=False,
                                                                      sim=None)],
                  page=2, limit=2, has_more=True, sort="-sim")
    html = pages.listing(out, {"key_prefix": HOSTILE, "page": "2", "sort": "-sim"})
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    page = elements(html)
    for ident in ("results", "prev", "next", "apply", "logout", "keys", "f-verdict",
                  *(f"f-{name}" for name, _ in pages.FILTERS)):
        assert ident in page.ids, ident
    assert page.ids["f-key_prefix"][1]["value"] == HOSTILE  # round-trips through the form
    assert page.ids["f-state"][1]["list"] == "choices-state"
    rows = [a for tag, a in page.tags if tag == "tr" and a.get("class") == "job"]
    assert [a["data-href"] for a in rows] == ["/review/jobs/2", "/review/jobs/1"]
    assert page.scripts == 1  # the keys: inline, nothing loaded
    assert "<link" not in html and "http://" not in html and "https://" not in html
    # The sorted column says so and turns around on a click; columns that do not sort
    # have no link (a sort the query layer refuses).
    heads = re.findall(r"<th[^>]*>(.*?)</th>", html)
    assert any("Sim ▼" in h and "sort=sim" in h for h in heads)
    assert "batch" in heads and "verdict" in heads
    assert "sort=&" not in html
    # The pager keeps the filters.
    assert page.ids["next"][1]["href"].startswith("?key_prefix=%3Cscript")
    assert "page=3" in str(page.ids["next"][1]["href"])
    assert "class='badge pass'" in html and "class='badge none'" not in html
    assert "class='badge fail'" in html


def test_listing_without_rows():
    html = pages.listing(Listing([], page=1, limit=50, has_more=False), {})
    page = elements(html)
    assert "no job matches" in html and "prev" not in page.ids and "next" not in page.ids


def shown(**kw: Any) -> dict[str, Any]:
    attempts = [
        {"number": 1, "started_at": T0 + timedelta(seconds=10), "latency_ms": 900,
         "http_status": 200, "request_id": "r-1", "code": "FailedOperation.UnKnown",
         "kind": "transient", "channel": "result", "message": None, "counted": True},
        {"number": 2, "started_at": T0 + timedelta(seconds=60), "latency_ms": 1200,
         "http_status": 200, "request_id": HOSTILE, "code": "Success", "kind": "success",
         "channel": "result", "message": None, "counted": True},
    ]
    job = {"id": 7, "key": HOSTILE, "batch_id": 3, "lane": "backfill", "state": "completed",
           "attempts": 2, "code": "Success", "passed": True, "error": None,
           "created_at": T0, "finished_at": T0 + timedelta(seconds=100)}
    result = {"sim": 82.5, "threshold": 70.0, "passed": True, "description": HOSTILE}
    out = {"job": job, "attempts": attempts, "result": result,
           "best_frame": {"md5": "0" * 32},
           "images": {"id_photo": "/media/7/id_photo?sig=a&b='", "best_frame": "/media/7/b"}}
    for k, v in kw.items():
        out[k] = v
    return out


def test_job_page_verdict_bar_timeline_and_escaping():
    html = pages.job(shown())
    assert "<script>alert" not in html
    page = elements(html)
    for ident in ("verdict", "sim", "sim-bar", "timeline", "id-photo", "best-frame",
                  "attempts", "logout", "back"):
        assert ident in page.ids, ident
    assert page.ids["verdict"][1]["class"] == "badge pass big"
    assert page.ids["id-photo"][1]["src"] == "/media/7/id_photo?sig=a&b='"
    assert page.scripts == 1
    bar = parse(re.search(r"<figure id='sim-bar'>(<svg.*?</svg>)", html).group(1))
    threshold = bar.find(f".//{NS}line[@class='threshold']")
    assert threshold is not None and float(threshold.get("x1", "nan")) == pytest.approx(
        4 + 0.7 * (320 - 8), abs=0.06)
    chart = re.search(r"<figure id='timeline'>(<svg.*?</svg>)", html).group(1)
    marks = parse(chart).findall(f".//{NS}g[@class='mark']")
    # Created at T0, finished at +100 s, on 720 px with 10 px padding: +10 s and +60 s.
    xs = [float(m.find(f"{NS}circle").get("cx", "nan")) for m in marks]
    assert xs == [pytest.approx(10 + 70), pytest.approx(10 + 420)]
    styles = [m.find(f"{NS}circle").get("style") for m in marks]
    assert pages.KIND_COLOURS["transient"] in str(styles[0])
    assert pages.KIND_COLOURS["success"] in str(styles[1])
    assert "attempt 2 · success · Success · +60.0 s" in chart
    assert "finished 2026-01-01 10:01:40 (+100.0 s)" in chart
    # The attempts table below the timeline, its RequestId escaped.
    assert html.index("id='timeline'") < html.index("id='attempts'")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;&#x27;</td>" in html


def test_job_page_without_result_nor_times():
    j = {"id": 8, "key": "k", "batch_id": None, "lane": "onboarding", "state": "queued",
         "attempts": 0, "code": None, "passed": None, "error": HOSTILE, "created_at": None,
         "finished_at": None}
    html = pages.job(shown(job=j, attempts=[], result=None, best_frame=None))
    page = elements(html)
    assert page.ids["verdict"][1]["class"] == "badge none big"
    assert "no value" in html and "no times recorded" in html and "no best frame" in html
    assert "<script>alert" not in html


def test_job_page_unknown_kind_and_naive_times():
    naive = T0.replace(tzinfo=None)
    attempt = {"number": 1, "started_at": naive + timedelta(seconds=5), "latency_ms": 10,
               "http_status": None, "request_id": None, "code": "X", "kind": "<odd>",
               "channel": "result", "message": None, "counted": True}
    j = {**shown()["job"], "created_at": naive, "finished_at": None, "passed": False}
    html = pages.job(shown(job=j, attempts=[attempt]))
    assert "not finished" in html and "&lt;odd&gt;" in html and "<odd>" not in html
    assert pages.kind_colour("<odd>") == pages.OTHER_KIND


def test_login_page():
    page = elements(pages.login(HOSTILE))
    assert {"token", "login"} <= set(page.ids) and page.scripts == 0
    assert HOSTILE in "".join(page.text)
