"""The host side: block devices of attached volumes, LVM, btrfs, mounts and the safety gate."""
