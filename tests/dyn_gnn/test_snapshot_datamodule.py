"""SnapshotDataModule: chronological split, next-snapshot targets, negative sampling, blocks, errors."""

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_data_root
from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.datamodule import (
    SnapshotBatch,
    SnapshotDataModule,
    chronological_split,
    sample_negatives,
)
from tests.helpers import SMALL_GRAPH


def _dm(**kwargs) -> SnapshotDataModule:
    dm = SnapshotDataModule(**{**SMALL_GRAPH, **kwargs})
    dm.setup("fit")
    return dm


def _keys(ei: torch.Tensor, n: int) -> set[int]:
    return set((ei[0] * n + ei[1]).tolist())


def test_chronological_split_hand_counts():
    split = chronological_split(10, 0.7, 0.1, 0.2)
    assert split == {"train": range(0, 7), "val": range(7, 8), "test": range(8, 10)}
    # Fractions below 1: test gets round(test_frac * pairs), the tail is unused.
    assert chronological_split(10, 0.5, 0.2, 0.1)["test"] == range(7, 8)
    with pytest.raises(ConfigError, match="train_frac"):
        chronological_split(10, 0.0, 0.5, 0.5)
    with pytest.raises(ConfigError, match="<= 1"):
        chronological_split(10, 0.8, 0.2, 0.2)


def test_loaders_are_chronological_and_disjoint():
    dm = _dm(block_size=3)
    pairs = dm.num_snapshots - 1
    assert dm.splits == chronological_split(pairs, 0.7, 0.1, 0.2)
    seen = {}
    for split, loader in (
        ("train", dm.train_dataloader()),
        ("val", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
    ):
        batches = list(loader)
        # Blocks are consecutive and start at snapshot 0 (eval runs through the whole past).
        starts = [b.t0 for b in batches]
        assert starts[0] == 0 and all(
            b.t0 + b.num_snapshots == nxt for b, nxt in zip(batches, starts[1:], strict=False)
        )
        with_target = [b.t0 + s for b in batches for s, tg in enumerate(b.targets) if tg is not None]
        assert with_target == list(dm.splits[split])
        seen[split] = set(with_target)
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"]) and not (seen["train"] & seen["test"])
    assert max(seen["train"]) < min(seen["val"]) < min(seen["test"])
    # Training blocks hold block_size snapshots; training never reads a snapshot past the last training target.
    train = list(dm.train_dataloader())
    assert [b.num_snapshots for b in train] == [3, 3, 1]
    assert train[-1].t0 + train[-1].num_snapshots == dm.splits["train"].stop


def test_targets_are_next_snapshot_edges_and_negatives_never_collide():
    dm = _dm(num_negatives=4)
    graph = dm.graph
    n = graph.num_nodes
    batch = next(iter(dm.val_dataloader()))
    for s, target in enumerate(batch.targets):
        if target is None:
            continue
        t = batch.t0 + s
        ei, label = target.edge_index, target.label
        pos, neg = ei[:, label == 1], ei[:, label == 0]
        truth = graph.edge_indices[t + 1]
        assert _keys(pos, n) == _keys(truth, n)  # the edges of t + 1, not of t
        assert not (_keys(neg, n) & _keys(truth, n))
        assert bool((neg[0] != neg[1]).all())
        assert neg.shape[1] == 4 * pos.shape[1]
        # Every negative keeps a positive's source, so each source's ranking holds a positive.
        assert set(neg[0].tolist()) <= set(pos[0].tolist())


def test_sample_negatives_on_a_dense_graph():
    n = 6
    # Node 0 points to everyone but 5: its only valid negative destination is 5.
    pos = torch.tensor([[0, 0, 0, 0, 1], [1, 2, 3, 4, 0]])
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(pos, n, 5, gen)
    assert neg.shape == (2, 25)
    assert not (_keys(neg, n) & _keys(pos, n))
    assert bool((neg[0] != neg[1]).all())
    assert set(neg[1, neg[0] == 0].tolist()) == {5}
    # A source connected to every other node has no negative: its draws are dropped, not left colliding.
    full = torch.tensor([[0, 0], [1, 2]])
    assert sample_negatives(full, 3, 4, gen).shape == (2, 0)


def test_train_negatives_are_redrawn_eval_negatives_fixed():
    dm = _dm()
    first, second = next(iter(dm.train_dataloader())), next(iter(dm.train_dataloader()))
    assert not torch.equal(first.targets[0].edge_index, second.targets[0].edge_index)
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    t = dm.splits["val"].start
    assert torch.equal(v1.targets[t].edge_index, v2.targets[t].edge_index)


def test_adjacency_is_normalised_window_input_and_raw_targets():
    dm = _dm(window=2, undirected=False)
    graph = dm.graph
    n = graph.num_nodes
    # Snapshot 3's input adjacency holds the edges of steps 2 and 3 (normalised like PyG's gcn_norm).
    both = torch.cat([graph.edge_indices[2], graph.edge_indices[3]], dim=1)
    both = torch.unique(both[0] * n + both[1])
    expected = gcn_norm(torch.stack([both // n, both % n]), n).to_dense()
    torch.testing.assert_close(dm.store.adjs[3].to_dense(), expected)
    # The target of snapshot 3 is still the raw edges of step 4 only.
    target = dm.store.target(3, "val")
    assert _keys(target.edge_index[:, target.label == 1], n) == _keys(graph.edge_indices[4], n)


def test_edge_sign_and_node_regression_targets():
    dm = _dm(task="edge_sign")
    target = dm.store.target(0, "train")
    community = torch.arange(dm.num_nodes) % 4
    ei = target.edge_index
    assert torch.equal(target.label, (community[ei[0]] == community[ei[1]]).long())
    assert dm.num_features == 8
    dm = _dm(task="node_regression", log_targets=False)
    assert torch.equal(dm.store.target(2, "train").label, dm.graph.y[3].float())


def test_batch_to_device_and_hook():
    dm = _dm()
    batch = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, SnapshotBatch) and moved is not batch
    assert moved.t0 == batch.t0 and len(moved.adjs) == len(batch.adjs)
    assert torch.equal(moved.targets[0].label, batch.targets[0].label)
    assert moved.x.shape == (batch.num_snapshots, dm.num_nodes, dm.num_features)


def test_bad_inputs_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="data.dataset"):
        SnapshotDataModule(dataset="nope")
    with pytest.raises(ConfigError, match="window"):
        SnapshotDataModule(window=0)
    with pytest.raises(ConfigError, match="block_size"):
        SnapshotDataModule(block_size=0)
    dm = SnapshotDataModule(dataset="synthetic_churn", task="edge_sign", num_nodes=30, edges_per_snapshot=40)
    with pytest.raises(ConfigError, match="edge_sign needs signed edges"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match="setup"):
        SnapshotDataModule().num_nodes  # noqa: B018


@pytest.mark.skipif(resolve_data_root() is None, reason="shared data not found")
def test_real_dataset_uci_messages():
    dm = SnapshotDataModule(dataset="uci_messages", num_negatives=2)
    dm.setup("fit")
    assert dm.num_nodes == 1899 and dm.num_features == 0
    assert dm.num_snapshots == dm.graph.num_snapshots
    assert dm.splits["test"].stop == dm.num_snapshots - 1
