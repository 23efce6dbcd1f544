r"""Partition plans for snapshot-partitioned / vertex-partitioned dynamic-GNN training, and their traffic.

Follows the data distribution of Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural Networks"
(SC'21, https://arxiv.org/abs/2109.07893), as reconstructed in ``docs/dynamic_gnn.md`` section 4:

1. the spatial (GCN) stage is **snapshot-partitioned**: rank ``p`` owns a contiguous block of snapshots,
   balanced by edge count (:func:`snapshot_blocks`), and needs no communication;
2. one all-to-all turns this into a **vertex partition** (:func:`vertex_blocks`) for the temporal stage.

Its volume (:func:`alltoall_bytes`) is :math:`b N T d (P-1)/P \le b N T d` for any number of ranks ``P``,
whereas vertex-partitioning the GCN stage needs a halo exchange (:func:`halo_bytes`) that grows with ``P``.

Everything here is pure (no process group): the plans are deterministic functions of their inputs, so every
rank computes the same plan without talking to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lit_efficiency.dyn_gnn.adjacency import edge_key

__all__ = [
    "RedistributionPlan",
    "alltoall_bytes",
    "alltoall_bytes_exact",
    "check_blocks",
    "halo_bytes",
    "plan_redistribution",
    "snapshot_blocks",
    "vertex_blocks",
]


def _check_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")


def _greedy_blocks(loads: Sequence[int], bottleneck: int, max_count: int | None = None) -> list[int]:
    """Cut points of the greedy left-to-right packing with block load <= ``bottleneck`` (and size <= ``max_count``).

    Returns the end index (exclusive) of every block. Assumes ``bottleneck >= max(loads)``. Greedy gives the
    fewest blocks because both limits are inherited by sub-blocks.
    """
    ends: list[int] = []
    current = 0
    count = 0
    for t, load in enumerate(loads):
        if current + load > bottleneck or (max_count is not None and count == max_count):
            ends.append(t)
            current = 0
            count = 0
        current += load
        count += 1
    ends.append(len(loads))
    return ends


def _best_cut(prefix: Sequence[int], start: int, end: int) -> int:
    """The cut ``c`` in ``(start, end)`` minimising the larger of the two halves' loads (first on ties)."""
    return min(range(start + 1, end), key=lambda c: max(prefix[c] - prefix[start], prefix[end] - prefix[c]))


def snapshot_blocks(edge_counts: Sequence[int], world_size: int) -> list[range]:
    """Split ``T`` snapshots into ``world_size`` contiguous blocks, minimising the largest block's edge count.

    The bottleneck (largest block load) is exact: a binary search over integer bottlenecks with the greedy
    feasibility test, which is optimal for contiguous partitions (``O(T log sum(edge_counts))``). Among the
    partitions reaching that bottleneck, the largest snapshot count per block is minimised next (same search).
    Then ranks are kept busy: when ``T >= P`` every block is non-empty (the heaviest splittable block is cut
    where its larger half is smallest, which never raises either objective); when ``P > T`` the last
    ``P - T`` ranks get an **empty** ``range``.

    Args:
        edge_counts: number of edges (or any non-negative integer cost) of each snapshot, in time order.
        world_size: number of ranks ``P``.

    Returns:
        ``P`` ranges, in rank order, that tile ``range(T)`` (every snapshot exactly once, in order).

    Raises:
        ValueError: on a negative or non-integer count or a non-positive ``world_size``.
    """
    _check_world_size(world_size)
    loads: list[int] = []
    for t, count in enumerate(edge_counts):
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise ValueError(f"edge_counts[{t}] must be a non-negative integer, got {count!r}")
        loads.append(int(count))
    num_snapshots = len(loads)
    if num_snapshots == 0:
        return [range(0, 0) for _ in range(world_size)]

    # Binary search for the smallest bottleneck the greedy packing fits into <= P blocks.
    lo, hi = max(loads), sum(loads)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_greedy_blocks(loads, mid)) <= world_size:
            hi = mid
        else:
            lo = mid + 1
    bottleneck = lo
    # Second objective at that bottleneck: the fewest snapshots in the largest block (each snapshot also costs
    # dense work and memory, and this spreads zero-edge snapshots instead of piling them onto one rank).
    lo, hi = -(-num_snapshots // world_size), num_snapshots
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_greedy_blocks(loads, bottleneck, mid)) <= world_size:
            hi = mid
        else:
            lo = mid + 1
    ends = _greedy_blocks(loads, bottleneck, lo)

    # Split blocks until min(P, T) are non-empty. Splitting never raises the bottleneck; pick the block (and
    # cut) whose larger half is largest-first smallest, so the spare ranks shave the heaviest blocks.
    prefix = [0]
    for load in loads:
        prefix.append(prefix[-1] + load)
    blocks = [(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    while len(blocks) < min(world_size, num_snapshots):
        best: tuple[tuple[int, int], int, int] | None = None  # ((-load, count), block index, cut)
        for i, (start, end) in enumerate(blocks):
            if end - start < 2:
                continue
            cut = _best_cut(prefix, start, end)
            key = (-(prefix[end] - prefix[start]), -(end - start))
            if best is None or key < best[0]:
                best = (key, i, cut)
        assert best is not None  # some block has >= 2 snapshots while there are fewer blocks than snapshots
        _, i, cut = best
        start, end = blocks[i]
        blocks[i : i + 1] = [(start, cut), (cut, end)]

    result = [range(start, end) for start, end in blocks]
    result += [range(num_snapshots, num_snapshots)] * (world_size - len(result))
    return result


def vertex_blocks(num_nodes: int, world_size: int) -> list[range]:
    """Split ``N`` vertices into ``world_size`` contiguous blocks whose sizes differ by at most one.

    The first ``N mod P`` ranks get one extra vertex; with ``P > N`` the last ranks get empty blocks.

    Args:
        num_nodes: number of vertices ``N``.
        world_size: number of ranks ``P``.

    Returns:
        ``P`` ranges, in rank order, that tile ``range(N)``.
    """
    _check_world_size(world_size)
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    base, extra = divmod(num_nodes, world_size)
    blocks: list[range] = []
    start = 0
    for p in range(world_size):
        size = base + (1 if p < extra else 0)
        blocks.append(range(start, start + size))
        start += size
    return blocks


def alltoall_bytes(num_nodes: int, num_snapshots: int, dim: int, world_size: int, dtype_bytes: int = 4) -> float:
    r"""Analytic volume of one snapshot->vertex redistribution, summed over all ranks.

    .. math::
        V = b \, N \, T \, d \, \frac{P - 1}{P} \;\le\; b \, N \, T \, d

    It is exact (equal to :func:`alltoall_bytes_exact`) when ``P`` divides both ``T`` and ``N``; otherwise
    it is the even-split approximation. The backward pass moves the same volume again.

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        dim: feature width ``d`` (elements per vertex per snapshot).
        world_size: ``P``.
        dtype_bytes: bytes per element ``b`` (4 for fp32).

    Returns:
        The number of bytes that cross ranks (a float, since ``(P-1)/P`` need not be integral).
    """
    _check_world_size(world_size)
    return dtype_bytes * num_nodes * num_snapshots * dim * (world_size - 1) / world_size


def alltoall_bytes_exact(
    snap_blocks: Sequence[range], vert_blocks: Sequence[range], dim: int, dtype_bytes: int = 4
) -> int:
    r"""Bytes that actually cross ranks in one redistribution with the given blocks.

    Rank ``p`` sends the rows of its snapshots for every vertex it does not own:

    .. math::
        V = b \, d \sum_p |S_p| \, (N - |V_p|)

    Args:
        snap_blocks: snapshot block of each rank (see :func:`snapshot_blocks`).
        vert_blocks: vertex block of each rank (see :func:`vertex_blocks`).
        dim: feature width ``d``.
        dtype_bytes: bytes per element ``b``.

    Returns:
        Total bytes sent to other ranks (equal to the total received).
    """
    if len(snap_blocks) != len(vert_blocks):
        raise ValueError(f"{len(snap_blocks)} snapshot blocks but {len(vert_blocks)} vertex blocks")
    num_nodes = sum(len(v) for v in vert_blocks)
    return sum(len(s) * (num_nodes - len(v)) for s, v in zip(snap_blocks, vert_blocks, strict=True)) * dim * dtype_bytes


def halo_bytes(
    edge_indices: Sequence[torch.Tensor],
    num_nodes: int,
    dim: int,
    world_size: int,
    num_layers: int = 1,
    dtype_bytes: int = 4,
    directed: bool = False,
    include_backward: bool = False,
) -> int:
    r"""Halo-exchange volume if the GCN stage were **vertex**-partitioned instead (the baseline).

    With :func:`vertex_blocks` ownership ``o(v)``, a GCN layer on snapshot ``t`` computes
    :math:`H_t[v] = \sum_{u \in \mathcal{N}_t(v) \cup \{v\}} \hat{A}_t[v, u] \, X_t[u] W`, so the owner of
    ``v`` needs row ``u`` of the layer input whenever ``o(u) != o(v)``. A row is fetched once per (rank,
    remote vertex) pair, so per layer and snapshot the forward volume is

    .. math::
        V_t = b \, d \, \bigl|\{(o(v), u) : (u, v) \in E_t,\ o(u) \ne o(v)\}\bigr| ,

    summed over snapshots and multiplied by ``num_layers`` (every layer exchanges its input; all layers are
    taken to have width ``d``). Unlike :func:`alltoall_bytes`, this grows with ``P``: more ranks cut more
    edges.

    **Backward is not counted by default**: the backward pass sends the same rows' gradients back to their
    owners (the same volume again); ``include_backward=True`` doubles the count to cover it.

    Args:
        edge_indices: one ``(2, E_t)`` integer tensor per snapshot, row 0 sources, row 1 targets (PyG).
        num_nodes: ``N``.
        dim: feature width ``d`` of each layer's input.
        world_size: ``P``.
        num_layers: number of GCN layers.
        dtype_bytes: bytes per element ``b``.
        directed: if ``False`` (default, as for the symmetric :math:`\hat{A}_t` of GCN) every edge carries
            messages both ways; if ``True`` only source -> target.
        include_backward: also count the gradient halo of the backward pass.

    Returns:
        Total bytes received by all ranks over all snapshots and layers.

    Shapes:
        - **edge_indices[t]:** ``(2, E_t)``
    """
    _check_world_size(world_size)
    owner = torch.repeat_interleave(
        torch.arange(world_size), torch.tensor([len(b) for b in vertex_blocks(num_nodes, world_size)])
    )
    pairs = 0
    for t, edge_index in enumerate(edge_indices):
        edge_index = torch.as_tensor(edge_index, dtype=torch.long)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_indices[{t}] must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ValueError(f"edge_indices[{t}] has a vertex id outside [0, {num_nodes})")
        src, dst = edge_index[0], edge_index[1]
        if not directed:
            src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        remote = owner[src] != owner[dst]
        # The receiving rank is the owner of the target; one fetch per distinct (rank, remote source).
        keys = edge_key(owner[dst[remote]], src[remote], num_nodes)
        pairs += int(torch.unique(keys).numel())
    factor = 2 if include_backward else 1
    return pairs * dim * dtype_bytes * num_layers * factor


@dataclass(frozen=True)
class RedistributionPlan:
    """The snapshot and vertex blocks of every rank (what :mod:`.redistribute` needs).

    Attributes:
        snap_blocks: contiguous snapshot block of each rank, tiling ``range(T)``.
        vert_blocks: contiguous vertex block of each rank, tiling ``range(N)``.
    """

    snap_blocks: tuple[range, ...]
    vert_blocks: tuple[range, ...]

    def __post_init__(self) -> None:
        if len(self.snap_blocks) != len(self.vert_blocks):
            raise ValueError(f"{len(self.snap_blocks)} snapshot blocks but {len(self.vert_blocks)} vertex blocks")
        for name, blocks in (("snap_blocks", self.snap_blocks), ("vert_blocks", self.vert_blocks)):
            check_blocks(blocks, name)

    @property
    def world_size(self) -> int:
        """Number of ranks ``P``."""
        return len(self.snap_blocks)

    @property
    def num_snapshots(self) -> int:
        """Number of snapshots ``T``."""
        return self.snap_blocks[-1].stop

    @property
    def num_nodes(self) -> int:
        """Number of vertices ``N``."""
        return self.vert_blocks[-1].stop

    def alltoall_bytes(self, dim: int, dtype_bytes: int = 4) -> int:
        """Exact bytes crossing ranks in one redistribution (see :func:`alltoall_bytes_exact`)."""
        return alltoall_bytes_exact(self.snap_blocks, self.vert_blocks, dim, dtype_bytes)


def check_blocks(blocks: Sequence[range], name: str = "blocks") -> None:
    """Raise ``ValueError`` unless ``blocks`` are non-empty in number, step-1, and tile ``range(stop)`` in order."""
    if len(blocks) == 0:
        raise ValueError(f"{name} is empty: need one block per rank")
    expected_start = 0
    for p, block in enumerate(blocks):
        if not isinstance(block, range) or block.step != 1:
            raise ValueError(f"{name}[{p}] must be a range with step 1, got {block!r}")
        if block.start != expected_start or block.stop < block.start:
            raise ValueError(
                f"{name}[{p}] = {block!r} does not continue at {expected_start}: blocks must tile in order"
            )
        expected_start = block.stop


def plan_redistribution(edge_counts: Sequence[int], num_nodes: int, world_size: int) -> RedistributionPlan:
    """Snapshot blocks balanced by edges plus even vertex blocks, as one plan.

    Args:
        edge_counts: edges of each snapshot, in time order (``len`` is ``T``).
        num_nodes: ``N``.
        world_size: ``P``.

    Returns:
        The :class:`RedistributionPlan`.
    """
    return RedistributionPlan(
        tuple(snapshot_blocks(edge_counts, world_size)), tuple(vertex_blocks(num_nodes, world_size))
    )
