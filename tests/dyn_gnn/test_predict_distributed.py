"""``predict`` on 2 gloo ranks writes every snapshot's predictions exactly once, equal to one process's files:
snapshot-partitioned + streamed (each rank writes the snapshots it predicted) and unpartitioned (rank 0 writes)."""

from __future__ import annotations

import copy
import datetime

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.task import DynGNNTask
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.dyn_gnn.test_composed_data import _data, _needs_fork, _task, make_source

MODEL = {"hidden_dim": 6, "out_dim": 6, "num_layers": 1, "head_hidden_dim": 6, "lr": 0.05}


def _predict(model, dm, folder, world: int) -> dict:
    strategy: object = "auto"
    if world > 1:
        strategy = DDPStrategy(
            start_method="fork", process_group_backend="gloo", timeout=datetime.timedelta(seconds=60)
        )
    trainer = quiet_trainer(devices=world, strategy=strategy, default_root_dir=str(folder))
    trainer.predict(model, dm, return_predictions=False)
    return {p.name: p for p in (folder / "predictions").iterdir()}


@pytest.mark.distributed
@pytest.mark.timeout(300)
@_needs_fork
@pytest.mark.parametrize("task", ["link_prediction", "node_regression"])
def test_two_rank_predict_writes_every_snapshot_once_like_one_process(tmp_path, task):
    torch.set_num_threads(1)
    ref_dm = _data(make_source("edge_list", tmp_path), "resident", "none", task=task)
    model = _task(DynGNNTask, ref_dm, task, None)
    init = copy.deepcopy(model.state_dict())
    one = _predict(model, ref_dm, tmp_path / "one", 1)
    assert sorted(one) == sorted(
        f"snapshot_{t:05d}{ext}" for t in range(1, ref_dm.num_snapshots) for ext in (".csv", ".pt")
    )
    runs = {
        "partitioned": (DistributedDynGNNTask, "streamed", "snapshot"),
        "unpartitioned": (DynGNNTask, "resident", "none"),
    }
    for name, (cls, storage, partitioner) in runs.items():
        dm = _data(make_source("edge_list", tmp_path), storage, partitioner, task=task)
        torch.manual_seed(0)
        two_model = cls(num_nodes=ref_dm.num_nodes, num_features=ref_dm.num_features, task=task, **MODEL)
        two_model.load_state_dict(init)
        two = _predict(two_model, dm, tmp_path / name, 2)  # files are created exclusively: a second write fails
        assert sorted(two) == sorted(one), name
        for file, path in one.items():
            if file.endswith(".pt"):
                ref, got = torch.load(path, weights_only=True), torch.load(two[file], weights_only=True)
                assert ref.keys() == got.keys()
                for key, value in ref.items():
                    if isinstance(value, torch.Tensor):
                        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{name} {file} {key}")
                    else:
                        assert got[key] == value
            else:
                ref_lines, got_lines = path.read_text().splitlines(), two[file].read_text().splitlines()
                assert ref_lines[0] == got_lines[0] and len(ref_lines) == len(got_lines)
