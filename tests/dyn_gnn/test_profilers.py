"""TransferProfiler and CommProfiler log exactly the figures they were given."""

import csv
import itertools

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from lit_efficiency.core.recorders import CommEvent, Recorder, TransferEvent
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.profilers import AllReduceTimer, CommProfiler, TransferProfiler

# Per batch i (0-based): h2d 1.5*(i+1) ms, rebuild 0.25 ms, 100*(i+1) bytes shipped, 400 bytes in full.
FIGURES = [(1.5 * (i + 1), 0.25, 100 * (i + 1), 400) for i in range(4)]


class RecordingData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.transfer_recorder = Recorder()
        self._i = itertools.count()

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 3), torch.randn(4)), batch_size=1)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.transfer_recorder.record(TransferEvent(*FIGURES[next(self._i) % len(FIGURES)]))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_transfer_profiler_logs_exact_figures(tmp_path):
    profiler = TransferProfiler()
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[profiler], log_every_n_steps=1, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="t")
    )
    trainer.fit(Regressor(), datamodule=RecordingData())
    rows = list(csv.DictReader(open(next(tmp_path.glob("t/version_0/metrics.csv")))))
    steps = [r for r in rows if r.get("train/h2d_ms_step")]
    assert [float(r["train/h2d_ms_step"]) for r in steps] == [f[0] for f in FIGURES]
    assert [float(r["train/h2d_bytes_step"]) for r in steps] == [f[2] for f in FIGURES]
    assert [float(r["train/h2d_ratio_to_full"]) for r in steps] == pytest.approx([400 / f[2] for f in FIGURES])
    epoch = next(r for r in rows if r.get("train/h2d_ms_epoch"))
    assert float(epoch["train/h2d_ms_epoch"]) == pytest.approx(sum(f[0] for f in FIGURES))
    assert float(epoch["train/rebuild_ms_epoch"]) == pytest.approx(1.0)
    assert float(epoch["train/full_bytes_epoch"]) == 1600
    assert profiler.totals["h2d_bytes"] == 1000
    assert "1.60x fewer" in profiler.summary()


def test_allreduce_timer_hook_counts_bytes_and_time(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(5, 2))
    recorder = Recorder()
    ticks = itertools.count(start=0.0, step=0.004)  # every clock read advances 4 ms
    model.register_comm_hook(AllReduceTimer(recorder, clock=lambda: next(ticks)), AllReduceTimer.hook)
    x = torch.randn(3, 5)
    model(x).sum().backward()
    events = recorder.drain()
    assert sum(e.bytes_sent for e in events) == (5 * 2 + 2) * 4  # every fp32 gradient, once
    assert all(e.ms == pytest.approx(4.0) for e in events)
    ref = torch.nn.Linear(5, 2)
    ref.load_state_dict(model.module.state_dict())
    ref(x).sum().backward()
    assert torch.allclose(model.module.weight.grad, ref.weight.grad)  # world size 1: the mean is the gradient


class AllToAllModule(Regressor):
    """Owns a comm recorder, as DistributedDynGNNTask does: two all-to-alls of 10 and 30 bytes per step."""

    def __init__(self):
        super().__init__()
        self.comm_recorder = Recorder()

    def training_step(self, batch, batch_idx):
        self.comm_recorder.record(CommEvent("snapshot_to_vertex", 10, 10, 0.5))
        self.comm_recorder.record(CommEvent("snapshot_to_vertex.backward", 30, 30, 1.5))
        return super().training_step(batch, batch_idx)


def test_comm_profiler_reads_the_modules_recorder(tmp_path):
    profiler = CommProfiler()
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[profiler], log_every_n_steps=1, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="c")
    )
    trainer.fit(AllToAllModule(), datamodule=RecordingData())
    rows = list(csv.DictReader(open(next(tmp_path.glob("c/version_0/metrics.csv")))))
    steps = [r for r in rows if r.get("train/alltoall_bytes_step")]
    assert [float(r["train/alltoall_bytes_step"]) for r in steps] == [40.0] * 4
    assert [float(r["train/alltoall_ms_step"]) for r in steps] == [2.0] * 4
    assert profiler.totals["train/alltoall_calls"] == 8
