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
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from lit_efficiency.core.recorders import CommEvent, Recorder
from lit_efficiency.dyn_gnn.partition import check_blocks, vertex_blocks

__all__ = [
    "SnapshotToVertex",
    "VertexToSnapshot",
    "new_redistribution_group",
    "snapshot_to_vertex",
    "snapshot_to_vertex_overlapped",
    "vertex_to_snapshot",
    "vertex_to_snapshot_overlapped",
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
    flight = _start_exchange(send, send_splits, recv_splits, rank, group, recorder, kind, wire_dtype)
    return flight.wait().to(out_dtype)


class _InFlight:
    """An ``all_to_all_single`` started with ``async_op=True``: :meth:`wait` returns its filled receive buffer."""

    def __init__(self, recv: torch.Tensor, work: Any, event: tuple[str, int, int] | None, recorder: Any) -> None:
        self.recv, self.work, self.event, self.recorder = recv, work, event, recorder
        self.start = time.perf_counter()

    def wait(self) -> torch.Tensor:
        """Block until the exchange is done (recording its bytes and the time from start to done); the buffer."""
        if self.work is not None:
            self.work.wait()
            self.work = None
            if self.event is not None and self.recorder is not None:
                if self.recv.device.type == "cuda":
                    torch.cuda.synchronize(self.recv.device)
                ms = (time.perf_counter() - self.start) * 1e3
                self.recorder.record(CommEvent(*self.event, float(ms)))
        return self.recv


def _start_exchange(
    send: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    rank: int,
    group: Any,
    recorder: Recorder[CommEvent] | None,
    kind: str,
    wire_dtype: torch.dtype | None,
) -> _InFlight:
    """Start one ``all_to_all_single`` (uneven splits, optionally in ``wire_dtype``) without waiting for it."""
    if wire_dtype is not None:
        send = send.to(wire_dtype)
    recv = send.new_empty(sum(recv_splits))
    event = None
    if recorder is not None:
        if send.device.type == "cuda":
            torch.cuda.synchronize(send.device)
        itemsize = send.element_size()
        sent = (sum(send_splits) - send_splits[rank]) * itemsize
        received = (sum(recv_splits) - recv_splits[rank]) * itemsize
        event = (kind, int(sent), int(received))
    work = dist.all_to_all_single(recv, send.contiguous(), recv_splits, send_splits, group=group, async_op=True)
    return _InFlight(recv, work, event, recorder)


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


class _StartVertexToSnapshot(torch.autograd.Function):
    """Forward: *start* the vertex -> snapshot all-to-all of one vertex chunk and return its receive buffer (filled
    once the :class:`_InFlight` appended to ``flights`` is waited on); backward: the reverse all-to-all, synchronous.

    Shapes:
        - **input:** ``(T, n_p, *F)``, this rank's chunk; ``chunk_blocks[q]`` is rank ``q``'s chunk
        - **output:** flat buffer of ``(T_p, n_q, *F)`` pieces in rank order (the wire dtype's)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        snap_blocks: Sequence[range],
        chunk_blocks: Sequence[range],
        group: Any,
        recorder: Recorder[CommEvent] | None,
        wire_dtype: torch.dtype | None,
        flights: list[_InFlight],
    ) -> torch.Tensor:
        """Start the exchange; see the class docstring."""
        rank, _ = _group_rank_and_size(group)
        send, send_splits = _pack_vertex_major(h, snap_blocks)
        per_row = math.prod(h.shape[2:])
        recv_splits = [len(snap_blocks[rank]) * len(v) * per_row for v in chunk_blocks]
        flight = _start_exchange(
            send, send_splits, recv_splits, rank, group, recorder, "vertex_to_snapshot", wire_dtype
        )
        flights.append(flight)
        ctx.plan = (send_splits, recv_splits, rank, group, recorder, wire_dtype, h.shape, h.dtype)
        return flight.recv

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Send each gradient piece back to the rank that owns its vertices."""
        send_splits, recv_splits, rank, group, recorder, wire_dtype, shape, dtype = ctx.plan
        kind = "vertex_to_snapshot.backward"
        back = _exchange(grad.contiguous(), recv_splits, send_splits, rank, group, recorder, kind, wire_dtype)
        return back.to(dtype).view(shape), None, None, None, None, None, None


def vertex_to_snapshot_overlapped(
    compute: Callable[[range], torch.Tensor],
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    num_chunks: int,
    group: Any = None,
    recorder: Recorder[CommEvent] | None = None,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""``vertex_to_snapshot(compute(V_p))`` with the exchange of chunk ``c`` overlapping the compute of chunk ``c+1``.

    For a vertex-wise computation (the temporal stage: vertices are independent). Every rank's vertex block is cut
    into ``num_chunks`` contiguous chunks (:func:`~.partition.vertex_blocks` of the block); for ``c = 0, 1, ...``
    this rank computes its chunk ``c`` and *starts* its all-to-all (``async_op=True``), then goes on with chunk
    ``c + 1`` while the bytes travel; the pieces are waited for and put back in vertex order at the end. Values and
    gradients equal :func:`vertex_to_snapshot` of the whole block (the backward exchanges run one per chunk,
    synchronously). Every rank must call it with the same ``num_chunks``.

    Args:
        compute: ``local -> (T, len(local), *F)`` for a range of this rank's vertices, relative to its block's start.
        snap_blocks: snapshot block of every rank.
        vert_blocks: vertex block of every rank.
        num_chunks: chunks per vertex block (``1``: no overlap).
        group, recorder, wire_dtype: as :func:`vertex_to_snapshot`; a recorded ``ms`` runs from the start of a
            chunk's exchange to the end of its wait, so it includes the compute it overlapped.

    Returns:
        ``(T_p, N, *F)``.
    """
    rank, _ = _group_rank_and_size(group)
    num_local_snapshots = len(snap_blocks[rank])

    def start(h: torch.Tensor, blocks: tuple[range, ...], flights: list[_InFlight]) -> torch.Tensor:
        return _StartVertexToSnapshot.apply(h, tuple(snap_blocks), blocks, group, recorder, wire_dtype, flights)

    return _overlapped(compute, vert_blocks, num_chunks, group, start, lambda n: (num_local_snapshots, n), cat_dim=1)


class _StartSnapshotToVertex(torch.autograd.Function):
    """Forward: *start* the snapshot -> vertex all-to-all of one snapshot chunk and return its receive buffer (filled
    once the :class:`_InFlight` appended to ``flights`` is waited on); backward: the reverse all-to-all, synchronous.

    Shapes:
        - **input:** ``(t_p, N, *F)``, this rank's chunk of snapshots; ``chunk_blocks[q]`` is rank ``q``'s chunk
        - **output:** flat buffer of ``(t_q, N_p, *F)`` pieces in rank order (the wire dtype's)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        chunk_blocks: Sequence[range],
        vert_blocks: Sequence[range],
        group: Any,
        recorder: Recorder[CommEvent] | None,
        wire_dtype: torch.dtype | None,
        flights: list[_InFlight],
    ) -> torch.Tensor:
        """Start the exchange; see the class docstring."""
        rank, _ = _group_rank_and_size(group)
        send, send_splits = _pack_snapshot_major(h, vert_blocks)
        per_row = math.prod(h.shape[2:])
        recv_splits = [len(s) * len(vert_blocks[rank]) * per_row for s in chunk_blocks]
        flight = _start_exchange(
            send, send_splits, recv_splits, rank, group, recorder, "snapshot_to_vertex", wire_dtype
        )
        flights.append(flight)
        ctx.plan = (send_splits, recv_splits, rank, group, recorder, wire_dtype, vert_blocks, h.shape, h.dtype)
        return flight.recv

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Send each gradient piece back to the rank that owns its snapshots."""
        send_splits, recv_splits, rank, group, recorder, wire_dtype, vert_blocks, shape, dtype = ctx.plan
        kind = "snapshot_to_vertex.backward"
        back = _exchange(grad.contiguous(), recv_splits, send_splits, rank, group, recorder, kind, wire_dtype)
        grad_in = _unpack_snapshot_major(back.to(dtype), send_splits, vert_blocks, shape[0], tuple(shape[2:]))
        return grad_in, None, None, None, None, None, None


def snapshot_to_vertex_overlapped(
    compute: Callable[[range], torch.Tensor],
    snap_blocks: Sequence[range],
    vert_blocks: Sequence[range],
    num_chunks: int,
    group: Any = None,
    recorder: Recorder[CommEvent] | None = None,
    wire_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""``snapshot_to_vertex(compute(S_p))`` with the exchange of chunk ``c`` overlapping the compute of chunk ``c+1``.

    For a snapshot-wise computation (the spatial stage: snapshots are independent). Every rank's snapshot block is
    cut into ``num_chunks`` contiguous chunks; for ``c = 0, 1, ...`` this rank computes its chunk ``c`` and *starts*
    its all-to-all, then goes on with chunk ``c + 1`` while the bytes travel; the pieces are waited for and put back
    in time order (rank, then chunk) at the end. Values and gradients equal :func:`snapshot_to_vertex` of the whole
    block (the backward exchanges run one per chunk, synchronously). Every rank must use the same ``num_chunks``.

    Args:
        compute: ``local -> (len(local), N, *F)`` for a range of this rank's snapshots, relative to its block's
            start (an empty range must give an empty ``(0, N, *F)`` tensor).
        snap_blocks: snapshot block of every rank.
        vert_blocks: vertex block of every rank.
        num_chunks: chunks per snapshot block (``1``: no overlap).
        group, recorder, wire_dtype: as :func:`snapshot_to_vertex`; a recorded ``ms`` runs from the start of a
            chunk's exchange to the end of its wait, so it includes the compute it overlapped.

    Returns:
        ``(T, N_p, *F)``.
    """
    rank, _ = _group_rank_and_size(group)
    num_local_nodes = len(vert_blocks[rank])

    def start(h: torch.Tensor, blocks: tuple[range, ...], flights: list[_InFlight]) -> torch.Tensor:
        return _StartSnapshotToVertex.apply(h, blocks, tuple(vert_blocks), group, recorder, wire_dtype, flights)

    return _overlapped(compute, snap_blocks, num_chunks, group, start, lambda n: (n, num_local_nodes), cat_dim=0)


def _overlapped(
    compute: Callable[[range], torch.Tensor],
    blocks: Sequence[range],
    num_chunks: int,
    group: Any,
    start: Callable[[torch.Tensor, tuple[range, ...], list[_InFlight]], torch.Tensor],
    piece_shape: Callable[[int], tuple[int, int]],
    cat_dim: int,
) -> torch.Tensor:
    """The chunk loop of both overlapped exchanges: ``blocks`` are the per-rank ranges of the dimension computed
    chunk by chunk, ``start`` starts one chunk's all-to-all (given every rank's chunk), and a received piece from a
    rank's chunk of ``n`` entries has the leading shape ``piece_shape(n)``; pieces are joined along ``cat_dim`` in
    (rank, chunk) order."""
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
    rank, world = _group_rank_and_size(group)
    mine = blocks[rank]
    if world == 1:
        return compute(range(0, len(mine)))
    chunks = [[range(b.start + c.start, b.start + c.stop) for c in vertex_blocks(len(b), num_chunks)] for b in blocks]
    flights: list[_InFlight] = []
    recvs, shapes = [], []
    for c in range(num_chunks):
        local = chunks[rank][c]
        h = _ensure_backward_participation(compute(range(local.start - mine.start, local.stop - mine.start)))
        shapes.append((h.dtype, tuple(h.shape[2:])))
        recvs.append(start(h, tuple(block[c] for block in chunks), flights))
    pieces: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for c, (flight, recv, (dtype, feat)) in enumerate(zip(flights, recvs, shapes, strict=True)):
        flight.wait()
        sizes = [math.prod(piece_shape(len(block[c]))) * math.prod(feat) for block in chunks]
        for q, part in enumerate(recv.to(dtype).split(sizes)):
            pieces[q].append(part.view(*piece_shape(len(chunks[q][c])), *feat))
    return torch.cat([part for rank_pieces in pieces for part in rank_pieces], dim=cat_dim)


def _ensure_backward_participation(h: torch.Tensor) -> torch.Tensor:
    # A rank with an empty block usually gets an input that does not require grad (nothing computed it),
    # which would skip this rank's backward all-to-all and hang the others: make it a grad-requiring leaf.
    if torch.is_grad_enabled() and h.numel() == 0 and not h.requires_grad and h.is_floating_point():
        return h.detach().requires_grad_()
    return h
