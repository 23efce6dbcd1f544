"""The composed data module: every source x storage (resident / streamed) x partitioner (none / snapshot) trains with
the same losses on a graph written by the test; 2 gloo ranks equal 1 process; predict writes per-snapshot files."""

from __future__ import annotations

import copy
import datetime
import warnings

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule, SnapshotDataModule
from lit_efficiency.dyn_gnn.sources import EdgeListSource, PGTJsonSource, PyGSource, SyntheticChurnSource
from lit_efficiency.dyn_gnn.task import DynGNNTask
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.dyn_gnn.test_sources import (
    reference_graph,
    write_edge_list,
    write_pgt_edge_mapping,
    write_pgt_snapshots,
    write_pyg,
)

DATA = {"block_size": 2, "num_negatives": 2, "train_frac": 0.5, "val_frac": 0.25, "test_frac": 0.25, "seed": 2}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def make_source(kind: str, folder):
    """One of the sources, reading files the test writes from :func:`reference_graph` (the same graph)."""
    ref = reference_graph()
    if kind == "edge_list":
        return EdgeListSource(**write_edge_list(ref, folder))
    if kind == "pgt_json":
        write_pgt_snapshots(ref, folder / "snaps.json")
        return PGTJsonSource(str(folder / "snaps.json"))
    if kind == "pgt_edge_mapping":
        write_pgt_edge_mapping(ref, folder / "mapping.json")
        return PGTJsonSource(str(folder / "mapping.json"), lags=2)
    if kind == "pyg":
        write_pyg(ref, folder / "g.pt")
        return PyGSource(str(folder / "g.pt"))
    return SyntheticChurnSource(num_nodes=16, num_snapshots=7, edges_per_snapshot=30, churn=0.3, num_node_features=3)


def _task(cls, dm: DynamicGraphDataModule, task: str, init: dict | None):
    dm.setup("fit")
    kwargs = {"hidden_dim": 6, "out_dim": 6, "num_layers": 1, "head_hidden_dim": 6, "lr": 0.05}
    torch.manual_seed(0)
    model = cls(num_nodes=dm.num_nodes, num_features=dm.num_features, task=task, **kwargs)
    if init is not None:
        model.load_state_dict(init)
    return model


class _Record(L.Callback):
    """Per training step the logged global loss and the gradients; written per rank at the end of fit."""

    def __init__(self, path=None) -> None:
        self.path, self.losses, self.grads = path, [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss_step"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path is None:
            return
        dm = trainer.datamodule
        held = [t for t, a in enumerate(getattr(dm.store, "items", None) or dm.store.adjs) if a is not None]
        graph_edges = dm.graph.num_edges_per_snapshot
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        out = {"losses": self.losses, "grads": self.grads, "held": held, "edges": graph_edges, "val": val}
        torch.save(out, self.path / f"rank{trainer.global_rank}.pt")


def _fit(dm, model, world: int = 1, path=None, epochs: int = 2) -> _Record:
    strategy: object = "auto"
    if world > 1:
        strategy = DDPStrategy(
            start_method="fork", process_group_backend="gloo", timeout=datetime.timedelta(seconds=60)
        )
    record = _Record(path)
    trainer = quiet_trainer(
        devices=world, strategy=strategy, max_epochs=epochs, log_every_n_steps=1, num_sanity_val_steps=0,
        callbacks=[record],
    )  # fmt: skip
    trainer.fit(model, dm)
    return record


def _data(source, storage: str, partitioner: str, **extra) -> DynamicGraphDataModule:
    return DynamicGraphDataModule(
        source, storage=storage, partitioner=partitioner, use_edge_weights=True, **DATA, **extra
    )


@pytest.mark.parametrize("kind", ["edge_list", "pgt_json", "pgt_edge_mapping", "pyg", "churn"])
def test_every_storage_and_partitioner_trains_like_the_resident_single_process(tmp_path, kind):
    """One process: resident/streamed x none/snapshot give the losses of resident/none (file sources: also the
    losses of the same graph read from any other file format)."""
    task = "link_prediction"
    ref_dm = _data(make_source(kind, tmp_path), "resident", "none")
    ref_model = _task(DynGNNTask, ref_dm, task, None)
    init = copy.deepcopy(ref_model.state_dict())
    ref = _fit(ref_dm, ref_model).losses
    assert len(ref) == 2 * 2 and all(torch.isfinite(torch.tensor(ref)))
    for storage in ("resident", "streamed"):
        for partitioner in ("none", "snapshot"):
            dm = _data(make_source(kind, tmp_path), storage, partitioner)
            cls = DistributedDynGNNTask if partitioner == "snapshot" else DynGNNTask
            got = _fit(dm, _task(cls, dm, task, init)).losses
            torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    if kind in ("edge_list", "pyg"):  # the same graph as pgt_json: the same losses
        pgt = _data(make_source("pgt_json", tmp_path), "resident", "none")
        torch.testing.assert_close(
            torch.tensor(_fit(pgt, _task(DynGNNTask, pgt, task, init)).losses), torch.tensor(ref)
        )


def test_node_regression_streamed_partitioned_and_baselines(tmp_path):
    """Node targets and features from the edge-list node files; persistence and mean baselines are logged, and
    equal a direct computation."""
    ref_dm = _data(make_source("edge_list", tmp_path), "resident", "none", task="node_regression", log_targets=False)
    model = _task(DynGNNTask, ref_dm, "node_regression", None)
    init = copy.deepcopy(model.state_dict())
    ref = _fit(ref_dm, model).losses
    dm = _data(make_source("edge_list", tmp_path), "streamed", "snapshot", task="node_regression", log_targets=False)
    got = _fit(dm, _task(DistributedDynGNNTask, dm, "node_regression", init)).losses
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    trainer = quiet_trainer()
    res = trainer.validate(_task(DynGNNTask, ref_dm, "node_regression", init), ref_dm, verbose=False)[0]
    y = reference_graph().y
    val = ref_dm.splits["val"]
    target = y[val.start + 1 : val.stop + 1]
    persistence = ((y[val.start : val.stop] - target) ** 2).mean()
    mean = ((y[1 : ref_dm.splits["train"].stop + 1].mean(0) - target) ** 2).mean()
    assert res["val/persistence_mse"] == pytest.approx(float(persistence), rel=1e-5)
    assert res["val/mean_mse"] == pytest.approx(float(mean), rel=1e-5)
    assert "val/mse" in res and "val/persistence_mae" in res


# ---------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["link_prediction", "edge_sign", "node_regression"])
def test_predict_writes_one_file_pair_per_snapshot(tmp_path, task):
    if task == "edge_sign":
        dm = SnapshotDataModule(dataset="synthetic", num_nodes=20, num_snapshots=6, edges_per_snapshot=40,
                                num_communities=2, num_node_features=2, task=task, num_negatives=2)  # fmt: skip
    else:
        dm = _data(make_source("edge_list", tmp_path), "streamed", "none", task=task)
    model = _task(DynGNNTask, dm, task, None)
    trainer = quiet_trainer(default_root_dir=str(tmp_path / "run"))
    trainer.predict(model, dm, return_predictions=False)
    folder = tmp_path / "run" / "predictions"
    pts = sorted(folder.glob("snapshot_*.pt"))
    assert [p.stem for p in pts] == [f"snapshot_{t:05d}" for t in range(1, dm.num_snapshots)]
    assert len(list(folder.glob("snapshot_*.csv"))) == len(pts)
    # independent check of one snapshot: the model's head on a resident batch of snapshots 0..t
    t = 3
    record = torch.load(pts[t], weights_only=True)
    ref_dm = _data(make_source("edge_list", tmp_path), "resident", "none", task=task) if task != "edge_sign" else dm
    ref_dm.setup("predict")
    batch = ref_dm.store.batch(0, t + 1, range(t, t + 1), "predict")
    model.eval()
    with torch.no_grad():
        z, _ = model(batch)
        out = model.predict_target(z[t], batch.targets[t])
    header = (folder / f"snapshot_{t + 1:05d}.csv").read_text().splitlines()[0]
    if task == "node_regression":
        torch.testing.assert_close(record["prediction"], out, rtol=1e-5, atol=1e-6)
        assert header == "node,prediction,target"
        assert record["target"].tolist() == reference_graph().y[t + 1].log1p().tolist()
    else:
        score = out.sigmoid() if task == "link_prediction" else out.softmax(-1)[:, 1]
        key = "score" if task == "link_prediction" else "p_positive"
        torch.testing.assert_close(record[key], score, rtol=1e-5, atol=1e-6)
        assert torch.equal(record["src"], batch.targets[t].edge_index[0])
        assert header == f"src,dst,{key},label"
    if task != "edge_sign":  # CSV node ids are the raw ids of the edge-list file
        first = (folder / f"snapshot_{t + 1:05d}.csv").read_text().splitlines()[1].split(",")[0]
        assert int(first) in {100 + 7 * u for u in range(11)} | {2**53 + 1 + 11000}
    with pytest.raises(Exception, match="already holds predictions"):  # never overwrite
        quiet_trainer(default_root_dir=str(tmp_path / "run")).predict(model, dm, return_predictions=False)


# ---------------------------------------------------------------------------------------------------------------
# 2 gloo ranks
# ---------------------------------------------------------------------------------------------------------------

_needs_fork = pytest.mark.skipif(
    not dist.is_available()
    or not dist.is_gloo_available()
    or "fork" not in mp.get_all_start_methods()
    or torch.cuda.is_initialized(),
    reason="needs gloo and the fork start method",
)


@pytest.mark.distributed
@pytest.mark.timeout(180)
@_needs_fork
@pytest.mark.parametrize(
    ("kind", "storage"),
    [("edge_list", "streamed"), ("edge_list", "resident"), ("pgt_json", "streamed"), ("pyg", "streamed"),
     ("churn", "streamed")],
)  # fmt: skip
def test_two_ranks_partitioned_equal_one_process(tmp_path, kind, storage):
    """2 gloo ranks, snapshot-partitioned: the losses and all-reduced gradients of one resident process; each rank
    holds the model inputs of its blocks only, and (file sources, churn) read no edge of the other snapshots."""
    torch.set_num_threads(1)
    ref_dm = _data(make_source(kind, tmp_path), "resident", "none")
    model = _task(DynGNNTask, ref_dm, "link_prediction", None)
    init = copy.deepcopy(model.state_dict())
    ref = _fit(ref_dm, model)
    dm = _data(make_source(kind, tmp_path), storage, "snapshot")
    torch.manual_seed(0)
    kwargs = {"hidden_dim": 6, "out_dim": 6, "num_layers": 1, "head_hidden_dim": 6, "lr": 0.05}
    distributed = DistributedDynGNNTask(
        num_nodes=ref_dm.num_nodes, num_features=ref_dm.num_features, task="link_prediction", **kwargs
    )
    distributed.load_state_dict(init)
    _fit(dm, distributed, world=2, path=tmp_path)
    held = []
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref.losses), rtol=1e-5, atol=1e-6)
        for grads, ref_grads in zip(got["grads"], ref.grads, strict=True):
            for name, grad in grads.items():
                torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        held.append(set(got["held"]))
        assert len(got["held"]) < ref_dm.num_snapshots
        if kind != "pyg":  # PyG files are read whole, then blanked; the others never build the other snapshots
            empty = {t for t, e in enumerate(got["edges"]) if e == 0}
            assert empty, "a rank should not have read every snapshot"
    assert held[0] | held[1] == set(range(ref_dm.num_snapshots - 1))  # together: every input snapshot
