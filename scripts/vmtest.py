#!/usr/bin/env python3
"""Host side of the throwaway test VM (run through scripts/vm-test).

Boots Debian's generic kernel under QEMU (software emulation, no network card) on the
host's own root, read-only over 9p with a tmpfs overlay, from a tiny initramfs built here
at run time. Inside, tests/vm/guest-init.sh starts udevd and runs pytest's ``vm`` lane.

The hypervisor bridge: the guest writes JSON lines to a virtio-serial port
(``bsud.bridge``); this side answers them by hot-plugging disks through QMP:

- ``{"op": "plug", "volume": ID, "size_gib": N, "device": "/dev/xvdc", "flavour": F}``
  F = ``virtio`` (virtio-blk, serial = volume id), ``outscale`` (scsi-hd on virtio-scsi,
  serial = sd<suffix>), ``aws`` (nvme, serial = volume id without its dash);
- ``{"op": "unplug", "volume": ID}``, ``{"op": "delete", "volume": ID}``;
- in a pair of guests, ``"node": "a" | "b"`` on a plug names the guest (default ``a``).

Each volume is a sparse file that outlives unplugging (like a cloud volume), removed on
delete. The guest's console is streamed to stdout; the exit code is pytest's. With no test path
given, the lane's files are split over ``--jobs`` runners side by side (a TCG guest uses little more
than one core), each console prefixed ``[vmN]``, with one summary line at the end. The systemd
lane's files (``SYSTEMD_FILES``) boot the host's systemd as PID 1 in a guest of their own. The pair's files
(``PAIR_FILES``) run in two guests side by side joined by a network (:class:`Pair`): pytest and moto in ``a``, the
peer agent (tests/vm/peer_agent.py) in ``b``; a volume attached to b's instance is plugged into b.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
EXIT_MARK = re.compile(r"BSUD-VM-EXIT=(\d+)")
INITRAMFS_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/null; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /lower || exec sh
mount -t tmpfs -o size=75% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || exec sh
repo=$(sed -n 's/.*bsud.repo=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
if grep -q 'bsud.init=systemd' /proc/cmdline; then
    # The systemd lane: the host's own systemd as PID 1, booting bsud-vmtest.target (which runs pytest).
    for unit in bsud-vmtest.service bsud-vmtest.target; do
        sed "s|@REPO@|$repo|g" "/newroot$repo/tests/vm/systemd/$unit" > "/newroot/etc/systemd/system/$unit"
    done
    # Not in a throwaway guest on the host's root: tmpfiles --remove would empty /tmp (where a CI checkout
    # lives) and walk the whole tree over 9p; nothing else the host enabled is wanted either.
    for unit in systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer systemd-timesyncd.service \
                systemd-pstore.service e2scrub_reap.service; do
        ln -sf /dev/null "/newroot/etc/systemd/system/$unit"
    done
    # man-db's dpkg trigger rebuilds the manual page index (22k pages over 9p) at the package's install and purge
    # when this file exists: nothing the lane looks at, a minute of the emulated CPU.
    rm -f /newroot/var/lib/man-db/auto-update
    ln -sf /etc/systemd/system/bsud-vmtest.target /newroot/etc/systemd/system/default.target
    umount /proc /sys
    mount --move /dev /newroot/dev 2>/dev/null || umount /dev
    exec switch_root /newroot /lib/systemd/systemd
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /bin/bash "$repo/tests/vm/guest-init.sh"
"""


def log(message: str) -> None:
    print(f"vm-test: {message}", file=sys.stderr, flush=True)


# --- initramfs ---------------------------------------------------------------------------------


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = header + name_bytes
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def build_initramfs(kver: str, dest: Path) -> None:
    """A newc cpio (gzip) with busybox-static, the 9p/overlay modules and /init."""
    deps: list[str] = []
    for module in INITRAMFS_MODULES:
        out = subprocess.run(["modprobe", "-S", kver, "--show-depends", module], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod" and parts[1] not in deps:
                deps.append(parts[1])
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("sys", stat.S_IFDIR | 0o755, b""),
        ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    names = []
    for path in deps:
        name = os.path.basename(path)
        data = Path(path).read_bytes()
        if name.endswith(".xz") or name.endswith(".zst"):
            raise SystemExit(f"vm-test: compressed module {path} is not supported by busybox insmod here")
        entries.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, data))
        names.append(name)
    entries.append(("modules.list", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n"))
    blob = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    blob += _cpio_entry("TRAILER!!!", 0, b"", 0)
    dest.write_bytes(gzip.compress(blob, compresslevel=1))


def build_venv_image(dest: Path) -> Path:
    """The checkout's .venv as a read-only ext4 disk image, which the guest mounts over its 9p copy.

    Measured in a guest: creating boto3's EC2 client took 13 s with the venv on 9p, 5.7 s from a local
    filesystem (botocore lists ~400 service directories: ~900 listdir and ~2900 stat round trips over 9p under
    TCG), importing moto's server 9.8 s against 6.4 s. Every bsud start and CLI run in the lane pays it. Built in a
    few seconds with ``mke2fs -d`` (no mount, file times kept, so the .pyc files stay valid)."""
    venv = (REPO / ".venv").resolve()
    used = int(subprocess.run(["du", "-sk", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0])
    size_kib = used + used // 4 + 65536
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal", "-L", "bsud-venv", "-d", str(venv), "-F",
                    str(dest), f"{size_kib}k"], check=True, capture_output=True)
    return dest


def find_kernel() -> tuple[str, Path]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    for kernel in reversed(kernels):
        kver = kernel.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / kver / "kernel" / "drivers" / "md").is_dir():
            return kver, kernel
    raise SystemExit("vm-test: no /boot/vmlinuz-* with modules (install linux-image-amd64)")


# --- QMP ---------------------------------------------------------------------------------------


class Qmp:
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rw")
        self.lock = threading.Lock()
        self.events: list[dict] = []
        self.file.readline()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP closed")
        return json.loads(line)

    def execute(self, command: str, **arguments: object) -> object:
        with self.lock:
            msg: dict[str, object] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self.file.write(json.dumps(msg) + "\n")
            self.file.flush()
            while True:
                reply = self._read()
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")
                return reply.get("return")

    def wait_event(self, name: str, device_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for ev in self.events:
                    if ev.get("event") == name and ev.get("data", {}).get("device") == device_id:
                        self.events.remove(ev)
                        return True
            # Poll QMP so that events get read.
            self.execute("query-status")
            time.sleep(0.1)
        return False


# --- the bridge --------------------------------------------------------------------------------

#: How long a guest may take to release a disk being unplugged (CI saw more than 30 s with the host lanes beside).
UNPLUG_SECONDS = 120.0


class Bridge:
    """Answers the guests' plug/unplug/delete requests, for one guest or for a pair (:class:`Pair`).

    A request names the guest (``"node"``, default ``"a"``: the only guest, or the pair's first); each guest's QMP is
    registered under its node as it boots. A volume is plugged in one guest at a time (as a cloud volume is attached
    to one VM): unplug goes to the guest that has it, whatever the request says."""

    def __init__(self, disk_dir: Path, qmps: dict[str, Qmp] | None = None) -> None:
        self.qmps: dict[str, Qmp] = dict(qmps or {})
        self.disk_dir = disk_dir
        #: volume id → (node, flavour) of what is plugged now
        self.plugged: dict[str, tuple[str, str]] = {}

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True}
        vol = str(req.get("volume", ""))
        if not re.fullmatch(r"vol-[0-9a-f]+", vol):
            return {"ok": False, "error": f"bad volume id {vol!r}"}
        if op in ("snapshot", "restore", "delete-snapshot"):
            return self.snapshot(op, vol, str(req.get("snapshot", "")))
        node_name, dev_id = f"n-{vol}", f"d-{vol}"
        image = self.disk_dir / f"{vol}.img"
        if op == "plug":
            guest = str(req.get("node", "a"))
            if vol in self.plugged:
                where = self.plugged[vol][0]
                if where != guest:
                    return {"ok": False, "error": f"{vol} is plugged into guest {where}, not {guest}"}
                return {"ok": True, "already": True}
            qmp = self.qmps.get(guest)
            if qmp is None:
                return {"ok": False, "error": f"no guest {guest!r} (booted: {', '.join(sorted(self.qmps)) or 'none'})"}
            flavour = req.get("flavour", "virtio")
            if flavour == "virtio":
                device = {"driver": "virtio-blk-pci", "serial": vol[:20]}
            elif flavour == "outscale":
                m = re.fullmatch(r"/dev/(?:xvd|sd)([a-z]{1,2})", str(req.get("device", "")))
                if not m:
                    return {"ok": False, "error": f"outscale flavour needs /dev/xvdX, got {req.get('device')!r}"}
                device = {"driver": "scsi-hd", "bus": "scsi0.0", "serial": f"sd{m.group(1)}"}
            elif flavour == "aws":
                device = {"driver": "nvme", "serial": vol.replace("-", "")[:20]}
            else:
                return {"ok": False, "error": f"unknown flavour {flavour!r}"}
            if not image.exists():
                with open(image, "wb") as fh:
                    fh.truncate(int(req["size_gib"]) * GIB)
            qmp.execute("blockdev-add", **{"driver": "raw", "node-name": node_name,
                                           "file": {"driver": "file", "filename": str(image)}})
            qmp.execute("device_add", id=dev_id, drive=node_name, **device)
            self.plugged[vol] = (guest, flavour)
            return {"ok": True}
        if op == "unplug":
            if vol not in self.plugged:
                return {"ok": True, "already": True}
            qmp = self.qmps[self.plugged[vol][0]]
            try:
                qmp.execute("device_del", id=dev_id)
            except RuntimeError as exc:
                if "not found" not in str(exc):
                    raise
                gone = True  # released after an earlier request gave up waiting: done now
            else:
                # A loaded emulated guest may take long to release a hot-plugged disk (its PCI/ACPI unplug).
                gone = qmp.wait_event("DEVICE_DELETED", dev_id, UNPLUG_SECONDS)
            if not gone:
                return {"ok": False, "error": f"guest {self.plugged[vol][0]} did not release {dev_id} within "
                                              f"{UNPLUG_SECONDS:g} s"}
            qmp.execute("blockdev-del", **{"node-name": node_name})
            del self.plugged[vol]
            return {"ok": True}
        if op == "delete":
            if vol in self.plugged:
                return {"ok": False, "error": f"{vol} is still plugged (guest {self.plugged[vol][0]})"}
            image.unlink(missing_ok=True)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def snapshot(self, op: str, vol: str, snap: str) -> dict:
        """A snapshot's data (moto keeps only its metadata): ``snapshot`` copies the volume's disk as it is at the
        call (the guest's CreateSnapshot waits for it, as the cloud fixes a snapshot's content at the call),
        ``restore`` makes a new volume's disk from it, ``delete-snapshot`` removes it. Copies are sparse (reflinks
        where the host's filesystem has them). A volume never plugged has no disk: its snapshot is empty."""
        if not re.fullmatch(r"snap-[0-9a-f]+", snap):
            return {"ok": False, "error": f"bad snapshot id {snap!r}"}
        disk, copy = self.disk_dir / f"{vol}.img", self.disk_dir / f"{snap}.img"
        if op == "delete-snapshot":
            copy.unlink(missing_ok=True)
            return {"ok": True}
        source, target = (disk, copy) if op == "snapshot" else (copy, disk)
        if op == "restore" and vol in self.plugged:
            return {"ok": False, "error": f"{vol} is plugged: not writing its disk"}
        if not source.exists():
            target.unlink(missing_ok=True)
            return {"ok": True, "empty": True}
        started = time.monotonic()
        part = target.with_suffix(".part")
        subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(source), str(part)], check=True)
        part.rename(target)
        return {"ok": True, "seconds": round(time.monotonic() - started, 3)}

    def serve(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    log("cannot connect to the bridge socket")
                    return
                time.sleep(0.1)
        stream = sock.makefile("rw")
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                reply = self.handle(req)
            except Exception as exc:  # noqa: BLE001 - reported to the guest
                reply = {"ok": False, "error": str(exc)}
            reply["id"] = req.get("id") if isinstance(req, dict) else None
            stream.write(json.dumps(reply) + "\n")
            stream.flush()


# --- main ---------------------------------------------------------------------------------------

#: Rough guest seconds per test file under TCG (measured), to split the lane over parallel guests.
WEIGHTS = {  # guest seconds per file, two guests side by side: the CI run of 2026-12-05 at 9518916 (host lanes beside
    # for the first ~25 minutes: a file then takes about twice its time alone). Its split ran runner 1 = exports +
    # daemon + lvm layout + faults 2133 s + systemd guest 902 s = 3035 s, runner 2 = crash + snapshot + fill + ganesha
    # + devices + boot 2042 s + pair 721 s = 2763 s (CI 51 min 22 s); each file's weight below is its share of its
    # guest's time then (runner 1's plain files ×1.17, runner 2's ×1.03 over the weights before): these split
    # 2920 / 2875 s.
    "test_crash_lvm.py": 850,  # 560 MiB of data (thresholds 50/10 %), 21 kill points
    "test_exports.py": 713,
    "test_daemon_lvm.py": 660,  # 560 MiB per flavour; rate-peak 10 s: 264 s alone
    "test_snapshot_lvm.py": 474,  # issue 24: a set while written, failed, killed twice, restored beside (248 s alone)
    "test_fill_lvm.py": 469,  # 1.25 GiB per rate
    "test_lvm_layout.py": 403,
    "test_faults_lvm.py": 362,  # + issue 21: a burst during a pvmove
    "test_ganesha.py": 196,
    "test_devices.py": 31,
    "test_boot.py": 14,
    "test_systemd.py": 647,  # issue 20's operator cases, the package installed and purged; bsud-snapshot@ twice
    "test_ha_gateway.py": 255,  # + the systemd guest's boot, paid once for both files
    "test_ha_grow.py": 526,  # a pair: both bsuds, DRBD, two grows, two kill -9
    "test_ha_drbd.py": 195,  # a pair: a 256 MiB resync; the last grow --assume-clean: none
}
#: Test files that need systemd as PID 1: a runner's run in one guest of their own, booted with systemd.
SYSTEMD_FILES = frozenset({"test_systemd.py",
                           # the OCF agents drbd-reactor runs (nfsserver) drive systemd's units, as on a gateway host
                           "test_ha_gateway.py"})
#: Test files that need two guests joined by a network (:class:`Pair`): pytest in guest a, the peer agent in b.
PAIR_FILES = frozenset({"test_ha_drbd.py", "test_ha_grow.py"})
#: The pair's guests: their address on the network between them, and their network card's MAC.
PAIR_NODES = {"a": ("10.99.1.1/24", "52:54:00:99:01:01"), "b": ("10.99.1.2/24", "52:54:00:99:01:02")}
#: The guest's CPU model: under TCG the plain qemu64 runs this lane's work faster than "max" (whose AVX2, SHA and
#: AES code paths are emulated instruction by instruction): measured in a guest, /dev/urandom 27 %, sha256 25 %,
#: boto3's client 8 % faster, a plain Python loop the same (2026-12-04). BSUD_VM_CPU chooses another.
CPU = "qemu64"
SUMMARY = re.compile(r"=+ (.*?) in [\d.]+s")
FAILURE = re.compile(r"(FAILED|ERROR) tests/")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def split(files: list[str], jobs: int) -> list[list[list[str]]]:
    """Test files over ``jobs`` runners of about equal weight (longest first onto the lightest). A runner boots
    one guest for its ordinary files, then one guest with systemd as PID 1 for the systemd lane's files
    (:data:`SYSTEMD_FILES`), then a pair of guests for :data:`PAIR_FILES`, one after the other. The systemd files go
    together, to one runner: a systemd boot costs about two minutes under emulation, paid once; so do the pair's
    files (one pair: two boots). Each group of the answer is one guest's pytest (the pair's: guest a's)."""
    def weight(name: str) -> int:
        return WEIGHTS.get(Path(name).name, 120)

    groups = {"systemd": [f for f in files if Path(f).name in SYSTEMD_FILES],
              "pair": [f for f in files if Path(f).name in PAIR_FILES]}
    grouped = {f for group in groups.values() for f in group}
    items: list[tuple[int, str, list[str]]] = [(weight(f), "plain", [f]) for f in files if f not in grouped]
    items += [(sum(weight(f) for f in group), kind, group) for kind, group in groups.items() if group]
    kinds = ("plain", "systemd", "pair")
    runners: list[dict[str, list[str]]] = [{kind: [] for kind in kinds} for _ in range(min(jobs, len(items)))]
    loads = [0] * len(runners)
    for load, kind, group in sorted(items, key=lambda item: -item[0]):
        lightest = loads.index(min(loads))
        runners[lightest][kind].extend(group)
        loads[lightest] += load
    return [[r[kind] for kind in kinds if r[kind]] for r in runners if any(r.values())]


def guest_kind(pytest_args: list[str]) -> str:
    """``plain``, ``systemd`` or ``pair``: how to boot the guest(s) for one group of :func:`split`."""
    names = {Path(a.split("::")[0]).name for a in pytest_args}
    if names & SYSTEMD_FILES:
        return "systemd"
    if names & PAIR_FILES:
        return "pair"
    return "plain"


def free_udp_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (the pair's network: each guest sends its frames to the other's port)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Guest:
    """One throwaway VM running pytest with ``pytest_args``; its console goes to stdout with ``prefix``."""

    def __init__(self, kver: str, kernel: Path, pytest_args: list[str], opts: argparse.Namespace,
                 prefix: str = "", systemd: bool = False, venv_image: Path | None = None,
                 node: str | None = None, netdev: str | None = None) -> None:
        self.kver, self.kernel, self.pytest_args, self.opts, self.prefix = kver, kernel, pytest_args, opts, prefix
        #: A pair's guest (``a``: pytest, ``b``: the peer agent), with the QEMU ``-netdev`` joining it to the other;
        #: None for a guest alone (no network card).
        self.node, self.netdev = node, netdev
        self.proc: subprocess.Popen[bytes] | None = None
        #: :func:`build_venv_image`'s disk, shared read-only by the guests (serial ``bsud-vm-venv``).
        self.venv_image = venv_image
        #: Boot the host's systemd as PID 1 (the systemd lane) instead of tests/vm/guest-init.sh.
        self.systemd = systemd
        self.exit_code: int | None = None
        self.counts: dict[str, int] = {}
        #: pytest's short summary lines for what failed (``FAILED …``/``ERROR …``), repeated at the lane's end.
        self.failures: list[str] = []

    def say(self, message: str) -> None:
        log(f"{self.prefix}{message}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def run(self, bridge: Bridge | None = None) -> int:
        """Boot, stream the console, return pytest's exit code. ``bridge``: a pair's, shared by its two guests (the
        guest registers its QMP there under its node); by default one of its own."""
        opts = self.opts
        work = Path(tempfile.mkdtemp(prefix="bsud-vm-"))
        share, disks = work / "share", work / "disks"
        share.mkdir()
        disks.mkdir()
        (share / "args.json").write_text(json.dumps(self.pytest_args))
        initrd = work / "initrd.gz"
        started = time.monotonic()
        build_initramfs(self.kver, initrd)
        qmp_path, bridge_path = work / "qmp.sock", work / "bridge.sock"
        argv = [
            "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", os.environ.get("BSUD_VM_CPU", CPU),
            "-smp", opts.smp, "-m", opts.memory,
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-no-reboot",
            "-kernel", str(self.kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init bsud.repo={REPO}" + (
                " bsud.init=systemd systemd.show_status=false systemd.log_level=warning" if self.systemd else "") + (
                f" bsud.node={self.node} bsud.ip={PAIR_NODES[self.node][0]} bsud.mac={PAIR_NODES[self.node][1]}"
                f" bsud.peer={PAIR_NODES['b'][0].split('/')[0]}" if self.node else ""),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={share},mount_tag=vmshare,security_model=none,multidevs=remap",
            "-device", "virtio-scsi-pci,id=scsi0",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=bridge,path={bridge_path},server=on,wait=off",
            "-device", "virtserialport,chardev=bridge,name=bsud.bridge",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
        ]
        if self.node is not None and self.netdev is not None:
            argv += ["-netdev", self.netdev, "-device", f"virtio-net-pci,netdev=n0,mac={PAIR_NODES[self.node][1]}"]
        else:
            argv += ["-nic", "none"]
        if self.venv_image is not None:
            argv += ["-drive", f"file={self.venv_image},if=none,id=venv,format=raw,readonly=on",
                     "-device", "virtio-blk-pci,drive=venv,serial=bsud-vm-venv"]
        work_for = "the peer agent" if self.node == "b" else f"pytest {' '.join(self.pytest_args) or 'tests/vm'}"
        self.say(f"booting {self.kernel.name}{' with systemd as PID 1' if self.systemd else ''}"
                 f"{f' as node {self.node} of a pair' if self.node else ''} "
                 f"(initramfs built in {time.monotonic() - started:.1f} s), timeout {opts.timeout:g} s, {work_for}")
        proc = self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        qmp = Qmp(qmp_path)
        if bridge is None:
            bridge = Bridge(disks)
        bridge.qmps[self.node or "a"] = qmp
        if self.node != "b":  # b runs no moto: nothing asks for disks from there
            threading.Thread(target=bridge.serve, args=(bridge_path,), daemon=True).start()
        timed_out = threading.Event()

        def killer() -> None:
            deadline = started + opts.timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    timed_out.set()
                    proc.kill()
                    return
                time.sleep(0.5)

        threading.Thread(target=killer, daemon=True).start()
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            print(f"{self.prefix}{line}", flush=True)
            m = EXIT_MARK.search(line)
            if m:
                self.exit_code = int(m.group(1))
            if FAILURE.match(line):
                self.failures.append(line)
            summary = SUMMARY.search(line)
            if summary:
                self.counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                               for n, kind in COUNTS.findall(summary.group(1))}
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        took = time.monotonic() - started
        if timed_out.is_set():
            self.say(f"the guest did not finish within {opts.timeout:g} s and was killed (raise --timeout or "
                     "BSUD_VM_TIMEOUT if the tests are just slow)")
            return 124
        if self.exit_code is None:
            self.say(f"the guest stopped after {took:.1f} s without reporting a pytest exit code (see above)")
            return 1
        self.say(f"guest finished in {took:.1f} s, {'peer agent' if self.node == 'b' else 'pytest'} exit code "
                 f"{self.exit_code}")
        return self.exit_code


class Pair:
    """Two guests side by side for :data:`PAIR_FILES`: a runs pytest (and moto), b runs tests/vm/peer_agent.py.

    They are joined by a QEMU socket netdev over UDP on the host's loopback (each guest sends its Ethernet frames to
    the other's port: no listen/connect order between the two QEMUs), a virtio-net card with the MAC and address of
    :data:`PAIR_NODES` (guest-init sets them from the kernel command line). One :class:`Bridge` serves both: moto in a
    asks for a disk into ``"node": "b"`` when the volume is attached to b's instance. a's pytest tells b's agent to
    power off at the end of its session; once a has stopped, b gets a short grace and is killed. The pair's result is
    a's."""

    def __init__(self, kver: str, kernel: Path, pytest_args: list[str], opts: argparse.Namespace, prefix: str,
                 venv_image: Path | None) -> None:
        tag = prefix.strip()[1:-1] if prefix.strip() else ""
        self.a = Guest(kver, kernel, pytest_args, opts, f"[{tag}a] ", venv_image=venv_image, node="a")
        self.b = Guest(kver, kernel, [], opts, f"[{tag}b] ", venv_image=venv_image, node="b")
        self.prefix = self.a.prefix
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []

    def run(self) -> int:
        port_a, port_b = free_udp_ports(2)  # now, not when the lane was planned: the pair may come late in a runner
        self.a.netdev = f"socket,id=n0,udp=127.0.0.1:{port_b},localaddr=127.0.0.1:{port_a}"
        self.b.netdev = f"socket,id=n0,udp=127.0.0.1:{port_a},localaddr=127.0.0.1:{port_b}"
        disks = Path(tempfile.mkdtemp(prefix="bsud-vm-pair-"))
        bridge = Bridge(disks)
        b_code: list[int] = []
        thread = threading.Thread(target=lambda: b_code.append(self.b.run(bridge)))
        thread.start()
        try:
            code = self.a.run(bridge)
            thread.join(30)
            if thread.is_alive():
                self.b.say("still running 30 s after a stopped: killed")
                self.b.kill()
                thread.join()
        finally:
            self.b.kill()
            thread.join()
            shutil.rmtree(disks, ignore_errors=True)
        self.counts, self.failures = self.a.counts, self.a.failures
        return code


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run pytest's vm lane inside throwaway QEMU VMs; other arguments go to pytest.")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BSUD_VM_TIMEOUT", "3600")),
                        help="kill a guest after this many seconds (default 3600, env BSUD_VM_TIMEOUT)")
    parser.add_argument("--memory", default=os.environ.get("BSUD_VM_MEMORY", "3072"), help="guest RAM in MiB")
    parser.add_argument("--smp", default=os.environ.get("BSUD_VM_SMP", "2"))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BSUD_VM_JOBS", "2")),
                        help="guests run side by side when no test path is given (default 2, env BSUD_VM_JOBS)")
    opts, pytest_args = parser.parse_known_args()
    pytest_args = [a for a in pytest_args if a != "--"]
    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("vm-test: qemu-system-x86_64 is missing (package qemu-system-x86)")
    kver, kernel = find_kernel()
    paths = [a for a in pytest_args if not a.startswith("-") and (REPO / a.split("::")[0]).exists()]
    if paths:
        wanted = {Path(p.split("::")[0]).name for p in paths}
        if wanted & SYSTEMD_FILES and wanted - SYSTEMD_FILES:
            raise SystemExit(f"vm-test: {', '.join(sorted(wanted & SYSTEMD_FILES))} need a systemd guest of "
                             "their own; run them apart from the other files")
        if wanted & PAIR_FILES and wanted - PAIR_FILES:
            raise SystemExit(f"vm-test: {', '.join(sorted(wanted & PAIR_FILES))} need a pair of guests of "
                             "their own; run them apart from the other files")
        runners = [[pytest_args]]
    elif opts.jobs <= 1:
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "vm").glob("test_*.py"))
        runners = [[[*pytest_args, *g] for g in group] for group in split(files, 1)]
    else:
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "vm").glob("test_*.py"))
        runners = [[[*pytest_args, *g] for g in group] for group in split(files, opts.jobs)]
    many = sum(len(r) for r in runners) > 1
    image_dir = Path(tempfile.mkdtemp(prefix="bsud-vm-venv-"))
    try:
        return run_guests(kver, kernel, runners, opts, many, build_venv_image(image_dir / "venv.img"))
    finally:
        shutil.rmtree(image_dir, ignore_errors=True)


def run_guests(kver: str, kernel: Path, runners: list[list[list[str]]], opts: argparse.Namespace, many: bool,
               venv_image: Path) -> int:
    number = iter(range(1, 100))

    def boot(args: list[str]) -> Guest | Pair:
        prefix = f"[vm{next(number)}] " if many else ""
        if guest_kind(args) == "pair":
            return Pair(kver, kernel, args, opts, prefix, venv_image=venv_image)
        return Guest(kver, kernel, args, opts, prefix, systemd=guest_kind(args) == "systemd", venv_image=venv_image)

    plan = [[boot(args) for args in runner] for runner in runners]
    guests = [g for runner in plan for g in runner]
    started = time.monotonic()
    codes = [0] * len(guests)

    def run(runner: list[Guest | Pair]) -> None:
        for guest in runner:
            codes[guests.index(guest)] = guest.run()

    threads = [threading.Thread(target=run, args=(runner,)) for runner in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if many:
        total: dict[str, int] = {}
        for guest in guests:
            for kind, n in guest.counts.items():
                total[kind] = total.get(kind, 0) + n
        booted = sum(2 if isinstance(guest, Pair) else 1 for guest in guests)
        log(f"{booted} guests on {len(plan)} runners finished in {time.monotonic() - started:.1f} s")
        line = f"{total.get('passed', 0)} passed, {total.get('failed', 0) + total.get('error', 0)} failed"
        # Last, so that the end of a long log names every failure of every guest.
        for guest in guests:
            for failure in guest.failures:
                print(f"vm-lane: {guest.prefix}{failure}", flush=True)
        print(f"vm-lane: {line}" + (f", {total['skipped']} skipped" if total.get("skipped") else ""), flush=True)
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
