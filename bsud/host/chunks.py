"""Where a mounted btrfs keeps its data: its chunks, the bytes each holds, and the device ranges they sit on.

Read from the kernel with the ``BTRFS_IOC_TREE_SEARCH`` ioctl on the mount point (root; no process, no device
read): the chunk tree gives each chunk's stripes (device id, physical offset, length), the block group items (in
the extent tree, or the block group tree on filesystems made with it) give the bytes used in each chunk. What a
``btrfs device remove`` (or a shrink) relocates is exactly the used bytes of the chunks with a stripe on the
device: that is a device's *live data* here, what taking it out of the drive has to move.

``btrfs device usage -b`` tells only what is allocated per device (a chunk 10 % used counts whole): it is the
fallback when the ioctl is refused.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

#: _IOWR(0x94, 17, struct btrfs_ioctl_search_args): 4096 bytes, a 104-byte key then the result buffer.
BTRFS_IOC_TREE_SEARCH = 0xD0009411
_ARGS_SIZE = 4096
_KEY = struct.Struct("=7Q4L4Q")        # tree_id, min/max objectid, min/max offset, min/max transid,
#                                        min/max type, nr_items, unused, unused1..4
_HEADER = struct.Struct("=3Q2L")       # transid, objectid, offset, type, len
_CHUNK = struct.Struct("<4Q3L2H")      # length, owner, stripe_len, type, io_align, io_width, sector_size,
#                                        num_stripes, sub_stripes
_STRIPE = struct.Struct("<2Q16s")      # devid, offset, dev_uuid
_BLOCK_GROUP = struct.Struct("<3Q")    # used, chunk_objectid, flags

EXTENT_TREE, CHUNK_TREE, BLOCK_GROUP_TREE = 2, 3, 11
FIRST_CHUNK_TREE_OBJECTID = 256
CHUNK_ITEM_KEY, BLOCK_GROUP_ITEM_KEY = 228, 192
U64_MAX, U32_MAX = 2**64 - 1, 2**32 - 1

# Block group profile bits (BTRFS_BLOCK_GROUP_*).
RAID0, RAID1, DUP, RAID10, RAID5, RAID6 = 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8


@dataclass(frozen=True)
class Stripe:
    devid: int
    offset: int      # physical bytes on the device
    length: int      # bytes the stripe takes on the device


@dataclass(frozen=True)
class Chunk:
    logical: int
    length: int
    flags: int
    used: int
    stripes: tuple[Stripe, ...]

    def stripe_bytes(self) -> int:
        """Live bytes one stripe holds: the whole ``used`` for single, DUP and the mirrored profiles, a share for the
        striped ones (RAID0/10/5/6)."""
        n = len(self.stripes)
        if self.flags & RAID0:
            return self.used // max(n, 1)
        if self.flags & RAID10:
            return self.used // max(n // 2, 1)
        if self.flags & RAID5:
            return self.used // max(n - 1, 1)
        if self.flags & RAID6:
            return self.used // max(n - 2, 1)
        return self.used


def stripe_length(length: int, flags: int, stripes: int) -> int:
    """Bytes one stripe of a chunk of ``length`` takes on its device."""
    if flags & RAID0:
        return length // max(stripes, 1)
    if flags & RAID10:
        return length // max(stripes // 2, 1)
    if flags & RAID5:
        return length // max(stripes - 1, 1)
    if flags & RAID6:
        return length // max(stripes - 2, 1)
    return length


def _search(fd: int, tree: int, objectid: tuple[int, int], kind: int,
            offset: tuple[int, int] = (0, U64_MAX)) -> Iterator[tuple[int, int, int, bytes]]:
    """Items ``(objectid, type, offset, data)`` of ``tree`` between the keys given, type ``kind`` only."""
    min_objectid, min_offset = objectid[0], offset[0]
    while True:
        key = _KEY.pack(tree, min_objectid, objectid[1], min_offset, offset[1], 0, U64_MAX, kind, kind, 4096,
                        0, 0, 0, 0, 0)
        buf = bytearray(key + bytes(_ARGS_SIZE - len(key)))
        fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, buf)
        found = _KEY.unpack_from(buf)[9]
        if not found:
            return
        pos = _KEY.size
        last: tuple[int, int, int] = (0, 0, 0)
        for _ in range(found):
            _, obj, off, typ, length = _HEADER.unpack_from(buf, pos)
            pos += _HEADER.size
            data = bytes(buf[pos:pos + length])
            pos += length
            last = (obj, typ, off)
            if typ == kind:
                yield obj, typ, off, data
        # the next key after the last one returned
        obj, typ, off = last
        if off < offset[1]:
            min_objectid, min_offset = obj, off + 1
        elif obj < objectid[1]:
            min_objectid, min_offset = obj + 1, offset[0]
        else:
            return


def read_chunks(mount_point: str) -> list[Chunk]:
    """Every chunk of the btrfs mounted at ``mount_point``, with the bytes used in it. Raises OSError when the
    kernel refuses the search (not root, not btrfs)."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        chunks = []
        for _, _, logical, data in _search(fd, CHUNK_TREE, (FIRST_CHUNK_TREE_OBJECTID, FIRST_CHUNK_TREE_OBJECTID),
                                            CHUNK_ITEM_KEY):
            length, _, _, flags, _, _, _, count, _ = _CHUNK.unpack_from(data)
            each = stripe_length(length, flags, count)
            stripes = tuple(Stripe(devid, offset, each) for devid, offset, _ in
                            (_STRIPE.unpack_from(data, _CHUNK.size + i * _STRIPE.size) for i in range(count)))
            chunks.append(Chunk(logical, length, flags, _used(fd, logical, length), stripes))
        return chunks
    finally:
        os.close(fd)


def _used(fd: int, logical: int, length: int) -> int:
    """The used bytes of the block group at ``logical`` (extent tree, else the block group tree)."""
    for tree in (EXTENT_TREE, BLOCK_GROUP_TREE):
        try:
            for _, _, _, data in _search(fd, tree, (logical, logical), BLOCK_GROUP_ITEM_KEY, (length, length)):
                return _BLOCK_GROUP.unpack_from(data)[0]
        except OSError:
            continue  # no block group tree on this filesystem
    return length  # not found: count it full (never less than what may have to move)


def live_by_devid(chunks: list[Chunk]) -> dict[int, int]:
    """Live bytes per device id: what removing each device has to relocate."""
    live: dict[int, int] = {}
    for chunk in chunks:
        share = chunk.stripe_bytes()
        for stripe in chunk.stripes:
            live[stripe.devid] = live.get(stripe.devid, 0) + share
    return live


def live_in_ranges(chunks: list[Chunk], devid: int, ranges: dict[str, list[tuple[int, int]]]) -> dict[str, int]:
    """Live bytes of device ``devid`` falling in each named set of physical ranges ``(start, end)`` (the lvm layout:
    the LV's extents on each PV), a chunk's bytes spread evenly over its stripe."""
    live = {name: 0 for name in ranges}
    for chunk in chunks:
        share = chunk.stripe_bytes()
        for stripe in chunk.stripes:
            if stripe.devid != devid or stripe.length <= 0:
                continue
            start, end = stripe.offset, stripe.offset + stripe.length
            for name, spans in ranges.items():
                overlap = sum(max(0, min(end, b) - max(start, a)) for a, b in spans)
                if overlap:
                    live[name] += share * overlap // stripe.length
    return live


_DEVICE_RE = re.compile(r"^(\S+), ID: (\d+)\s*$", re.MULTILINE)


def parse_device_usage(text: str) -> dict[int, int]:
    """Allocated bytes per device id from ``btrfs device usage -b`` (data, metadata and system chunks), the
    fallback: more than the live data where chunks are partly used."""
    found: dict[int, int] = {}
    heads = list(_DEVICE_RE.finditer(text))
    for i, head in enumerate(heads):
        block = text[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        found[int(head.group(2))] = sum(int(m.group(1)) for m in
                                        re.finditer(r"^\s+(?:Data|Metadata|System),[^:]+:\s+(\d+)", block, re.M))
    return found
