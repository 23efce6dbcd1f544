"""The streaming synthetic source (``dataset: synthetic_stream``): one pass, never the whole graph, same data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.adjacency import edge_key
from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule, encode_items
from lit_efficiency.dyn_gnn.synthetic import StreamingChurnSource, iter_synthetic_snapshots

SIZE = {"num_nodes": 60, "num_snapshots": 7, "edges_per_snapshot": 150, "churn": 0.2, "num_node_features": 0}


def _dm(dataset: str, **kwargs) -> StreamingSnapshotDataModule:
    args = {"task": "link_prediction", "num_negatives": 1, "train_frac": 1.0, "val_frac": 0.0, "test_frac": 0.0}
    dm = StreamingSnapshotDataModule(dataset=dataset, **SIZE, **args, **kwargs)
    dm.setup("fit")
    return dm


def _same_item(a, b) -> None:
    assert type(a) is type(b) and a.t == b.t
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f.name


@pytest.mark.parametrize("undirected", [False, True])
def test_streamed_store_equals_loaded_graph_store(undirected):
    """The one-pass store holds exactly the items and targets that loading the whole graph gives."""
    streamed = _dm("synthetic_stream", undirected=undirected)
    loaded = _dm("synthetic_churn", undirected=undirected)
    assert streamed.encoded is not None and loaded.encoded is not None
    assert streamed.encoded.kinds == loaded.encoded.kinds and "diff" in streamed.encoded.kinds
    for a, b in zip(streamed.store.items, loaded.store.items, strict=True):
        _same_item(a, b)
    for a, b in zip(streamed.store.target_edges, loaded.store.target_edges, strict=True):
        assert torch.equal(a, b)
    batch_s = next(iter(streamed.train_dataloader()))
    batch_l = next(iter(loaded.train_dataloader()))
    for a, b in zip(batch_s.targets, batch_l.targets, strict=True):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.label, b.label)


def test_target_cap_keeps_a_canonical_sample_of_the_true_edges():
    dm = _dm("synthetic_stream", target_edges_per_snapshot=40)
    raw = list(iter_synthetic_snapshots(60, 7, 150, churn=0.2))
    for t, (kept, snap) in enumerate(zip(dm.store.target_edges, raw, strict=True)):
        keys = edge_key(kept[0], kept[1], 60)
        assert 30 <= keys.numel() <= 40, t  # 40 draws with replacement, repeats removed
        assert torch.all(keys[1:] > keys[:-1])  # canonical order, no duplicates
        assert torch.isin(keys, edge_key(snap.edge_index[0], snap.edge_index[1], 60)).all()
    again = _dm("synthetic_stream", target_edges_per_snapshot=40)
    assert all(torch.equal(a, b) for a, b in zip(dm.store.target_edges, again.store.target_edges, strict=True))


def test_partitioned_rank_encodes_only_what_it_holds():
    """Rank 1 of 2: items only for its snapshots, the same as the loaded graph's rank 1; no targets it never reads."""
    kwargs = {"partitioner": "snapshot", "world_size": 2, "rank": 1, "block_size": 6, "halo": 0}
    streamed = _dm("synthetic_stream", **kwargs)
    loaded = _dm("synthetic_churn", **kwargs)
    held = [t for t, item in enumerate(streamed.store.items) if item is not None]
    assert held == streamed.owned and 0 < len(held) < SIZE["num_snapshots"]
    for a, b in zip(streamed.store.items, loaded.store.items, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            _same_item(a, b)
    needed = {t + 1 for t in held} | set(held)
    for t, edges in enumerate(streamed.store.target_edges):
        assert (edges.shape[1] > 0) == (t in needed), t


def test_encode_items_consumes_a_generator_like_a_list():
    snaps = [(s.edge_index, None) for s in iter_synthetic_snapshots(40, 6, 80, churn=0.1)]
    snaps[2] = None  # a snapshot this rank does not hold: two runs, each starting full
    for transfer in ("diff", "full"):
        from_list = encode_items(snaps, 40, transfer)
        from_gen = encode_items((s for s in snaps), 40, transfer)
        assert from_list[1] == from_gen[1] and from_list[0][2] is None
        assert [None if i is None else type(i).__name__ for i in from_gen[0]][3] == "FullSnapshot"
        for a, b in zip(from_list[0], from_gen[0], strict=True):
            if a is not None:
                _same_item(a, b)


def test_streaming_source_counts_without_generating():
    source = StreamingChurnSource(num_nodes=50, num_snapshots=5, edges_per_snapshot=100, num_node_features=0)
    assert source.edge_counts(1) == [len(s.edge_index[0]) for s in source.iter_snapshots()] == [100] * 5


def test_bad_streaming_options_are_config_errors():
    with pytest.raises(ConfigError, match="target_edges_per_snapshot needs a streaming source"):
        StreamingSnapshotDataModule(dataset="synthetic_churn", target_edges_per_snapshot=10)
    with pytest.raises(ConfigError, match="target_edges_per_snapshot must be >= 1"):
        StreamingSnapshotDataModule(dataset="synthetic_stream", target_edges_per_snapshot=0)
    with pytest.raises(ConfigError, match="num_node_features"):
        StreamingSnapshotDataModule(dataset="synthetic_stream", num_node_features=4).setup("fit")
    with pytest.raises(ConfigError, match="data.window"):
        _dm("synthetic_stream", window=2)
