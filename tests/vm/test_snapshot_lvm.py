"""Snapshot sets of an lvm drive for real: the EC2 provider against the bridged moto, whose snapshots copy the disks'
data at the call (scripts/vmtest.py's bridge), LVM and btrfs in the guest.

One drive of two volumes, written while ``bsud snapshot`` runs; a set with a failed snapshot (the cloud refuses one
CreateSnapshot) is incomplete and a drive asked to restore it is refused; ``bsud snapshot`` killed (-9) between
freeze and thaw: its guard thaws at once, and, the guard killed with it, the daemon's next start thaws; the complete
set restored to a new drive beside the live one (same VG name, same PV/VG UUIDs, same btrfs fsid on the copy:
``vgimportclone`` and ``btrfstune -m``), checksums as at the freeze."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bsud.naming import SNAPSHOT_SET_TAG

from ..host.daemon_harness import ROOT, DaemonHarness, checksums
from ..host.test_snapshots import MIB, bsud, snapshot_while_written, write_later
from .conftest import ec2_harness

pytestmark = pytest.mark.vm


def killed_mid_snapshot(h: DaemonHarness, guards: bool) -> subprocess.CompletedProcess:
    """``bsud snapshot`` killed by SIGKILL once its first CreateSnapshot has returned: the filesystem frozen;
    ``guards``: its freeze guard killed first."""
    env = {**os.environ, "BSUD_CRASH": "after:cloud:create_snapshot", "BSUD_CRASH_GUARDS": "1" if guards else "0"}
    return subprocess.run([sys.executable, "-m", "tests.crashpoint", "-c", str(h.config_path), "snapshot", h.drive],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)


def lvm_report(kind: str, fields: str) -> list[dict[str, str]]:
    out = subprocess.run(["lvm", kind, "--reportformat", "json", "-o", fields], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["report"][0][kind[:-1] if kind != "pvs" else "pv"]


def test_snapshot_sets_of_an_lvm_drive_restore_beside_it_and_never_stay_frozen(vm, tmp_path: Path, capsys):
    vm.bridge.flavour = "virtio"
    # Two volumes from 250 MiB of data (scale at 20 %; dd's rate may size the second up to the 8 GiB cap), never
    # shrunk (min 1 %: 250 MiB is 3 % of 8 GiB).
    live = ec2_harness(vm, tmp_path, "orig", **{"max-used-space-perc": 20, "min-used-space-perc": 1})
    harnesses = [live]
    figures: list[str] = []
    try:
        live.start()
        live.wait_online(volumes=1, timeout=300)
        live.fill("before.bin", 250)
        members = [v["id"] for v in live.wait_online(volumes=2, timeout=300)["volumes"]]
        stable = checksums(live.mount)

        # 1. A set taken while a writer appends fsynced blocks: the writer only waits.
        taken, writer, before, after = snapshot_while_written(live, 2e6, settle=3)
        set_id = taken.stdout.split(":")[0]
        figures.append(f"snapshot set of 2 volumes: {taken.stdout.strip()}; the writer's longest wait "
                       f"{writer.longest:.2f} s")

        # 2. One CreateSnapshot refused: the set is incomplete, said so, and the drive is thawed.
        vm.bridge.fail_snapshots = {members[1]}
        failed = bsud(live, "snapshot", "orig")
        vm.bridge.fail_snapshots = set()
        assert failed.returncode != 0 and "incomplete (1 of 2 snapshots)" in failed.stderr, failed.stderr
        assert "IncorrectState" in failed.stderr
        thread, done = write_later(live.mount / "after-failure.bin")
        thread.join(30)
        assert done, "the drive stayed frozen after a failed snapshot"

        # 3. Killed between freeze and thaw: the guard thaws at once.
        killed = killed_mid_snapshot(live, guards=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        seen = time.monotonic()
        thread, done = write_later(live.mount / "after-kill.bin")
        thread.join(30)
        assert done, "the filesystem stayed frozen after bsud snapshot was killed"
        figures.append(f"bsud snapshot killed -9 while frozen: a write went through {done[0] - seen:.2f} s after "
                       "(its guard thawed)")

        # 4. Killed with its guard: frozen until the daemon's next start.
        killed = killed_mid_snapshot(live, guards=True)
        assert killed.returncode == -signal.SIGKILL and "the freeze guard" in killed.stderr, killed.stderr
        thread, done = write_later(live.mount / "held.bin")
        time.sleep(2)
        assert done == [], "frozen: a write went through"
        assert live.stop() == 0
        live.start()
        thread.join(120)
        assert done, "the daemon's start did not thaw its drive"
        assert "drive was left frozen (a snapshot interrupted between freeze and thaw): thawed" in live.tail(400)
        live.wait_online(volumes=2, timeout=300)

        # 5. The complete set restored to a new drive beside the live one.
        (tmp_path / "copy").mkdir()
        copy = DaemonHarness(tmp_path / "copy", drive="copy", layout="lvm", cloud=live.cloud, extra=live.extra,
                             **{"from-snapshot-set": set_id, "max-used-space-perc": 50, "min-used-space-perc": 1})
        harnesses.append(copy)
        started = time.monotonic()
        copy.start()
        copy.wait_online(volumes=2, timeout=600)
        figures.append(f"restored to a new drive (2 volumes, lvm) online in {time.monotonic() - started:.1f} s")
        restored = checksums(copy.mount)
        for name, digest in stable.items():
            assert restored[name] == digest, f"{name} differs in the copy"
        data = (copy.mount / "written.bin").read_bytes()
        blocks = [hashlib.sha256(data[i:i + MIB]).digest() for i in range(0, len(data) - len(data) % MIB, MIB)]
        assert len(data) % MIB == 0 and blocks == writer.blocks[:len(blocks)], "a block torn or changed"
        assert before <= len(blocks) <= after, (before, len(blocks), after)
        assert not (copy.mount / "after-failure.bin").exists()
        vgs = {vg["vg_name"]: vg["vg_uuid"] for vg in lvm_report("vgs", "vg_name,vg_uuid")}
        assert {"orig", "copy"} <= set(vgs) and vgs["orig"] != vgs["copy"]
        pv_uuids = [pv["pv_uuid"] for pv in lvm_report("pvs", "pv_name,pv_uuid")]
        assert len(pv_uuids) == len(set(pv_uuids)) == 4, pv_uuids
        shown = {name: subprocess.run(["btrfs", "filesystem", "show", str(h.mount)], capture_output=True,
                                      text=True).stdout for name, h in (("orig", live), ("copy", copy))}
        assert "Label: 'bsud-copy'" in shown["copy"] and "Label: 'bsud-orig'" in shown["orig"]
        assert shown["copy"].split("uuid: ")[1].split()[0] != shown["orig"].split("uuid: ")[1].split()[0]
        log = copy.log_path.read_text()
        assert '"action": "RestoreVolumes"' in log and '"action": "AdoptRestored"' in log
        assert '"action": "MakeFilesystem"' not in log and "pvcreate" not in log, "a restored drive is never formatted"
        assert checksums(live.mount)["before.bin"] == stable["before.bin"]

        # 6. The incomplete set: listed so, and never restored.
        listed = json.loads(bsud(live, "snapshots", "orig", "--json").stdout)
        states = {s["id"]: s for s in listed}
        assert states[set_id]["state"] == "completed" and states[set_id]["restorable"]
        figures += [f"set {s['id']}: {s['state']} {'; '.join(s['problems'])}" for s in listed]
        incomplete = [s for s in listed if s["id"] != set_id]  # the failed one; the two killed: never confirmed
        assert len(incomplete) == 3 and all(s["state"] == "incomplete" for s in incomplete), listed
        assert sum(1 for s in incomplete if s["problems"][0].startswith("never confirmed")) == 2, listed
        refused_set = next(s["id"] for s in incomplete if any("not every volume" in p for p in s["problems"]))
        (tmp_path / "copy2").mkdir()
        copy2 = DaemonHarness(tmp_path / "copy2", drive="copy2", layout="lvm", cloud=live.cloud, extra=live.extra,
                              **{"from-snapshot-set": refused_set})
        harnesses.append(copy2)
        copy2.start()
        st = copy2.wait_for("the refusal", lambda s: "is incomplete" in (s.get("last_error") or ""), timeout=120)
        assert "never restored" in st["last_error"] and st.get("volumes", []) == []
        assert copy2.stop() == 0

        gone = bsud(live, "delete-snapshot-set", "--yes", *states)
        assert gone.returncode == 0, gone.stderr
        assert vm.ec2.describe_snapshots(Filters=[{"Name": "tag-key", "Values": [SNAPSHOT_SET_TAG]}])["Snapshots"] == []
        assert copy.stop() == 0 and live.stop() == 0
    finally:
        for h in reversed(harnesses):
            h.close()
        with capsys.disabled():
            print("\n" + "\n".join(figures), flush=True)
