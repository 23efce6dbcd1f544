"""One recorder type for every measured event (host-to-device transfers, collectives), passed explicitly.

The code that does the work (a DataModule's ``transfer_batch_to_device``, an all-to-all inside an autograd
Function, a DDP communication hook) appends typed events to a :class:`Recorder` it was given; a logging callback
drains it once per step. There is no module-level default: whoever owns the recorder hands it to the code that
records (Lightning's ``ThroughputMonitor`` pattern: the callback reads an attribute of the module it monitors).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CommEvent", "Recorder", "TransferEvent", "comm_metrics", "transfer_metrics"]

E = TypeVar("E")


class Recorder(Generic[E]):
    """Thread-safe list of events: :meth:`record` appends, :meth:`drain` returns and forgets them.

    Thread-safe because backward all-to-alls may run on autograd's worker threads and DDP hooks on its reducer's.

    Example::

        recorder: Recorder[CommEvent] = Recorder()
        z = snapshot_to_vertex(h, snaps, verts, recorder=recorder)
        metrics = comm_metrics(recorder.drain(), "alltoall")  # {"alltoall_bytes": ..., "alltoall_ms": ..., ...}
    """

    def __init__(self) -> None:
        self._events: list[E] = []
        self._lock = threading.Lock()

    def record(self, event: E) -> None:
        """Append one event."""
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[E]:
        """Return the events recorded since the last drain, and forget them."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __getstate__(self) -> dict[str, list[E]]:
        """Picklable (DDP's ``spawn`` start method pickles the modules that own recorders): events, not the lock."""
        with self._lock:
            return {"events": list(self._events)}

    def __setstate__(self, state: dict[str, list[E]]) -> None:
        self._events = list(state["events"])
        self._lock = threading.Lock()


@dataclass(frozen=True)
class TransferEvent:
    """One host-to-device shipment of snapshot data.

    Attributes:
        h2d_ms: copy time (CUDA: synchronised), milliseconds.
        rebuild_ms: time to rebuild the snapshots on the device (diff application, CSR, normalisation).
        h2d_bytes: bytes actually shipped.
        full_bytes: bytes the same snapshots would cost shipped in full (for the ratio).
    """

    h2d_ms: float
    rebuild_ms: float
    h2d_bytes: int
    full_bytes: int


@dataclass(frozen=True)
class CommEvent:
    """One collective call.

    Attributes:
        kind: what ran, e.g. ``"snapshot_to_vertex"``, ``"snapshot_to_vertex.backward"`` or ``"allreduce"``.
        bytes_sent: bytes this rank sent to *other* ranks (its own chunk is a local copy, not counted).
        bytes_received: bytes this rank received from other ranks.
        ms: wall time of the call in milliseconds (CUDA: synchronised before and after).
    """

    kind: str
    bytes_sent: int
    bytes_received: int
    ms: float


def transfer_metrics(events: Sequence[TransferEvent]) -> dict[str, float]:
    """Sums of a step's transfers: ``h2d_ms``, ``rebuild_ms``, ``h2d_bytes``, ``full_bytes``."""
    return {
        "h2d_ms": float(sum(e.h2d_ms for e in events)),
        "rebuild_ms": float(sum(e.rebuild_ms for e in events)),
        "h2d_bytes": float(sum(e.h2d_bytes for e in events)),
        "full_bytes": float(sum(e.full_bytes for e in events)),
    }


def comm_metrics(events: Sequence[CommEvent], name: str) -> dict[str, float]:
    """Sums of a step's collectives: ``{name}_bytes`` (sent), ``{name}_ms`` and ``{name}_calls``."""
    return {
        f"{name}_bytes": float(sum(e.bytes_sent for e in events)),
        f"{name}_ms": float(sum(e.ms for e in events)),
        f"{name}_calls": float(len(events)),
    }
