"""bsud ha-config tries the portblock agent for real before it writes a start list that uses it: in a network
namespace of its own, block then stop must leave no rule (Debian 12's agent with iptables 1.8.9 leaves it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bsud.ha.ocf import PROBE_IP, portblock_problem

# Stand-ins for the agent: both block as portblock does; the broken one's stop does not find its rule.
BLOCK = 'iptables -w -I INPUT -p tcp -d "$OCF_RESKEY_ip" -m multiport --dports "$OCF_RESKEY_portno" -j DROP'
UNBLOCK = 'iptables -w -D INPUT -p tcp -d "$OCF_RESKEY_ip" -m multiport --dports "$OCF_RESKEY_portno" -j DROP'
AGENT = """#!/bin/sh
case "$1" in
  start) {block} ;;
  stop) {stop} ;;
esac
"""


@pytest.fixture
def netns_tools():
    if shutil.which("iptables") is None or shutil.which("ip") is None:
        pytest.skip("needs iptables and ip (packages iptables, iproute2)")
    if subprocess.run(["ip", "netns", "add", "bsud-test-probe"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root)")
    subprocess.run(["ip", "netns", "del", "bsud-test-probe"], capture_output=True)


def ocf_root(tmp_path: Path, stop: str) -> Path:
    agent = tmp_path / "resource.d" / "heartbeat" / "portblock"
    agent.parent.mkdir(parents=True)
    agent.write_text(AGENT.format(block=BLOCK, stop=stop))
    agent.chmod(0o755)
    return tmp_path


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_an_agent_that_leaves_its_rule_behind_is_named_and_one_that_removes_it_passes(netns_tools, tmp_path: Path):
    before = namespaces()
    problem = portblock_problem(ocf_root(tmp_path / "broken", stop=":"))
    assert problem is not None and "does not find the rules it makes" in problem and '"portblock": false' in problem
    assert portblock_problem(ocf_root(tmp_path / "fixed", stop=UNBLOCK)) is None
    assert namespaces() == before  # the probe's namespace is gone
    rules = subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True).stdout
    assert PROBE_IP not in rules  # nothing reached the machine's own tables


def test_a_missing_agent_is_left_to_the_meta_data_check(tmp_path: Path):
    assert portblock_problem(tmp_path) is None
