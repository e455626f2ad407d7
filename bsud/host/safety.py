"""The safety gate in front of pvcreate, mkfs.btrfs and ``btrfs device add``.

A device may be written only when it was resolved (serial and size verified) from a volume
tagged for this drive, and it is either blank — ``blkid -p`` finds nothing (exit 2) and
``wipefs -n`` lists nothing — or already this drive's own (the layout says how to tell).
Anything else is refused with an error naming the device and what is on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from bsud.naming import DRIVE_TAG
from bsud.errors import BsudError
from bsud.host.devices import Resolution
from bsud.runner import Runner

BLANK, OWN = "blank", "own"


class ForeignDevice(BsudError):
    """A device holds something that is not verifiably this drive's: never touched."""


@dataclass(frozen=True)
class Probe:
    """What is written on a device, as blkid and wipefs see it."""

    device: str
    blkid: dict[str, str] = field(default_factory=dict)
    signatures: tuple[dict[str, str], ...] = ()

    @property
    def blank(self) -> bool:
        return not self.blkid and not self.signatures

    @property
    def type(self) -> str | None:
        return self.blkid.get("TYPE") or self.blkid.get("PTTYPE") or (
            self.signatures[0].get("type") if self.signatures else None)

    def describe(self) -> str:
        if self.blank:
            return "nothing"
        parts = [f"{k}={self.blkid[k]}" for k in ("TYPE", "PTTYPE", "LABEL", "UUID") if k in self.blkid]
        if not parts:
            parts = [f"{s.get('type')} at {s.get('offset')}" for s in self.signatures]
        return " ".join(parts)


def parse_blkid_export(text: str) -> dict[str, str]:
    """``blkid -p -o export`` output → dict (values may escape spaces with a backslash)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            out[key.strip()] = value.replace("\\ ", " ").strip()
    out.pop("DEVNAME", None)
    return out


def parse_wipefs_json(text: str) -> tuple[dict[str, str], ...]:
    if not text.strip():
        return ()
    return tuple(json.loads(text).get("signatures", []) or [])


def probe(runner: Runner, device: str) -> Probe:
    """Read the signatures on ``device`` (low-level probing, no cache)."""
    if not os.path.exists(device):
        # blkid exits 2 for a missing path too: never mistake "absent" for "blank".
        raise BsudError(f"{device} does not exist (any more); cannot tell what is on it", temporary=True)
    found = runner.run(["blkid", "-p", "-o", "export", device], timeout=60, ok_codes=(0, 2), quiet=True)
    blkid = parse_blkid_export(found.stdout) if found.returncode == 0 else {}
    wipe = runner.run(["wipefs", "--no-act", "--json", device], timeout=60, quiet=True)
    return Probe(device, blkid, parse_wipefs_json(wipe.stdout))


def admit(
    resolution: Resolution,
    volume_tags: dict[str, str] | object,
    drive: str,
    found: Probe,
    is_own: Callable[[Probe], bool],
) -> str:
    """Decide whether ``resolution.device`` may be written for ``drive``: BLANK or OWN, else raise."""
    tags = dict(volume_tags) if isinstance(volume_tags, dict) else dict(getattr(volume_tags, "tags", {}))
    if tags.get(DRIVE_TAG) != drive:
        raise ForeignDevice(f"{resolution.device} (volume {resolution.volume_id}) is not tagged "
                            f"{DRIVE_TAG}={drive}; not touching it")
    if found.device != resolution.device:
        raise ForeignDevice(f"probe of {found.device} does not belong to {resolution.device}")
    if found.blank:
        return BLANK
    if is_own(found):
        return OWN
    raise ForeignDevice(
        f"{resolution.device} (volume {resolution.volume_id}) holds {found.describe()}, which is not drive "
        f"{drive!r}'s; bsud will not format it. Wipe it yourself if the data is not needed, or detach the volume "
        f"and remove its {DRIVE_TAG} tag"
    )
