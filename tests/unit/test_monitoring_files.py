"""The shipped alert rules and Grafana dashboard name only series bsud exposes (a real registry fed a full report),
and are complete: every alert says what to run and is unit-tested firing and not firing; the dashboard has its
data source and instance/drive variables, and every panel queries through them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ..metrics_fixture import full_metrics, sample_names, scrape

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "bsud.rules.yml"
RULE_TESTS = ROOT / "packaging" / "prometheus" / "bsud.rules.test.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "bsud.json"

#: Series Prometheus itself makes for each scrape target (BsudDown uses up).
PROMETHEUS_OWN = {"up"}
#: Words of PromQL that look like names: keywords and the label lists' introducers.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
            "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names
    (in matchers, by/on lists), durations, numbers nor strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                    # ranges, subqueries, [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not m.group(2) and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
    return names


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (le, direction) (rate(bsud_scale_duration_seconds_bucket{drive=~"$drive"}[$__rate_interval]))',
     {"bsud_scale_duration_seconds_bucket"}),
    ("a - ignoring(result) b > 0 unless on(instance, job) (time() - c > 300)", {"a", "b", "c"}),
    ('count(x{l="by (y)"} == 0) or vector(0)', {"x"}),
    ("rate(y[5m] offset 1h) / 1e9", {"y"}),
])
def test_the_name_extractor(expr: str, names: set[str]):
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name bsud serves (process_* included), with its _total/_bucket/_sum/_count suffixes."""
    return sample_names(scrape(full_metrics().served))


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    return [p for top in board["panels"] for p in (top, *top.get("panels", []))]


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query and every variable's label_values() metric."""
    found = [(p["title"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"])
            assert m, f"variable {var['name']}: {var['query']}"
            found.append((f"variable {var['name']}", m.group(1)))
    return found


def unknown(exprs: list[tuple[str, str]], exposed: set[str]) -> list[str]:
    return [f"{where}: {name}" for where, expr in exprs for name in sorted(metric_names(expr))
            if name not in exposed | PROMETHEUS_OWN]


def test_the_rules_name_only_series_bsud_exposes(exposed):
    exprs = [(r["alert"], r["expr"]) for r in rules()]
    assert len(exprs) >= 10 and not unknown(exprs, exposed)


def test_the_dashboard_names_only_series_bsud_exposes(exposed):
    exprs = dashboard_exprs(dashboard())
    assert len(exprs) > 25
    assert not unknown(exprs, exposed), unknown(exprs, exposed)
    assert not [e for _, e in exprs if "bsud_drive_seconds_to_full" in e], "a deprecated name"


def test_a_panel_naming_a_series_bsud_does_not_have_is_caught(exposed):
    board = dashboard()
    board["panels"][1]["targets"][0]["expr"] = 'sum(bsud_drive_blocked_total{instance=~"$instance"})'
    assert unknown(dashboard_exprs(board), exposed) == [f"{board['panels'][1]['title']}: bsud_drive_blocked_total"]


def test_every_alert_has_a_severity_a_wait_and_tells_what_to_run():
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule.get("for") or "increase(" in rule["expr"], f"{name}: no for:, nothing that holds it"
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"], name
        assert "bsud status" in rule["annotations"]["description"], f"{name}: does not say to run bsud status"


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    cases = [c for group in tests["tests"] for c in group["alert_rule_test"]]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: never tested firing"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: never tested not firing"


def test_the_dashboard_has_its_variables_and_every_query_goes_through_them():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"instance", "drive"} <= variables.keys()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        for target in panel["targets"]:
            assert '$instance' in target["expr"], f"{panel['title']}: {target['expr']} ignores the instance"
            if any(name.startswith("bsud_drive_") for name in metric_names(target["expr"])):
                assert '$drive' in target["expr"], f"{panel['title']}: {target['expr']} ignores the drive"
