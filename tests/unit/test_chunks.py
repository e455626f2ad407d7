"""The data per device: btrfs's chunk map read through BTRFS_IOC_TREE_SEARCH (a fake kernel here), the fallback
``btrfs device usage -b`` and the LV's segments for the lvm layout."""

from __future__ import annotations

import struct

import pytest

from bsud.host import chunks as ch
from bsud.host.chunks import (DUP, RAID0, RAID1, Chunk, Stripe, live_by_devid, live_in_ranges, parse_device_usage,
                              read_chunks)
from bsud.host.lvm import parse_segments

MIB, GIB = 1024**2, 1024**3
DATA, METADATA, SYSTEM = 1, 4, 2


def chunk_item(length: int, flags: int, stripes: list[tuple[int, int]]) -> bytes:
    head = ch._CHUNK.pack(length, 2, 64 * 1024, flags, 4096, 4096, 4096, len(stripes), 0)
    return head + b"".join(ch._STRIPE.pack(devid, offset, bytes(16)) for devid, offset in stripes)


class FakeKernel:
    """Answers TREE_SEARCH from a dict of trees: (objectid, type, offset) → item bytes, at most ``per_call`` items
    a call (so the paging is exercised)."""

    def __init__(self, trees: dict[int, dict[tuple[int, int, int], bytes]], per_call: int = 2) -> None:
        self.trees, self.per_call, self.calls = trees, per_call, 0

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        assert request == ch.BTRFS_IOC_TREE_SEARCH and len(buf) == 4096
        self.calls += 1
        key = list(ch._KEY.unpack_from(buf))
        tree, min_obj, max_obj, min_off, max_off, _, _, min_type, max_type, nr = key[:10]
        if tree not in self.trees:
            raise OSError(2, "no such tree")
        lo, hi = (min_obj, min_type, min_off), (max_obj, max_type, max_off)
        items = sorted(k for k in self.trees[tree] if lo <= k <= hi)[:min(nr, self.per_call)]
        pos = ch._KEY.size
        for obj, typ, off in items:
            data = self.trees[tree][(obj, typ, off)]
            ch._HEADER.pack_into(buf, pos, 1, obj, off, typ, len(data))
            pos += ch._HEADER.size
            buf[pos:pos + len(data)] = data
            pos += len(data)
        key[9] = len(items)
        ch._KEY.pack_into(buf, 0, *key)
        return 0


@pytest.fixture
def kernel(monkeypatch):
    def install(trees, per_call=2):
        fake = FakeKernel(trees, per_call)
        monkeypatch.setattr(ch.fcntl, "ioctl", fake.ioctl)
        monkeypatch.setattr(ch.os, "open", lambda *a, **k: 99)
        monkeypatch.setattr(ch.os, "close", lambda fd: None)
        return fake
    return install


def two_device_drive() -> dict[int, dict[tuple[int, int, int], bytes]]:
    """Device 1 (1 GiB): system and metadata DUP, one data chunk 90 % used; device 2 (8 GiB): two data chunks, one
    a quarter used, one empty but still allocated."""
    chunk_tree = {
        (256, 228, 1 * MIB): chunk_item(8 * MIB, SYSTEM | DUP, [(1, 1 * MIB), (1, 9 * MIB)]),
        (256, 228, 30 * MIB): chunk_item(256 * MIB, METADATA | DUP, [(1, 20 * MIB), (1, 276 * MIB)]),
        (256, 228, 1 * GIB): chunk_item(512 * MIB, DATA, [(1, 532 * MIB)]),
        (256, 228, 2 * GIB): chunk_item(1 * GIB, DATA, [(2, 1 * MIB)]),
        (256, 228, 3 * GIB): chunk_item(1 * GIB, DATA, [(2, 1 * GIB + 1 * MIB)]),
    }
    extent_tree = {
        (1 * MIB, 192, 8 * MIB): struct.pack("<3Q", 16 * 1024, 256, SYSTEM | DUP),
        (30 * MIB, 192, 256 * MIB): struct.pack("<3Q", 3 * MIB, 256, METADATA | DUP),
        (1 * GIB, 168, 4096): b"an extent item: not a block group",
        (1 * GIB, 192, 512 * MIB): struct.pack("<3Q", 460 * MIB, 256, DATA),
        (2 * GIB, 192, 1 * GIB): struct.pack("<3Q", 256 * MIB, 256, DATA),
        (3 * GIB, 192, 1 * GIB): struct.pack("<3Q", 0, 256, DATA),
    }
    return {3: chunk_tree, 2: extent_tree}


def test_the_chunk_map_gives_the_live_data_on_each_device(kernel):
    fake = kernel(two_device_drive())
    found = read_chunks("/mnt/d")
    assert [c.logical for c in found] == [1 * MIB, 30 * MIB, 1 * GIB, 2 * GIB, 3 * GIB]  # paged 2 at a time
    assert fake.calls > 3
    live = live_by_devid(found)
    # DUP: both copies are on the device and both move
    assert live[1] == 2 * 16 * 1024 + 2 * 3 * MIB + 460 * MIB
    # what is allocated does not count, what is used does
    assert live[2] == 256 * MIB


def test_block_groups_in_their_own_tree(kernel):
    trees = two_device_drive()
    trees[11] = trees.pop(2)  # mkfs -O block-group-tree
    kernel(trees)
    assert live_by_devid(read_chunks("/mnt/d"))[2] == 256 * MIB


def test_a_refused_search_is_an_oserror(kernel):
    kernel({})
    with pytest.raises(OSError):
        read_chunks("/mnt/d")


def test_profiles_share_a_chunk_between_stripes():
    raid0 = Chunk(0, 2 * GIB, DATA | RAID0, 1 * GIB, (Stripe(1, 0, GIB), Stripe(2, 0, GIB)))
    raid1 = Chunk(0, GIB, DATA | RAID1, 300 * MIB, (Stripe(1, 0, GIB), Stripe(2, 0, GIB)))
    assert live_by_devid([raid0]) == {1: 512 * MIB, 2: 512 * MIB}
    assert live_by_devid([raid1]) == {1: 300 * MIB, 2: 300 * MIB}
    assert ch.stripe_length(2 * GIB, DATA | RAID0, 2) == GIB


def test_lvm_the_data_in_each_pvs_stretch_of_the_lv():
    # the LV: 1 GiB on loop0, then 8 GiB on loop1; btrfs (device 1, the LV) has a chunk across the boundary
    ranges = {"/dev/loop0": [(0, GIB)], "/dev/loop1": [(GIB, 9 * GIB)]}
    found = [Chunk(0, 256 * MIB, DATA, 200 * MIB, (Stripe(1, 100 * MIB, 256 * MIB),)),
             Chunk(GIB, 512 * MIB, DATA, 512 * MIB, (Stripe(1, GIB - 256 * MIB, 512 * MIB),)),
             Chunk(3 * GIB, GIB, DATA, 100 * MIB, (Stripe(1, 5 * GIB, GIB),))]
    live = live_in_ranges(found, 1, ranges)
    assert live == {"/dev/loop0": 200 * MIB + 256 * MIB, "/dev/loop1": 256 * MIB + 100 * MIB}


DEVICE_USAGE = """/dev/loop0, ID: 1
   Device size:             1073741824
   Device slack:                     0
   Data,single:              536870912
   Metadata,DUP:             536870912
   System,DUP:                16777216
   Unallocated:                      0

/dev/loop1, ID: 2
   Device size:             8589934592
   Device slack:                     0
   Data,single:             2147483648
   Unallocated:             6442450944
"""


def test_device_usage_fallback_counts_what_is_allocated():
    assert parse_device_usage(DEVICE_USAGE) == {1: 536870912 * 2 + 16777216, 2: 2147483648}


SEGMENTS = """  {
      "report": [
          {
              "seg": [
                  {"seg_start":"0", "seg_size":"1069547520", "devices":"/dev/loop3(0)"},
                  {"seg_start":"1069547520", "seg_size":"8585740288", "devices":"/dev/loop4(0)"}
              ]
          }
      ]
  }
"""


def test_lv_segments_are_parsed():
    segs = parse_segments(SEGMENTS)
    assert [(s.lv_start, s.size, s.device) for s in segs] == [(0, 1069547520, "/dev/loop3"),
                                                            (1069547520, 8585740288, "/dev/loop4")]
