r"""Edge keys and the GCN-normalised adjacency: one implementation, one orientation (plain torch).

**Edge keys.** An entry ``(row, col)`` of an ``N x N`` matrix is the integer key ``row * N + col``
(:func:`edge_key`, inverted by :func:`split_key`). Sorted keys are the matrix's row-major (CSR) order, which makes
set differences and CSR construction (both ``searchsorted``, no sort, no host synchronisation) cheap on any device.

**Orientation.** A graph's edges are ``source -> target``. A GCN layer aggregates at the target,
``H' = \hat{A}^\top X W`` in PyG's notation, so what every model here multiplies with is ``adj_t``, the transposed
adjacency with ``adj_t[target, source]``: the orientation of PyG's ``SparseTensor`` ``adj_t``. Hence
:func:`gcn_norm_adj_t` is the only normalisation; :func:`gcn_norm` is its front end for a PyG ``edge_index``.

.. math::
    \hat{A}^\top = \hat{D}^{-1/2} (A + I)^\top \hat{D}^{-1/2}, \qquad
    \hat{D}_{vv} = \sum_u (A + I)_{uv} \ \text{(weighted in-degree)}

as PyG's :func:`torch_geometric.nn.conv.gcn_conv.gcn_norm` (``flow="source_to_target"``): self-loops are added
only to vertices without one (an existing self-loop keeps its weight) and a zero degree gives zero rows and columns
instead of ``inf``. For an undirected (symmetric) snapshot ``adj_t == adj``, so its canonical keys are used as they
are; a directed snapshot's keys are transposed first (:func:`transpose_keys`, one sort).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "CSR",
    "block_diagonal_csr",
    "transpose_csr",
    "csr_from_keys",
    "edge_key",
    "gcn_norm",
    "gcn_norm_adj_t",
    "key_dtype",
    "match_sorted",
    "split_key",
    "transpose_keys",
]


def key_dtype(num_nodes: int) -> torch.dtype:
    """Integer dtype of the keys ``row * N + col``: ``int32`` when ``N * N < 2**31``, else ``int64``."""
    return torch.int32 if num_nodes * num_nodes < 2**31 else torch.int64


def edge_key(row: Tensor, col: Tensor, num_nodes: int) -> Tensor:
    """Key ``row * N + col`` of every entry, as ``int64`` (no overflow for ``N <= 3,037,000,499``).

    Shapes:
        row, col ``(E,)`` -> ``(E,)`` int64.
    """
    return row.to(torch.int64) * int(num_nodes) + col.to(torch.int64)


def split_key(keys: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`edge_key`: ``(row, col)`` as ``int64``, in the keys' order.

    Shapes:
        keys ``(E,)`` -> two ``(E,)`` int64 tensors.
    """
    keys = keys.to(torch.int64)
    row = torch.div(keys, num_nodes, rounding_mode="floor")
    return row, keys - row * num_nodes


def match_sorted(sorted_keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of ``query`` in ``sorted_keys`` (``searchsorted``) and whether each query key is present."""
    idx = torch.searchsorted(sorted_keys, query)
    if sorted_keys.numel() == 0:
        return idx, torch.zeros_like(query, dtype=torch.bool)
    found = sorted_keys[idx.clamp(max=sorted_keys.numel() - 1)] == query
    return idx, found & (idx < sorted_keys.numel())


def transpose_keys(keys: Tensor, num_nodes: int, weights: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Sorted keys (and aligned weights) of the transposed matrix: ``(r, c) -> (c, r)``, one sort on the device."""
    row, col = split_key(keys, num_nodes)
    keys_t, order = torch.sort(edge_key(col, row, num_nodes))
    return keys_t, (None if weights is None else weights[order])


class CSR(NamedTuple):
    """Compressed sparse rows of an ``N x N`` matrix.

    Attributes:
        crow_indices: ``(N + 1,)`` row pointers.
        col_indices: ``(E,)`` column of each entry, rows in order, columns sorted within a row.
        values: ``(E,)`` values, or ``None`` for an implicit all-ones pattern.
        num_nodes: ``N``.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor | None
    num_nodes: int

    def to_sparse_csr(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """As a ``torch.sparse_csr_tensor`` (ones when :attr:`values` is ``None``)."""
        values = self.values
        if values is None:
            values = torch.ones(self.col_indices.numel(), dtype=dtype, device=self.col_indices.device)
        size = (self.num_nodes, self.num_nodes)
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, values, size=size, check_invariants=False)


def csr_from_keys(
    keys: Tensor, num_nodes: int, weights: Tensor | None = None, index_dtype: torch.dtype = torch.int64
) -> CSR:
    r"""CSR of a matrix from its sorted keys, on their device (``searchsorted`` of the row starts; no sort, no sync).

    .. math::
        \mathrm{crow}[r] = \#\{\, e : \lfloor K_e / N \rfloor < r \,\}

    Shapes:
        - keys: ``(E,)``, weights: ``(E,)`` or ``None``
        - output: crow ``(N + 1,)``, col ``(E,)``, values ``(E,)`` or ``None``

    Args:
        keys: Strictly increasing keys.
        num_nodes: ``N``.
        weights: Entry values aligned with ``keys``.
        index_dtype: ``torch.int64`` or ``torch.int32`` for the row pointers and columns.
    """
    row, col = split_key(keys, num_nodes)
    # Rows are sorted, so the pointer of row r is the number of rows below r: a searchsorted, which (unlike a
    # bincount, whose output size CUDA reads back) needs no host synchronisation.
    crow = torch.searchsorted(row, torch.arange(num_nodes + 1, dtype=torch.int64, device=keys.device))
    return CSR(crow.to(index_dtype), col.to(index_dtype), weights, num_nodes)


def gcn_norm_adj_t(
    keys_t: Tensor,
    num_nodes: int,
    weights: Tensor | None = None,
    add_self_loops: bool = True,
    dtype: torch.dtype | None = None,
) -> CSR:
    r"""GCN-normalised transposed adjacency ``adj_t`` (see the module docstring) from its sorted keys, on their device.

    Args:
        keys_t: Strictly increasing keys ``target * N + source`` (for a symmetric graph: its canonical keys).
        num_nodes: ``N``.
        weights: Entry values aligned with ``keys_t`` (ones when ``None``).
        add_self_loops: Use ``A + I`` (``False``: normalise ``A`` itself).
        dtype: Value dtype (default ``weights.dtype`` or ``float32``).

    Returns:
        The :class:`CSR` of ``adj_t``, rows = targets, ``E' = E + #{vertices without a self-loop}`` entries.

    Shapes:
        keys_t ``(E,)``, weights ``(E,)`` or ``None`` -> :class:`CSR` ``(N, N)``.
    """
    device = keys_t.device
    dtype = dtype or (weights.dtype if weights is not None else torch.float32)
    keys = keys_t.to(torch.int64)
    values = torch.ones(keys.numel(), dtype=dtype, device=device) if weights is None else weights.to(dtype)
    if add_self_loops:
        loops = torch.arange(num_nodes, device=device, dtype=torch.int64) * (num_nodes + 1)
        _, has_loop = match_sorted(keys, loops)
        loops = loops[~has_loop]
        pos_old = torch.arange(keys.numel(), device=device) + torch.searchsorted(loops, keys)
        pos_new = torch.arange(loops.numel(), device=device) + torch.searchsorted(keys, loops)
        merged = torch.empty(keys.numel() + loops.numel(), dtype=torch.int64, device=device)
        merged[pos_old], merged[pos_new] = keys, loops
        merged_values = torch.empty(merged.numel(), dtype=dtype, device=device)
        merged_values[pos_old] = values
        merged_values[pos_new] = 1.0
        keys, values = merged, merged_values
    target, source = split_key(keys, num_nodes)
    deg = torch.zeros(num_nodes, dtype=dtype, device=device).scatter_add_(0, target, values)  # in-degree
    dinv = deg.pow(-0.5)
    dinv.masked_fill_(torch.isinf(dinv), 0.0)
    return csr_from_keys(keys, num_nodes, dinv[target] * values * dinv[source])


def gcn_norm(
    edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None, add_self_loops: bool = True
) -> Tensor:
    r"""``adj_t`` of a PyG ``edge_index`` (``source -> target``) as a ``torch.sparse_csr`` tensor.

    Duplicate edges are summed, parallel self loops too (where PyG's ``add_remaining_self_loops`` keeps one of them);
    otherwise ``adj_t @ X`` equals ``GCNConv``'s propagation of ``X``. Front end of :func:`gcn_norm_adj_t`.

    Shapes:
        edge_index ``(2, E)``, edge_weight ``(E,)`` -> ``(N, N)`` sparse CSR.
    """
    dtype = edge_weight.dtype if edge_weight is not None else torch.get_default_dtype()
    keys_t = edge_key(edge_index[1], edge_index[0], num_nodes)
    weights = torch.ones(keys_t.numel(), dtype=dtype, device=keys_t.device) if edge_weight is None else edge_weight
    keys_t, inverse = torch.unique(keys_t, sorted=True, return_inverse=True)
    summed = torch.zeros(keys_t.numel(), dtype=dtype, device=keys_t.device).index_add_(0, inverse, weights.to(dtype))
    return gcn_norm_adj_t(keys_t, num_nodes, summed, add_self_loops, dtype).to_sparse_csr(dtype)


def block_diagonal_csr(adjs: list[Tensor]) -> Tensor:
    """One ``(S N, S N)`` sparse CSR matrix with the ``S`` ``(N, N)`` CSR matrices ``adjs`` on its diagonal.

    A block of snapshots then goes through a GCN layer as one SpMM on ``(S N, d)`` stacked features. Built by
    concatenating the index arrays with offsets (no sort, no per-entry work beyond one copy).

    Shapes:
        ``S`` tensors ``(N, N)`` -> ``(S N, S N)``.
    """
    if not adjs:
        raise ValueError("block_diagonal_csr needs at least one matrix")
    n = adjs[0].shape[0]
    if any(a.layout != torch.sparse_csr or a.shape != (n, n) for a in adjs):
        raise ValueError(f"block_diagonal_csr needs square sparse CSR matrices of one size ({n} x {n})")
    offsets = [0]
    for a in adjs:  # shapes only: no device synchronisation
        offsets.append(offsets[-1] + a.values().numel())
    wide = offsets[-1] >= 2**31 or len(adjs) * n >= 2**31
    index_dtype = torch.int64 if wide else adjs[0].crow_indices().dtype
    crow = [a.crow_indices()[:-1].to(index_dtype) + offsets[s] for s, a in enumerate(adjs)]
    crow.append(torch.tensor([offsets[-1]], dtype=index_dtype, device=adjs[0].device))
    cols = [a.col_indices().to(index_dtype) + s * n for s, a in enumerate(adjs)]
    size = (len(adjs) * n, len(adjs) * n)
    return torch.sparse_csr_tensor(
        torch.cat(crow),
        torch.cat(cols),
        torch.cat([a.values() for a in adjs]),
        size,
        check_invariants=False,
    )


def transpose_csr(adj: Tensor) -> Tensor:
    """The transpose of a sparse CSR matrix, as CSR (its CSC arrays read as CSR).

    Shapes:
        ``(R, C)`` -> ``(C, R)``.
    """
    csc = adj.to_sparse_csc()
    size = (adj.shape[1], adj.shape[0])
    return torch.sparse_csr_tensor(csc.ccol_indices(), csc.row_indices(), csc.values(), size, check_invariants=False)
