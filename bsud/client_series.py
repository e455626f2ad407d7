"""Which NFS clients have series of their own in the metrics, and the sum of the others (``client="other"``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: The counters a client has (the export counters' keys in the status: nfs-ganesha's ``ShowClients``).
CLIENT_KEYS = ("read_bytes", "write_bytes", "requests", "errors", "latency_ns")
#: At most this many NFS clients have series of their own; the others are summed in ``client="other"``.
MAX_CLIENT_SERIES = 20
OTHER_CLIENTS = "other"
#: A client with series of its own that moved no byte for this long gives its place to a busier one waiting.
CLIENT_IDLE_SECONDS = 3600.0


def _moved(counters: Mapping[str, float]) -> float:
    return float(counters.get("read_bytes", 0) or 0) + float(counters.get("write_bytes", 0) or 0)


@dataclass
class ClientSeries:
    """Which NFS clients have series of their own, and the sum of the others (``client="other"``).

    The server reports every client it knows, cumulative counters each. At most ``limit`` clients are shown, the
    ones that moved the most bytes first. A client once shown keeps its series while the server reports it — its
    counters are the server's own, so they only go up (a server restart resets them, as any counter) — unless it
    moved no byte for ``idle`` seconds while a busier client waits for a place: then it gives its place up, its
    series ends, and what it moves from then on goes to ``other``. ``other`` is not a sum recomputed at each
    report (it would fall whenever a client leaves it): it adds up what the clients not shown moved since the
    previous report, so it never goes down. A client that comes back after it was left out starts again from its
    own cumulative counter: a graph over that gap counts its bytes in between twice (once in ``other``).
    """

    limit: int = MAX_CLIENT_SERIES
    idle: float = CLIENT_IDLE_SECONDS
    #: Shown clients → when their bytes last moved (the caller's clock).
    shown: dict[str, float] = field(default_factory=dict)
    #: Every reported client's counters at the previous report.
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The clients not shown, added up since the first one; None until there was one.
    other: dict[str, float] | None = None

    def update(self, clients: Mapping[str, Mapping[str, float]], now: float) -> tuple[dict[str, dict[str, float]],
                                                                                        dict[str, float] | None]:
        """A report's clients → (the shown ones' counters, ``other``'s counters or None)."""
        current = {address: {key: float(counters.get(key, 0) or 0) for key in CLIENT_KEYS}
                   for address, counters in clients.items()}
        if not current:  # no server reports clients now (none runs, or it is restarting): nothing shown, nothing
            return {}, None  # forgotten — when they are back, each goes on from where it was
        for address in [a for a in self.shown if a not in current]:
            del self.shown[address]  # gone from the server: so are its counters
        for address in self.shown:
            before = self.last.get(address)
            if before is None or _moved(current[address]) != _moved(before):
                self.shown[address] = now
        new = {a for a in current if a not in self.last}
        waiting = sorted((a for a in current if a not in self.shown), key=lambda a: (-_moved(current[a]), a))
        for address in waiting:
            if len(self.shown) < self.limit:
                self.shown[address] = now
                continue
            busy = _moved(current[address]) > 0 if address in new else \
                _moved(current[address]) != _moved(self.last[address])
            idle = [a for a, moved in self.shown.items() if now - moved >= self.idle]
            if busy and idle:
                del self.shown[min(idle, key=lambda a: (self.shown[a], a))]
                self.shown[address] = now
        for address, counters in current.items():
            if address in self.shown:
                continue
            if self.other is None:
                self.other = dict.fromkeys(CLIENT_KEYS, 0.0)
            before = self.last.get(address)
            for key, value in counters.items():
                # New to the report, or its counter went back (the server restarted): all of it is new.
                step = value - before[key] if before is not None and value >= before[key] else value
                self.other[key] += step
        self.last = current
        shown = {address: current[address] for address in sorted(self.shown)}
        return shown, (dict(self.other) if self.other is not None else None)
