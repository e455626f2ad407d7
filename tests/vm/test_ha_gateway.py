"""The start list bsud writes for drbd-reactor, proven for real: in the test VM, its OCF agents run in order with the
environment drbd-reactor's ocf.rs@ wrapper gives them (OCF_ROOT, OCF_RESOURCE_INSTANCE, OCF_RESKEY_*), against a
bsud drive (its LV stands in for the DRBD device: DRBD itself is not what is tested); clients reach NFS, iSCSI and
NVMe/TCP on the service address; then the agents stop in reverse order and everything they made is gone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from bsud.config import parse_config
from bsud.exports.files import backing_file
from bsud.ha.agent import Agent
from bsud.ha.gateway import start_list_lines
from bsud.ha.ocf import portblock_problem
from bsud.ha.promoter import NFSDCLD_DROPIN, Promoter
from bsud.host.layouts import LvmLayout
from bsud.naming import DRIVE_TAG
from bsud.runner import Runner

from .test_exports import need, nvme_namespace, sh

pytestmark = pytest.mark.vm

NIC, SERVICE = "bsudha0", "10.99.0.50"
INITIATOR = "iqn.2026-11.test.bsud:ha-client"
IQN, NQN, HOSTNQN = "iqn.2026-11.test.bsud:ha", "nqn.2026-11.test.bsud:ha", "nqn.2026-11.test.bsud:ha-host"
OCF_SUCCESS, OCF_NOT_RUNNING = 0, 7


def run_agent(agent: Agent, action: str, resource: str) -> subprocess.CompletedProcess:
    if agent.is_unit:  # as drbd-reactor does with a plain unit of the list
        done = subprocess.run(["systemctl", {"monitor": "is-active"}.get(action, action), agent.name],
                              capture_output=True, text=True, timeout=300)
        return done if action != "monitor" or done.returncode == 0 else subprocess.CompletedProcess(
            done.args, OCF_NOT_RUNNING, done.stdout, done.stderr)
    path = f"/usr/lib/ocf/resource.d/{agent.vendor}/{agent.agent}"
    return subprocess.run([path, action], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **agent.env(resource)})


def holders() -> list[str]:
    """Processes and mounts under /var/lib/nfs and the gateway's mounts, and the NFS units: what a failed stop
    says beside its own message."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/cwd"), os.readlink(f"/proc/{pid}/root")]
            links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        held = sorted({link for link in links if link.startswith(("/var/lib/nfs", "/tmp"))})
        if held:
            found.append(f"pid {pid} {comm}: {' '.join(held[:6])}")
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "/var/lib/nfs" in line
              or "rpc_pipefs" in line or "nfsd" in line]
    found += sh("systemctl", "list-units", "--all", "--no-legend", "nfs*", "rpc*", "var-lib-nfs*", "run-rpc*",
                check=False).stdout.splitlines()
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def gateway_host():
    need(("iptables", "targetcli", "exportfs", "rpcbind", "iscsiadm", "nvme"),
         "resource-agents, iptables, targetcli-fb, nfs-kernel-server, open-iscsi, nvme-cli")
    if not Path("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists():
        pytest.skip("the OCF agents are not installed (package resource-agents)")
    sh("ip", "link", "add", NIC, "type", "dummy")
    sh("ip", "link", "set", NIC, "up")
    if os.environ.get("BSUD_VM_INIT") != "systemd":
        pytest.skip("runs in the systemd lane: the nfsserver agent starts nfs-server.service through systemctl")
    # As on a Debian host at boot (this guest's target stops short of multi-user): rpcbind, which rpc.statd needs
    # (Debian's agent takes the nfs-kernel-server init script, which starts statd itself but not rpcbind), and the
    # system D-Bus, without which targetcli (the iSCSI agents' lio-t) does not start.
    sh("systemctl", "start", "rpcbind.socket", "rpcbind.service", "dbus.socket", "dbus.service")
    for module in ("nfsd", "nvme-tcp", "nvmet-tcp", "target_core_mod", "target_core_file", "iscsi_target_mod"):
        sh("modprobe", module)
    if not os.path.ismount("/sys/kernel/config"):
        sh("mount", "-t", "configfs", "configfs", "/sys/kernel/config")
    Path("/etc/target").mkdir(exist_ok=True)
    # What systemd-tmpfiles makes at boot on a real host (this guest has no systemd): the agents' state directory
    # (portblock keeps its pseudo-resource state there).
    sh("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/resource-agents.conf")
    yield
    sh("ip", "link", "del", NIC, check=False)


def test_the_generated_start_list_runs_serves_and_stops(vm, gateway_host, tmp_path: Path, capsys):
    drive = "hagw"
    cloud = vm.cloud("virtio")
    layout = LvmLayout(drive, Runner())
    data = vm.attach(cloud, cloud.create_volume(drive, 2, "gp2"))
    layout.join(data, {DRIVE_TAG: drive}, None)
    layout.ensure_filesystem()
    private = vm.attach(cloud, cloud.create_volume(f"{drive}-private", 1, "gp2"))
    sh("mkfs.ext4", "-q", private.device)  # stands in for the cluster-private DRBD device
    gw = tmp_path / "gateway"
    exports = [
        {"kind": "nfs", "path": "share", "clients": ["10.99.0.0/24"], "options": ["rw", "sync", "no_root_squash",
                                                                                   "no_subtree_check"]},
        {"kind": "iscsi", "iqn": IQN, "path": "luns", "lun-size-gib": 1, "initiators": [INITIATOR],
         "chap": {"user": "hauser", "password": "ha-chap-secret"}},
        {"kind": "nvmeof", "nqn": NQN, "path": "ns", "size-gib": 1, "hosts": [HOSTNQN], "address": SERVICE,
         "port": 4420},
    ]
    # Debian 12's portblock agent does not find its own rules with its iptables (1.8.9): bsud says so, and the
    # list is proven without it there; with a fixed agent, with it.
    problem = portblock_problem()
    assert problem is None or "ClusterLabs/resource-agents#1924" in problem, problem
    spec = parse_config(json.dumps({"cloud": {"provider": "local"}, "drives": [{
        "name": drive, "target": "online", "mount-path": str(gw), "exports": exports,
        "ha": {"drbd-resource": drive, "drbd-device": layout.lv_path, "peer-drive": f"{drive}-peer",
               "service-ip": f"{SERVICE}/24", "nic": NIC, "cluster-private-device": private.device,
               "cluster-private-mount": str(tmp_path / "private"), "portblock": problem is None,
               "promoter-dir": str(tmp_path / "drbd-reactor.d")}}]})).drives[0]
    assert spec.ha is not None
    # What `bsud ha-config --write` does: the file (checked against the agents), and the host made ready for them.
    assert Promoter(Runner()).write(drive, spec.mount_path, spec.ha, spec.exports)
    assert "PartOf=nfs-server.service" in sh("systemctl", "cat", "nfsdcld.service").stdout, NFSDCLD_DROPIN
    agents = [Agent.parse(line) for line in start_list_lines(Promoter.file(drive, spec.ha).read_text())]

    # The block exports' files exist in the drive (bsud's iSCSI and NVMe kinds make them when they apply).
    gw.mkdir()
    sh("mount", layout.lv_path, str(gw))
    (gw / "share").mkdir()
    backing_file(str(gw / "luns" / f"iscsi-{IQN}.img"), 1 << 30, what=IQN, kind="LUN")
    backing_file(str(gw / "ns" / f"nvmeof-{NQN}.img"), 1 << 30, what=NQN, kind="namespace")
    sh("umount", str(gw))

    started: list[Agent] = []
    client = tmp_path / "client"
    client.mkdir()
    try:
        for agent in agents:
            done = run_agent(agent, "start", drive)
            assert done.returncode == OCF_SUCCESS, f"{agent.line()}: start: {done.returncode}: {done.stderr[-1500:]}"
            started.append(agent)
            monitored = run_agent(agent, "monitor", drive)
            assert monitored.returncode == OCF_SUCCESS, \
                f"{agent.line()}: monitor: {monitored.returncode}: {monitored.stdout[-500:]} {monitored.stderr[-1500:]}"
        assert f"inet {SERVICE}/24" in sh("ip", "-o", "addr", "show", NIC).stdout
        assert os.path.ismount(gw) and os.path.ismount(tmp_path / "private")

        # NFS on the service address (NFSv3: the VM's root is an overlay, see docs/exports.md).
        sh("mount", "-t", "nfs", "-o", "vers=3,nolock,hard,timeo=100", f"{SERVICE}:{gw / 'share'}", str(client),
           timeout=180)
        payload = os.urandom(1 << 20)
        (client / "through-nfs.bin").write_bytes(payload)
        sh("sync")
        assert digest(gw / "share" / "through-nfs.bin") == hashlib.sha256(payload).hexdigest()
        sh("umount", str(client))

        # iSCSI: log in with CHAP on the service address, write a block, read it in the LUN's file.
        Path("/etc/iscsi").mkdir(exist_ok=True)
        Path("/etc/iscsi/initiatorname.iscsi").write_text(f"InitiatorName={INITIATOR}\n")
        if sh("pgrep", "-x", "iscsid", check=False).returncode:
            sh("iscsid")
        sh("iscsiadm", "-m", "discovery", "-t", "st", "-p", f"{SERVICE}:3260", timeout=120)
        for key, value in (("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", "hauser"),
                           ("node.session.auth.password", "ha-chap-secret")):
            sh("iscsiadm", "-m", "node", "-T", IQN, "-p", f"{SERVICE}:3260", "-o", "update", "-n", key, "-v", value)
        sh("iscsiadm", "-m", "node", "-T", IQN, "-p", f"{SERVICE}:3260", "--login", timeout=120)
        sh("udevadm", "settle")
        disks = sh("sh", "-c", f"ls /dev/disk/by-path/ | grep -F {IQN}", check=False).stdout.split()
        assert disks, "no disk after the iSCSI login"
        block = os.urandom(4096)
        with open(f"/dev/disk/by-path/{disks[0]}", "r+b", buffering=0) as fh:
            fh.seek(1 << 20)
            fh.write(block)
            os.fsync(fh.fileno())
        sh("iscsiadm", "-m", "node", "-T", IQN, "-p", f"{SERVICE}:3260", "--logout", timeout=120)
        with open(gw / "luns" / f"iscsi-{IQN}.img", "rb") as fh:
            fh.seek(1 << 20)
            assert fh.read(4096) == block

        # NVMe/TCP on the service address.
        sh("nvme", "connect", "-t", "tcp", "-a", SERVICE, "-s", "4420", "-n", NQN, "--hostnqn", HOSTNQN,
           "--ctrl-loss-tmo", "30")
        with open(nvme_namespace(NQN), "r+b", buffering=0) as fh:
            fh.seek(2 << 20)
            fh.write(block)
            os.fsync(fh.fileno())
        sh("nvme", "disconnect", "-n", NQN, timeout=120)
        with open(gw / "ns" / f"nvmeof-{NQN}.img", "rb") as fh:
            fh.seek(2 << 20)
            assert fh.read(4096) == block
    except BaseException:
        with capsys.disabled():
            print("\n".join(["", "agents:", *(a.line() for a in agents), "kernel:",
                             *sh("dmesg", check=False).stdout.splitlines()[-30:]]), flush=True)
        raise
    finally:
        sh("umount", "-f", "-l", str(client), check=False)
        sh("iscsiadm", "-m", "node", "-T", IQN, "--logout", check=False)
        sh("nvme", "disconnect", "-n", NQN, check=False)
        stopped = []
        for agent in reversed(started):
            done = run_agent(agent, "stop", drive)
            stopped.append((agent, done.returncode, done.stderr[-800:]))
    failed = [f"{a.line()}: stop: {rc}: {err}" for a, rc, err in stopped if rc != OCF_SUCCESS]
    assert not failed, "\n".join([*failed, "what still holds the gateway's mounts:", *holders()])
    after = [(a, run_agent(a, "monitor", drive)) for a in agents if a.agent != "portblock"]
    running = [f"{a.line()}: monitor: {done.returncode}: {done.stderr[-400:]}" for a, done in after
               if done.returncode != OCF_NOT_RUNNING]
    assert not running, "\n".join(["agents not reporting 'not running' after stop:", *running])
    assert SERVICE not in sh("ip", "-o", "addr", "show", NIC).stdout
    assert not os.path.ismount(gw) and not os.path.ismount(tmp_path / "private")
    assert not Path(f"/sys/kernel/config/target/iscsi/{IQN}").exists()
    assert not Path(f"/sys/kernel/config/nvmet/subsystems/{NQN}").exists()
    assert str(gw / "share") not in sh("exportfs", "-s", check=False).stdout
    assert SERVICE not in sh("iptables", "-S", check=False).stdout
    assert sh("systemctl", "is-active", "nfs-server.service", "nfsdcld.service", check=False).stdout.split() == \
        ["inactive", "inactive"]
    with capsys.disabled():
        print(f"\nha gateway: {len(agents)} agents started in order, NFS/iSCSI/NVMe-TCP reached on {SERVICE}, "
              "stopped in reverse, nothing left" + (f"; without portblock: {problem}" if problem else ""), flush=True)
