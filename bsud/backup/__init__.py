"""Backups of a drive: crash-consistent snapshot sets (every member volume snapshotted while the filesystem is
frozen), listed and deleted as one; see docs/backups.md."""
