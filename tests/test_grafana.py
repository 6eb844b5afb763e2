"""The Grafana dashboard (docs/grafana/faceid-batch.json) against what a worker's /metrics
exports: every metric an expression names exists, with its exposition suffix (_total for
counters, _bucket/_sum/_count for histograms); every faceid_* metric has a panel; the
datasource is the DS_PROMETHEUS variable, never a fixed uid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter, Histogram

from faceid_batch import migrate
from faceid_batch.ops import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "faceid-batch.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# PromQL words that are not metric names: functions, aggregations, their modifiers and
# binary operators, and the keywords of vector matching.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "and", "or", "unless", "offset", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "vector", "scalar", "abs", "clamp_min", "clamp_max",
    "round", "ceil", "floor", "time", "label_replace", "label_join", "sort", "sort_desc",
    "absent", "changes", "resets", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "inf", "nan",
}
# Names that only ever appear inside rate()/increase(): they count up.
COUNTING = re.compile(r"(_total|_bucket|_sum|_count)$")


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects, in order (repeats kept)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # dashboard variables
    text = re.sub(r"\boffset\s+-?[\dsmhdwy]+", " ", text)  # offset 5m
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)  # numbers
    return [m.group(0) for m in re.finditer(r"[A-Za-z_:][\w:]*(?!\w*\s*\()", text)
            if m.group(0).lower() not in PROMQL_WORDS]


def test_the_name_parser():
    expr = ('histogram_quantile(0.95, sum by (le) (rate(a_bucket{job=~"$job",x="rate(b)"}'
            '[$__rate_interval]))) / on (instance) group_left b_total * 1e3 + vector($budget)'
            ' - max without (lane) (c:rule:sum offset 5m)')
    assert metric_names(expr) == ["a_bucket", "b_total", "c:rule:sum"]


class _Pipe:
    def __init__(self) -> None:
        self.n = 0

    def llen(self, _name: str) -> None:
        self.n += 1

    def execute(self) -> list[int]:
        return [3] * self.n


# The names a family of each type is served under (the text exposition format).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
            "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
            "unknown": ("",)}


def served_names(families: Any) -> set[str]:
    """The sample names of metric families, including those of a labelled family no label
    value of which has been seen yet (no sample to read the names from)."""
    names = set()
    for family in families:
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        names |= {s.name for s in family.samples}
    return names


def test_names_per_type():
    assert {"faceid_calls_total", "faceid_calls_created"} <= served_names(metrics.CALLS.collect())
    assert served_names(metrics.CALL_LATENCY.collect()) == {
        f"faceid_call_latency_seconds{s}" for s in ("_bucket", "_sum", "_count", "_created")}
    assert "faceid_calls" not in served_names(REGISTRY.collect())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a worker's endpoint serves: the default registry (metrics.py's
    counters and histograms, the process and Python collectors) and the scrape-time figures
    of StateCollector, read here from a migrated SQLite database and a stand-in Redis."""
    names = served_names(REGISTRY.collect())
    url = f"sqlite:///{tmp_path_factory.mktemp('grafana')}/faceid.db"
    migrate.upgrade(url)
    parts = SimpleNamespace(
        settings=SimpleNamespace(database_url=url, rate_limit_margin_ms=10),
        margins=SimpleNamespace(extra=lambda account: 0.02 if account == "th-1" else 0.0),
        redis=SimpleNamespace(pipeline=lambda transaction=False: _Pipe()),
        breaker=SimpleNamespace(state=lambda: SimpleNamespace(open=False)),
        breakers=tuple(SimpleNamespace(account=n, state=lambda: SimpleNamespace(open=False))
                       for n in ("default", "th-1")))
    state = metrics.StateCollector(lambda: parts)
    families = list(state.collect())
    assert {f.name for f in families} == {"faceid_jobs", "faceid_queue_depth",
                                          "faceid_breaker_open",
                                          "faceid_rate_limit_margin_seconds"}
    margin = next(f for f in families if f.name == "faceid_rate_limit_margin_seconds")
    assert {s.labels["account"]: round(s.value, 3) for s in margin.samples} == {
        "default": 0.01, "th-1": 0.03}
    names |= served_names(families)
    return names


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in data["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def expressions(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(data) for t in p.get("targets", [])]


def test_every_metric_in_every_expression_is_exported(exported):
    seen = set()
    for title, expr in expressions(dashboard()):
        names = metric_names(expr)
        assert names or expr.startswith("vector("), (title, expr)
        for name in names:
            assert name in exported, f"{title}: {name} is not exported ({expr})"
            seen.add(name)
            # Counters and histogram series only go up: a panel shows their rate.
            if COUNTING.search(name):
                assert re.search(rf"\b(rate|irate|increase)\(\s*{re.escape(name)}\b", expr), (
                    title, expr)
        for quantile in re.findall(r"histogram_quantile\(([^,]+),\s*(.*)", expr):
            inner = metric_names(quantile[1])
            assert inner and all(n.endswith("_bucket") for n in inner), (title, expr)
            assert "by (le)" in quantile[1], (title, expr)
    # Every faceid_* family metrics.py defines, under its exposition name, is on a panel.
    defined = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            defined.add(value._name + "_total")
        elif isinstance(value, Histogram):
            defined.add(value._name + "_bucket")
    defined |= {"faceid_jobs", "faceid_queue_depth", "faceid_breaker_open"}
    assert len(defined) == 9
    # The endpoints' clock offsets (metrics.ClockCollector, always registered).
    defined.add("faceid_clock_offset_seconds")
    assert defined - seen == set()


def test_dashboard_structure():
    data = dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in panels(data)]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    for p in panels(data):
        assert p["title"] and p["type"], p
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), p["title"]
    # Panels do not overlap on the grid.
    cells: dict[tuple[int, int], str] = {}
    for p in panels(data):
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


def test_datasource_is_a_variable_never_a_fixed_uid():
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert variables["rate_limit"]["type"] in ("textbox", "constant", "custom")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "datasource" in node and node["datasource"] is not None:
                ds = node["datasource"]
                uid = ds.get("uid") if isinstance(ds, dict) else ds
                assert uid == "${DS_PROMETHEUS}", (where, ds)
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(data, "dashboard")
    # The only uid is the dashboard's own, and no export residue pins an instance.
    assert re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text()).count(data["uid"]) == 1
    assert "__inputs" not in data and data.get("id") is None
