r"""Synthetic dynamic graphs: controlled churn for the graph-difference/transfer benchmarks, and a graph with a
learnable link signal for training tests.

**Churn model** (:func:`iter_synthetic_snapshots`, :func:`synthetic_dynamic_graph`). A Chung-Lu style
power-law base graph: node ``i`` has weight ``p_i \propto (i + 1)^{-1/(\gamma - 1)}``, which gives a degree
distribution with tail exponent ``\gamma`` (``power_law``); ``E`` distinct directed edges without self-loops are
drawn with both endpoints sampled from ``p``. Each following step deletes ``k = round(churn * E)`` edges chosen
uniformly at random and inserts ``k`` new edges drawn from the same distribution that were *not* in the previous
step's edge set. So every raw step has exactly ``E`` edges and consecutive raw steps satisfy

.. math::
    |A_{t-1} \setminus A_t| = |A_t \setminus A_{t-1}| = k, \qquad J(A_{t-1}, A_t) = \frac{E - k}{E + k}.

An edge-life window ``w`` then sums the raw steps ``t-w+1 .. t`` (as :func:`~lit_efficiency.dyn_gnn.graph.bucket_edges`
does). Everything is drawn from one ``torch.Generator`` seeded with ``seed``, so the output is deterministic,
and the streaming generator keeps only the last ``w`` raw edge sets: memory ``O(w * E)``, independent of the
number of snapshots (so it can emit more edges in total than fit in memory).

**Streaming source** (:class:`StreamingChurnSource`): the churn model as a data-module source that is never
materialised: :class:`~lit_efficiency.dyn_gnn.streaming.StreamingSnapshotDataModule` reads it snapshot by snapshot
and encodes it as it goes (the billion-edge configuration ``conf/dyn_gnn/scale_1b.yaml``).

**Learnable signal** (:func:`synthetic_link_graph`): planted communities plus persistence; see its docstring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.adjacency import edge_key, match_sorted, split_key
from lit_efficiency.dyn_gnn.graph import DynamicGraph
from lit_efficiency.dyn_gnn.sources import SyntheticChurnSource

__all__ = [
    "EdgeSnapshot",
    "StreamingChurnSource",
    "iter_synthetic_snapshots",
    "power_law_weights",
    "synthetic_dynamic_graph",
    "synthetic_link_graph",
]

#: Largest node count for which the int64 key ``row * N + col`` cannot overflow.
_MAX_NODES = 3_037_000_499
#: Rejection-sampling rounds before giving up on drawing new distinct edges (dense graphs, steep power laws).
_MAX_ROUNDS = 100


class EdgeSnapshot(NamedTuple):
    """One streamed snapshot: canonical edges (sorted by ``row * N + col``) and their weights."""

    edge_index: Tensor
    """(2, E_t) long."""
    edge_weight: Tensor
    """(E_t,) float32: the number of raw steps of the window holding the edge (all ones for ``window=1``)."""


def _check_args(num_nodes: int, num_snapshots: int, edges_per_snapshot: int, churn: float, window: int) -> None:
    if not isinstance(num_nodes, int) or num_nodes < 2 or num_nodes > _MAX_NODES:
        raise ConfigError(f"num_nodes must be an int in [2, {_MAX_NODES}], got {num_nodes!r}")
    if not isinstance(num_snapshots, int) or num_snapshots < 1:
        raise ConfigError(f"num_snapshots must be an int >= 1, got {num_snapshots!r}")
    max_edges = num_nodes * (num_nodes - 1)
    if not isinstance(edges_per_snapshot, int) or not 1 <= edges_per_snapshot <= max_edges // 2:
        raise ConfigError(
            f"edges_per_snapshot must be an int in [1, {max_edges // 2}] (half of all N(N-1) pairs, so that "
            f"new edges can be found), got {edges_per_snapshot!r}"
        )
    if not 0.0 <= churn <= 1.0:
        raise ConfigError(f"churn must be in [0, 1], got {churn!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, got {window!r}")


def power_law_weights(num_nodes: int, power_law: float = 2.1) -> Tensor:
    r"""Chung-Lu node weights ``p_i \propto (i + 1)^{-1/(\gamma - 1)}`` (normalised cumulative sums).

    Args:
        num_nodes: ``N``.
        power_law: degree-tail exponent ``\gamma > 1``.

    Returns:
        (N,) float64 CDF (last entry 1), for inverse-CDF sampling with ``searchsorted``.
    """
    if not power_law > 1.0:
        raise ConfigError(f"power_law must be > 1, got {power_law!r}")
    exponent = -1.0 / (power_law - 1.0)
    weights = torch.arange(1, num_nodes + 1, dtype=torch.float64).pow(exponent)
    cdf = torch.cumsum(weights, 0)
    return cdf / cdf[-1]


def _sample_new_keys(count: int, cdf: Tensor, num_nodes: int, forbidden: Tensor, gen: torch.Generator) -> Tensor:
    """Draw ``count`` distinct keys ``u * N + v`` (u != v) not in the sorted ``forbidden`` keys, in draw order."""
    chosen = torch.zeros(0, dtype=torch.long)
    stalled = 0
    for _ in range(_MAX_ROUNDS):
        if chosen.numel() >= count or stalled >= 5:
            break
        before = chosen.numel()
        need = count - chosen.numel()
        draw = 2 * need + 16  # oversample: some draws are self-loops or repeats
        uv = torch.searchsorted(cdf, torch.rand(2, draw, dtype=torch.float64, generator=gen), right=True)
        uv.clamp_(max=num_nodes - 1)
        keys = edge_key(uv[0], uv[1], num_nodes)
        keys = torch.cat([chosen, keys[uv[0] != uv[1]]])
        # Keep the first occurrence of each key, in draw order (taking the smallest keys would bias the sample).
        uniq, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), reduce="amin")
        # Forbidden keys are dropped after ``unique``: its sorted output makes the search cache-friendly (5x faster
        # than searching the keys in draw order) and removing them keeps the draw order of the others.
        fresh = ~match_sorted(forbidden, uniq)[1]
        chosen = keys[torch.sort(first[fresh]).values][:count]
        # Stalled: a round added under 0.1% of what was missing (a dense graph, or a very steep power law).
        stalled = stalled + 1 if chosen.numel() - before < max(1, need // 1000) else 0
    if chosen.numel() < count:
        raise ConfigError(
            f"could not draw {count} new distinct edges (after {chosen.numel()}): the graph is too dense for this "
            "power law (lower edges_per_snapshot or churn, or raise num_nodes or power_law)"
        )
    return chosen


def _merge_sorted_disjoint(a: Tensor, b: Tensor) -> Tensor:
    """Sorted union of two sorted key arrays with no key in common: ``torch.sort(torch.cat([a, b]))`` without the
    sort (``b[j]`` lands after the ``j`` smaller entries of ``b`` and the entries of ``a`` below it; ``a`` fills the
    remaining slots in order). ``O(|a| + |b| log |a|)``: at ``10^7`` keys about 5x faster than sorting them again.

    Shapes:
        a ``(A,)``, b ``(B,)`` -> ``(A + B,)``.
    """
    pos = torch.searchsorted(a, b) + torch.arange(b.numel())
    out = torch.empty(a.numel() + b.numel(), dtype=a.dtype)
    free = torch.ones(out.numel(), dtype=torch.bool)
    free[pos] = False
    out[pos] = b
    out[free] = a
    return out


def _raw_key_sets(
    num_nodes: int,
    num_snapshots: int,
    edges_per_snapshot: int,
    churn: float,
    power_law: float,
    gen: torch.Generator,
) -> Iterator[Tensor]:
    """Yield each raw step's sorted unique edge keys (exactly ``edges_per_snapshot`` of them)."""
    cdf = power_law_weights(num_nodes, power_law)
    keys = torch.sort(_sample_new_keys(edges_per_snapshot, cdf, num_nodes, torch.zeros(0, dtype=torch.long), gen))
    keys = keys.values
    k = round(churn * edges_per_snapshot)
    yield keys
    for _ in range(1, num_snapshots):
        if k:
            drop = torch.randperm(keys.numel(), generator=gen)[:k]
            keep = torch.ones(keys.numel(), dtype=torch.bool)
            keep[drop] = False
            added = _sample_new_keys(k, cdf, num_nodes, keys, gen)
            keys = _merge_sorted_disjoint(keys[keep], torch.sort(added).values)
        yield keys


def iter_synthetic_snapshots(
    num_nodes: int,
    num_snapshots: int,
    edges_per_snapshot: int,
    churn: float = 0.05,
    window: int = 1,
    power_law: float = 2.1,
    seed: int = 0,
) -> Iterator[EdgeSnapshot]:
    """Stream the snapshots of the churn model one at a time (memory ``O(window * edges_per_snapshot)``).

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: ``E``, distinct edges of every raw step.
        churn: fraction of the edges replaced at every step.
        window: edge-life window ``w`` (snapshot ``t`` sums raw steps ``t-w+1 .. t``).
        power_law: degree-tail exponent of the base graph.
        seed: seed of the private ``torch.Generator`` (global RNG state is not touched).

    Yields:
        :class:`EdgeSnapshot` in canonical order, ``T`` times.

    Shapes:
        - edge_index: ``(2, E_t)`` with ``E_t = E`` for ``window=1``, ``E <= E_t <= w * E`` otherwise.
    """
    _check_args(num_nodes, num_snapshots, edges_per_snapshot, churn, window)
    gen = torch.Generator().manual_seed(seed)
    recent: deque[Tensor] = deque(maxlen=window)
    for keys in _raw_key_sets(num_nodes, num_snapshots, edges_per_snapshot, churn, power_law, gen):
        recent.append(keys)
        if window == 1:
            merged, weight = keys, torch.ones(keys.numel(), dtype=torch.float32)
        else:
            merged, counts = torch.unique(torch.cat(list(recent)), return_counts=True)
            weight = counts.to(torch.float32)
        edge_index = torch.stack(split_key(merged, num_nodes))
        yield EdgeSnapshot(edge_index, weight)


def synthetic_dynamic_graph(
    num_nodes: int,
    num_snapshots: int,
    edges_per_snapshot: int,
    churn: float = 0.05,
    window: int = 1,
    power_law: float = 2.1,
    num_features: int = 0,
    seed: int = 0,
) -> DynamicGraph:
    """The churn-model dynamic graph in memory (the same snapshots as :func:`iter_synthetic_snapshots`).

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: ``E`` per raw step.
        churn: fraction of edges replaced per step.
        window: edge-life window ``w``.
        power_law: degree-tail exponent.
        num_features: ``F``; when > 0, static standard-normal node features ``x`` of shape ``(N, F)`` drawn after
            the edges from the same generator.
        seed: seed.

    Returns:
        DynamicGraph; ``edge_weights`` is ``None`` for ``window=1`` (every weight would be 1), else window counts.
    """
    edge_indices, weights = [], []
    snapshots = iter_synthetic_snapshots(num_nodes, num_snapshots, edges_per_snapshot, churn, window, power_law, seed)
    for snap in snapshots:
        edge_indices.append(snap.edge_index)
        weights.append(snap.edge_weight)
    x = None
    if num_features > 0:
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(num_nodes, num_features, generator=gen)
    return DynamicGraph(
        num_nodes=num_nodes,
        edge_indices=edge_indices,
        edge_weights=weights if window > 1 else None,
        x=x,
        name=f"synthetic(N={num_nodes}, T={num_snapshots}, E={edges_per_snapshot}, churn={churn}, w={window})",
    ).validate()


class StreamingChurnSource(SyntheticChurnSource):
    """The churn model as a *streaming* source: its snapshots are read one at a time, never as a whole graph.

    Same graph (same seed, same snapshots) as :class:`~lit_efficiency.dyn_gnn.sources.SyntheticChurnSource`, which
    it extends with :meth:`iter_snapshots` and with edge counts known without generating anything (every raw step
    has exactly ``edges_per_snapshot`` edges). A streamed data module with this source holds only the diff-encoded
    model snapshots and a capped sample of target edges (see
    :class:`~lit_efficiency.dyn_gnn.streaming.StreamingSnapshotDataModule`); :meth:`load` still builds the whole
    graph for the other storages.

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: ``E``, distinct edges per step.
        churn: fraction of edges replaced per step.
        num_node_features: static node features when loaded whole; the streamed path has none and needs 0 (the
            model then learns node embeddings).
        power_law: degree-tail exponent.
        seed: seed.
    """

    streams_snapshots = True

    def __init__(
        self,
        num_nodes: int = 200,
        num_snapshots: int = 12,
        edges_per_snapshot: int = 800,
        churn: float = 0.3,
        num_node_features: int = 8,
        power_law: float = 2.1,
        seed: int = 0,
    ) -> None:
        _check_args(num_nodes, num_snapshots, edges_per_snapshot, churn, 1)
        super().__init__(num_nodes, num_snapshots, edges_per_snapshot, churn, num_node_features, power_law, seed)

    @property
    def name(self) -> str:
        return "synthetic_stream"

    def edge_counts(self, window: int) -> list[int]:
        """Edges of every model snapshot; for ``window=1`` from the model (``E`` each), not by generating."""
        if window == 1:
            return [self.edges_per_snapshot] * self.num_snapshots
        return super().edge_counts(window)

    def iter_snapshots(self) -> Iterator[EdgeSnapshot]:
        """The raw snapshots (``window=1``), generated one at a time in order."""
        return self._stream(1)


def synthetic_link_graph(
    num_nodes: int = 200,
    num_snapshots: int = 12,
    edges_per_snapshot: int = 800,
    num_communities: int = 4,
    persistence: float = 0.7,
    p_intra: float = 0.9,
    num_features: int = 8,
    feature_noise: float = 0.5,
    seed: int = 0,
) -> DynamicGraph:
    r"""A dynamic graph whose next-step links are predictable: planted communities + edge persistence.

    Nodes are split into ``C`` communities (``c(u) = u mod C``). Every step has ``E`` distinct directed edges
    without self-loops:

    - each edge of step ``t`` survives into ``t + 1`` with probability ``persistence`` (independently);
    - the rest are refilled with new edges, a fraction ``p_intra`` of them between two nodes of the same
      community (else between different communities), endpoints uniform.

    The signal a model can learn: ``P[(u, v) \in A_{t+1} | (u, v) \in A_t] \approx`` ``persistence``, and an
    absent pair is ``\approx p_{intra} C / (1 - p_{intra})`` times more likely to appear inside a community
    than across. Communities are visible in the features ``x[u] = onehot_F(c(u)) + feature_noise * noise``
    (``F >= C``) and in ``y[t, u] = c(u)`` (long, a node-classification target). A predictor scoring
    ``1`` for edges of ``A_t``, ``0.5`` for same-community pairs and ``0`` otherwise reaches a high AUC (tested).

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: ``E``.
        num_communities: ``C``.
        persistence: probability that an edge survives one step.
        p_intra: fraction of new edges inside a community.
        num_features: ``F`` (``>= C``), 0 for no features.
        feature_noise: standard deviation of the Gaussian noise added to the one-hot community features.
        seed: seed of a private generator.

    Returns:
        DynamicGraph with ``x`` ``(N, F)`` (or ``None``) and ``y`` ``(T, N)``.
    """
    if num_communities < 1 or num_nodes < 2 * num_communities:
        raise ConfigError(f"num_communities must be in [1, num_nodes / 2], got {num_communities!r}")
    if not 0.0 <= persistence <= 1.0 or not 0.0 <= p_intra <= 1.0:
        raise ConfigError(f"persistence and p_intra must be in [0, 1], got {persistence!r}, {p_intra!r}")
    if 0 < num_features < num_communities:
        raise ConfigError(f"num_features must be 0 or >= num_communities={num_communities}, got {num_features!r}")
    _check_args(num_nodes, num_snapshots, edges_per_snapshot, 0.0, 1)
    size = num_nodes // num_communities  # smallest community size (c(u) = u mod C)
    if edges_per_snapshot > num_communities * size * (size - 1) // 2:
        raise ConfigError(f"edges_per_snapshot={edges_per_snapshot} too large for {num_communities} communities")
    gen = torch.Generator().manual_seed(seed)
    community = torch.arange(num_nodes) % num_communities
    members = [torch.nonzero(community == c).squeeze(1) for c in range(num_communities)]

    def draw(count: int, forbidden: Tensor) -> Tensor:
        chosen = torch.zeros(0, dtype=torch.long)
        while chosen.numel() < count:
            draw_n = 2 * (count - chosen.numel()) + 16
            intra = torch.rand(draw_n, generator=gen) < p_intra
            u = torch.randint(num_nodes, (draw_n,), generator=gen)
            # Intra: partner from u's community; inter: any node of another community.
            c_u = community[u]
            idx = torch.randint(size, (draw_n,), generator=gen)
            partner_intra = torch.stack([members[c][:size] for c in range(num_communities)])[c_u, idx]
            shift = torch.randint(1, num_communities, (draw_n,), generator=gen) if num_communities > 1 else None
            if shift is not None:
                other = (c_u + shift) % num_communities
                partner_inter = torch.stack([members[c][:size] for c in range(num_communities)])[other, idx]
            else:
                partner_inter = partner_intra
            v = torch.where(intra, partner_intra, partner_inter)
            keys = edge_key(u, v, num_nodes)
            keys = keys[u != v]
            bad = torch.isin(keys, forbidden) | torch.isin(keys, chosen)
            keys = keys[~bad]
            uniq, inverse = torch.unique(keys, return_inverse=True)
            first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(keys.numel()), reduce="amin")
            chosen = torch.cat([chosen, keys[torch.sort(first).values]])[:count]
        return chosen

    keys = torch.sort(draw(edges_per_snapshot, torch.zeros(0, dtype=torch.long))).values
    all_keys = [keys]
    for _ in range(1, num_snapshots):
        survive = keys[torch.rand(keys.numel(), generator=gen) < persistence]
        # New edges avoid the whole previous set, so the survival rate is exactly what was drawn.
        added = draw(edges_per_snapshot - survive.numel(), keys)
        keys = torch.sort(torch.cat([survive, added])).values
        all_keys.append(keys)
    edge_indices = [torch.stack(split_key(k, num_nodes)) for k in all_keys]
    x = None
    if num_features > 0:
        x = torch.zeros(num_nodes, num_features)
        x[torch.arange(num_nodes), community] = 1.0
        x += feature_noise * torch.randn(num_nodes, num_features, generator=gen)
    return DynamicGraph(
        num_nodes=num_nodes,
        edge_indices=edge_indices,
        x=x,
        y=community.unsqueeze(0).expand(num_snapshots, num_nodes).clone(),
        name=f"synthetic_link(N={num_nodes}, T={num_snapshots}, C={num_communities})",
    ).validate()
