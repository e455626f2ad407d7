"""Carrying out one planned action with the cloud and the host layers.

Each action re-checks what it depends on right before acting (a device is re-resolved and
verified, a volume is detached only when nothing of the drive is mounted or active on it).
"""

from __future__ import annotations

from bsud.cloud.base import CloudProvider
from bsud.config import DRIVE_TAG, STATE_TAG, DriveConfig, Provider, provisioned_iops, volume_limits
from bsud.errors import BsudError
from bsud.host import mounts
from bsud.host.devices import DeviceWaiter, Resolution, VolumeRef, find_device
from bsud.host.layouts import StorageLayout
from bsud.host.safety import probe
from bsud.logs import get_logger
from bsud.reconcile.model import (
    EVACUATED,
    Action,
    Activate,
    AttachVolume,
    Blocked,
    CreateVolume,
    Deactivate,
    DeleteVolume,
    DetachVolume,
    Grow,
    Idle,
    Join,
    MakeFilesystem,
    MarkVolume,
    Mount,
    Refresh,
    Remount,
    RemoveFromDrive,
    RetireVolume,
    Unmount,
    Wait,
)

log = get_logger("bsud.reconcile.execute")


class ActionError(BsudError):
    pass


class Executor:
    def __init__(self, spec: DriveConfig, cloud: CloudProvider, layout: StorageLayout, provider: Provider,
                 attach_timeout: float = 300.0, device_timeout: float = 120.0) -> None:
        self.spec = spec
        self.cloud = cloud
        self.layout = layout
        self.provider = provider
        self.attach_timeout = attach_timeout
        self.device_timeout = device_timeout

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
        found = find_device(VolumeRef.from_volume(vol, me))
        if found is None:
            raise ActionError(f"the device of volume {volume_id} is not visible", temporary=True)
        return found, dict(vol.tags)

    def _devices(self) -> list[str]:
        """The drive's devices as resolved by the observation this action was planned on."""
        return list(self.devices)

    def run(self, action: Action, devices: list[str] | None = None) -> None:
        self.devices = devices or []
        getattr(self, f"_do_{action.kind}")(action)

    # -- cloud -------------------------------------------------------------------------------------

    def _do_CreateVolume(self, action: CreateVolume) -> None:  # noqa: N802
        limits = volume_limits(self.provider, self.spec.disk_type)
        iops = None
        if self.spec.disk_iops_per_gib is not None and limits is not None and limits.max_iops_per_gib:
            iops = provisioned_iops(action.size_gib, self.spec.disk_iops_per_gib, limits)
        vol = self.cloud.create_volume(self.spec.name, action.size_gib, self.spec.disk_type.value, iops)
        self.cloud.wait_available(vol.id, timeout=self.attach_timeout)

    def _do_AttachVolume(self, action: AttachVolume) -> None:  # noqa: N802
        self._volume(action.volume_id)
        with DeviceWaiter() as waiter:
            self.cloud.attach_volume(action.volume_id)
            vol = self.cloud.wait_attached(action.volume_id, timeout=self.attach_timeout)
            waiter.wait(VolumeRef.from_volume(vol, self.cloud.identity().instance_id), timeout=self.device_timeout)

    def _do_DetachVolume(self, action: DetachVolume) -> None:  # noqa: N802
        """Taking the whole drive offline (a volume leaving a running drive goes through RetireVolume)."""
        vol = self._volume(action.volume_id)
        if mounts.mount_at(self.spec.mount_path) is not None:
            raise ActionError(f"not detaching {vol.id}: {self.spec.mount_path} is still mounted", temporary=True)
        self.cloud.detach_volume(vol.id)
        self.cloud.wait_detached(vol.id, timeout=self.attach_timeout)

    def _do_DeleteVolume(self, action: DeleteVolume) -> None:  # noqa: N802
        vol = self._volume(action.volume_id)
        if vol.attachments:
            raise ActionError(f"not deleting {vol.id}: it is still attached", temporary=True)
        self.cloud.delete_volume(vol.id)
        self.cloud.wait_deleted(vol.id, timeout=self.attach_timeout)

    def _do_RetireVolume(self, action: RetireVolume) -> None:  # noqa: N802
        """Detach and delete a volume that is out of the drive — only once it is seen blank, attached here."""
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

    def _do_MarkVolume(self, action: MarkVolume) -> None:  # noqa: N802
        self._volume(action.volume_id)
        self.cloud.set_tag(action.volume_id, STATE_TAG, action.value)

    # -- host ---------------------------------------------------------------------------------------

    def _do_Join(self, action: Join) -> None:  # noqa: N802
        found, tags = self._resolve(action.volume_id)
        mounted = mounts.mount_at(self.spec.mount_path) is not None
        self.layout.join(found, tags, self.spec.mount_path if mounted else None)

    def _do_MakeFilesystem(self, action: MakeFilesystem) -> None:  # noqa: N802
        if action.volume_id:
            found, tags = self._resolve(action.volume_id)
            self.layout.ensure_filesystem(found, tags)
        else:
            self.layout.ensure_filesystem()

    def _do_Activate(self, action: Activate) -> None:  # noqa: N802
        self.layout.activate(self._devices())

    def _do_Deactivate(self, action: Deactivate) -> None:  # noqa: N802
        self.layout.deactivate(self._devices())

    def _do_Mount(self, action: Mount) -> None:  # noqa: N802
        self.layout.mount(self._devices(), self.spec.mount_path)

    def _do_Refresh(self, action: Refresh) -> None:  # noqa: N802
        self.layout.refresh(self._devices())

    def _do_Remount(self, action: Remount) -> None:  # noqa: N802
        """Unmount (refused while busy: the error names the holders) and mount again from the last commit."""
        self.layout.unmount(self.spec.mount_path)
        self.layout.mount(self._devices(), self.spec.mount_path)

    def _do_Unmount(self, action: Unmount) -> None:  # noqa: N802
        self.layout.unmount(self.spec.mount_path)

    def _do_Grow(self, action: Grow) -> None:  # noqa: N802
        self.layout.grow(self.spec.mount_path)

    def _do_RemoveFromDrive(self, action: RemoveFromDrive) -> None:  # noqa: N802
        found, _ = self._resolve(action.volume_id)
        self.layout.remove_device(found.device, self.spec.mount_path, action.keep_bytes)

    def _do_Wait(self, action: Wait) -> None:  # noqa: N802
        pass

    def _do_Idle(self, action: Idle) -> None:  # noqa: N802
        pass

    def _do_Blocked(self, action: Blocked) -> None:  # noqa: N802
        pass
