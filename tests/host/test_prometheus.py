"""The shipped alert rules and bsud's exposition through Prometheus' own promtool: the rules load, their unit tests
pass, and a real scrape of bsud (served over HTTP, and the textfile node_exporter reads) lints clean."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ..metrics_fixture import full_metrics

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "bsud.rules.yml"
RULE_TESTS = ROOT / "packaging" / "prometheus" / "bsud.rules.test.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package; "
                                                             "scripts/setup installs it)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=RULES.parent)


@needs_promtool
def test_the_rules_file_is_valid():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


@needs_promtool
def test_the_rules_unit_tests_pass():
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_promtool
def test_a_real_scrape_of_bsud_has_no_naming_problems(tmp_path: Path):
    """Served over HTTP (with process_*) and written for node_exporter: `promtool check metrics` finds nothing."""
    prom = tmp_path / "bsud.prom"
    metrics = full_metrics(textfile=str(prom))
    metrics.write_textfile(str(prom))
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            served = answer.read().decode()
    finally:
        metrics.close()
    assert "process_cpu_seconds_total" in served and "bsud_nfs_client_read_bytes_total" in served
    for name, text in (("served", served), ("textfile", prom.read_text())):
        done = promtool("check", "metrics", stdin=text)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), \
            f"{name}: {done.stdout}{done.stderr}"


@needs_promtool
def test_promtool_does_report_a_name_against_the_guide():
    """The lint above can fail: a counter without _total is reported."""
    done = promtool("check", "metrics", stdin="# HELP bsud_things Things.\n# TYPE bsud_things counter\n"
                                              "bsud_things 1\n")
    assert done.returncode != 0 and "bsud_things" in done.stdout + done.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    """Each panel's query, its Grafana variables replaced as Grafana does, loaded by promtool as a recording rule
    (which parses it)."""
    import json

    import yaml

    board = json.loads((ROOT / "packaging" / "grafana" / "bsud.json").read_text())
    exprs = [t["expr"] for top in board["panels"] for p in (top, *top.get("panels", []))
             for t in p.get("targets", [])]
    assert len(exprs) > 25
    substituted = [e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$drive", ".*")
                   for e in exprs]
    assert not [e for e in substituted if "$" in e]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"bsud:panel{n}", "expr": e}
                                                        for n, e in enumerate(substituted)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
