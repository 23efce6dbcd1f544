"""Snapshot-partitioned DDP training (DistributedDynGNNTask + PartitionedSnapshotDataModule) against one process.

The reference is the plain single-process :class:`DynGNNTask` on the plain :class:`SnapshotDataModule` (no
partitioning code on that path). The distributed runs use Lightning's own DDP strategy with forked gloo workers
(``ddp_fork``: ``strategy="ddp"`` would re-execute pytest, and spawn re-imports torch in every worker). A recording
callback in every rank writes the logged global loss and the post-all-reduce gradients of every step to a file,
compared here with the reference's. Every Lightning run is bounded by the process-group timeouts and a pytest timeout.
"""

from __future__ import annotations

import copy
import datetime

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.recorders import Recorder
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
from lit_efficiency.dyn_gnn.partition import alltoall_bytes, snapshot_blocks, vertex_blocks
from lit_efficiency.dyn_gnn.partitioned import PartitionedBatch, PartitionedSnapshotDataModule, global_blocks
from lit_efficiency.dyn_gnn.profilers import CommProfiler
from lit_efficiency.dyn_gnn.task import DynGNNTask
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.helpers import DIST_DATA

NUM_NODES = 36  # divisible by 2 and 3: the all-to-all volume then equals 4*N*T*d*(P-1)/P exactly
DIM = 8


def _model_kwargs(model: str, head_hidden_dim: int = DIM) -> dict:
    name, _, mixing = model.partition(":")
    return {
        "model": name,
        "mixing": mixing or "input",
        "bandwidth": 3,
        "hidden_dim": DIM,
        "out_dim": DIM,
        "num_layers": 1 if name == "tmgcn" else 2,
        "head_hidden_dim": head_hidden_dim,
        "num_nodes": NUM_NODES,
        "num_features": 8,
        "task": "link_prediction",
    }


class _Record(L.Callback):
    """Per step: the logged global loss and the (all-reduced) gradients; written per rank at the end of fit."""

    def __init__(self, path) -> None:
        self.path = path
        self.losses: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss_step"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        torch.save(
            {"losses": self.losses, "grads": self.grads, "val": metrics},
            self.path / f"rank{trainer.global_rank}.pt",
        )


def _trainer(world: int, callbacks: list, max_epochs: int = 2, logger=False) -> L.Trainer:
    strategy: object = "auto"
    if world > 1:
        strategy = DDPStrategy(
            start_method="fork", process_group_backend="gloo", timeout=datetime.timedelta(seconds=60)
        )
    return quiet_trainer(
        devices=world,
        strategy=strategy,
        max_epochs=max_epochs,
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def _reference(model: str, path, head_hidden_dim: int = DIM) -> dict:
    torch.manual_seed(0)
    task = DynGNNTask(**_model_kwargs(model, head_hidden_dim))
    init = copy.deepcopy(task.state_dict())
    (path / "ref").mkdir()
    _trainer(1, [_Record(path / "ref")]).fit(task, SnapshotDataModule(**DIST_DATA))
    return {"init": init, **torch.load(path / "ref" / "rank0.pt")}


_needs_fork = pytest.mark.skipif(
    not dist.is_available()
    or not dist.is_gloo_available()
    or "fork" not in mp.get_all_start_methods()
    or torch.cuda.is_initialized(),
    reason="needs gloo and the fork start method",
)


# ---------------------------------------------------------------------------------------------------------------
# Single process: the data module's partition
# ---------------------------------------------------------------------------------------------------------------


def test_partitioned_batches_tile_the_single_process_blocks():
    """Ranks 0..2 of a 3-way partition, built without any process group, together hold the parent's blocks."""
    plain = SnapshotDataModule(**DIST_DATA)
    plain.setup("fit")
    assert plain.store is not None
    world = 3
    parts = []
    for rank in range(world):
        dm = PartitionedSnapshotDataModule(world_size=world, rank=rank, **DIST_DATA)
        dm.setup("fit")
        parts.append(dm)
    for split in ("train", "val"):
        spans = global_blocks(0, plain.splits[split].stop, DIST_DATA["block_size"] if split == "train" else None)
        batches = [list(dm._loader(split)) for dm in parts]
        assert all(len(b) == len(spans) for b in batches)  # the same number of steps on every rank
        for i, (t0, t1) in enumerate(spans):
            counts = parts[0].edge_counts[t0:t1]
            expected_blocks = tuple(range(b.start + t0, b.stop + t0) for b in snapshot_blocks(counts, world))
            ref = plain.store.batch(t0, t1, plain.splits[split], "val")  # fixed (seeded) negatives for eval
            for rank in range(world):
                batch: PartitionedBatch = batches[rank][i]
                assert batch.snap_blocks == expected_blocks and batch.num_halo == 0
                mine = expected_blocks[rank]
                assert batch.t0 == mine.start and len(batch.adjs) == len(mine)
                assert batch.num_targets == sum(1 for tg in ref.targets if tg is not None)
                for s, t in enumerate(mine):
                    assert torch.equal(batch.adjs[s].to_dense(), plain.store.adjs[t].to_dense())
                    assert torch.equal(batch.x[s], ref.x[t - t0])
                    if split == "val":
                        tgt, ref_tgt = batch.targets[s], ref.targets[t - t0]
                        assert (tgt is None) == (ref_tgt is None)
                        if tgt is not None:
                            assert torch.equal(tgt.edge_index, ref_tgt.edge_index)
                            assert torch.equal(tgt.label, ref_tgt.label)
    # A rank keeps only the adjacencies of its own blocks.
    for dm in parts:
        kept = {t for t, a in enumerate(dm.store.adjs) if a is not None}
        assert kept == set(dm.owned) and len(kept) < len(dm.store.adjs)


def test_training_negatives_follow_the_single_process_draws():
    """Epoch-e training negatives of a rank equal the single-process loader's in epoch e (no process group)."""
    plain = SnapshotDataModule(**DIST_DATA)
    plain.setup("fit")
    ref_epochs = [list(plain.train_dataloader()) for _ in range(2)]  # the parent's draw counter runs on
    dm = PartitionedSnapshotDataModule(world_size=2, rank=1, **DIST_DATA)
    dm.setup("fit")
    for epoch, ref_batches in enumerate(ref_epochs):
        dm._epoch = lambda epoch=epoch: epoch  # what the trainer's current_epoch gives in a run
        for batch, ref in zip(dm._loader("train"), ref_batches, strict=True):
            for s, target in enumerate(batch.targets):
                ref_target = ref.targets[batch.t0 + s - ref.t0]
                assert torch.equal(target.edge_index, ref_target.edge_index)


def test_tmgcn_input_mixing_asks_for_a_halo_and_evolvegcn_is_refused():
    assert DistributedDynGNNTask(**_model_kwargs("tmgcn:input")).temporal_halo == 2
    assert DistributedDynGNNTask(**_model_kwargs("tmgcn:output")).temporal_halo == 0
    assert DistributedDynGNNTask(**_model_kwargs("wdgcn")).temporal_halo == 0
    dm = PartitionedSnapshotDataModule(world_size=2, rank=1, halo=2, **DIST_DATA)
    dm.setup("fit")
    batch = next(iter(dm._loader("train")))
    assert batch.num_halo == 2 and batch.t0 == batch.snap_blocks[1].start - 2
    assert batch.targets[:2] == [None, None]
    with pytest.raises(ConfigError, match="redistribution_timeout_s"):
        DistributedDynGNNTask(redistribution_timeout_s=0, **_model_kwargs("wdgcn"))


# ---------------------------------------------------------------------------------------------------------------
# Distributed: gloo, forked Lightning DDP workers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.timeout(120)
@_needs_fork
@pytest.mark.parametrize(
    ("model", "world", "chunks", "spatial_chunks"),
    [
        ("wdgcn", 2, 4, 1),
        ("wdgcn", 3, 3, 2),
        ("wdgcn", 2, 1, 2),
        ("tmgcn:output", 2, 4, 1),
        ("tmgcn:input", 3, 4, 2),
    ],
)
def test_ddp_training_equals_single_process(model, world, chunks, spatial_chunks, tmp_path):
    """Losses, all-reduced gradients (every step, 2 epochs) and validation metrics equal the single process.

    WD-GCN with ``exchange_chunks > 1`` runs the overlapped return exchange (one started all-to-all per chunk, counted
    on rank 0), with ``spatial_chunks > 1`` the overlapped forward exchange; ``1`` the single one. TM-GCN always
    takes the single exchanges.
    """
    torch.set_num_threads(1)
    ref = _reference(model, tmp_path)
    task = DistributedDynGNNTask(exchange_chunks=chunks, spatial_chunks=spatial_chunks, **_model_kwargs(model))
    task.load_state_dict(ref["init"])
    task.comm_recorder = _KeepingRecorder()
    profiler = CommProfiler()
    _trainer(world, [_Record(tmp_path), profiler, _DumpComm(tmp_path, profiler)]).fit(
        task, PartitionedSnapshotDataModule(**DIST_DATA)
    )
    kinds = [kind for kind, _ in torch.load(tmp_path / "comm0.pt")["events"]]
    forward, back = (spatial_chunks, chunks) if model == "wdgcn" else (1, 1)
    assert forward * kinds.count("vertex_to_snapshot") == back * kinds.count("snapshot_to_vertex")
    assert len(ref["losses"]) == 4  # 2 blocks per epoch, the second one held by a single rank
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
        assert len(got["grads"]) == len(ref["grads"])
        for step, (grads, ref_grads) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
            assert grads.keys() == ref_grads.keys(), step
            for name, grad in grads.items():
                torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=f"step {step} {name}")
        for key, value in ref["val"].items():
            assert got["val"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


class _KeepingRecorder(Recorder):
    """A Recorder that also keeps every event (the profiler drains the live list each step)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list = []

    def record(self, event) -> None:
        super().record(event)
        self.kept.append((event.kind, int(event.bytes_sent)))


class _DumpComm(L.Callback):
    def __init__(self, path, profiler: CommProfiler) -> None:
        self.path, self.profiler = path, profiler

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.save(
            {"events": pl_module.comm_recorder.kept, "totals": self.profiler.totals},
            self.path / f"comm{trainer.global_rank}.pt",
        )


@pytest.mark.distributed
@pytest.mark.timeout(120)
@_needs_fork
def test_comm_profiler_bytes_in_a_two_rank_run(tmp_path):
    """Measured all-to-all bytes: 4*N*T*d*(P-1)/P per redistribution; CommProfiler logs rank 0's exact share."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)
    world = 2
    profiler = CommProfiler()
    task = DistributedDynGNNTask(**_model_kwargs("wdgcn"))
    task.comm_recorder = _KeepingRecorder()
    dm = PartitionedSnapshotDataModule(**DIST_DATA)
    logger = CSVLogger(tmp_path, name="csv", version=0)
    _trainer(world, [profiler, _DumpComm(tmp_path, profiler)], max_epochs=2, logger=logger).fit(task, dm)

    # The plan every rank used (identical to what the data module computes).
    probe = PartitionedSnapshotDataModule(world_size=world, rank=0, **DIST_DATA)
    probe.setup("fit")
    train_plans = probe.plans["train"]
    events = [torch.load(tmp_path / f"comm{r}.pt")["events"] for r in range(world)]
    per_kind: dict[str, int] = {}
    for rank_events in events:
        for kind, nbytes in rank_events:
            per_kind[kind] = per_kind.get(kind, 0) + nbytes
    # Training: 2 epochs over the train blocks; validation: 2 epochs over its block(s) (forward only).
    train_t = sum(p.stop - p.start for p in train_plans)
    val_t = sum(p.stop - p.start for p in probe.plans["val"])
    fwd = 2 * alltoall_bytes(NUM_NODES, train_t + val_t, DIM, world)
    bwd = 2 * alltoall_bytes(NUM_NODES, train_t, DIM, world)
    assert per_kind == {
        "snapshot_to_vertex": fwd,
        "vertex_to_snapshot": fwd,
        "vertex_to_snapshot.backward": bwd,
        "snapshot_to_vertex.backward": bwd,
    }

    # The logged per-step value is what rank 0 sent in that training step: computed from the plan by hand.
    verts = vertex_blocks(NUM_NODES, world)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/alltoall_bytes_step")]
    logged = [float(r["train/alltoall_bytes_step"]) for r in rows]
    expected = []
    for _ in range(2):
        for plan in train_plans:
            s0, t = len(plan.snap_blocks[0]), plan.stop - plan.start
            out_fwd = s0 * (NUM_NODES - len(verts[0])) * DIM * 4  # my snapshots, other ranks' vertices
            in_fwd = (t - s0) * len(verts[0]) * DIM * 4  # my vertices, other ranks' snapshots
            expected.append(2 * (out_fwd + in_fwd))  # s2v + v2s forward, their two backwards
    assert logged == expected
    assert all(float(r["train/allreduce_bytes_step"]) > 0 for r in rows)  # the DDP comm hook ran every step
    num_params = sum(p.numel() for p in task.parameters())
    assert float(rows[0]["train/allreduce_bytes_step"]) == 4 * num_params


@pytest.mark.distributed
@pytest.mark.timeout(60)
@_needs_fork
def test_more_ranks_than_snapshots_does_not_hang(tmp_path):
    """P = 4 > T = 3 training snapshots: one rank owns nothing, training still completes and matches."""
    torch.set_num_threads(1)
    data = {**DIST_DATA, "num_snapshots": 5, "block_size": None, "train_frac": 0.75, "val_frac": 0.25, "test_frac": 0.0}
    torch.manual_seed(0)
    ref_task = DynGNNTask(**_model_kwargs("wdgcn"))
    task = copy.deepcopy(ref_task)
    (tmp_path / "ref").mkdir()
    _trainer(1, [_Record(tmp_path / "ref")], max_epochs=1).fit(ref_task, SnapshotDataModule(**data))
    distributed = DistributedDynGNNTask(**_model_kwargs("wdgcn"))
    distributed.load_state_dict(task.state_dict())
    _trainer(4, [_Record(tmp_path)], max_epochs=1).fit(distributed, PartitionedSnapshotDataModule(**data))
    ref = torch.load(tmp_path / "ref" / "rank0.pt")
    got = torch.load(tmp_path / "rank3.pt")
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
    for name, grad in got["grads"][0].items():
        torch.testing.assert_close(grad, ref["grads"][0][name], rtol=1e-4, atol=1e-6)


def _assert_matches_reference(ref: dict, path, world: int, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    for rank in range(world):
        got = torch.load(path / f"rank{rank}.pt")
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=rtol, atol=atol)
        assert len(got["grads"]) == len(ref["grads"])
        for step, (grads, ref_grads) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
            assert grads.keys() == ref_grads.keys(), step
            for name, grad in grads.items():
                torch.testing.assert_close(grad, ref_grads[name], rtol=rtol, atol=atol, msg=f"step {step} {name}")


@pytest.mark.distributed
@pytest.mark.timeout(120)
@_needs_fork
@pytest.mark.parametrize(("head_hidden_dim", "world"), [(0, 2), (2, 3)])
def test_scoring_in_vertex_layout_equals_single_process_and_narrows_the_return(head_hidden_dim, world, tmp_path):
    """Head inputs shipped back instead of embeddings: same losses and gradients, return volume width 2k, not d."""
    torch.set_num_threads(1)
    ref = _reference("wdgcn", tmp_path, head_hidden_dim)
    task = DistributedDynGNNTask(**_model_kwargs("wdgcn", head_hidden_dim))  # loss_exchange="auto"
    task.load_state_dict(ref["init"])
    task.comm_recorder = _KeepingRecorder()
    profiler = CommProfiler()
    callbacks = [_Record(tmp_path), profiler, _DumpComm(tmp_path, profiler)]
    _trainer(world, callbacks).fit(task, PartitionedSnapshotDataModule(**DIST_DATA))
    assert task.ships_head_inputs
    _assert_matches_reference(ref, tmp_path, world)

    width = 2 * max(head_hidden_dim, 1)  # the first head layer's width, for both endpoints
    assert task.head.vertex_width == width < DIM
    probe = PartitionedSnapshotDataModule(world_size=world, rank=0, **DIST_DATA)
    probe.setup("fit")
    train_t = sum(p.stop - p.start for p in probe.plans["train"])
    val_t = sum(p.stop - p.start for p in probe.plans["val"])
    per_kind: dict[str, int] = {}
    for rank in range(world):
        for kind, nbytes in torch.load(tmp_path / f"comm{rank}.pt")["events"]:
            per_kind[kind] = per_kind.get(kind, 0) + nbytes
    fwd_t, bwd_t = 2 * (train_t + val_t), 2 * train_t  # 2 epochs; validation runs forward only
    assert per_kind == {
        "snapshot_to_vertex": alltoall_bytes(NUM_NODES, fwd_t, DIM, world),
        "snapshot_to_vertex.backward": alltoall_bytes(NUM_NODES, bwd_t, DIM, world),
        "vertex_to_snapshot": alltoall_bytes(NUM_NODES, fwd_t, width, world),
        "vertex_to_snapshot.backward": alltoall_bytes(NUM_NODES, bwd_t, width, world),
    }


@pytest.mark.distributed
@pytest.mark.timeout(120)
@_needs_fork
def test_bfloat16_wire_halves_the_bytes_and_stays_close(tmp_path):
    """``wire_dtype=bfloat16``: every exchange ships 2 bytes per value; losses and gradients within bf16 precision."""
    torch.set_num_threads(1)
    world = 2
    ref = _reference("wdgcn", tmp_path)
    task = DistributedDynGNNTask(wire_dtype="bfloat16", loss_exchange="embeddings", **_model_kwargs("wdgcn"))
    task.load_state_dict(ref["init"])
    task.comm_recorder = _KeepingRecorder()
    profiler = CommProfiler()
    _trainer(world, [_Record(tmp_path), profiler, _DumpComm(tmp_path, profiler)], max_epochs=1).fit(
        task, PartitionedSnapshotDataModule(**DIST_DATA)
    )
    ref = {**ref, "losses": ref["losses"][:2], "grads": ref["grads"][:2]}
    _assert_matches_reference(ref, tmp_path, world, rtol=5e-2, atol=5e-3)
    events = torch.load(tmp_path / "comm0.pt")["events"]
    fwd = [nbytes for kind, nbytes in events if kind == "snapshot_to_vertex"]
    probe = PartitionedSnapshotDataModule(world_size=world, rank=0, **DIST_DATA)
    probe.setup("fit")
    verts = vertex_blocks(NUM_NODES, world)
    s0 = len(probe.plans["train"][0].snap_blocks[0])
    assert fwd[0] == s0 * (NUM_NODES - len(verts[0])) * DIM * 2  # bf16: 2 bytes per value


def test_loss_exchange_and_wire_dtype_are_validated():
    with pytest.raises(ConfigError, match="loss_exchange"):
        DistributedDynGNNTask(loss_exchange="both", **_model_kwargs("wdgcn"))
    with pytest.raises(ConfigError, match="wire_dtype"):
        DistributedDynGNNTask(wire_dtype="int8", **_model_kwargs("wdgcn"))
    with pytest.raises(ConfigError, match="exchange_chunks"):
        DistributedDynGNNTask(exchange_chunks=0, **_model_kwargs("wdgcn"))
    with pytest.raises(ConfigError, match="spatial_chunks"):
        DistributedDynGNNTask(spatial_chunks=0, **_model_kwargs("wdgcn"))


def test_a_compute_error_inside_a_chunked_exchange_is_not_blamed_on_a_peer():
    """The overlapped exchanges run the rank's GCN/LSTM between collectives: their errors surface as they are."""
    from lit_efficiency.dyn_gnn.task_distributed import DistributedTrainingError, _local

    task = DistributedDynGNNTask(**_model_kwargs("wdgcn"))

    @_local
    def compute(_):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    def exchange_with_compute():
        return compute(range(2))

    def exchange_with_dead_peer():
        raise RuntimeError("Connection closed by peer")

    with pytest.raises(RuntimeError, match="^mat1 and mat2") as local:
        task._collective("snapshot->vertex all-to-all", exchange_with_compute)
    assert not isinstance(local.value, DistributedTrainingError)
    with pytest.raises(
        DistributedTrainingError,
        match=r"all-to-all failed \(a peer rank died or timed out after 300 s\): Connection closed by peer; rerun",
    ):
        task._collective("snapshot->vertex all-to-all", exchange_with_dead_peer)
