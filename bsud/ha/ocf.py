"""A start list checked against the OCF agents themselves, before any file is written: each line against its
agent's own ``meta-data`` (from the resource-agents package) — a parameter the agent does not have, or a required
one missing, is refused, found here rather than in production — and the portblock agent tried for real.

Every command goes through bsud's runner (argument lists; the agents' environment given with ``env``).
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from bsud.exports.files import ExportError
from bsud.ha.agent import OCF_ROOT, Agent
from bsud.runner import Completed, Runner, find_tool

#: A documentation address (RFC 5737) and the discard port: what the portblock probe blocks, in a namespace of its own.
PROBE_IP, PROBE_PORT = "192.0.2.1", "9"


def _with_env(env: dict[str, str], argv: list[str]) -> list[str]:
    """``argv`` run with ``env`` added to the runner's environment (``env KEY=value … argv``)."""
    return ["env", *(f"{key}={value}" for key, value in env.items()), *argv]


def metadata(vendor: str, agent: str, ocf_root: Path = OCF_ROOT, runner: Runner | None = None) -> dict[str, bool]:
    """An agent's parameters (name → required) from its own ``meta-data`` action."""
    path = ocf_root / "resource.d" / vendor / agent
    if not os.access(path, os.X_OK):
        raise ExportError(f"OCF agent {vendor}:{agent} is not installed ({path}; package resource-agents)")
    out = (runner or Runner()).run(_with_env({"OCF_ROOT": str(ocf_root)}, [str(path), "meta-data"]), timeout=60,
                                   check=False, quiet=True)
    try:
        root = ET.fromstring(out.stdout)
    except ET.ParseError as exc:
        raise ExportError(f"OCF agent {vendor}:{agent}: its meta-data is not XML ({exc})") from None
    return {p.get("name", ""): p.get("required") == "1" for p in root.iter("parameter")}


def check_agents(agents: list[Agent], ocf_root: Path = OCF_ROOT, runner: Runner | None = None) -> list[str]:
    """What each entry gets wrong against its agent's meta-data: unknown parameters, required ones missing."""
    problems: list[str] = []
    known: dict[tuple[str, str], dict[str, bool]] = {}
    for agent in agents:
        if agent.is_unit:
            continue
        key = (agent.vendor, agent.agent)
        if key not in known:
            known[key] = metadata(*key, ocf_root=ocf_root, runner=runner)
        params = known[key]
        given = {k for k, _ in agent.params}
        unknown = sorted(given - set(params))
        missing = sorted(name for name, required in params.items() if required and name not in given)
        if unknown:
            problems.append(f"{agent.agent} {agent.name}: {agent.agent} has no parameter {', '.join(unknown)}")
        if missing:
            problems.append(f"{agent.agent} {agent.name}: required parameter {', '.join(missing)} missing")
    return problems


def _probe(runner: Runner, path: Path, ocf_root: Path) -> tuple[Completed, str] | str:
    """The portblock agent's ``start`` (block) and ``stop`` in a network namespace of its own: the start's result and
    the INPUT rules left after the stop; or why the namespace could not be made."""
    netns = f"bsud-portblock-{os.getpid()}"

    def run(*argv: str) -> Completed:
        return runner.run(list(argv), timeout=60, check=False, quiet=True)

    with tempfile.TemporaryDirectory() as state:
        env = {"OCF_ROOT": str(ocf_root), "OCF_RESOURCE_INSTANCE": "bsud-probe", "HA_RSCTMP": state,
               "OCF_RESKEY_ip": PROBE_IP, "OCF_RESKEY_portno": PROBE_PORT, "OCF_RESKEY_protocol": "tcp",
               "OCF_RESKEY_action": "block"}
        made = run("ip", "netns", "add", netns)
        if made.returncode != 0:
            return f"cannot try the portblock agent in a network namespace: {made.stderr.strip()}"
        inside = ["ip", "netns", "exec", netns]
        try:
            started = run(*inside, *_with_env(env, [str(path), "start"]))
            run(*inside, *_with_env(env, [str(path), "stop"]))
            rules = run(*inside, "iptables", "-w", "-S", "INPUT").stdout
        finally:
            run("ip", "netns", "del", netns)
    return started, rules


def portblock_problem(ocf_root: Path = OCF_ROOT, runner: Runner | None = None) -> str | None:
    """Whether this machine's portblock agent finds the rules it makes, tried for real in a network namespace of its
    own: ``start`` (block) then ``stop`` must leave no rule. resource-agents before ClusterLabs/resource-agents#1924
    (Debian 12's 4.12) looks for ``tcp`` in ``iptables -n -L``, which iptables 1.8.9 prints as ``6``: it never sees
    its rules, so an unblock would leave the service ports closed."""
    path = ocf_root / "resource.d" / "heartbeat" / "portblock"
    if not os.access(path, os.X_OK):
        return None  # check_agents says the agent is missing
    if find_tool("iptables") is None or find_tool("ip") is None:
        return "the portblock agent needs iptables and ip (packages iptables, iproute2)"
    runner = runner or Runner()
    probed = _probe(runner, path, ocf_root)
    if isinstance(probed, str):
        return probed
    started, rules = probed
    if started.returncode != 0:
        return f"the portblock agent failed to block a port ({started.returncode}): {started.stderr.strip()[-300:]}"
    if PROBE_IP in rules:
        version = runner.run(["iptables", "-V"], timeout=60, check=False, quiet=True).stdout.strip()
        return (f"the portblock agent here does not find the rules it makes ({version} lists protocols as numbers, "
                "which resource-agents before ClusterLabs/resource-agents#1924 does not read): its unblock would "
                "leave the service ports closed; install a fixed resource-agents, or set \"portblock\": false in "
                "the drive's ha section")
    return None


def check_gateway(agents: list[Agent], ocf_root: Path = OCF_ROOT, runner: Runner | None = None) -> list[str]:
    """:func:`check_agents`, and the portblock agent tried when the list uses it."""
    problems = check_agents(agents, ocf_root, runner)
    if any(a.agent == "portblock" for a in agents):
        problem = portblock_problem(ocf_root, runner)
        problems += [f"portblock: {problem}"] if problem else []
    return problems
