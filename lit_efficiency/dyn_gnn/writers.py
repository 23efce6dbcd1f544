"""Prediction files of ``lit-efficiency predict`` for dynamic GNNs: one ``.pt`` and one CSV per target snapshot.

:class:`SnapshotPredictionWriter` is a Lightning :class:`~lightning.pytorch.callbacks.BasePredictionWriter`; the
task (:class:`~lit_efficiency.dyn_gnn.task.DynGNNTask`) adds one when ``predict`` runs without a writer of its own.
For every snapshot ``t`` whose successor ``t + 1`` is predicted it writes, under ``<run dir>/predictions/``:

- ``snapshot_<t+1>.pt``: a dict of tensors (``torch.load(..., weights_only=True)``);
- ``snapshot_<t+1>.csv``: link prediction ``src,dst,score,label`` (candidate edges of ``t + 1``: its true edges and
  sampled non-edges, ``score`` = sigmoid probability), edge sign ``src,dst,p_positive,label``, node regression
  ``node,prediction,target`` (in the task's target space, e.g. ``log1p``). Node ids are the raw ids of the source
  when it remapped them.

Files are created exclusively: an existing file (or a symlink in its place) is never overwritten; the writer refuses
to start when the folder already holds predictions.

**Several ranks** write into the same folder, every snapshot exactly once: snapshot-partitioned (with
:class:`~lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask`), each rank writes the snapshots it predicted;
unpartitioned, every rank predicts every snapshot and rank 0 alone writes them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.datamodule import PartitionedBatch

__all__ = ["SnapshotPredictionWriter"]


class SnapshotPredictionWriter(BasePredictionWriter):
    """Write every predicted snapshot as ``.pt`` and CSV (see the module docstring).

    Args:
        output_dir: folder of the files; default ``<trainer.log_dir or default_root_dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.written: list[Path] = []

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        folder = self._folder(trainer)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ConfigError(f"{folder}: the predictions folder is a symlink or a file; give another output_dir")
        if folder.is_dir() and any(folder.glob("snapshot_*")):
            raise ConfigError(f"{folder}: already holds predictions; not overwriting them (give another output_dir)")
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
        self.output_dir = folder

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.output_dir is not None
        if trainer.world_size > 1 and not isinstance(batch, PartitionedBatch) and not trainer.is_global_zero:
            return  # unpartitioned: every rank predicted the same snapshots, rank 0 writes them
        self.output_dir.mkdir(parents=True, exist_ok=True)
        node_ids = getattr(getattr(trainer, "datamodule", None), "graph", None)
        node_ids = getattr(node_ids, "node_ids", None)
        for record in prediction:
            self._write(record, node_ids)

    def _write(self, record: dict[str, Any], node_ids: Tensor | None) -> None:
        assert self.output_dir is not None
        stem = f"snapshot_{int(record['target_snapshot']):05d}"
        columns = [k for k in record if k not in ("snapshot", "target_snapshot")]
        rows = {k: record[k].detach().cpu() for k in columns}
        if node_ids is not None:
            for key in ("src", "dst", "node"):
                if key in rows:
                    rows[key] = node_ids[rows[key]]
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in record.items()}, buffer)
        text = io.StringIO()
        out = csv.writer(text)
        out.writerow(columns)
        out.writerows(zip(*(rows[k].tolist() for k in columns), strict=True))
        for suffix, data in ((".pt", buffer.getvalue()), (".csv", text.getvalue().encode())):
            path = self.output_dir / f"{stem}{suffix}"
            with open(path, "xb") as handle:  # exclusive: never overwrite, never follow a symlink in its place
                handle.write(data)
            self.written.append(path)
