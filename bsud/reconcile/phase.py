"""The phases a drive can be in, and the directions a scaling decision takes it. Pure data."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Every phase a drive can be in (its status; the ``phase`` label of the metric ``bsud_drive_phase``)."""

    STARTING = "starting"
    CREATING = "creating"
    ATTACHING = "attaching"
    ASSEMBLING = "assembling"
    MOUNTING = "mounting"
    RECOVERING = "recovering"
    GROWING = "growing"
    SCALING_UP = "scaling-up"
    SCALING_DOWN = "scaling-down"
    EXPORTING = "exporting"
    ONLINE = "online"
    BLOCKED = "blocked"
    GOING_OFFLINE = "going-offline"
    OFFLINE = "offline"
    DELETING = "deleting"
    DELETED = "deleted"


#: Every phase's word, in order (the metric ``bsud_drive_phase`` has a series for each).
PHASES = tuple(p.value for p in Phase)


class Direction(StrEnum):
    """Which way a scaling decision takes the drive (the direction of its scale event)."""

    UP = "up"
    DOWN = "down"
