"""The retry policy (bsud.retry) as a table: which kind each error is, how long each waits after its n-th failure in a
row, and what may cut the wait short; then the worker sleeping what it is told."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from bsud.cloud.local import LocalCloud
from bsud.config import CloudSettings, DaemonSettings, DriveConfig, Layout, NfsSettings, Provider, Target
from bsud.errors import (AttachmentLimitError, BsudError, CloudError, CloudTimeout, CommandError, ConfigError,
                         MissingToolsError, VolumeStateError)
from bsud.host.mounts import MountError
from bsud.reconcile.observe import CloudSnapshot
from bsud.retry import POLICY, ErrorKind, Retry, backoff_seconds, kind_of, retry_after
from bsud.worker import DriveWorker, WorkerContext

T, THR, P, I = ErrorKind.TEMPORARY, ErrorKind.THROTTLED, ErrorKind.PERMANENT, ErrorKind.INTERNAL

KINDS = [
    ("throttled", CloudError("CreateVolume", "RequestLimitExceeded: slow down", code="RequestLimitExceeded",
                             throttled=True), THR),
    ("api unreachable", CloudError("DescribeVolumes", "cannot reach the API", temporary=True), T),
    ("wait timed out", CloudTimeout("vol-1", ["in-use"], "attaching", 3.0), T),
    ("command timed out", CommandError(["lvm", "pvmove"], None, timeout=60.0), T),
    ("busy unmount", MountError("cannot unmount /mnt/d: busy", temporary=True), T),
    ("command refused", CommandError(["mount", "/dev/x", "/mnt"], 32, stderr="wrong fs type"), P),
    ("vm full", AttachmentLimitError("vol-1", "AttachmentLimitExceeded"), P),
    ("volume state", VolumeStateError("vol-1", "error"), P),
    ("config", ConfigError("bad", path="/etc/osc/bsud.json", drive="d", field="mount-path"), P),
    ("missing tools", MissingToolsError([("btrfs", "btrfs-progs")]), P),
    ("a bug", KeyError("volume"), I),
]


@pytest.mark.parametrize(("error", "kind"), [k[1:] for k in KINDS], ids=[k[0] for k in KINDS])
def test_each_error_has_a_kind(error: BaseException, kind: ErrorKind):
    assert kind_of(error) is kind


def test_a_throttled_cloud_error_is_temporary_too():
    """Callers that only ask ``temporary`` (the CLI's run_until_settled) still retry it."""
    assert CloudError("X", "y", throttled=True).temporary


# (kind, failures in a row) → seconds, with retry-seconds 10 and full-check-seconds 60 (the defaults)
DELAYS = [
    (T, 1, 10.0), (T, 2, 20.0), (T, 3, 40.0), (T, 6, 300.0), (T, 50, 300.0),
    (THR, 1, 30.0), (THR, 2, 60.0), (THR, 5, 480.0), (THR, 6, 600.0), (THR, 50, 600.0),
    (P, 1, 60.0), (P, 2, 120.0), (P, 5, 960.0), (P, 6, 1800.0), (P, 50, 1800.0),
    (I, 1, 10.0), (I, 2, 20.0), (I, 9, 300.0),
]


@pytest.mark.parametrize(("kind", "attempt", "seconds"), DELAYS,
                         ids=[f"{k.value}-{n}" for k, n, _ in DELAYS])
def test_backoff_table(kind: ErrorKind, attempt: int, seconds: float):
    assert backoff_seconds(kind, attempt, retry_seconds=10.0, full_check_seconds=60.0) == seconds


def test_a_drive_needing_space_cuts_short_all_but_throttling_and_bugs():
    """Retrying throttled calls faster prolongs the throttling, and a bug does not go away by trying again; a
    permanent error waits for a change — a reload, a device event, or the drive needing space: a grow never waits
    on a backoff while the drive fills (a command's refusal may be the passing kind)."""
    assert {k for k, rule in POLICY.items() if rule.woken_by_need} == {T, P}


def test_a_permanent_error_waits_for_the_next_full_check_not_the_retry_delay():
    settings = DaemonSettings(retry_seconds=0.5, full_check_seconds=3)
    retry = retry_after(CommandError(["mount"], 32), 1, settings.retry_seconds, settings.full_check_seconds)
    assert retry == Retry(P, 3.0, True)


def test_an_error_s_own_delay_is_used_as_it_is():
    error = BsudError("exports failed", temporary=True, delay=80.0)
    assert retry_after(error, 1, 10.0, 60.0) == Retry(T, 80.0, True)


def test_the_first_wait_never_exceeds_the_most():
    assert backoff_seconds(P, 1, 10.0, full_check_seconds=7200.0) == 1800.0


# -- the worker sleeps what it is told ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def worker(tmp_path) -> DriveWorker:
    cloud = LocalCloud(CloudSettings(provider="local", state_dir=str(tmp_path), instance_id="i-x"))
    config = SimpleNamespace(cloud=SimpleNamespace(provider=Provider.LOCAL), daemon=DaemonSettings(),
                             nfs=NfsSettings())
    context = WorkerContext(cloud=cloud, snapshot=CloudSnapshot(cloud), config=lambda: config,  # type: ignore
                            clock=Clock())
    spec = DriveConfig(name="d", target=Target.ONLINE, mount_path="/mnt/d", layout=Layout.BTRFS)
    return DriveWorker(context, spec)


def wait_in_thread(worker: DriveWorker, retry: Retry) -> threading.Thread:
    thread = threading.Thread(target=worker._wait_after_failure, args=(retry,), daemon=True)
    thread.start()
    return thread


def test_a_permanent_wait_is_not_cut_short_by_the_sampler_but_by_a_device_event(worker: DriveWorker):
    thread = wait_in_thread(worker, Retry(P, 1000.0, False))
    worker.urgent.set()  # what the sampler does when the drive needs space
    worker.wake.set()
    thread.join(0.3)
    assert thread.is_alive()
    worker.poke()  # a block device event concerning the drive
    thread.join(2)
    assert not thread.is_alive()


def test_a_temporary_wait_is_cut_short_by_the_sampler(worker: DriveWorker):
    thread = wait_in_thread(worker, Retry(T, 1000.0, True))
    worker.urgent.set()
    worker.wake.set()
    thread.join(2)
    assert not thread.is_alive()


def test_a_reload_ends_any_wait(worker: DriveWorker):
    thread = wait_in_thread(worker, Retry(THR, 1000.0, False))
    worker.update(worker.reconciler.spec)
    thread.join(2)
    assert not thread.is_alive()


def test_the_wait_ends_on_the_context_s_clock(worker: DriveWorker):
    clock = worker.clock
    assert isinstance(clock, Clock)
    thread = wait_in_thread(worker, Retry(P, 30.0, False))
    thread.join(0.2)
    assert thread.is_alive()
    clock.now = 31.0
    worker.wake.set()  # the wait looks at the clock again when woken (in the daemon: at the latest after `delay`)
    thread.join(2)
    assert not thread.is_alive()
