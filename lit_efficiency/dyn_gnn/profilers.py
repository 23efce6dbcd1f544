"""Callbacks that log where the time and bytes of dynamic-GNN training go.

* :class:`TransferProfiler`: host-to-device transfer and on-device snapshot rebuild, as recorded by the DataModule's
  ``transfer_batch_to_device`` into a :class:`TransferRecorder` (Lightning callbacks have no transfer hook).
* :class:`CommProfiler`: every all-to-all of the snapshot -> vertex redistribution (through the
  :class:`~lit_efficiency.dyn_gnn.redistribute.CommRecorder`) and DDP's gradient all-reduce (through a DDP
  communication hook that times each bucket).

Both log per step and per epoch to every logger (``self.log`` on the LightningModule, so CSV and wandb alike) and
print a summary at the end of fit on rank zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_efficiency.dyn_gnn.redistribute import CommRecorder, get_default_recorder, set_default_recorder


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


class TransferRecorder:
    """Thread-safe list of :class:`TransferEvent` filled by a DataModule and drained by :class:`TransferProfiler`."""

    def __init__(self) -> None:
        self._events: list[TransferEvent] = []
        self._lock = threading.Lock()

    def record(self, h2d_ms: float, rebuild_ms: float, h2d_bytes: int, full_bytes: int) -> None:
        with self._lock:
            self._events.append(TransferEvent(float(h2d_ms), float(rebuild_ms), int(h2d_bytes), int(full_bytes)))

    def drain(self) -> list[TransferEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events


def _sum_metrics(events: list[TransferEvent]) -> dict[str, float]:
    h2d_bytes = sum(e.h2d_bytes for e in events)
    full_bytes = sum(e.full_bytes for e in events)
    return {
        "time/h2d_ms": float(sum(e.h2d_ms for e in events)),
        "time/rebuild_ms": float(sum(e.rebuild_ms for e in events)),
        "data/h2d_bytes": float(h2d_bytes),
        "data/full_bytes": float(full_bytes),
    }


class TransferProfiler(L.Callback):
    """Log host-to-device transfer figures recorded by the DataModule.

    The DataModule (or LightningModule) must expose a :class:`TransferRecorder` as ``transfer_recorder``. Per step:
    ``time/h2d_ms``, ``time/rebuild_ms``, ``data/h2d_bytes``, ``data/full_bytes`` (summed over the step's
    transfers) and ``data/h2d_ratio_to_full`` (full / shipped: > 1 means the diff path saved bytes). Per epoch: the
    sums. At the end of fit a summary line is printed.
    """

    def __init__(self) -> None:
        self.totals = {"time/h2d_ms": 0.0, "time/rebuild_ms": 0.0, "data/h2d_bytes": 0.0, "data/full_bytes": 0.0}

    @staticmethod
    def _recorder(trainer: L.Trainer, pl_module: L.LightningModule) -> TransferRecorder | None:
        for owner in (trainer.datamodule, pl_module):
            recorder = getattr(owner, "transfer_recorder", None)
            if recorder is not None:
                return recorder
        return None

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        recorder = self._recorder(trainer, pl_module)
        if recorder is None:
            return
        events = recorder.drain()
        if not events:
            return
        metrics = _sum_metrics(events)
        for key, value in metrics.items():
            self.totals[key] += value
            pl_module.log(f"{prefix}{key}", value, on_step=True, on_epoch=True, reduce_fx="sum", batch_size=1)
        ratio = metrics["data/full_bytes"] / max(metrics["data/h2d_bytes"], 1.0)
        pl_module.log(f"{prefix}data/h2d_ratio_to_full", ratio, on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log(trainer, pl_module, "")

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log(trainer, pl_module, "val_")

    def summary(self) -> str:
        t = self.totals
        ratio = t["data/full_bytes"] / max(t["data/h2d_bytes"], 1.0)
        return (
            f"transfer: {t['data/h2d_bytes'] / 2**20:.1f} MiB shipped ({ratio:.2f}x fewer than full snapshots), "
            f"h2d {t['time/h2d_ms']:.1f} ms, rebuild {t['time/rebuild_ms']:.1f} ms"
        )

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        rank_zero_info(self.summary())


class AllReduceTimer:
    """DDP communication hook state: times and counts the bytes of every gradient bucket's all-reduce.

    Use as ``ddp.register_comm_hook(timer, AllReduceTimer.hook)``; it averages like DDP's default hook.
    """

    def __init__(self, recorder: CommRecorder, group: Any = None, clock: Callable[[], float] = time.perf_counter):
        self.recorder = recorder
        self.group = group
        self.clock = clock

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP checks them and this module postpones their evaluation
        """Average ``bucket`` across ranks (like DDP's default hook) and record its bytes and duration."""
        tensor = bucket.buffer()
        world = dist.get_world_size(state.group)
        start = state.clock()
        tensor.div_(world)
        fut = dist.all_reduce(tensor, group=state.group, async_op=True).get_future()
        nbytes = tensor.numel() * tensor.element_size()

        def done(f: torch.futures.Future) -> torch.Tensor:
            state.recorder.record("allreduce", nbytes, (state.clock() - start) * 1e3)
            return f.value()[0]

        return fut.then(done)


class CommProfiler(L.Callback):
    """Log the redistribution all-to-alls and DDP's gradient all-reduce, per step and per epoch.

    Keys: ``time/alltoall_ms``, ``data/alltoall_bytes`` (bytes this rank sent to other ranks, forward and backward),
    ``time/allreduce_ms``, ``data/allreduce_bytes`` (gradient bytes this rank reduced); the all-to-alls of validation
    and test batches are logged under ``val_`` / ``test_`` prefixes (``val_data/alltoall_bytes``, ...). Under a DDP
    strategy the callback registers a timing communication hook on the wrapped model at fit start, unless one was
    configured on the strategy (then all-reduce is not timed and a warning says so).
    """

    def __init__(self) -> None:
        self.alltoall = CommRecorder()
        self.allreduce = CommRecorder()
        self._previous: CommRecorder | None = None
        self.totals: dict[str, float] = {}

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._previous = set_default_recorder(self.alltoall)

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        if get_default_recorder() is self.alltoall:
            set_default_recorder(self._previous)

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            return
        if getattr(trainer.strategy, "_ddp_comm_hook", None) is not None:
            rank_zero_warn("CommProfiler: the strategy already has a DDP comm hook; all-reduce is not timed")
            return
        model.register_comm_hook(AllReduceTimer(self.allreduce, group=model.process_group), AllReduceTimer.hook)

    def _log(self, pl_module: L.LightningModule, prefix: str = "") -> None:
        metrics = {
            **CommRecorder.metrics(self.alltoall.drain(), "alltoall"),
            **CommRecorder.metrics(self.allreduce.drain(), "allreduce"),
        }
        for key, value in metrics.items():
            self.totals[prefix + key] = self.totals.get(prefix + key, 0.0) + value
            pl_module.log(prefix + key, value, on_step=True, on_epoch=True, reduce_fx="sum", batch_size=1)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log(pl_module)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Evaluation all-to-alls (forward only) are logged apart, under ``val_``; without this they were drained
        # into the next training step's figures.
        self._log(pl_module, "val_")

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log(pl_module, "test_")

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        t = self.totals
        rank_zero_info(
            f"comm (rank 0): all-to-all {t.get('data/alltoall_bytes', 0) / 2**20:.2f} MiB in "
            f"{t.get('time/alltoall_ms', 0):.1f} ms; all-reduce {t.get('data/allreduce_bytes', 0) / 2**20:.2f} MiB in "
            f"{t.get('time/allreduce_ms', 0):.1f} ms"
        )
