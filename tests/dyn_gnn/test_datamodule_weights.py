"""Streamed storage of a weighted graph whose weights change every step: the structure is still shipped as a diff
(dense weights, no positions), decoded exactly, in strictly fewer bytes than full snapshots, end to end through the
data module."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from lit_efficiency.dyn_gnn.codec import FullSnapshot, SnapshotDiff, encode_snapshots, iter_decode
from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule
from lit_efficiency.dyn_gnn.graph import DynamicGraph
from lit_efficiency.dyn_gnn.sources import GraphSource


def reweighted_graph(num_nodes: int = 30, num_edges: int = 120, steps: int = 6, churn: int = 0) -> DynamicGraph:
    """One random edge set whose every weight is redrawn each step (``churn`` edges replaced per step)."""
    gen = torch.Generator().manual_seed(3)
    keys = torch.randperm(num_nodes * num_nodes, generator=gen)[: num_edges + churn * steps]
    edge_indices, weights = [], []
    for t in range(steps):
        k = keys[churn * t : churn * t + num_edges].sort().values
        edge_indices.append(torch.stack([k // num_nodes, k % num_nodes]))
        weights.append(torch.rand(num_edges, generator=gen) + 0.5)
    return DynamicGraph(num_nodes=num_nodes, edge_indices=edge_indices, edge_weights=weights).validate()


@pytest.mark.parametrize("churn", [0, 4])
def test_all_weights_changing_ships_structure_diffs_with_dense_weights(churn):
    graph = reweighted_graph(churn=churn)
    enc = encode_snapshots(graph.edge_indices, graph.num_nodes, graph.edge_weights)
    assert isinstance(enc[0], FullSnapshot)
    for item in enc.items[1:]:
        assert isinstance(item, SnapshotDiff) and item.weights is not None  # dense weights, not per-entry changes
        assert item.changed_pos is None and item.added_weights is None
        assert item.added_keys.numel() == churn and item.deleted_pos.numel() == churn
    assert enc.encoded_bytes() < enc.full_bytes()
    # bytes by hand: int32 keys (N*N < 2**31) and positions, float32 weights, 48-byte headers
    e, s = 120, len(graph.edge_indices)
    full = s * (48 + e * 8)
    diff = 48 + e * 8 + (s - 1) * (48 + churn * 4 + churn * 4 + e * 4)
    assert (enc.full_bytes(), enc.encoded_bytes()) == (full, diff)
    for t, dec in enumerate(iter_decode(enc, "cpu", verify=True)):
        ref_keys = graph.edge_indices[t][0] * graph.num_nodes + graph.edge_indices[t][1]
        assert torch.equal(dec.keys.long(), ref_keys)
        assert torch.equal(dec.weights, graph.edge_weights[t])


def test_few_changed_weights_keep_the_sparse_form():
    graph = reweighted_graph(steps=3)
    weights = [graph.edge_weights[0].clone() for _ in range(3)]
    weights[1][5] += 1.0
    weights[2] = weights[1].clone()
    weights[2][[0, 9]] -= 0.25
    enc = encode_snapshots(graph.edge_indices, graph.num_nodes, weights)
    assert [item.changed_pos.tolist() for item in enc.items[1:]] == [[5], [0, 9]]
    assert all(item.weights is None for item in enc.items[1:])
    for t, dec in enumerate(iter_decode(enc, "cpu")):
        assert torch.equal(dec.weights, weights[t])


class _GraphSource(GraphSource):
    def __init__(self, graph: DynamicGraph) -> None:
        self.graph = graph

    def load(self, snapshots=None) -> DynamicGraph:
        return self.graph


def test_streamed_data_module_rebuilds_reweighted_snapshots_from_fewer_bytes():
    """End to end: the streamed store holds diff items with dense weights, ships fewer bytes than full snapshots,
    and the rebuilt adjacencies equal the resident ones (weights included)."""
    graph = reweighted_graph(churn=2)
    kwargs = {"use_edge_weights": True, "undirected": False, "block_size": 2, "num_negatives": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streamed = DynamicGraphDataModule(_GraphSource(graph), storage="streamed", **kwargs)
        resident = DynamicGraphDataModule(_GraphSource(graph), storage="resident", **kwargs)
        streamed.setup("fit")
        resident.setup("fit")
    items = [item for item in streamed.store.items if item is not None]
    assert all(isinstance(item, SnapshotDiff) and item.weights is not None for item in items[1:])
    assert streamed.host_bytes() < sum(streamed.store.full_nbytes)
    for split in ("train", "test"):
        for got, ref in zip(streamed._loader(split), resident._loader(split), strict=True):
            got = streamed.transfer_batch_to_device(got, torch.device("cpu"), 0)
            assert len(got.adjs) == len(ref.adjs)
            for a, b in zip(got.adjs, ref.adjs, strict=True):
                torch.testing.assert_close(a.to_dense(), b.to_dense())
    events = streamed.transfer_recorder.drain()
    assert events and sum(e.h2d_bytes for e in events) < sum(e.full_bytes for e in events)


def test_snapshot_transfer_benchmark_weighted_row(tmp_path):
    """The benchmark's reweighted churn row: exact, and fewer bytes than full. N = 50,000 (N * N > 2**31): int64 keys,
    int32 positions, float32 weights; per diff 5% deleted positions and added keys plus all weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import snapshot_transfer

    (rec,) = snapshot_transfer.main(
        ["--datasets", "none", "--synthetic-edges", "0", "--weighted-edges", "2000", "--synthetic-snapshots", "4",
         "--repeats", "1", "--out", str(tmp_path / "st.json")]
    )  # fmt: skip
    assert rec["exact"] and rec["weighted"] and rec["dense_weight_items"] == 3
    assert rec["full_bytes"] == 4 * (2000 * 12 + 48)
    assert rec["diff_bytes"] == (2000 * 12 + 48) + 3 * (100 * 4 + 100 * 8 + 2000 * 4 + 48)
    assert rec["bytes_ratio"] == pytest.approx(rec["theory_ratio_with_headers"], rel=1e-4)
