"""The cloud API a fleet of bsud daemons costs its account: N daemons, each its own instance, against one moto server.

Run from the checkout (after scripts/setup; no root needed — the drives are offline, no device is made):

    .venv/bin/python bench/fleet.py                 # 20 daemons, periods ÷20, today's defaults beside the old ones
    .venv/bin/python bench/fleet.py --vms 50 --scale 10

Each daemon has two drives whose target is offline and the EC2 provider against moto's server through a counting
proxy (each daemon its own access key, so that calls are counted per VM, DryRuns apart). Every period of the
daemon section is divided by ``--scale`` (cloud-refresh-seconds 1200 → 60 with ÷20), so that ten minutes pass in
``600 / scale`` seconds; the figures printed are per VM per (real) ten minutes. Printed for today's defaults and,
beside them, for the original default (cloud-refresh-seconds 60): calls per VM in the first (scaled) minute, then
per 10 min in steady state, and the largest fleet whose steady state fits in half of EC2's documented refill for
DescribeVolumes (a token bucket per account, Region and action: 100 tokens, 20 per second; half left to every other
tool of the account). The permission check (DryRun of each call, once per boot at a random moment of the first five
minutes) is counted apart.

A drive scaling up costs CreateVolume, AttachVolume, DescribeInstances and a few DescribeVolumes while it waits: the
VM lane prints them (tests/vm/test_daemon_lvm.py); a member detached behind bsud's back is noticed through the host
(block device events), not by listing: tests/vm/test_faults_lvm.py prints how soon.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tests.cloud.faultproxy import FaultProxy  # noqa: E402

REGION, ZONE = "us-east-1", "us-east-1a"
#: EC2's documented bucket for a non-mutating action (DescribeVolumes): refill per second; half is bsud's.
REFILL_PER_SECOND = 20
BUDGET_SHARE = 0.5
DEFAULT_PERIODS = {"cloud-refresh-seconds": 1200.0, "full-check-seconds": 60.0, "retry-seconds": 10.0}


def start_daemons(work: Path, endpoint: str, ec2, vms: int, periods: dict[str, float], scale: float,
                  tag: str) -> list[subprocess.Popen]:
    procs = []
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}
    image = ec2.describe_images()["Images"][0]["ImageId"]
    for n in range(vms):
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": ZONE})["Instances"][0]["InstanceId"]
        home = work / f"{tag}-vm{n}"
        home.mkdir()
        doc = {"authentication": {"access-key": f"AKIA{tag.upper()}VM{n:04d}", "secret-key": "secret-of-the-bench"},
               "cloud": {"provider": "ec2", "endpoint": endpoint, "region": REGION, "instance-id": instance,
                         "availability-zone": ZONE, "max-attempts": 3},
               "daemon": {**{k: v / scale for k, v in periods.items()}, "status-file": str(home / "status.json")},
               "drives": [{"name": f"{tag}{n}a", "target": "offline", "mount-path": f"/mnt/{tag}{n}a"},
                          {"name": f"{tag}{n}b", "target": "offline", "mount-path": f"/mnt/{tag}{n}b"}]}
        (home / "bsud.json").write_text(json.dumps(doc))
        (home / "bsud.json").chmod(0o600)
        log = open(home / "bsud.log", "w")  # noqa: SIM115 - lives as long as the daemon
        procs.append(subprocess.Popen([sys.executable, "-m", "bsud", "-c", str(home / "bsud.json"), "--log-level",
                                       "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def keys_of(proxy: FaultProxy) -> dict[str, Counter]:
    return {k: Counter(v) for k, v in proxy.by_key.items()}


def run(label: str, periods: dict[str, float], args: argparse.Namespace, endpoint: str, proxy: FaultProxy,
        ec2, work: Path) -> dict[str, float]:
    tag = "new" if periods is DEFAULT_PERIODS else "old"
    start = keys_of(proxy)
    procs = start_daemons(work, proxy.endpoint, ec2, args.vms, periods, args.scale, tag)
    try:
        minute = 60 / args.scale
        time.sleep(max(minute, 8.0))  # python's start-up is not scaled: give it a few real seconds
        after_start = keys_of(proxy)
        window = args.windows * 600 / args.scale
        time.sleep(window)
        after_steady = keys_of(proxy)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    ours = [k for k in after_steady if k.startswith(f"AKIA{tag.upper()}VM")]

    def total(snapshot: dict[str, Counter], action: str) -> int:
        return sum(snapshot.get(k, Counter())[action] for k in ours)

    at_start = (total(after_start, "DescribeVolumes") - total(start, "DescribeVolumes")) / args.vms
    steady = (total(after_steady, "DescribeVolumes") - total(after_start, "DescribeVolumes")) / args.vms
    per_ten_minutes = steady / args.windows
    dry = sum(sum(c for a, c in after_steady.get(k, Counter()).items() if a.endswith(":DryRun")) for k in ours)
    per_second = per_ten_minutes / 600
    fleet = int(REFILL_PER_SECOND * BUDGET_SHARE / per_second) if per_second else 0
    return {"label": label, "refresh": periods["cloud-refresh-seconds"], "start": at_start,
            "per10": per_ten_minutes, "fleet": fleet, "dryrun": dry / args.vms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=20, help="daemons, each its own instance (default 20)")
    parser.add_argument("--scale", type=float, default=20.0, help="divide every period by this (default 20)")
    parser.add_argument("--windows", type=int, default=3, help="steady state measured over this many 10 min")
    parser.add_argument("--no-baseline", action="store_true", help="only today's defaults")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    proxy = FaultProxy(endpoint)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bsud-fleet-") as tmp:
        work = Path(tmp)
        rows.append(run("bsud (today's defaults)", DEFAULT_PERIODS, args, endpoint, proxy, ec2, work))
        if not args.no_baseline:
            rows.append(run("bsud with the old default listing period", {**DEFAULT_PERIODS, "cloud-refresh-seconds": 60.0},
                            args, endpoint, proxy, ec2, work))
    proxy.close()
    server.stop()
    print(f"\n{args.vms} daemons × 2 offline drives, EC2 provider against moto, periods ÷{args.scale:g}; "
          f"steady state over {args.windows} × 10 min")
    print("| daemon | cloud-refresh-seconds | DescribeVolumes at start, per VM | per VM per 10 min, steady | "
          "largest fleet in half of the 20/s refill | DryRun calls per VM (once per boot) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['refresh']:g} | {r['start']:.1f} | {r['per10']:.2f} | {r['fleet']:,} | "
              f"{r['dryrun']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
