"""Carrying out one planned action with the cloud and the host layers.

Each action re-checks what it depends on right before acting (a device is re-resolved and
verified, a volume is detached only when nothing of the drive is mounted or active on it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bsud.backup.restore import adopt, restore_volumes
from bsud.cloud.base import CloudProvider, VolumeOptions
from bsud.config import DriveConfig, Provider
from bsud.config.mount_options import missing as missing_options
from bsud.errors import AttachmentLimitError, BsudError
from bsud.host import mounts
from bsud.exports import ExportKind
from bsud.host.devices import DeviceWaiter, Resolution, VolumeRef, find_device
from bsud.host.layouts import ReplicatedLvmLayout, StorageLayout
from bsud.host.preempt import Preempted
from bsud.host.safety import probe
from bsud.logs import get_logger
from bsud.naming import AVAILABLE, DELETED, DELETING, DRIVE_TAG, NEW, RESTORED_FROM_TAG, STATE_TAG, restored_from
from bsud.reconcile.model import (EVACUATED, Action, Activate, AdoptRestored, ApplyExports, ApplyMountOptions,
                                  AttachPeerVolume, AttachVolume, CreatePeerVolume, CreateVolume, Deactivate,
                                  DeleteVolume, DetachVolume, Grow, Join, MakeFilesystem, MarkVolume, Mount, Outcome,
                                  Refresh, Remount, RemoveFromDrive, ResizeReplica, RestoreVolumes, RetireVolume,
                                  Unmount, WithdrawExports)

log = get_logger("bsud.reconcile.execute")


class ActionError(BsudError):
    pass


class Executor:
    def __init__(self, spec: DriveConfig, cloud: CloudProvider, layout: StorageLayout, provider: Provider,
                 attach_timeout: float = 300.0, device_timeout: float = 120.0,
                 exporters: Mapping[str, ExportKind] | None = None) -> None:
        self.spec = spec
        self.exporters = dict(exporters or {})
        self.cloud = cloud
        self.layout = layout
        self.provider = provider
        self.attach_timeout = attach_timeout
        self.device_timeout = device_timeout
        self.devices: list[str] = []
        #: The volume the last CreateVolume made (for the scale-up event).
        self.created: str | None = None

    def _volume(self, volume_id: str):
        vol = self.cloud.get_volume(volume_id)
        if vol is None:
            raise ActionError(f"volume {volume_id} no longer exists", temporary=True)
        if vol.tags.get(DRIVE_TAG) != self.spec.name:
            raise ActionError(f"volume {volume_id} is not tagged {DRIVE_TAG}={self.spec.name}; not touching it")
        return vol

    def _resolve(self, volume_id: str) -> tuple[Resolution, dict[str, str]]:
        vol = self._volume(volume_id)
        me = self.cloud.identity().instance_id
        if vol.attachment_to(me) is None:
            raise ActionError(f"volume {volume_id} is not attached here", temporary=True)
        found = find_device(VolumeRef.from_volume(vol, me), self.cloud.device_rules)
        if found is None:
            raise ActionError(f"the device of volume {volume_id} is not visible", temporary=True)
        return found, dict(vol.tags)

    def _devices(self) -> list[str]:
        """The drive's devices as resolved by the observation this action was planned on."""
        return list(self.devices)

    def run(self, action: Action, devices: list[str] | None = None) -> Outcome:
        """Carry out ``action``; ``devices`` are the drive's devices as the observation it was planned on
        resolved them. Returns whether something changed (or whether a burst pre-empted the removal's move it ran:
        not a failure, the drive is planned again at once); raises :class:`BsudError` when it failed."""
        try:
            return self._run(action, devices)
        except Preempted:
            return Outcome.PREEMPTED  # said in the log where the move was stopped

    def _run(self, action: Action, devices: list[str] | None) -> Outcome:
        self.devices = devices or []
        self.created: str | None = None
        changed: bool
        match action:
            case CreateVolume():
                changed = self._create(action)
            case AttachVolume():
                changed = self._attach(action)
            case CreatePeerVolume():
                changed = self._create(action)
            case AttachPeerVolume():
                changed = self._attach_peer(action)
            case ResizeReplica():
                changed = self._resize_replica(action)
            case DetachVolume():
                changed = self._detach(action)
            case DeleteVolume():
                changed = self._delete(action)
            case RetireVolume():
                changed = self._retire(action)
            case MarkVolume():
                changed = self._mark(action)
            case Join():
                changed = self._join(action)
            case MakeFilesystem():
                changed = self._make_filesystem(action)
            case Activate():
                changed = self.layout.activate(self._devices())
            case Deactivate():
                changed = self.layout.deactivate(self._devices())
            case Mount():
                changed = self._mount()
            case Refresh():
                changed = self.layout.refresh(self._devices())
            case Remount():
                changed = self._remount()
            case ApplyMountOptions():
                changed = self._apply_mount_options()
            case RestoreVolumes():
                changed = restore_volumes(self.cloud, self.spec, self.provider, action.set_id,
                                          self.attach_timeout)
            case AdoptRestored():
                devices, tags = self._restored_devices()
                changed = adopt(self.cloud, self.spec, action.set_id, devices, self.layout.runner, tags)
            case ApplyExports():
                changed = self._apply_exports()
            case WithdrawExports():
                changed = self._withdraw_exports()
            case Unmount():
                changed = self._unmount()
            case Grow():
                changed = self.layout.grow(self.spec.mount_path)
            case RemoveFromDrive():
                changed = self._remove(action)
            case _:
                raise ActionError(f"{action.kind} is not carried out by the executor (the engine handles it)")
        return Outcome.CHANGED if changed else Outcome.UNCHANGED

    def _apply_exports(self) -> bool:
        """Each kind's exports as the config has them (a kind the drive no longer uses is withdrawn)."""
        if mounts.mount_at(self.spec.mount_path) is None:
            raise ActionError(f"not exporting: {self.spec.mount_path} is not mounted", temporary=True)

        def one(kind: str, exporter: ExportKind) -> bool:
            wanted = self.spec.exports_by(kind)
            return exporter.apply(self.spec.name, self.spec.mount_path, wanted) if wanted else \
                exporter.withdraw(self.spec.name)
        return self._each_kind(one)

    def _withdraw_exports(self) -> bool:
        return self._each_kind(lambda kind, exporter: exporter.withdraw(self.spec.name))

    def _each_kind(self, change: Callable[[str, ExportKind], bool]) -> bool:
        """``change`` each export kind; one kind failing does not keep the others from being done, and every
        failure is reported (the action is retried)."""
        changed = False
        failures: dict[str, str] = {}
        for kind, exporter in self.exporters.items():
            try:
                changed |= change(kind, exporter)
            except BsudError as exc:
                failures[kind] = str(exc)
        if failures:
            error = ActionError("; ".join(failures.values()), temporary=True)
            error.kinds = tuple(failures)  # which kinds failed: the engine names their exports in the status
            raise error
        return changed

    # -- cloud -------------------------------------------------------------------------------------

    def _create(self, action: CreateVolume | CreatePeerVolume) -> bool:
        """Always CHANGED: every run makes a volume (the planner asks for one only when the drive needs it). For
        the peer's drive of a highly available drive, tagged with that drive's name."""
        spec = self.spec
        for_peer = isinstance(action, CreatePeerVolume)
        drive = self._peer_drive(action.peer_drive) if for_peer else spec.name
        # Marked new from its first moment: a volume never attached holds nothing, and can be deleted unseen if the
        # VM takes no more volumes (the mark is dropped as soon as it is attached).
        options = VolumeOptions.for_drive(spec, self.provider, action.size_gib, {STATE_TAG: NEW})
        vol = self.cloud.create_volume(drive, action.size_gib, spec.disk_type.value, options)
        self.created = vol.id
        if for_peer:
            log.info("volume created for the peer's drive", drive=spec.name, peer_drive=drive, volume=vol.id,
                     size_gib=action.size_gib)
        self.cloud.wait_available(vol.id, timeout=self.attach_timeout)
        return True

    def _attach(self, action: AttachVolume) -> bool:
        """UNCHANGED when the volume was attached here already (its device is still waited for)."""
        vol = self._volume(action.volume_id)
        me = self.cloud.identity().instance_id
        changed = vol.attachment_to(me) is None
        with DeviceWaiter() as waiter:
            if changed:
                try:
                    self.cloud.attach_volume(action.volume_id)
                except AttachmentLimitError as exc:
                    exc.drive = self.spec.name
                    exc.deleted = self._delete_never_attached(action.volume_id)
                    raise
            if vol.tags.get(STATE_TAG) == NEW:
                self.cloud.set_tag(vol.id, STATE_TAG, "")  # attached from now on: it may come to hold data
                changed = True
            vol = self.cloud.wait_attached(action.volume_id, timeout=self.attach_timeout)
            waiter.wait(VolumeRef.from_volume(vol, me), self.cloud.device_rules, timeout=self.device_timeout)
        return changed

    def _peer_drive(self, drive: str) -> str:
        ha = self.spec.ha
        if ha is None or not ha.peer_drive or drive != ha.peer_drive:
            raise ActionError(f"drive {drive!r} is not the peer of drive {self.spec.name!r}; not touching it")
        return drive

    def _attach_peer(self, action: AttachPeerVolume) -> bool:
        """Attach a volume of the peer's drive to the peer's VM (and drop its new mark: attached, it may come to hold
        data); UNCHANGED when it already was."""
        drive = self._peer_drive(action.peer_drive)
        vol = self.cloud.get_volume(action.volume_id)
        if vol is None:
            raise ActionError(f"volume {action.volume_id} no longer exists", temporary=True)
        if vol.tags.get(DRIVE_TAG) != drive:
            raise ActionError(f"volume {vol.id} is not tagged {DRIVE_TAG}={drive}; not attaching it")
        changed = vol.attachment_to(action.instance_id) is None
        if changed:
            self.cloud.attach_volume_to(vol.id, action.instance_id)
        if vol.tags.get(STATE_TAG) == NEW:
            self.cloud.set_tag(vol.id, STATE_TAG, "")
            changed = True
        self.cloud.wait_attached(vol.id, timeout=self.attach_timeout, instance_id=action.instance_id)
        return changed

    def _resize_replica(self, action: ResizeReplica) -> bool:
        if not isinstance(self.layout, ReplicatedLvmLayout):
            raise ActionError(f"drive {self.spec.name!r} has no DRBD resource to resize")
        grew = self.layout.resize_replica(action.assume_peer_has_space)
        if grew and mounts.mount_at(self.spec.mount_path) is not None:
            self.layout.grow(self.spec.mount_path)  # the filesystem on the DRBD device takes the new size at once
        return grew

    def _delete_never_attached(self, volume_id: str) -> bool:
        """Delete a volume the VM could not take, when it is verifiably empty: bsud's own for this drive, marked new
        (never attached since it was created) and attached nowhere. Anything else is left as it is. Whether deleted;
        a failure to delete is logged (tried again with the next attach)."""
        try:
            vol = self._volume(volume_id)
            if vol.tags.get(STATE_TAG) != NEW or vol.state != AVAILABLE or any(
                    a.state != "detached" for a in vol.attachments):
                return False
            self.cloud.delete_volume(vol.id)
            self.cloud.wait_deleted(vol.id, timeout=self.attach_timeout)
        except BsudError as exc:
            log.error("the new volume the VM could not take was not deleted", drive=self.spec.name,
                      volume=volume_id, error=str(exc))
            return False
        log.info("new volume deleted: the VM takes no more volumes", drive=self.spec.name, volume=volume_id)
        return True

    def _detach(self, action: DetachVolume) -> bool:
        """Taking the whole drive offline (a volume leaving a running drive goes through RetireVolume)."""
        vol = self._volume(action.volume_id)
        if vol.attachment_to(self.cloud.identity().instance_id) is None:
            return False  # not attached here (any more)
        if mounts.mount_at(self.spec.mount_path) is not None:
            raise ActionError(f"not detaching {vol.id}: {self.spec.mount_path} is still mounted", temporary=True)
        self.cloud.detach_volume(vol.id)
        self.cloud.wait_detached(vol.id, timeout=self.attach_timeout)
        return True

    def _gone(self, volume_id: str) -> bool:
        """The volume no longer exists, or is being deleted (waited for): a deletion has nothing left to do."""
        vol = self.cloud.get_volume(volume_id)
        if vol is not None and vol.state == DELETING:
            self.cloud.wait_deleted(volume_id, timeout=self.attach_timeout)
            return True
        return vol is None or vol.state == DELETED

    def _delete(self, action: DeleteVolume) -> bool:
        if self._gone(action.volume_id):
            return False
        vol = self._volume(action.volume_id)
        if vol.attachments:
            raise ActionError(f"not deleting {vol.id}: it is still attached", temporary=True)
        self.cloud.delete_volume(vol.id)
        self.cloud.wait_deleted(vol.id, timeout=self.attach_timeout)
        return True

    def _retire(self, action: RetireVolume) -> bool:
        """Detach and delete a volume that is out of the drive — only once it is seen blank, attached here."""
        if self._gone(action.volume_id):
            return False
        found, tags = self._resolve(action.volume_id)
        if tags.get(STATE_TAG) != EVACUATED:
            raise ActionError(f"not deleting {action.volume_id}: it is not marked {EVACUATED}")
        seen = probe(self.layout.runner, found.device)
        if not seen.blank:
            raise ActionError(f"not deleting {action.volume_id}: {found.device} holds {seen.describe()}")
        self.cloud.detach_volume(action.volume_id)
        self.cloud.wait_detached(action.volume_id, timeout=self.attach_timeout)
        self.cloud.delete_volume(action.volume_id)
        self.cloud.wait_deleted(action.volume_id, timeout=self.attach_timeout)
        return True

    def _mark(self, action: MarkVolume) -> bool:
        vol = self._volume(action.volume_id)
        if vol.tags.get(STATE_TAG, "") == action.value:
            return False
        self.cloud.set_tag(action.volume_id, STATE_TAG, action.value)
        return True

    # -- host ---------------------------------------------------------------------------------------

    def _join(self, action: Join) -> bool:
        found, tags = self._resolve(action.volume_id)
        mounted = mounts.mount_at(self.spec.mount_path) is not None
        return self.layout.join(found, tags, self.spec.mount_path if mounted else None)

    def _make_filesystem(self, action: MakeFilesystem) -> bool:
        if action.volume_id:
            found, tags = self._resolve(action.volume_id)
            return self.layout.ensure_filesystem(found, tags)
        return self.layout.ensure_filesystem()

    def _restored_devices(self) -> tuple[list[str], list[dict[str, str]]]:
        """The devices of the drive's volumes made from a snapshot set, in the set's member order, and their
        tags."""
        me = self.cloud.identity().instance_id
        made = [v for v in self.cloud.list_volumes() if v.drive == self.spec.name and v.tags.get(RESTORED_FROM_TAG)]
        made.sort(key=lambda v: (restored_from(v.tags[RESTORED_FROM_TAG])[1] or (0, 0))[0])
        found = [find_device(VolumeRef.from_volume(v, me), self.cloud.device_rules) for v in made]
        if any(f is None for f in found):
            raise ActionError("a volume made from the snapshot set has no device here yet", temporary=True)
        return [f.device for f in found if f is not None], [dict(v.tags) for v in made]

    def _mount(self) -> bool:
        return self.layout.mount(self._devices(), self.spec.mount_path, self.spec.mount_options)

    def _apply_mount_options(self) -> bool:
        """``mount -o remount,<mount-options>``; UNCHANGED when the kernel shows them all in effect already. Still
        missing after the remount: a permanent error (they apply at the next mount), never a loop of remounts."""
        entry = mounts.mount_at(self.spec.mount_path)
        if entry is None or not self.layout.is_our_mount(entry, self._devices()):
            raise ActionError(f"not remounting: {self.spec.mount_path} is not the drive's mount", temporary=True)
        if not missing_options(self.spec.mount_options, entry.options, entry.super_options):
            return False
        mounts.remount(self.layout.runner, self.spec.mount_path, self.spec.mount_options)
        entry = mounts.mount_at(self.spec.mount_path)
        still = missing_options(self.spec.mount_options, entry.options, entry.super_options) if entry else []
        if still:
            raise ActionError(f"mount-options {', '.join(still)}: the kernel did not take them on a remount of "
                              f"{self.spec.mount_path} (it shows {entry.options if entry else '?'} | "
                              f"{entry.super_options if entry else '?'}); they apply at the next mount "
                              f"(bsud offline, then online)")
        return True

    def _remount(self) -> bool:
        """Unmount (refused while busy: the error names the holders) and mount again from the last commit;
        UNCHANGED when the filesystem is mounted and writable already."""
        entry = mounts.mount_at(self.spec.mount_path)
        if entry is not None and not mounts.forced_read_only(entry) and \
                self.layout.is_our_mount(entry, self._devices()):
            return False
        self.layout.unmount(self.spec.mount_path)
        self.layout.mount(self._devices(), self.spec.mount_path, self.spec.mount_options)
        return True

    def _unmount(self) -> bool:
        return self.layout.unmount(self.spec.mount_path)

    def _remove(self, action: RemoveFromDrive) -> bool:
        found, _ = self._resolve(action.volume_id)
        return self.layout.remove_device(found.device, self.spec.mount_path, action.keep_bytes)

