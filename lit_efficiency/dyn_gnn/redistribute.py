r"""Snapshot-partitioned <-> vertex-partitioned redistribution with one ``all_to_all_single``.

The data distribution of Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural Networks" (SC'21,
https://arxiv.org/abs/2109.07893), as reconstructed in ``docs/dynamic_gnn.md`` section 4. No code was
released with the paper; this is written from the description there.

Rank ``p`` owns snapshots :math:`S_p` (spatial stage) and vertices :math:`V_p` (temporal stage), both
contiguous and in rank order (:mod:`.partition`). :func:`snapshot_to_vertex` sends :math:`H[S_p, V_q]` to
rank ``q`` for every ``q``, so that afterwards rank ``q`` holds :math:`H[:, V_q]` for all ``T`` snapshots;
:func:`vertex_to_snapshot` is the inverse. Each is one ``all_to_all_single`` with uneven splits, and each is
the other's backward (a permutation's adjoint is its inverse), so gradients flow through both.

Rules for callers, since a collective hangs if a rank skips it:

- every rank of the group calls the same sequence of redistributions with the same blocks;
- every rank back-propagates through every redistribution output it made in a training step (an
  unused output would skip the backward all-to-all on that rank). A rank whose input block is empty has its
  input promoted to ``requires_grad`` when grad mode is on, so its backward still runs;
- with data-parallel weight replicas (DDP averages gradients), multiply each rank's local loss by
  ``world_size`` to recover the single-process gradient of the summed loss.

The all-to-all preserves the layout without extra copies on the receiving side: because snapshot blocks are
contiguous and in rank order, the concatenated receive buffer of :func:`snapshot_to_vertex` *is* the
``(T, N_q, d)`` output.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from lit_efficiency.core.recorders import CommEvent, Recorder
from lit_efficiency.dyn_gnn.partition import check_blocks

__all__ = [
    "SnapshotToVertex",
    "VertexToSnapshot",
    "new_redistribution_group",
    "snapshot_to_vertex",
    "vertex_to_snapshot",
]


def new_redistribution_group(backend: str | None = None, timeout_s: float | None = None) -> Any:
    """Create a process group over all ranks for the redistributions.

    A separate group keeps the all-to-alls out of the way of DDP's gradient all-reduce on the default group
    (on NCCL each group has its own communicator and stream). Like every ``new_group`` call, all ranks must
    call it, in the same order.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` for the default group's backend.
        timeout_s: collective timeout in seconds (``None``: torch's default).

    Returns:
        The new ``ProcessGroup``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("new_redistribution_group() needs torch.distributed.init_process_group() first")
    kwargs: dict[str, Any] = {"ranks": list(range(dist.get_world_size())), "backend": backend}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    return dist.new_group(**kwargs)


def _group_rank_and_size(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _pack_snapshot_major(h: torch.Tensor, vert_blocks: Sequence[range]) -> tuple[torch.Tensor, list[int]]:
    """``(T_p, N, *F)`` -> flat send buffer ``[h[:, V_0], h[:, V_1], ...]`` and its per-rank element counts."""
    chunks = [h[:, v.start : v.stop].reshape(-1) for v in vert_blocks]
    return torch.cat(chunks) if chunks else h.new_empty(0), [c.numel() for c in chunks]


def _unpack_vertex_major(
    recv: torch.Tensor, num_snapshots: int, num_local_nodes: int, feat: tuple[int, ...]
) -> torch.Tensor:
    """Flat receive buffer of chunks ``(T_p, N_q, *F)`` in rank order -> ``(T, N_q, *F)`` (a view)."""
    return recv.view(num_snapshots, num_local_nodes, *feat)


def _pack_vertex_major(h: torch.Tensor, snap_blocks: Sequence[range]) -> tuple[torch.Tensor, list[int]]:
    """``(T, N_q, *F)`` -> flat send buffer ``[h[S_0], h[S_1], ...]`` (already contiguous) and counts."""
    per_snapshot = math.prod(h.shape[1:])
    return h.contiguous().reshape(-1), [len(s) * per_snapshot for s in snap_blocks]


def _unpack_snapshot_major(
    recv: torch.Tensor,
    splits: Sequence[int],
    vert_blocks: Sequence[range],
    num_local_snapshots: int,
    feat: tuple[int, ...],
) -> torch.Tensor:
    """Flat receive buffer of chunks ``(T_p, N_q, *F)`` for q in rank order -> ``(T_p, N, *F)``."""
    chunks = recv.split(list(splits))
    parts = [c.view(num_local_snapshots, len(v), *feat) for c, v in zip(chunks, vert_blocks, strict=True)]
    return torch.cat(parts, dim=1)


def _exchange(
    send: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    rank: int,
    group: Any,
    recorder: Recorder[CommEvent] | None,
    kind: str,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One ``all_to_all_single`` with uneven splits; records bytes and time if a recorder is given.

    With ``wire_dtype`` (e.g. ``torch.bfloat16``) the buffer travels in that dtype and is cast back on arrival: half
    the bytes of fp32, at the precision of the wire dtype.
    """
    out_dtype = send.dtype
    if wire_dtype is not None:
        send = send.to(wire_dtype)
    recv = send.new_empty(sum(recv_splits))
    is_cuda = send.device.type == "cuda"
    if recorder is not None and is_cuda:
        torch.cuda.synchronize(send.device)
    start = time.perf_counter()
    dist.all_to_all_single(recv, send.contiguous(), recv_splits, send_splits, group=group)
    if recorder is not None:
        if is_cuda:
            torch.cuda.synchronize(send.device)
        ms = (time.perf_counter() - start) * 1e3
        itemsize = send.element_size()
        sent = (sum(send_splits) - send_splits[rank]) * itemsize
        received = (sum(recv_splits) - recv_splits[rank]) * itemsize
        recorder.record(CommEvent(kind, int(sent), int(received), float(ms)))
    return recv.to(out_dtype)


def _snapshot_to_vertex(
    h: torch.Tensor,
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    rank: int,
    group: Any,
    recorder: Recorder[CommEvent] | None,
    kind: str,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    feat = tuple(h.shape[2:])
    per_row = math.prod(feat)
    send, send_splits = _pack_snapshot_major(h, vert_blocks)
    num_local_nodes = len(vert_blocks[rank])
    recv_splits = [len(s) * num_local_nodes * per_row for s in snap_blocks]
    recv = _exchange(send, send_splits, recv_splits, rank, group, recorder, kind, wire_dtype)
    return _unpack_vertex_major(recv, snap_blocks[-1].stop, num_local_nodes, feat)


def _vertex_to_snapshot(
    h: torch.Tensor,
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    rank: int,
    group: Any,
    recorder: Recorder[CommEvent] | None,
    kind: str,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    feat = tuple(h.shape[2:])
    per_row = math.prod(feat)
    send, send_splits = _pack_vertex_major(h, snap_blocks)
    num_local_snapshots = len(snap_blocks[rank])
    recv_splits = [num_local_snapshots * len(v) * per_row for v in vert_blocks]
    recv = _exchange(send, send_splits, recv_splits, rank, group, recorder, kind, wire_dtype)
    return _unpack_snapshot_major(recv, recv_splits, vert_blocks, num_local_snapshots, feat)


class SnapshotToVertex(torch.autograd.Function):
    r"""Snapshot block ``(T_p, N, d)`` -> vertex block ``(T, N_p, d)`` on rank ``p``; backward is the inverse.

    .. math::
        \mathrm{out}_q[t, i] = H[t, V_q[i]] \quad \text{for all } t \in [0, T),\
        \text{where rank } p \text{ holds } H[S_p]

    Backward sends :math:`\partial L / \partial\,\mathrm{out}_q[S_p]` back to rank ``p`` (the
    :class:`VertexToSnapshot` exchange), reassembling ``(T_p, N, d)``.

    Shapes:
        - **input:** ``(T_p, N, *F)`` this rank's snapshots, all vertices (``T_p`` may be 0)
        - **output:** ``(T, N_p, *F)`` all snapshots, this rank's vertices
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        snap_blocks: Sequence[range],
        vert_blocks: Sequence[range],
        group: Any,
        recorder: Recorder[CommEvent] | None,
        wire_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Redistribute ``h``; see the class docstring."""
        rank, _ = _group_rank_and_size(group)
        ctx.plan = (snap_blocks, vert_blocks, rank, group, recorder, wire_dtype)
        return _snapshot_to_vertex(h, snap_blocks, vert_blocks, rank, group, recorder, "snapshot_to_vertex", wire_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Send each gradient block back to the rank that owns its snapshots."""
        snap_blocks, vert_blocks, rank, group, recorder, wire_dtype = ctx.plan
        grad_in = _vertex_to_snapshot(
            grad, snap_blocks, vert_blocks, rank, group, recorder, "snapshot_to_vertex.backward", wire_dtype
        )
        return grad_in, None, None, None, None, None


class VertexToSnapshot(torch.autograd.Function):
    r"""Vertex block ``(T, N_p, d)`` -> snapshot block ``(T_p, N, d)`` on rank ``p``; the inverse of
    :class:`SnapshotToVertex`, whose exchange is its backward.

    .. math::
        \mathrm{out}_p[j, v] = Z[S_p[j], v] \quad \text{for all } v \in [0, N),\
        \text{where rank } q \text{ holds } Z[:, V_q]

    Shapes:
        - **input:** ``(T, N_p, *F)``
        - **output:** ``(T_p, N, *F)``
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        snap_blocks: Sequence[range],
        vert_blocks: Sequence[range],
        group: Any,
        recorder: Recorder[CommEvent] | None,
        wire_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Redistribute ``h``; see the class docstring."""
        rank, _ = _group_rank_and_size(group)
        ctx.plan = (snap_blocks, vert_blocks, rank, group, recorder, wire_dtype)
        return _vertex_to_snapshot(h, snap_blocks, vert_blocks, rank, group, recorder, "vertex_to_snapshot", wire_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Send each gradient block back to the rank that owns its vertices."""
        snap_blocks, vert_blocks, rank, group, recorder, wire_dtype = ctx.plan
        grad_in = _snapshot_to_vertex(
            grad, snap_blocks, vert_blocks, rank, group, recorder, "vertex_to_snapshot.backward", wire_dtype
        )
        return grad_in, None, None, None, None, None


def _prepare(
    h: torch.Tensor, snap_blocks: Sequence[range], vert_blocks: Sequence[range], group: Any, to_vertex: bool
) -> int:
    """Validate the plan and ``h``'s leading shape; return the group's world size."""
    check_blocks(snap_blocks, "snap_blocks")
    check_blocks(vert_blocks, "vert_blocks")
    rank, world_size = _group_rank_and_size(group)
    if len(snap_blocks) != world_size or len(vert_blocks) != world_size:
        raise ValueError(
            f"{len(snap_blocks)} snapshot and {len(vert_blocks)} vertex blocks given for a group of {world_size} ranks"
        )
    if to_vertex:
        expected, layout = (len(snap_blocks[rank]), vert_blocks[-1].stop), "(T_p, N, ...) snapshot-block"
    else:
        expected, layout = (snap_blocks[-1].stop, len(vert_blocks[rank])), "(T, N_p, ...) vertex-block"
    if h.dim() < 2 or tuple(h.shape[:2]) != expected:
        raise ValueError(f"rank {rank}: expected a {layout} tensor of leading shape {expected}, got {tuple(h.shape)}")
    return world_size


def snapshot_to_vertex(
    h: torch.Tensor,
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    group: Any = None,
    recorder: Recorder[CommEvent] | None = None,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Differentiable snapshot -> vertex redistribution (see :class:`SnapshotToVertex`).

    Identity (no collective) when no process group is initialised or the group has one rank.

    Args:
        h: ``(T_p, N, *F)`` this rank's snapshot block, on any device the group's backend supports.
        snap_blocks: snapshot block of every rank (identical on all ranks).
        vert_blocks: vertex block of every rank (identical on all ranks).
        group: process group (``None``: the default group); see :func:`new_redistribution_group`.
        recorder: where to record bytes and time (``None``: not recorded).
        wire_dtype: dtype the buffers travel in, forward and backward (``None``: ``h``'s own); ``torch.bfloat16``
            or ``torch.float16`` halve the bytes of fp32 activations and gradients at that precision.

    Returns:
        ``(T, N_p, *F)`` on the device of ``h``.
    """
    if _prepare(h, snap_blocks, vert_blocks, group, to_vertex=True) == 1:
        return h
    h = _ensure_backward_participation(h)
    return SnapshotToVertex.apply(h, tuple(snap_blocks), tuple(vert_blocks), group, recorder, wire_dtype)


def vertex_to_snapshot(
    h: torch.Tensor,
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    group: Any = None,
    recorder: Recorder[CommEvent] | None = None,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Differentiable vertex -> snapshot redistribution (see :class:`VertexToSnapshot`).

    Identity (no collective) when no process group is initialised or the group has one rank.

    Args:
        h: ``(T, N_p, *F)`` all snapshots for this rank's vertex block.
        snap_blocks: snapshot block of every rank (identical on all ranks).
        vert_blocks: vertex block of every rank (identical on all ranks).
        group: process group (``None``: the default group).
        recorder: where to record bytes and time (``None``: not recorded).
        wire_dtype: dtype the buffers travel in, forward and backward (``None``: ``h``'s own); ``torch.bfloat16``
            or ``torch.float16`` halve the bytes of fp32 activations and gradients at that precision.

    Returns:
        ``(T_p, N, *F)`` on the device of ``h``.
    """
    if _prepare(h, snap_blocks, vert_blocks, group, to_vertex=False) == 1:
        return h
    h = _ensure_backward_participation(h)
    return VertexToSnapshot.apply(h, tuple(snap_blocks), tuple(vert_blocks), group, recorder, wire_dtype)


def _ensure_backward_participation(h: torch.Tensor) -> torch.Tensor:
    # A rank with an empty block usually gets an input that does not require grad (nothing computed it),
    # which would skip this rank's backward all-to-all and hang the others: make it a grad-requiring leaf.
    if torch.is_grad_enabled() and h.numel() == 0 and not h.requires_grad and h.is_floating_point():
        return h.detach().requires_grad_()
    return h
