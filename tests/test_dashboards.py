"""The SRE assets without a gateway: the committed dashboards are what dashboards/build.py builds, they keep
the house conventions (units, $__rate_interval, scoped by $job/$instance, the $datasource variable), every
metric a dashboard or rule names is one the gateway defines, every alert links a runbook section that
exists, `promtool check` accepts the rules and example configs, and `promtool test rules` passes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards import build
from gateway.observability.metrics import (
    DEVICE_METRIC_NAMES,
    GPU_METRIC_NAMES,
    METRIC_NAMES,
    STANDARD_METRIC_NAMES,
)
from tests.prometheus import require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
ALERTS = DASHBOARDS / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, regexes included
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery windows
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)  # numbers
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0) not in _KEYWORDS:
            names.add(m.group(0))
    return names


def _defined() -> set[str]:
    histograms = {n for n in (*METRIC_NAMES, *DEVICE_METRIC_NAMES) if not n.endswith("_total")}
    suffixed = {f"{n}{s}" for n in histograms for s in ("_bucket", "_sum", "_count")}
    rules = yaml.safe_load(ALERTS.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exported = (*METRIC_NAMES, *DEVICE_METRIC_NAMES, *GPU_METRIC_NAMES, *STANDARD_METRIC_NAMES)
    return {*exported, *suffixed, "up", *recorded}


def _rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_committed_json_is_what_build_py_builds(tmp_path: Path) -> None:
    assert build.main([str(tmp_path)]) == 0
    for make in build.DASHBOARDS:
        name = f"{make().uid}.json"
        assert (DASHBOARDS / name).read_text() == (tmp_path / name).read_text(), (
            f"dashboards/{name} is stale: run `python -m dashboards.build`"
        )
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(p.name for p in tmp_path.glob("*.json"))


def test_the_metric_name_check_finds_names_and_catches_strangers() -> None:
    expr = (
        'sum by (model, le) (rate(sluice_request_duration_seconds_bucket{job=~"$job", le="0.25"}[5m])) '
        "/ on (job) group_left sluice:availability_errors:ratio_rate5m offset 15m "
        "or on() vector(0) > bool 1e-3 unless absent(up)"
    )
    assert metric_names(expr) == {
        "sluice_request_duration_seconds_bucket",
        "sluice:availability_errors:ratio_rate5m",
        "up",
    }
    # what a peer's dashboard ships: a name its server never exports
    assert metric_names("rate(nv_inference_load_ratio_bucket[1m])") - _defined() == {"nv_inference_load_ratio_bucket"}


def test_every_metric_named_by_a_dashboard_or_rule_is_defined_by_the_gateway() -> None:
    defined = _defined()
    named: dict[str, set[str]] = {}
    for make in build.DASHBOARDS:
        d = make()
        for panel in d.panels:
            for t in panel.targets:
                named[f"{d.uid} / {panel.title}"] = metric_names(t.expr) | named.get(f"{d.uid} / {panel.title}", set())
        for v in d.variables:
            named[f"{d.uid} ${v.name}"] = metric_names(v.query.removeprefix("label_values(").rsplit(",", 1)[0])
    for name, expr in _rule_exprs():
        named[f"rule {name}"] = metric_names(expr) | named.get(f"rule {name}", set())
    unknown = {where: sorted(names - defined) for where, names in named.items() if names - defined}
    assert not unknown, unknown
    assert all(named.values()), [w for w, n in named.items() if not n]
    # and the other way: no defined family is left without a panel
    shown = set().union(*(n for w, n in named.items() if not w.startswith("rule ")))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shown}
    missing = [n for n in METRIC_NAMES if n not in shown and n not in families]
    assert not missing, f"metrics no dashboard shows: {missing}"


def test_dashboards_keep_the_conventions() -> None:
    for make in build.DASHBOARDS:
        doc = build.to_grafana(make())
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert {"job", "instance"} <= set(variables)
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for p in doc["panels"]:
            if p["type"] == "row":
                continue
            where = f"{doc['uid']} / {p['title']}"
            assert p["fieldConfig"]["defaults"]["unit"], f"{where}: no unit"
            assert p["description"], f"{where}: no description"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            for t in p["targets"]:
                expr = t["expr"]
                windows = re.findall(r"\[([^\]]+)\]", expr)
                assert all(w == "$__rate_interval" for w in windows), f"{where}: {windows}"
                for selector in re.findall(r"\{([^}]*)\}", expr):
                    assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, f"{where}: {expr}"
                for var in re.findall(r"\$(\w+)", expr):
                    assert var == "__rate_interval" or var in variables, f"{where}: ${var} is not defined"


def test_every_alert_has_a_summary_description_and_a_runbook_section_that_exists() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len({a["alert"] for a in alerts}) == 16
    for a in alerts:
        notes = a["annotations"]
        assert notes["summary"] and notes["description"], a["alert"]
        assert a["labels"]["severity"] in ("critical", "warning")
        url = notes["runbook_url"]
        assert url.endswith("/docs/runbook.md#" + a["alert"].lower()), url
        assert a["alert"].lower() in anchors, f"docs/runbook.md has no section for {a['alert']}"


def test_promtool_checks_the_rules_and_the_example_configs() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS: 36 rules found" in out.stdout, out.stdout + out.stderr
    for config in ("prometheus.yml", "prometheus-fleet.yml"):
        out = subprocess.run(
            [promtool, "check", "config", str(DASHBOARDS / config)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"], cwd=DASHBOARDS, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    tests = yaml.safe_load((DASHBOARDS / "rules_test.yml").read_text())["tests"]
    covered = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    every = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert covered == every and fired == every  # each alert is seen firing and seen silent


@pytest.mark.parametrize("doc", ["README.md", "docs/runbook.md"])
def test_docs_name_only_defined_metrics(doc: str) -> None:
    text = (ROOT / doc).read_text()
    defined = _defined()
    named = set(re.findall(r"\b(sluice_[a-z0-9_]+)", text))
    unknown = sorted(n for n in named if n not in defined and not any(n == d.removesuffix("_total") for d in defined))
    assert not unknown, unknown
