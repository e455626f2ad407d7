"""What the kernel says of writeback: how much more the page cache takes, and what each device has written.

A buffered write lands in the page cache at memory speed only until the dirty pages reach the kernel's dirty limit
(``vm.dirty_ratio`` / ``vm.dirty_bytes`` of the memory that can hold them): past it, ``balance_dirty_pages`` holds
every writer to the pace the devices write back at. So over ``t`` seconds a writer adds at most the room left
under that limit plus what the devices write in ``t`` — whatever its first second looked like. Both are plain
file reads (``/proc/vmstat``, ``/sys/class/block/<dev>/stat``): no process, cheap enough for the sampler.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

VMSTAT = "/proc/vmstat"
SYS_BLOCK = "/sys/class/block"
#: /sys/class/block/<dev>/stat, 0-based: the sectors written (512 bytes each, whatever the device's block size).
SECTORS_WRITTEN = 6


def parse_vmstat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def dirty_room_of(vmstat: dict[str, int], page_size: int) -> int | None:
    """Bytes the page cache still takes before writers are held to the devices' pace: the dirty limit
    (``nr_dirty_threshold``) less what is dirty or under writeback (the kernel counts both against it)."""
    try:
        threshold, dirty, writeback = (vmstat[k] for k in ("nr_dirty_threshold", "nr_dirty", "nr_writeback"))
    except KeyError:
        return None
    return max(0, threshold - dirty - writeback) * page_size


def saturated_of(vmstat: dict[str, int]) -> bool:
    """Whether the page cache is over its background threshold: the flusher then writes back as fast as the devices
    take it, so what they write is what they can."""
    try:
        return vmstat["nr_dirty"] + vmstat["nr_writeback"] >= vmstat["nr_dirty_background_threshold"] > 0
    except KeyError:
        return False


def page_cache(path: str = VMSTAT) -> tuple[int | None, bool]:
    """The page cache's dirty room now (None when this kernel does not say), and whether writeback is saturated."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None, False
    vmstat = parse_vmstat(text)
    return dirty_room_of(vmstat, os.sysconf("SC_PAGE_SIZE")), saturated_of(vmstat)


def bytes_written(devices: Iterable[str], root: str = SYS_BLOCK) -> dict[str, int]:
    """Bytes each block device has written since it appeared (devices whose counters cannot be read are left out)."""
    out = {}
    for device in devices:
        name = os.path.basename(os.path.realpath(device))
        try:
            with open(f"{root}/{name}/stat") as fh:
                out[name] = int(fh.read().split()[SECTORS_WRITTEN]) * 512
        except (OSError, ValueError, IndexError):
            continue
    return out
