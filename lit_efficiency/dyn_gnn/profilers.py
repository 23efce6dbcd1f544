"""Callbacks that log where the time and bytes of dynamic-GNN training go.

* :class:`TransferProfiler`: host-to-device transfer and on-device snapshot rebuild, as recorded by the DataModule's
  ``transfer_batch_to_device`` into its ``transfer_recorder`` (Lightning callbacks have no transfer hook).
* :class:`CommProfiler`: every all-to-all of the snapshot -> vertex redistribution, recorded by the distributed
  task into its ``comm_recorder``, and DDP's gradient all-reduce (through a DDP communication hook that times each
  bucket into the callback's own recorder).

Recorders (:class:`~lit_efficiency.core.recorders.Recorder`) are owned by the module that records and read here,
never found through a global. Keys are ``{stage}/{name}`` (``train/h2d_ms``, ``val/alltoall_bytes``, ...); both
callbacks log them per step (``{key}_step``) and per epoch (``{key}_epoch``, averaged over DDP ranks once per epoch) to
every logger (``self.log``, so CSV and wandb alike) and print a summary at the end of fit on rank zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_efficiency.core.loggers import log_breakdown
from lit_efficiency.core.recorders import CommEvent, Recorder, TransferEvent, comm_metrics, transfer_metrics


def _owned_recorder(name: str, trainer: L.Trainer, pl_module: L.LightningModule) -> Recorder | None:
    """The recorder ``name`` of the data module or, failing that, of the LightningModule (``None`` if neither)."""
    for owner in (trainer.datamodule, pl_module):
        recorder = getattr(owner, name, None)
        if recorder is not None:
            return recorder
    return None


class _PerStageLogger(L.Callback):
    """Drains its recorders after every train / validation / test batch, logging under that stage's prefix.

    Evaluation events are logged apart from training ones; otherwise they would be drained into the next training
    step's figures. Each figure is logged per step as ``{stage}/{name}_step`` (this rank, not synchronised) and per
    epoch as ``{stage}/{name}_epoch``: this rank's sum over the epoch, averaged over the DDP ranks once at the epoch's
    end (one reduction per epoch instead of one per step; one process: its own sum).
    """

    #: Recorder attribute read on the data module or the LightningModule.
    recorder_name = ""

    def __init__(self) -> None:
        self._epoch: dict[str, float] = {}

    def _metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, float] | None:
        """The figures of the step that just ended (None: nothing to log)."""
        raise NotImplementedError

    def _epoch_names(self, stage: str) -> tuple[str, ...]:
        """The figures logged per epoch: the same on every rank, so that each rank joins the same reductions."""
        raise NotImplementedError

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        metrics = self._metrics(trainer, pl_module, stage)
        for name, value in (metrics or {}).items():
            pl_module.log(f"{stage}/{name}_step", value, on_step=True, on_epoch=False, batch_size=1)
            self._epoch[f"{stage}/{name}"] = self._epoch.get(f"{stage}/{name}", 0.0) + value

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether there is anything to log per epoch (the recorder exists)."""
        return _owned_recorder(self.recorder_name, trainer, pl_module) is not None

    def _log_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active(trainer, pl_module):
            for name in self._epoch_names(stage):
                total = self._epoch.get(f"{stage}/{name}", 0.0)
                pl_module.log(f"{stage}/{name}_epoch", total, on_step=False, on_epoch=True, batch_size=1,
                              sync_dist=True)  # fmt: skip
        self._epoch = {k: v for k, v in self._epoch.items() if not k.startswith(f"{stage}/")}

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._log(trainer, pl_module, "train")

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log(trainer, pl_module, "val")

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._log(trainer, pl_module, "test")

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log_epoch(trainer, pl_module, "train")

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log_epoch(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log_epoch(trainer, pl_module, "test")


class TransferProfiler(_PerStageLogger):
    """Log host-to-device transfer figures recorded by the DataModule.

    The DataModule (or LightningModule) must expose a ``Recorder[TransferEvent]`` as ``transfer_recorder``. Per
    step: ``{stage}/h2d_ms``, ``{stage}/rebuild_ms``, ``{stage}/h2d_bytes``, ``{stage}/full_bytes`` (summed over
    the step's transfers) and ``{stage}/h2d_ratio_to_full`` (full / shipped: > 1 means the diff path saved bytes),
    with ``stage`` ``train``, ``val`` or ``test``. Per epoch: the sums. At the end of fit a summary line is printed.
    """

    recorder_name = "transfer_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.totals = {"h2d_ms": 0.0, "rebuild_ms": 0.0, "h2d_bytes": 0.0, "full_bytes": 0.0}
        self._fit_start = time.perf_counter()

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def _metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, float] | None:
        recorder = _owned_recorder(self.recorder_name, trainer, pl_module)
        events: list[TransferEvent] = recorder.drain() if recorder is not None else []
        if not events:
            return None
        metrics = transfer_metrics(events)
        for key, value in metrics.items():
            self.totals[key] += value
        ratio = metrics["full_bytes"] / max(metrics["h2d_bytes"], 1.0)
        pl_module.log(f"{stage}/h2d_ratio_to_full", ratio, on_step=True, on_epoch=False, batch_size=1)
        return metrics

    def _epoch_names(self, stage: str) -> tuple[str, ...]:
        return tuple(self.totals)

    def summary(self) -> str:
        t = self.totals
        ratio = t["full_bytes"] / max(t["h2d_bytes"], 1.0)
        saved = (t["full_bytes"] - t["h2d_bytes"]) / 2**20
        return (
            f"transfer: {t['h2d_bytes'] / 2**20:.1f} MiB shipped instead of {t['full_bytes'] / 2**20:.1f} MiB of full "
            f"snapshots ({saved:.1f} MiB saved, {ratio:.2f}x fewer than full snapshots), "
            f"h2d {t['h2d_ms']:.1f} ms, rebuild {t['rebuild_ms']:.1f} ms"
        )

    def breakdown(self, wall_ms: float) -> list[tuple[str, float, float]]:
        """``(part, ms, share of wall_ms)`` for the transfer, the rebuild and everything else (compute)."""
        t = self.totals
        parts = [("h2d", t["h2d_ms"]), ("rebuild", t["rebuild_ms"])]
        parts.append(("compute", max(wall_ms - sum(ms for _, ms in parts), 0.0)))
        return [(name, ms, ms / max(wall_ms, 1e-9)) for name, ms in parts]

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        rows = self.breakdown(1000.0 * (time.perf_counter() - self._fit_start))
        split = ", ".join(f"{name} {100 * share:.0f}%" for name, _, share in rows)
        rank_zero_info(f"{self.summary()}; of the fit's wall time: {split}")
        if trainer.is_global_zero:
            log_breakdown(trainer.loggers, "transfer_breakdown", ["part", "ms", "share"], rows)


class AllReduceTimer:
    """DDP communication hook state: times and counts the bytes of every gradient bucket's all-reduce.

    Use as ``ddp.register_comm_hook(timer, AllReduceTimer.hook)``; it averages like DDP's default hook.
    """

    def __init__(
        self, recorder: Recorder[CommEvent], group: Any = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
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
            state.recorder.record(CommEvent("allreduce", nbytes, nbytes, (state.clock() - start) * 1e3))
            return f.value()[0]

        return fut.then(done)


class CommProfiler(_PerStageLogger):
    """Log the redistribution all-to-alls and DDP's gradient all-reduce, per step and per epoch.

    Keys: ``{stage}/alltoall_ms``, ``{stage}/alltoall_bytes`` (bytes this rank sent to other ranks, forward and
    backward), ``{stage}/alltoall_calls``, and for training ``train/allreduce_ms``, ``train/allreduce_bytes``
    (gradient bytes this rank reduced). The all-to-alls are read from the LightningModule's (or data module's)
    ``comm_recorder``. Under a DDP strategy the callback registers a timing communication hook on the wrapped model
    at fit start, unless one was configured on the strategy (then all-reduce is not timed and a warning says so).
    """

    recorder_name = "comm_recorder"

    def __init__(self) -> None:
        super().__init__()
        self.allreduce: Recorder[CommEvent] = Recorder()
        self.totals: dict[str, float] = {}

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

    def _metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, float] | None:
        alltoall = _owned_recorder(self.recorder_name, trainer, pl_module)
        metrics = comm_metrics(alltoall.drain() if alltoall is not None else [], "alltoall")
        if stage == "train":
            metrics.update(comm_metrics(self.allreduce.drain(), "allreduce"))
        for name, value in metrics.items():
            key = f"{stage}/{name}"
            self.totals[key] = self.totals.get(key, 0.0) + value
        return metrics

    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return True  # the all-reduce recorder is the callback's own; without a comm_recorder all-to-alls are 0

    def _epoch_names(self, stage: str) -> tuple[str, ...]:
        kinds = ("alltoall", "allreduce") if stage == "train" else ("alltoall",)
        return tuple(name for kind in kinds for name in comm_metrics([], kind))

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        t = self.totals
        rank_zero_info(
            f"comm (rank 0): all-to-all {t.get('train/alltoall_bytes', 0) / 2**20:.2f} MiB in "
            f"{t.get('train/alltoall_ms', 0):.1f} ms; all-reduce {t.get('train/allreduce_bytes', 0) / 2**20:.2f} MiB "
            f"in {t.get('train/allreduce_ms', 0):.1f} ms"
        )
        if trainer.is_global_zero:
            rows = [(part, t.get(f"train/{part}_bytes", 0.0), t.get(f"train/{part}_ms", 0.0))
                    for part in ("alltoall", "allreduce")]  # fmt: skip
            log_breakdown(trainer.loggers, "comm_breakdown", ["part", "bytes", "ms"], rows)
