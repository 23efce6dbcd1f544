"""DynamicGraph container, coalescing, time bucketing and edge-life windows.

References are independent: hand-computed snapshot edge sets on a 5-edge timeline, and a per-edge Python loop
(dict of (snapshot, u, v) -> weight) for random inputs.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.graph import DynamicGraph, bucket_edges, coalesce_edges, time_steps

# The hand-made timeline: (src, dst, time, label).
TIMELINE = [
    (0, 1, 0.0, +1),  # step 0
    (2, 0, 1.5, +1),  # step 1
    (0, 1, 1.9, -1),  # step 1
    (1, 2, 3.2, +1),  # step 3 (step 2 is empty)
    (0, 1, 4.0, -1),  # step 4
]


def _timeline(**kwargs) -> DynamicGraph:
    src, dst, t, label = zip(*TIMELINE, strict=True)
    return bucket_edges(list(src), list(dst), list(t), label=list(label), source="timeline", **kwargs)


def _as_dict(graph: DynamicGraph, t: int, labels: bool = False) -> dict[tuple[int, int], float]:
    ei = graph.edge_indices[t]
    values = graph.edge_labels[t] if labels else graph.edge_weights[t]
    return {(int(u), int(v)): float(w) for u, v, w in zip(ei[0], ei[1], values, strict=True)}


def _reference_buckets(src, dst, t, weight, step_size, window):
    """Per-edge loop: snapshot s holds the raw edges of steps s-w+1..s, weights summed."""
    t_min = min(t)
    steps = [math.floor((ti - t_min) / step_size) for ti in t]
    count = max(steps) + 1
    snaps = [defaultdict(float) for _ in range(count)]
    for u, v, s, w in zip(src, dst, steps, weight, strict=True):
        for target in range(s, min(s + window, count)):
            snaps[target][(u, v)] += w
    return [dict(s) for s in snaps]


def test_bucket_edges_timeline_window_1_exact_snapshots():
    g = _timeline(step_size=1.0)
    assert g.num_snapshots == len(g) == 5 and g.num_nodes == 3
    assert [_as_dict(g, t) for t in range(5)] == [
        {(0, 1): 1.0},
        {(0, 1): 1.0, (2, 0): 1.0},
        {},
        {(1, 2): 1.0},
        {(0, 1): 1.0},
    ]
    # Canonical order: key row*N+col -> (0,1)=1 before (2,0)=6.
    assert g.edge_indices[1].tolist() == [[0, 2], [1, 0]]
    assert g.edge_labels[1].tolist() == [-1, 1]
    assert g.num_edges == 5
    torch.testing.assert_close(g.snapshot_times, torch.arange(5, dtype=torch.float64))


def test_bucket_edges_timeline_windows_exact_snapshots():
    g2 = _timeline(step_size=1.0, window=2)
    assert [_as_dict(g2, t) for t in range(5)] == [
        {(0, 1): 1.0},
        {(0, 1): 2.0, (2, 0): 1.0},
        {(0, 1): 1.0, (2, 0): 1.0},
        {(1, 2): 1.0},
        {(0, 1): 1.0, (1, 2): 1.0},
    ]
    # (0,1) in snapshot 1 merges labels +1 and -1: majority vote is a tie -> 0.
    assert _as_dict(g2, 1, labels=True) == {(0, 1): 0.0, (2, 0): 1.0}
    g3 = _timeline(step_size=1.0, window=3)
    assert [_as_dict(g3, t) for t in range(5)] == [
        {(0, 1): 1.0},
        {(0, 1): 2.0, (2, 0): 1.0},
        {(0, 1): 2.0, (2, 0): 1.0},
        {(0, 1): 1.0, (2, 0): 1.0, (1, 2): 1.0},
        {(0, 1): 1.0, (1, 2): 1.0},
    ]
    # with_window on the raw snapshots is a second route to the same graph.
    assert _timeline(step_size=1.0).with_window(3) == g3


def test_bucket_edges_timeline_num_steps():
    g = _timeline(num_steps=2)  # span 4 -> width 2; t=4.0 goes to the last step
    assert g.num_snapshots == 2
    assert [_as_dict(g, t) for t in range(2)] == [{(0, 1): 2.0, (2, 0): 1.0}, {(0, 1): 1.0, (1, 2): 1.0}]
    assert _timeline(num_steps=7).num_snapshots == 7  # empty steps are kept


@pytest.mark.parametrize("window", [1, 2, 5])
def test_bucket_edges_matches_per_edge_loop(window):
    gen = torch.Generator().manual_seed(window)
    e, n = 400, 13
    src = torch.randint(n, (e,), generator=gen).tolist()
    dst = torch.randint(n, (e,), generator=gen).tolist()
    t = (torch.rand(e, generator=gen, dtype=torch.float64) * 50 + 1e9).tolist()
    w = torch.randint(1, 4, (e,), generator=gen).float().tolist()
    g = bucket_edges(src, dst, t, weight=w, num_nodes=n, step_size=3.0, window=window)
    ref = _reference_buckets(src, dst, t, w, 3.0, window)
    assert g.num_snapshots == len(ref)
    for s in range(len(ref)):
        assert _as_dict(g, s) == pytest.approx(ref[s])
    g.validate()


def test_coalesce_edges_sorts_and_merges():
    ei = torch.tensor([[2, 0, 2, 1, 0], [1, 3, 1, 0, 3]])
    merged = coalesce_edges(ei, 4, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([1, -1, 1, 1, -1]))
    assert merged.edge_index.tolist() == [[0, 1, 2], [3, 0, 1]]
    assert merged.edge_weight.tolist() == [7.0, 4.0, 4.0]
    assert merged.edge_label.tolist() == [-1, 1, 1]
    plain = coalesce_edges(ei, 4)
    assert plain.edge_weight is None and plain.edge_index.tolist() == [[0, 1, 2], [3, 0, 1]]


def _rich_graph(static_x: bool = False) -> DynamicGraph:
    g = _timeline(step_size=1.0, window=2)
    t_count, n = g.num_snapshots, g.num_nodes
    x = torch.randn(n, 3) if static_x else torch.randn(t_count, n, 3)
    return DynamicGraph(
        num_nodes=n,
        edge_indices=g.edge_indices,
        edge_weights=g.edge_weights,
        edge_labels=g.edge_labels,
        x=x,
        y=torch.randn(t_count, n),
    ).validate()


@pytest.mark.parametrize("static_x", [False, True])
def test_pyg_round_trip(static_x):
    g = _rich_graph(static_x)
    data = g.to_pyg_list()
    assert len(data) == g.num_snapshots
    d1 = data[1]
    assert d1.num_nodes == 3 and torch.equal(d1.edge_index, g.edge_indices[1])
    assert torch.equal(d1.edge_weight, g.edge_weights[1]) and torch.equal(d1.edge_label, g.edge_labels[1])
    assert torch.equal(d1.x, g.x if static_x else g.x[1]) and torch.equal(d1.y, g.y[1])
    back = DynamicGraph.from_pyg_list(data)
    assert back == g
    assert (back.x.dim() == 2) == static_x
    assert torch.equal(g[-1].edge_index, g.edge_indices[-1])
    with pytest.raises(IndexError):
        g[5]


def test_from_pyg_list_canonicalises_unsorted_duplicates():
    from torch_geometric.data import Data

    raw = Data(edge_index=torch.tensor([[2, 0, 2], [1, 1, 1]]), edge_weight=torch.tensor([1.0, 1.0, 2.0]), num_nodes=3)
    g = DynamicGraph.from_pyg_list([raw])
    assert g.edge_indices[0].tolist() == [[0, 2], [1, 1]] and g.edge_weights[0].tolist() == [1.0, 3.0]


def test_from_temporal_data_matches_bucket_edges():
    from torch_geometric.data import TemporalData

    src, dst, t, label = (torch.tensor(c) for c in zip(*TIMELINE, strict=True))
    td = TemporalData(src=src, dst=dst, t=t, msg=torch.zeros(5, 1), y=label)
    g = DynamicGraph.from_temporal_data(td, step_size=1.0, window=2, label_attr="y")
    assert g == _timeline(step_size=1.0, window=2)
    g_steps = DynamicGraph.from_temporal_data(td, num_steps=2)
    assert [_as_dict(g_steps, s) for s in range(2)] == [{(0, 1): 2.0, (2, 0): 1.0}, {(0, 1): 1.0, (1, 2): 1.0}]


def test_validate_rejects_non_canonical_and_bad_shapes():
    with pytest.raises(DataError, match="canonical order"):
        DynamicGraph(num_nodes=3, edge_indices=[torch.tensor([[2, 0], [1, 1]])]).validate()
    with pytest.raises(DataError, match="canonical order"):
        DynamicGraph(num_nodes=3, edge_indices=[torch.tensor([[0, 0], [1, 1]])]).validate()  # duplicate
    with pytest.raises(DataError, match=r"outside \[0, 3\)"):
        DynamicGraph(num_nodes=3, edge_indices=[torch.tensor([[0], [3]])]).validate()
    with pytest.raises(DataError, match=r"edge_weights\[0\]"):
        DynamicGraph(num_nodes=3, edge_indices=[torch.tensor([[0], [1]])], edge_weights=[torch.ones(2)]).validate()
    with pytest.raises(DataError, match="x must have shape"):
        DynamicGraph(num_nodes=3, edge_indices=[torch.tensor([[0], [1]])], x=torch.ones(2, 4)).validate()


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"src": [], "dst": [], "t": [], "step_size": 1.0, "source": "my.csv"}, DataError, "my.csv: no edges"),
        ({"window": 0, "step_size": 1.0}, ConfigError, "window must be an int >= 1"),
        ({}, ConfigError, "exactly one of num_steps or step_size"),
        ({"num_steps": 2, "step_size": 1.0}, ConfigError, "exactly one of num_steps or step_size"),
        ({"step_size": -1.0}, ConfigError, "step_size must be > 0"),
        ({"src": [0, -2], "step_size": 1.0}, DataError, "negative node id -2"),
        ({"num_nodes": 2, "step_size": 1.0}, DataError, "node id 3 out of range for num_nodes=2"),
        ({"dst": [1], "step_size": 1.0}, DataError, "differ in length"),
    ],
)
def test_bucket_edges_errors_are_one_line(kwargs, error, pattern):
    args = {"src": [0, 1], "dst": [3, 0], "t": [0.0, 1.0]}
    args.update(kwargs)
    with pytest.raises(error, match=pattern) as info:
        bucket_edges(**args)
    assert "\n" not in str(info.value)


def test_time_steps_closed_last_interval_and_constant_times():
    steps, count, starts = time_steps(torch.tensor([0.0, 5.0, 10.0]), num_steps=4)
    assert steps.tolist() == [0, 2, 3] and count == 4
    torch.testing.assert_close(starts, torch.tensor([0.0, 2.5, 5.0, 7.5], dtype=torch.float64))
    steps, count, _ = time_steps(torch.tensor([7.0, 7.0]), num_steps=3)
    assert steps.tolist() == [0, 0] and count == 3


def test_keys_and_repr():
    g = _timeline(step_size=1.0)
    assert g.keys(1).tolist() == [1, 6]
    assert "num_snapshots=5" in repr(g) and "num_edges=5" in repr(g)
    assert g.num_edges_per_snapshot == [1, 2, 0, 1, 1]
