"""Streaming snapshot DataModule: diff vs full training equality, device rebuild vs an independent reference,
corrupted items inside the DataModule path, TransferProfiler figures from a real fit, streaming encoder."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.codec import SnapshotDiff, encode_snapshots
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotDataModule
from lit_efficiency.dyn_gnn.profilers import TransferProfiler
from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule, encode_stream, rebuild_adjacency
from lit_efficiency.dyn_gnn.synthetic import iter_synthetic_snapshots, synthetic_dynamic_graph
from lit_efficiency.dyn_gnn.task import DynGNNTask
from tests.helpers import STREAMING_GRAPH

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fit(dm: SnapshotDataModule, max_steps: int = 3):
    """Fit a tiny WD-GCN; returns per-step losses and the final parameters."""
    L.seed_everything(0, verbose=False)
    task = DynGNNTask(hidden_dim=8, out_dim=8, num_layers=1, head_hidden_dim=8, lr=0.05)
    losses: list[float] = []

    class Keep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    quiet_trainer(max_steps=max_steps, limit_val_batches=0, callbacks=[Keep()]).fit(task, dm)
    return losses, [p.detach().clone() for p in task.parameters()]


def test_diff_and_full_transfer_train_identically():
    """Same seed: diff transfer gives bit-identical losses and weights to full transfer over several steps."""
    dm_diff = StreamingSnapshotDataModule(**STREAMING_GRAPH, transfer="diff")
    dm_full = StreamingSnapshotDataModule(**STREAMING_GRAPH, transfer="full")
    loss_d, par_d = _fit(dm_diff, max_steps=3)
    loss_f, par_f = _fit(dm_full, max_steps=3)
    assert len(loss_d) == 3 and loss_d == loss_f
    for a, b in zip(par_d, par_f, strict=True):
        assert torch.equal(a, b)
    assert dm_diff.encoded is not None and "diff" in dm_diff.encoded.kinds  # the diff path really ran


@pytest.mark.slow
def test_streaming_trains_like_resident_datamodule():
    """Same losses as the resident base DataModule (adjacencies from PyG's normalisation), up to rounding."""
    loss_s, _ = _fit(StreamingSnapshotDataModule(**STREAMING_GRAPH), max_steps=4)
    loss_r, _ = _fit(SnapshotDataModule(**STREAMING_GRAPH), max_steps=4)
    torch.testing.assert_close(torch.tensor(loss_s), torch.tensor(loss_r), rtol=1e-5, atol=1e-6)


def test_first_step_gradients_equal_between_transfers():
    grads = {}
    for transfer in ("diff", "full"):
        dm = StreamingSnapshotDataModule(**STREAMING_GRAPH, transfer=transfer)
        dm.setup("fit")
        batch = dm.transfer_batch_to_device(next(iter(dm.train_dataloader())), torch.device("cpu"), 0)
        L.seed_everything(0, verbose=False)
        task = DynGNNTask(hidden_dim=8, out_dim=8, num_layers=1, head_hidden_dim=8)
        task._build(dm.num_nodes, dm.num_features, dm.task)
        _, loss, _ = task._block(batch, None)
        loss.backward()
        grads[transfer] = [p.grad.clone() for p in task.parameters()]
    for a, b in zip(grads["diff"], grads["full"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("undirected", [True, False])
def test_device_rebuild_matches_pyg_normalisation(undirected):
    """Rebuilt adjacencies equal the base DataModule's (adjacency.gcn_norm, i.e. PyG's gcn_norm) for every snapshot."""
    args = {**STREAMING_GRAPH, "undirected": undirected, "block_size": 4}
    base, stream = SnapshotDataModule(**args), StreamingSnapshotDataModule(**args)
    base.setup("fit")
    stream.setup("fit")
    for b_host, s_host in zip(base.train_dataloader(), stream.train_dataloader(), strict=True):
        s_dev = stream.transfer_batch_to_device(s_host, torch.device("cpu"), 0)
        assert isinstance(s_dev, SnapshotBatch) and len(s_dev.adjs) == len(b_host.adjs)
        for a, b in zip(s_dev.adjs, b_host.adjs, strict=True):
            torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-6, atol=1e-7)


def test_rebuild_adjacency_directed_is_in_degree_transpose():
    """Hand-checked 3-vertex directed graph: 0->1, 0->2, 1->2 (keys source*N+target)."""
    keys = torch.tensor([1, 2, 5])
    adj = rebuild_adjacency(keys, None, 3, directed=True).to_dense()
    ref = gcn_norm(torch.tensor([[0, 0, 1], [1, 2, 2]]), 3).to_dense()
    torch.testing.assert_close(adj, ref)
    # in-degrees with self loops: d = (1, 2, 3); adj[2, 0] = 1 / sqrt(1 * 3)
    assert adj[2, 0].item() == pytest.approx(3**-0.5)


def test_corrupted_item_in_datamodule_names_snapshot():
    dm = StreamingSnapshotDataModule(**STREAMING_GRAPH)
    dm.setup("fit")
    store = dm.store
    t = next(i for i, item in enumerate(store.items) if isinstance(item, SnapshotDiff) and item.added_keys.numel())
    good = store.items[t]
    # bad checksum
    store.items[t] = dataclasses.replace(good, checksum=good.checksum + 1)
    with pytest.raises(DataError, match=rf"^snapshot {t}: checksum mismatch") as err:
        for batch in dm.train_dataloader():
            dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert "\n" not in str(err.value)
    # truncated diff
    store.items[t] = dataclasses.replace(good, added_keys=good.added_keys[:-1])
    dm._last = None
    with pytest.raises(DataError, match=rf"^snapshot {t}: truncated diff"):
        for batch in dm.train_dataloader():
            dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    # deleted position out of range
    bad_pos = good.deleted_pos.clone()
    bad_pos[-1] = good.prev_num_edges + 5
    store.items[t] = dataclasses.replace(good, deleted_pos=bad_pos)
    dm._last = None
    with pytest.raises(DataError, match=rf"^snapshot {t}: deleted position out of range"):
        for batch in dm.train_dataloader():
            dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)


def test_transfer_profiler_gets_real_figures_during_fit():
    """Bytes logged by the profiler equal the encoded item sizes of the blocks the epoch shipped."""
    dm = StreamingSnapshotDataModule(**STREAMING_GRAPH)
    prof = TransferProfiler()
    L.seed_everything(0, verbose=False)
    task = DynGNNTask(hidden_dim=8, out_dim=8, num_layers=1, head_hidden_dim=8)
    quiet_trainer(max_epochs=1, limit_val_batches=0, callbacks=[prof]).fit(task, dm)
    train = dm.splits["train"]
    items = dm.encoded.items[: train.stop]
    assert prof.totals["h2d_bytes"] == sum(item.nbytes for item in items)
    assert prof.totals["full_bytes"] == sum(dm.encoded.full_nbytes[: train.stop])
    assert prof.totals["h2d_bytes"] < prof.totals["full_bytes"]
    assert prof.totals["rebuild_ms"] > 0 and prof.totals["h2d_ms"] > 0


def test_cache_miss_ships_the_items_since_the_cache_or_the_last_full_item():
    """A block whose predecessor is not on the device ships the items it needs (bytes counted): from the last full
    item when the cache is empty, from the cached snapshot when it is earlier in the same run (a rank that trains on
    every other block of a run); the adjacencies equal the resident store's."""
    dm = StreamingSnapshotDataModule(**{**STREAMING_GRAPH, "block_size": 2})
    dm.setup("fit")
    blocks = list(dm.train_dataloader())
    assert [b.t0 for b in blocks] == [0, 2, 4] and dm.encoded.kinds[:6] == ["full"] + ["diff"] * 5
    ref = SnapshotDataModule(**{**STREAMING_GRAPH, "block_size": 2})
    ref.setup("fit")

    def transfer(block: SnapshotBatch, shipped_from: int) -> None:
        out = dm.transfer_batch_to_device(block, torch.device("cpu"), 0)
        (event,) = dm.transfer_recorder.drain()
        stop = block.t0 + len(block.items)
        assert event.h2d_bytes == sum(item.nbytes for item in dm.store.items[shipped_from:stop])
        for a, b in zip(out.adjs, ref.store.adjs[block.t0 : stop], strict=True):
            torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-6, atol=1e-7)

    transfer(blocks[1], 0)  # empty cache: snapshots 0 (full) and 1 are decoded before the block
    dm._last = None
    transfer(blocks[0], 0)
    transfer(blocks[2], 2)  # cache at snapshot 1: the diffs of 2 and 3, not the run from its start


def test_encode_stream_equals_encode_snapshots():
    snaps = list(iter_synthetic_snapshots(40, 6, 120, churn=0.1, window=2, seed=3))
    edge_indices = [s.edge_index for s in snaps]
    weights = [s.edge_weight for s in snaps]
    ref = encode_snapshots(edge_indices, 40, weights)
    got = encode_stream(zip(edge_indices, weights, strict=True), 40)
    assert got.kinds == ref.kinds and got.full_nbytes == ref.full_nbytes and got.weighted
    assert got.encoded_bytes() == ref.encoded_bytes()
    for a, b in zip(got.items, ref.items, strict=True):
        assert a.checksum == b.checksum and a.nbytes == b.nbytes
    with pytest.raises(DataError, match="snapshot 1: weighted and unweighted"):
        encode_stream([(edge_indices[0], weights[0]), (edge_indices[1], None)], 40)


def test_host_memory_diff_smaller_than_full():
    g = synthetic_dynamic_graph(200, 8, 1000, churn=0.05, seed=0)
    args = dict(dataset="synthetic_churn", num_nodes=200, num_snapshots=8, edges_per_snapshot=1000, churn=0.05)
    d, f = StreamingSnapshotDataModule(**args, transfer="diff"), StreamingSnapshotDataModule(**args, transfer="full")
    d.setup("fit")
    f.setup("fit")
    assert d.num_snapshots == f.num_snapshots == g.num_snapshots
    assert d.host_bytes() * 3 < f.host_bytes()
    assert f.host_bytes() == sum(d.encoded.full_nbytes)


def test_bad_transfer_option():
    with pytest.raises(ConfigError, match="data.transfer"):
        StreamingSnapshotDataModule(transfer="zip")


@pytest.mark.slow
def test_streaming_configs_parse():
    for cfg in sorted((ROOT / "conf" / "dyn_gnn").glob("streaming*.yaml")):
        proc = subprocess.run(
            [sys.executable, "-m", "lit_efficiency", "fit", "--config", str(cfg), "--print_config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "StreamingSnapshotDataModule" in proc.stdout and "TransferProfiler" in proc.stdout


def test_snapshot_transfer_benchmark_cpu_path(tmp_path):
    """Small synthetic run of the benchmark: exact rebuild, bytes ratio equal to the count-based theory with headers."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import snapshot_transfer

    out = tmp_path / "st.json"
    (rec,) = snapshot_transfer.main(
        ["--datasets", "none", "--synthetic-nodes", "500", "--synthetic-edges", "3000", "--synthetic-snapshots", "4",
         "--repeats", "1", "--out", str(out)]
    )  # fmt: skip
    keys = {"dataset", "window", "full_bytes", "diff_bytes", "bytes_ratio", "exact", "device", "full_ms", "diff_ms"}
    assert keys | {"time_ratio"} <= rec.keys() and rec["device"] == "cpu" and rec["exact"]
    assert rec["full_bytes"] == 4 * (3000 * 4 + 48)  # int32 keys (N*N < 2**31) + header, 4 snapshots
    # 5% churn: 150 added int32 keys + 150 deleted int32 positions per diff
    assert rec["diff_bytes"] == (3000 * 4 + 48) + 3 * (300 * 4 + 48)
    assert rec["bytes_ratio"] == pytest.approx(rec["theory_ratio_with_headers"], rel=1e-4)
    assert json.loads(out.read_text())["records"][0]["diff_bytes"] == rec["diff_bytes"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streaming_with_prefetch_matches_cpu():
    """Pinned items, side-stream prefetch of the next block: the rebuilt adjacencies equal the CPU ones."""
    cpu, gpu = (
        StreamingSnapshotDataModule(**STREAMING_GRAPH),
        StreamingSnapshotDataModule(**STREAMING_GRAPH, prefetch=True),
    )
    cpu.setup("fit")
    gpu.setup("fit")
    assert gpu.store.items[1].added_keys.is_pinned()
    blocks = list(gpu.train_dataloader())
    for i, (b_cpu, b_gpu) in enumerate(zip(cpu.train_dataloader(), blocks, strict=True)):
        a = cpu.transfer_batch_to_device(b_cpu, torch.device("cpu"), 0)
        g = gpu.transfer_batch_to_device(b_gpu, torch.device("cuda"), 0)
        if i + 1 < len(blocks) and len(blocks[i + 1].items) == len(b_gpu.items):
            assert gpu._prefetched is not None and gpu._prefetched[0] == blocks[i + 1].t0
        for x, y in zip(a.adjs, g.adjs, strict=True):
            torch.testing.assert_close(x.to_dense(), y.to_dense().cpu())
    events = gpu.transfer_recorder.drain()
    assert len(events) == len(blocks) and all(e.h2d_bytes < e.full_bytes for e in events[1:])


def test_rebuild_checks_once_per_block(monkeypatch):
    """A block is decoded by one ``decode_block`` and checked by one synchronisation, however many snapshots."""
    import lit_efficiency.dyn_gnn.streaming as streaming
    from lit_efficiency.dyn_gnn.codec import BlockCheck

    calls = {"decode": [], "check": 0}
    real_decode, real_check = streaming.decode_block, BlockCheck.raise_if_failed

    def decode(*args, **kwargs):
        calls["decode"].append(len(args[2]))
        return real_decode(*args, **kwargs)

    def check(self):
        calls["check"] += 1
        return real_check(self)

    monkeypatch.setattr(streaming, "decode_block", decode)
    monkeypatch.setattr(BlockCheck, "raise_if_failed", check)
    dm = StreamingSnapshotDataModule(**{**STREAMING_GRAPH, "block_size": 3})
    dm.setup("fit")
    blocks = list(dm.train_dataloader())
    for batch in blocks:
        dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert calls["decode"] == [len(b.items) for b in blocks] and max(calls["decode"]) == 3
    assert calls["check"] == len(blocks)
