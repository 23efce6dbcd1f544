r"""Discrete-time dynamic graphs: a container of snapshots and time bucketing of timestamped edges.

A dynamic graph is a sequence of ``T`` snapshots ``G_t = (A_t, X_t)`` over one vertex set of size ``N``
(see ``docs/dynamic_gnn.md`` §1 and EvolveGCN, Pareja et al., AAAI 2020, https://arxiv.org/abs/1902.10191).
Snapshots are built from timestamped edges by **time bucketing** (step ``s = floor((t - t_min) / step)``,
as in EvolveGCN's ``aggregate_by_time``) with an optional **edge-life window** ``w`` (snapshot ``t`` holds the
raw edges of steps ``t-w+1 .. t``, weights summed, as in the TM-GCN code).

Canonical edge order inside a snapshot (the invariant :meth:`DynamicGraph.validate` checks and every
constructor here establishes): edges are sorted by the key ``row * N + col`` (row-major, i.e. CSR order)
and duplicate ``(row, col)`` pairs are merged into one edge, their weights summed and their signed labels
merged by majority vote (``sign`` of the sum). Sorted unique keys are exactly what the graph-difference
encoding (``docs/dynamic_gnn.md`` §3) needs: ``Δ+`` and ``Δ-`` are set differences of sorted key arrays.

Pure PyTorch; ``torch_geometric`` is imported only by the PyG conversion methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.adjacency import edge_key, split_key

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch_geometric.data import Data, TemporalData

__all__ = ["CoalescedEdges", "DynamicGraph", "bucket_edges", "coalesce_edges", "time_steps"]


class CoalescedEdges(NamedTuple):
    """One snapshot's edges in canonical order (sorted by ``row * N + col``, duplicates merged)."""

    edge_index: Tensor
    """(2, E) long."""
    edge_weight: Tensor | None
    """(E,) summed weights of the merged duplicates, or ``None`` when no weights were given."""
    edge_label: Tensor | None
    """(E,) ``sign`` of the summed labels of the merged duplicates (majority vote), or ``None``."""


def _merge_sorted(
    keys: Tensor, weight: Tensor | None, label: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Merge runs of equal values in an already sorted key vector.

    Returns the unique keys, the group id of every input entry, and the per-group weight sums and label signs.
    """
    if keys.numel() == 0:
        uniq = keys
        group = keys
    else:
        uniq, group = torch.unique_consecutive(keys, return_inverse=True)
    n = uniq.numel()
    w_out = None
    if weight is not None:
        w_out = torch.zeros(n, dtype=weight.dtype).index_add_(0, group, weight)
    l_out = None
    if label is not None:
        acc = torch.zeros(n, dtype=torch.float64).index_add_(0, group, label.to(torch.float64))
        l_out = torch.sign(acc).to(label.dtype)
    return uniq, group, w_out, l_out


def coalesce_edges(
    edge_index: Tensor,
    num_nodes: int,
    edge_weight: Tensor | None = None,
    edge_label: Tensor | None = None,
) -> CoalescedEdges:
    r"""Put one snapshot's edges in canonical order: sort by ``row * N + col``, merge duplicates.

    .. math::
        k_e = r_e N + c_e, \qquad w_k = \sum_{e: k_e = k} w_e, \qquad \ell_k = \operatorname{sign}\Big(\sum_{e: k_e = k}
        \ell_e\Big)

    Without weights duplicates collapse to one edge (set semantics). Labels are meant to be signs
    (``-1/0/+1``); merging is a majority vote with ties giving ``0``.

    Args:
        edge_index: (2, E) integer node ids in ``[0, num_nodes)``.
        num_nodes: ``N``.
        edge_weight: optional (E,) weights.
        edge_label: optional (E,) signed labels.

    Returns:
        :class:`CoalescedEdges` with ``E' <= E`` edges.

    Shapes:
        - edge_index: ``(2, E)`` -> ``(2, E')``; edge_weight, edge_label: ``(E,)`` -> ``(E',)``.
    """
    edge_index = edge_index.to(torch.long)
    keys = edge_key(edge_index[0], edge_index[1], num_nodes)
    keys, perm = torch.sort(keys, stable=True)
    weight = edge_weight[perm] if edge_weight is not None else None
    label = edge_label[perm] if edge_label is not None else None
    uniq, _, w_out, l_out = _merge_sorted(keys, weight, label)
    if num_nodes == 0:
        return CoalescedEdges(edge_index.new_zeros((2, 0)), w_out, l_out)
    ei = torch.stack(split_key(uniq, num_nodes))
    return CoalescedEdges(ei, w_out, l_out)


def _require_finite(who: str, what: str, value: Tensor) -> None:
    """One-line :class:`DataError` naming the first non-finite entry of ``value``."""
    bad = torch.nonzero(~torch.isfinite(value))
    if bad.numel():
        where = ", ".join(str(int(i)) for i in bad[0])
        raise DataError(f"{who}: {what}[{where}] is non-finite ({value[tuple(bad[0])].item()})")


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _same_list(a: list[Tensor] | None, b: list[Tensor] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, eq=False)
class DynamicGraph:
    """A discrete-time dynamic graph: ``T`` snapshots over ``N`` nodes, edges in canonical order.

    Equality (``==``) compares the graph content (``num_nodes``, edges, weights, labels, ``x`` after broadcasting a
    static ``(N, F)`` to ``(T, N, F)``, ``y``); the metadata ``node_ids``, ``snapshot_times`` and ``name`` is not
    compared.

    Shapes:
        - edge_indices[t]: ``(2, E_t)`` long, sorted by ``row * N + col``, no duplicates.
        - edge_weights[t], edge_labels[t]: ``(E_t,)``.
        - x: ``(T, N, F)`` (per snapshot) or ``(N, F)`` (static).
        - y: ``(T, N)`` (or ``(T, N, ...)``).
        - node_ids: ``(N,)``; snapshot_times: ``(T,)``.
    """

    num_nodes: int
    """``N``: the vertex set shared by all snapshots."""
    edge_indices: list[Tensor]
    """Per snapshot ``(2, E_t)`` long node ids in canonical order."""
    edge_weights: list[Tensor] | None = None
    """Per snapshot ``(E_t,)`` float weights (counts of merged raw edges for bucketed data), or ``None``."""
    x: Tensor | None = None
    """Node features: ``(T, N, F)`` or static ``(N, F)``, or ``None``."""
    y: Tensor | None = None
    """Node targets ``(T, N)`` (e.g. twitter-tennis mentions, synthetic communities), or ``None``."""
    edge_labels: list[Tensor] | None = None
    """Per snapshot ``(E_t,)`` edge labels (sign of a rating/outcome for Bitcoin and chess), or ``None``."""
    node_ids: Tensor | None = None
    """Metadata: the original (raw file) id of each node after remapping to ``0..N-1``, or ``None``."""
    snapshot_times: Tensor | None = None
    """Metadata: ``(T,)`` float64 start time of each snapshot's time step in the source's time unit, or ``None``."""
    name: str = field(default="")
    """Metadata: where the graph came from (dataset name or file)."""

    def __post_init__(self) -> None:
        # Accept any sequence (tuple, generator result) but store lists, so indexing and len() behave.
        object.__setattr__(self, "edge_indices", list(self.edge_indices))
        if self.edge_weights is not None:
            object.__setattr__(self, "edge_weights", list(self.edge_weights))
        if self.edge_labels is not None:
            object.__setattr__(self, "edge_labels", list(self.edge_labels))

    # ------------------------------------------------------------------ basic properties
    @property
    def num_snapshots(self) -> int:
        """``T``."""
        return len(self.edge_indices)

    @property
    def num_edges(self) -> int:
        """Total number of (merged) edges over all snapshots, ``sum_t E_t``."""
        return sum(int(ei.shape[1]) for ei in self.edge_indices)

    @property
    def num_edges_per_snapshot(self) -> list[int]:
        """``[E_0, ..., E_{T-1}]``."""
        return [int(ei.shape[1]) for ei in self.edge_indices]

    @property
    def num_node_features(self) -> int:
        """``F`` (0 without features)."""
        return 0 if self.x is None else int(self.x.shape[-1])

    def __len__(self) -> int:
        return self.num_snapshots

    def __repr__(self) -> str:
        feats = "" if self.x is None else f", x={tuple(self.x.shape)}"
        target = "" if self.y is None else f", y={tuple(self.y.shape)}"
        name = f"{self.name!r}, " if self.name else ""
        return (
            f"DynamicGraph({name}num_nodes={self.num_nodes}, num_snapshots={self.num_snapshots}, "
            f"num_edges={self.num_edges}{feats}{target})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DynamicGraph):
            return NotImplemented
        return (
            self.num_nodes == other.num_nodes
            and _same_list(self.edge_indices, other.edge_indices)
            and _same_list(self.edge_weights, other.edge_weights)
            and _same_list(self.edge_labels, other.edge_labels)
            and _same(self._x_per_snapshot(), other._x_per_snapshot())
            and _same(self.y, other.y)
        )

    __hash__ = None  # type: ignore[assignment]  # holds tensors; equality is by content

    def _x_per_snapshot(self) -> Tensor | None:
        if self.x is None or self.x.dim() == 3:
            return self.x
        return self.x.unsqueeze(0).expand(self.num_snapshots, *self.x.shape)

    def snapshot_x(self, t: int) -> Tensor | None:
        """Node features of snapshot ``t``: ``(N, F)`` or ``None``."""
        if self.x is None:
            return None
        return self.x[t] if self.x.dim() == 3 else self.x

    def keys(self, t: int) -> Tensor:
        """Sorted unique int64 keys ``row * N + col`` of snapshot ``t`` (the diff encoding's currency)."""
        ei = self.edge_indices[t]
        return edge_key(ei[0], ei[1], self.num_nodes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> DynamicGraph:
        """Check shapes, dtypes, id ranges and the canonical edge order.

        Returns:
            ``self`` (so constructors can ``return DynamicGraph(...).validate()``).

        Raises:
            DataError: one line naming the field (and snapshot) that is wrong.
        """
        who = self.name or "DynamicGraph"
        n = self.num_nodes
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(f"{who}: num_nodes must be a non-negative int, got {n!r}")
        t_count = self.num_snapshots
        for t, ei in enumerate(self.edge_indices):
            if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.shape[0] != 2:
                shape = tuple(ei.shape) if isinstance(ei, Tensor) else type(ei).__name__
                raise DataError(f"{who}: edge_indices[{t}] must be a (2, E) tensor, got {shape}")
            if ei.dtype != torch.long:
                raise DataError(f"{who}: edge_indices[{t}] must be int64, got {ei.dtype}")
            if ei.numel():
                lo, hi = int(ei.min()), int(ei.max())
                if lo < 0 or hi >= n:
                    bad = lo if lo < 0 else hi
                    raise DataError(f"{who}: edge_indices[{t}] holds node id {bad} outside [0, {n})")
                keys = edge_key(ei[0], ei[1], n)
                if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
                    raise DataError(
                        f"{who}: edge_indices[{t}] is not in canonical order (sorted by row*N+col, no duplicates);"
                        " use coalesce_edges()"
                    )
        for fname in ("edge_weights", "edge_labels"):
            values = getattr(self, fname)
            if values is None:
                continue
            if len(values) != t_count:
                raise DataError(f"{who}: {fname} has {len(values)} entries for {t_count} snapshots")
            for t, (v, ei) in enumerate(zip(values, self.edge_indices, strict=True)):
                if not isinstance(v, Tensor) or v.shape != (ei.shape[1],):
                    shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise DataError(f"{who}: {fname}[{t}] must have shape ({ei.shape[1]},), got {shape}")
        if self.edge_weights is not None and any(not w.is_floating_point() for w in self.edge_weights):
            raise DataError(f"{who}: edge_weights must be floating point")
        for t, w in enumerate(self.edge_weights or []):
            _require_finite(who, f"edge_weights[{t}]", w)
        for fname in ("x", "y"):
            value = getattr(self, fname)
            if value is not None and value.is_floating_point():
                _require_finite(who, fname, value)
        if self.x is not None:
            ok = (self.x.dim() == 3 and self.x.shape[:2] == (t_count, n)) or (
                self.x.dim() == 2 and self.x.shape[0] == n
            )
            if not ok:
                raise DataError(
                    f"{who}: x must have shape (T={t_count}, N={n}, F) or (N={n}, F), got {tuple(self.x.shape)}"
                )
        if self.y is not None and (self.y.dim() < 2 or self.y.shape[:2] != (t_count, n)):
            raise DataError(f"{who}: y must have shape (T={t_count}, N={n}, ...), got {tuple(self.y.shape)}")
        if self.node_ids is not None and self.node_ids.shape != (n,):
            raise DataError(f"{who}: node_ids must have shape ({n},), got {tuple(self.node_ids.shape)}")
        if self.snapshot_times is not None and self.snapshot_times.shape != (t_count,):
            raise DataError(
                f"{who}: snapshot_times must have shape ({t_count},), got {tuple(self.snapshot_times.shape)}"
            )
        return self

    def with_window(self, window: int) -> DynamicGraph:
        r"""Apply an edge-life window: snapshot ``t`` becomes the sum of snapshots ``t-w+1 .. t``.

        .. math::
            A'_t = \sum_{s = \max(0, t-w+1)}^{t} A_s

        Weights default to 1 per edge when the graph has none; labels are merged by majority vote. ``x``, ``y``
        and the metadata are kept.

        Raises:
            ConfigError: ``window < 1``.
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an int >= 1, got {window!r}")
        if window == 1:
            return self
        sizes = self.num_edges_per_snapshot
        steps = torch.repeat_interleave(torch.arange(self.num_snapshots), torch.tensor(sizes, dtype=torch.long))
        cat = torch.cat(self.edge_indices, dim=1) if self.edge_indices else torch.zeros((2, 0), dtype=torch.long)
        if self.edge_weights is not None:
            weight = torch.cat(self.edge_weights) if self.edge_weights else torch.zeros(0)
        else:
            weight = torch.ones(cat.shape[1])
        label = torch.cat(self.edge_labels) if self.edge_labels else None
        edge_indices, edge_weights, edge_labels = _group_snapshots(
            steps, cat[0], cat[1], weight, label, self.num_snapshots, self.num_nodes, window
        )
        return dataclasses.replace(
            self, edge_indices=edge_indices, edge_weights=edge_weights, edge_labels=edge_labels
        ).validate()

    # ------------------------------------------------------------------ PyG conversion
    def __getitem__(self, t: int) -> Data:
        """Snapshot ``t`` as a PyG ``Data`` (``edge_index``, ``num_nodes`` and, where present, ``edge_weight``,
        ``edge_label``, ``x``, ``y``)."""
        from torch_geometric.data import Data

        if not isinstance(t, int):
            raise TypeError(f"snapshot index must be an int, got {type(t).__name__}")
        if t < 0:
            t += self.num_snapshots
        if not 0 <= t < self.num_snapshots:
            raise IndexError(f"snapshot {t} out of range for {self.num_snapshots} snapshots")
        data = Data(edge_index=self.edge_indices[t], num_nodes=self.num_nodes)
        if self.edge_weights is not None:
            data.edge_weight = self.edge_weights[t]
        if self.edge_labels is not None:
            data.edge_label = self.edge_labels[t]
        if self.x is not None:
            data.x = self.snapshot_x(t)
        if self.y is not None:
            data.y = self.y[t]
        return data

    def __iter__(self):
        for t in range(self.num_snapshots):
            yield self[t]

    def to_pyg_list(self) -> list[Data]:
        """All snapshots as a list of PyG ``Data`` (see :meth:`__getitem__`)."""
        return [self[t] for t in range(self.num_snapshots)]

    @classmethod
    def from_pyg_list(cls, snapshots: Sequence[Data], num_nodes: int | None = None, name: str = "") -> DynamicGraph:
        """Build from PyG snapshots (inverse of :meth:`to_pyg_list`).

        Edges are put in canonical order (:func:`coalesce_edges`). ``x`` is kept static ``(N, F)`` when every
        snapshot holds an equal feature matrix, else stacked to ``(T, N, F)``. ``edge_weight``, ``edge_label``,
        ``x`` and ``y`` must be present on all snapshots or on none.

        Args:
            snapshots: PyG ``Data`` objects.
            num_nodes: ``N``; default the largest ``num_nodes`` of the snapshots.
            name: metadata.

        Raises:
            DataError: an empty list, or an attribute present on some snapshots only.
        """
        if len(snapshots) == 0:
            raise DataError(f"{name or 'from_pyg_list'}: no snapshots given")
        if num_nodes is None:
            num_nodes = max(int(d.num_nodes) for d in snapshots)

        def collect(attr: str) -> list[Tensor] | None:
            values = [getattr(d, attr, None) for d in snapshots]
            present = [v is not None for v in values]
            if not any(present):
                return None
            if not all(present):
                missing = present.index(False)
                raise DataError(f"{name or 'from_pyg_list'}: snapshot {missing} has no {attr} but others do")
            return values

        weights_in = collect("edge_weight")
        labels_in = collect("edge_label")
        xs = collect("x")
        ys = collect("y")
        edge_indices, weights, labels = [], [], []
        for t, d in enumerate(snapshots):
            merged = coalesce_edges(
                d.edge_index,
                num_nodes,
                weights_in[t] if weights_in is not None else None,
                labels_in[t] if labels_in is not None else None,
            )
            edge_indices.append(merged.edge_index)
            weights.append(merged.edge_weight)
            labels.append(merged.edge_label)
        x = None
        if xs is not None:
            static = all(xi is xs[0] or torch.equal(xi, xs[0]) for xi in xs[1:])
            x = xs[0] if static else torch.stack(xs)
        y = torch.stack(ys) if ys is not None else None
        return cls(
            num_nodes=num_nodes,
            edge_indices=edge_indices,
            edge_weights=weights if weights_in is not None else None,
            x=x,
            y=y,
            edge_labels=labels if labels_in is not None else None,
            name=name,
        ).validate()

    @classmethod
    def from_temporal_data(
        cls,
        data: TemporalData,
        num_steps: int | None = None,
        step_size: float | None = None,
        window: int = 1,
        num_nodes: int | None = None,
        label_attr: str | None = None,
        name: str = "TemporalData",
    ) -> DynamicGraph:
        """Bucket a PyG ``TemporalData`` event stream (``src``, ``dst``, ``t``) into snapshots.

        Node ids are used as they are (``TemporalData`` ids are already dense). Weights are event counts.

        Args:
            data: the event stream.
            num_steps: number of equal-width time steps (give this or ``step_size``).
            step_size: width of a time step in ``data.t``'s unit.
            window: edge-life window ``w >= 1``.
            num_nodes: ``N``; default ``data.num_nodes``.
            label_attr: optional per-event attribute (e.g. ``"y"``) used as signed edge label.
            name: metadata, used in error messages.
        """
        label = None
        if label_attr is not None:
            label = getattr(data, label_attr, None)
            if label is None:
                raise ConfigError(f"label_attr: TemporalData has no attribute {label_attr!r}")
            label = label.reshape(-1)
        if num_nodes is None:
            num_nodes = int(data.num_nodes) if data.src.numel() else None
        return bucket_edges(
            data.src,
            data.dst,
            data.t,
            label=label,
            num_nodes=num_nodes,
            num_steps=num_steps,
            step_size=step_size,
            window=window,
            source=name,
        )


def time_steps(
    t: Tensor, num_steps: int | None = None, step_size: float | None = None, source: str = "<edges>"
) -> tuple[Tensor, int, Tensor]:
    r"""Map timestamps to time steps counted from the earliest one.

    .. math::
        s_e = \left\lfloor \frac{t_e - t_{\min}}{\Delta} \right\rfloor, \qquad
        \Delta = \texttt{step\_size} \ \text{or}\ \Delta = (t_{\max} - t_{\min}) / \texttt{num\_steps}

    With ``num_steps`` the last timestamp is put in step ``num_steps - 1`` (the interval is closed on the right),
    so there are exactly ``num_steps`` steps; with ``step_size`` there are ``max(s) + 1`` steps. Empty steps
    are kept (they become empty snapshots).

    Args:
        t: (E,) timestamps (any real dtype; computed in float64).
        num_steps: number of equal-width steps.
        step_size: step width in the time unit of ``t``.
        source: name used in error messages.

    Returns:
        ``(steps (E,) long, T, start time of each step (T,) float64)``.

    Raises:
        ConfigError: neither or both of ``num_steps`` / ``step_size``, or a non-positive one.
    """
    if (num_steps is None) == (step_size is None):
        raise ConfigError(f"{source}: give exactly one of num_steps or step_size (got {num_steps=}, {step_size=})")
    t = t.to(torch.float64).reshape(-1)
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{source}: non-finite timestamp")
    t_min = float(t.min())
    span = float(t.max()) - t_min
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"num_steps must be an int >= 1, got {num_steps!r}")
        width = span / num_steps
        if width == 0.0:
            steps = torch.zeros(t.shape, dtype=torch.long)
        else:
            steps = torch.floor((t - t_min) / width).to(torch.long).clamp_(max=num_steps - 1)
        count = num_steps
    else:
        if not step_size > 0:
            raise ConfigError(f"step_size must be > 0, got {step_size!r}")
        width = float(step_size)
        steps = torch.floor((t - t_min) / width).to(torch.long)
        count = int(steps.max()) + 1
    starts = t_min + width * torch.arange(count, dtype=torch.float64)
    return steps, count, starts


def bucket_edges(
    src: Tensor | Sequence[int],
    dst: Tensor | Sequence[int],
    t: Tensor | Sequence[float],
    weight: Tensor | Sequence[float] | None = None,
    label: Tensor | Sequence[int] | None = None,
    num_nodes: int | None = None,
    num_steps: int | None = None,
    step_size: float | None = None,
    window: int = 1,
    source: str = "<edges>",
) -> DynamicGraph:
    r"""Group timestamped edges into snapshots by time bucketing, with an optional edge-life window.

    Raw edge ``e`` falls in step ``s_e`` (:func:`time_steps`). With window ``w`` snapshot ``t`` holds the raw
    edges of steps ``t-w+1 .. t`` (fewer for the first ``w-1`` snapshots):

    .. math::
        A_t[u, v] = \sum_{e:\ (u_e, v_e) = (u, v),\ t - w < s_e \le t} w_e, \qquad
        \ell_t[u, v] = \operatorname{sign}\Big(\sum \ell_e\Big)

    Each snapshot is in canonical order (sorted by ``row * N + col``, duplicates merged). Weights default to
    1 per raw edge, so the output weights are event counts and always present.

    Args:
        src: (E,) source node ids (non-negative ints).
        dst: (E,) target node ids.
        t: (E,) timestamps.
        weight: optional (E,) raw edge weights (default 1).
        label: optional (E,) signed labels (e.g. the sign of a rating).
        num_nodes: ``N``; ids must be ``< N``. Default ``max id + 1``.
        num_steps: number of equal-width steps (give this or ``step_size``).
        step_size: step width in the unit of ``t``.
        window: edge-life window ``w >= 1``.
        source: name of the data (file, dataset) used in error messages and as the graph's ``name``.

    Returns:
        The :class:`DynamicGraph` with ``T`` snapshots, ``edge_weights`` set, ``edge_labels`` set when ``label``
        was given and ``snapshot_times`` the start of each step.

    Raises:
        DataError: empty input, mismatched lengths, negative or out-of-range node ids.
        ConfigError: ``window < 1``, neither/both of ``num_steps``/``step_size``.

    Shapes:
        - src, dst, t, weight, label: ``(E,)``.
        - output: ``T`` snapshots of ``(2, E_t)``.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, got {window!r}")
    src = torch.as_tensor(src).reshape(-1)
    dst = torch.as_tensor(dst).reshape(-1)
    # Python floats must not go through float32: unix seconds need float64 (1e9 s has ~64 s spacing in fp32).
    t = (t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)).reshape(-1)
    if src.numel() == 0:
        raise DataError(f"{source}: no edges (empty input)")
    lengths = {"src": src.numel(), "dst": dst.numel(), "t": t.numel()}
    if weight is not None:
        weight = torch.as_tensor(weight).reshape(-1)
        lengths["weight"] = weight.numel()
    if label is not None:
        label = torch.as_tensor(label).reshape(-1)
        lengths["label"] = label.numel()
    if len(set(lengths.values())) != 1:
        raise DataError(f"{source}: edge arrays differ in length: {lengths}")
    if src.is_floating_point() or dst.is_floating_point():
        if not bool((src == src.floor()).all() and (dst == dst.floor()).all()):
            raise DataError(f"{source}: node ids must be integers")
    src = src.to(torch.long)
    dst = dst.to(torch.long)
    lo = min(int(src.min()), int(dst.min()))
    if lo < 0:
        raise DataError(f"{source}: negative node id {lo}")
    hi = max(int(src.max()), int(dst.max()))
    if num_nodes is None:
        num_nodes = hi + 1
    elif hi >= num_nodes:
        raise DataError(f"{source}: node id {hi} out of range for num_nodes={num_nodes}")

    steps, count, starts = time_steps(t, num_steps=num_steps, step_size=step_size, source=source)
    weight = torch.ones(src.numel(), dtype=torch.float32) if weight is None else weight.to(torch.float32)

    edge_indices, edge_weights, edge_labels = _group_snapshots(steps, src, dst, weight, label, count, num_nodes, window)
    return DynamicGraph(
        num_nodes=num_nodes,
        edge_indices=edge_indices,
        edge_weights=edge_weights,
        edge_labels=edge_labels,
        snapshot_times=starts,
        name=source,
    ).validate()


def _group_snapshots(
    steps: Tensor,
    src: Tensor,
    dst: Tensor,
    weight: Tensor,
    label: Tensor | None,
    count: int,
    num_nodes: int,
    window: int = 1,
) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """Group raw edges tagged with a step into ``count`` canonical snapshots, each edge living ``window`` steps."""
    if window > 1:
        # A raw edge of step s lives in snapshots s .. s+w-1 (those that exist).
        snap = (steps.unsqueeze(1) + torch.arange(window)).reshape(-1)
        keep = snap < count
        rep = torch.arange(src.numel()).repeat_interleave(window)[keep]
        snap = snap[keep]
        src, dst, weight = src[rep], dst[rep], weight[rep]
        label = label[rep] if label is not None else None
    else:
        snap = steps
    if snap.numel() == 0:
        empty = [torch.zeros((2, 0), dtype=torch.long) for _ in range(count)]
        labels = [torch.zeros(0, dtype=torch.long) for _ in range(count)] if label is not None else None
        return empty, [torch.zeros(0, dtype=weight.dtype) for _ in range(count)], labels

    # Sort by (snapshot, key) with two stable sorts: no T*N*N overflow for large N.
    keys = edge_key(src, dst, num_nodes)
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(snap[order], stable=True)]
    keys, snap, weight = keys[order], snap[order], weight[order]
    label = label[order] if label is not None else None
    # A combined (snapshot, key) run id: the key changes or the snapshot changes.
    new_run = torch.ones(keys.numel(), dtype=torch.bool)
    new_run[1:] = (keys[1:] != keys[:-1]) | (snap[1:] != snap[:-1])
    run = torch.cumsum(new_run, 0) - 1
    num_runs = int(run[-1]) + 1
    first = torch.nonzero(new_run).squeeze(1)
    run_keys, run_snap = keys[first], snap[first]
    run_weight = torch.zeros(num_runs, dtype=weight.dtype).index_add_(0, run, weight)
    run_label = None
    if label is not None:
        acc = torch.zeros(num_runs, dtype=torch.float64).index_add_(0, run, label.to(torch.float64))
        run_label = torch.sign(acc).to(torch.long if label.is_floating_point() else label.dtype)

    per_snap = torch.bincount(run_snap, minlength=count).tolist()
    rows, cols = split_key(run_keys, num_nodes)
    edge_indices = [torch.stack([r, c]) for r, c in zip(rows.split(per_snap), cols.split(per_snap), strict=True)]
    edge_weights = [w.clone() for w in run_weight.split(per_snap)]
    edge_labels = [lb.clone() for lb in run_label.split(per_snap)] if run_label is not None else None
    return edge_indices, edge_weights, edge_labels
