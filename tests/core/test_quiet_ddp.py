"""A 2-rank gloo dyn-GNN run prints no Lightning ``sync_dist`` advice, and the objects DDP pickles are picklable.

Epoch-level values are reduced across ranks once per epoch at their source (``DynGNNTask``, the profilers), so
Lightning has nothing to recommend. The warnings are recorded inside each forked rank (pytest's own warning capture
does not see child processes) and written to a file per rank.
"""

from __future__ import annotations

import datetime
import json
import pickle
import warnings

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.recorders import CommEvent, Recorder
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.partitioned import PartitionedSnapshotDataModule
from lit_efficiency.dyn_gnn.profilers import CommProfiler, TransferProfiler
from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.helpers import DIST_DATA, DIST_MODEL


class _RecordWarnings(L.Callback):
    """Records every warning raised during fit in this rank; writes their messages to ``warnings<rank>.json``."""

    def __init__(self, path) -> None:
        self.path = path

    def on_fit_start(self, trainer, pl_module) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._catcher.__exit__(None, None, None)
        messages = [str(w.message) for w in self._caught]
        (self.path / f"warnings{trainer.global_rank}.json").write_text(json.dumps(messages))


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or "fork" not in mp.get_all_start_methods(),
    reason="needs gloo and the fork start method",
)
def test_two_rank_run_has_no_sync_dist_warnings(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)
    strategy = DDPStrategy(start_method="fork", process_group_backend="gloo", timeout=datetime.timedelta(seconds=60))
    trainer = quiet_trainer(
        devices=2,
        strategy=strategy,
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="csv", version=0),
        log_every_n_steps=1,
        callbacks=[CommProfiler(), _RecordWarnings(tmp_path)],
    )
    trainer.fit(DistributedDynGNNTask(**DIST_MODEL), PartitionedSnapshotDataModule(**DIST_DATA))
    messages = [m for r in (0, 1) for m in json.loads((tmp_path / f"warnings{r}.json").read_text())]
    assert [m for m in messages if "sync_dist" in m] == []
    # The rank without validation targets computes metrics from the gathered states: no "compute before update".
    assert [m for m in messages if "before the ``update``" in m] == []
    # The epoch values are still logged (the mean over ranks of each rank's epoch sum).
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss_epoch", "val/loss", "val/map", "train/alltoall_bytes_epoch", "train/allreduce_ms_step"):
        assert key in header


def test_recorders_and_their_owners_pickle_for_spawned_ranks():
    recorder: Recorder[CommEvent] = Recorder()
    recorder.record(CommEvent("allreduce", 8, 8, 1.5))
    copy = pickle.loads(pickle.dumps(recorder))
    copy.record(CommEvent("allreduce", 4, 4, 0.5))  # a working lock of its own
    assert [e.bytes_sent for e in copy.drain()] == [8, 4] and len(recorder) == 1
    # What `conf/trainer/ddp_cpu.yaml` (start_method: spawn) sends to each rank with the distributed UCI config.
    owners = [
        DistributedDynGNNTask(**DIST_MODEL),
        PartitionedSnapshotDataModule(dataset="uci_messages", task="link_prediction"),
        StreamingSnapshotDataModule(**DIST_DATA),
        CommProfiler(),
        TransferProfiler(),
    ]
    for owner in owners:
        assert type(pickle.loads(pickle.dumps(owner))) is type(owner)


@pytest.mark.parametrize("make", ["dyn_gnn", "power_bert"])
def test_every_rank_quiets_library_warnings_in_setup(make):
    """A rank started by spawn runs no CLI code: the tasks' ``setup`` (which every rank runs) installs the filters."""
    from lit_efficiency.core.quiet import INTERNAL_WARNINGS
    from lit_efficiency.dyn_gnn.task import DynGNNTask
    from lit_efficiency.power_bert.task import PowerBertFinetune

    task = DynGNNTask(num_nodes=4, num_features=1, task="link_prediction") if make == "dyn_gnn" else None
    if task is None:
        task = PowerBertFinetune(model_name_or_path="tiny-random-bert", task="sst2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        task.setup("fit")
        for pattern in INTERNAL_WARNINGS:  # a message each pattern matches: the regex escapes removed
            warnings.warn(pattern.replace("\\", "") + " (details)", UserWarning, stacklevel=1)
        warnings.warn("a warning the user should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning the user should see"]
