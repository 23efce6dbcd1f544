"""Synthetic dynamic graphs: determinism, measured churn, streaming == in-memory, windows, learnable signal.

Independent references: set arithmetic on Python sets of (u, v) pairs (churn, Jaccard, window sums as a
Counter over raw steps), a Mann-Whitney AUC computed with a plain pairwise loop.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.synthetic import (
    _merge_sorted_disjoint,
    _sample_new_keys,
    iter_synthetic_snapshots,
    power_law_weights,
    synthetic_dynamic_graph,
    synthetic_link_graph,
)
from tests.helpers import SYNTHETIC_ARGS


def _pairs(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def test_seeded_determinism():
    a = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.1, num_features=3, seed=7)
    b = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.1, num_features=3, seed=7)
    c = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.1, num_features=3, seed=8)
    assert a == b
    assert a != c
    state = torch.random.get_rng_state()
    synthetic_dynamic_graph(**SYNTHETIC_ARGS, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


@pytest.mark.parametrize("churn", [0.0, 0.05, 0.25])
def test_measured_churn_equals_requested(churn):
    g = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=churn, seed=3)
    e = SYNTHETIC_ARGS["edges_per_snapshot"]
    k = round(churn * e)
    for t in range(g.num_snapshots):
        pairs = _pairs(g.edge_indices[t])
        assert len(pairs) == g.edge_indices[t].shape[1] == e  # exactly E distinct edges
        assert all(u != v for u, v in pairs)
    for t in range(1, g.num_snapshots):
        prev, cur = _pairs(g.edge_indices[t - 1]), _pairs(g.edge_indices[t])
        assert len(prev - cur) / e == pytest.approx(churn, abs=0.5 / e)
        assert len(cur - prev) == len(prev - cur) == k
        assert len(prev & cur) / len(prev | cur) == pytest.approx((e - k) / (e + k))  # Jaccard


@pytest.mark.parametrize("window", [1, 3])
def test_streaming_equals_in_memory(window):
    g = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.1, window=window, seed=5)
    streamed = list(iter_synthetic_snapshots(**SYNTHETIC_ARGS, churn=0.1, window=window, seed=5))
    assert len(streamed) == g.num_snapshots
    for t, snap in enumerate(streamed):
        assert torch.equal(snap.edge_index, g.edge_indices[t])
        if window > 1:
            assert torch.equal(snap.edge_weight, g.edge_weights[t])
        else:
            assert g.edge_weights is None and torch.equal(snap.edge_weight, torch.ones(snap.edge_index.shape[1]))


def test_window_sums_raw_steps():
    w = 3
    raw = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.2, seed=2)
    windowed = synthetic_dynamic_graph(**SYNTHETIC_ARGS, churn=0.2, window=w, seed=2)
    for t in range(raw.num_snapshots):
        want = Counter()
        for s in range(max(0, t - w + 1), t + 1):
            want.update(_pairs(raw.edge_indices[s]))
        ei, wt = windowed.edge_indices[t], windowed.edge_weights[t]
        got = {(int(u), int(v)): float(c) for u, v, c in zip(ei[0], ei[1], wt, strict=True)}
        assert got == {p: float(c) for p, c in want.items()}
    assert raw.with_window(w) == windowed  # the container's window gives the same graph
    windowed.validate()


def test_streaming_is_lazy_for_huge_sequences():
    # 10^9 snapshots of 2000 edges would not fit in memory; the generator only computes what is consumed.
    stream = iter_synthetic_snapshots(num_nodes=500, num_snapshots=10**9, edges_per_snapshot=2000, churn=0.05)
    first = list(itertools.islice(stream, 3))
    assert [s.edge_index.shape[1] for s in first] == [2000, 2000, 2000]


def test_power_law_degrees_are_heavy_tailed():
    cdf = power_law_weights(1000, 2.1)
    assert cdf[-1] == pytest.approx(1.0) and bool((cdf[1:] > cdf[:-1]).all())
    g = synthetic_dynamic_graph(num_nodes=2000, num_snapshots=1, edges_per_snapshot=10_000, seed=0)
    degree = torch.bincount(g.edge_indices[0].flatten(), minlength=2000).float()
    assert degree.max() > 20 * degree.mean()  # hubs
    assert degree.median() < 0.6 * degree.mean()  # and most nodes well below the mean


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"churn": 1.5}, "churn must be in"),
        ({"window": 0}, "window must be"),
        ({"edges_per_snapshot": 10**9}, "edges_per_snapshot must be"),
        ({"power_law": 1.0}, "power_law must be > 1"),
        ({"num_nodes": 50, "power_law": 1.2}, "too dense for this power law"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    args = {**SYNTHETIC_ARGS, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        synthetic_dynamic_graph(**args)


def _auc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_link_graph_next_step_is_predictable():
    g = synthetic_link_graph(num_nodes=120, num_snapshots=6, edges_per_snapshot=500, persistence=0.7, seed=1)
    assert g == synthetic_link_graph(num_nodes=120, num_snapshots=6, edges_per_snapshot=500, persistence=0.7, seed=1)
    community = g.y[0]
    assert g.y.shape == (6, 120) and torch.equal(community, torch.arange(120) % 4)
    for c in range(4):  # features: one-hot community + zero-mean noise
        want = torch.nn.functional.one_hot(torch.tensor(c), 8).float()
        torch.testing.assert_close(g.x[community == c].mean(0), want, atol=0.25, rtol=0)
    gen = torch.Generator().manual_seed(0)
    for t in range(g.num_snapshots - 1):
        prev, nxt = _pairs(g.edge_indices[t]), _pairs(g.edge_indices[t + 1])
        assert len(prev & nxt) / len(prev) == pytest.approx(0.7, abs=0.07)  # persistence
        neg = []
        while len(neg) < 200:
            u, v = torch.randint(120, (2,), generator=gen).tolist()
            if u != v and (u, v) not in nxt:
                neg.append((u, v))

        def score(pair, prev=prev):
            return 1.0 if pair in prev else (0.5 if community[pair[0]] == community[pair[1]] else 0.0)

        pos = sorted(nxt)[:200]
        assert _auc([score(p) for p in pos], [score(n) for n in neg]) > 0.85
    g.validate()


def test_merge_of_disjoint_sorted_keys_equals_sorting_them():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randperm(1000, generator=gen)[:300]
    for split in (0, 1, 150, 299, 300):
        a, b = torch.sort(keys[:split]).values, torch.sort(keys[split:]).values
        assert torch.equal(_merge_sorted_disjoint(a, b), torch.sort(keys).values)


def _reference_new_keys(count, cdf, num_nodes, forbidden, gen):
    """Plain-Python reference of the draw: the same random numbers per round, kept in draw order with a set."""
    seen, chosen = set(forbidden.tolist()), []
    while len(chosen) < count:
        draw = 2 * (count - len(chosen)) + 16
        uv = torch.searchsorted(cdf, torch.rand(2, draw, dtype=torch.float64, generator=gen), right=True)
        for u, v in zip(*uv.clamp(max=num_nodes - 1).tolist(), strict=True):
            if u != v and u * num_nodes + v not in seen:
                seen.add(u * num_nodes + v)
                chosen.append(u * num_nodes + v)
        chosen = chosen[:count]
    return chosen


@pytest.mark.parametrize("forbidden_size", [0, 150])
def test_new_edges_are_the_first_distinct_unforbidden_draws(forbidden_size):
    """Same keys, same order as drawing one pair at a time and skipping repeats and forbidden pairs."""
    n, cdf = 30, power_law_weights(30)
    forbidden = torch.sort(torch.randperm(n * n, generator=torch.Generator().manual_seed(1))[:forbidden_size]).values
    got = _sample_new_keys(200, cdf, n, forbidden, torch.Generator().manual_seed(5))
    assert got.tolist() == _reference_new_keys(200, cdf, n, forbidden, torch.Generator().manual_seed(5))
