"""A highly available drive's peer — the drive of the other DRBD node — as the cloud lists it. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

from bsud.naming import DELETED, DELETING, ERROR, EVACUATED


@dataclass(frozen=True)
class PeerVolume:
    """A volume of a highly available drive's peer (the drive of the other DRBD node), as the cloud lists it."""

    id: str
    size_gib: int
    state: str
    bookkeeping: str | None = None
    attached_to: str | None = None      # the instance it is attached to


@dataclass(frozen=True)
class PeerObs:
    """The peer's drive of a highly available drive: its volumes, and the VM they are attached to (where a volume
    made for it goes; ``ha.peer-instance`` when the config names it)."""

    drive: str
    volumes: tuple[PeerVolume, ...] = ()
    instance: str | None = None

    def live(self) -> list[PeerVolume]:
        """Its volumes not being deleted, in error nor out of its drive."""
        return [v for v in self.volumes if v.state not in (DELETING, DELETED, ERROR) and v.bookkeeping != EVACUATED]

    @property
    def size_gib(self) -> int:
        return sum(v.size_gib for v in self.live())
