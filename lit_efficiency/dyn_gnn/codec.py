r"""Diff-encoded snapshots of a discrete-time dynamic graph: pure functions, plain PyTorch.

Implements the graph-difference transfer of Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural
Networks", SC'21 (https://arxiv.org/abs/2109.07893), as reconstructed in ``docs/dynamic_gnn.md`` section 3. No code of
the paper was released; the encoding below is this project's own design:

* A snapshot over ``N`` vertices is a strictly increasing array of keys ``row * N + col`` (its canonical order) with
  optional float weights aligned to the keys. Keys are ``int32`` when ``N * N < 2**31``, else ``int64``.
* Snapshot 0 is always shipped full. For ``t >= 1`` the encoder builds both a :class:`FullSnapshot` and a
  :class:`SnapshotDiff` against ``A_{t-1}`` and keeps whichever has fewer bytes (:attr:`nbytes`; a tie ships full).
* A diff lists the deleted entries as **positions** in the previous snapshot's key array (not as keys: deleting by
  position is a keep-mask, deleting by value is a device-side ``isin``, measured 4.5x slower than a full transfer in
  ``docs/dynamic_gnn.md`` section 5), the added keys (sorted) with their weights, and for weighted graphs the
  positions (in the previous snapshot) and new values of the weights that changed -- or, when that is smaller (most
  weights change), the snapshot's whole weight array in canonical order (*dense weights*: no positions), so a graph
  whose weights all change every step still ships its structure as a diff. Set differences are computed on
  sorted keys with ``searchsorted``, never by sparse subtraction (which keeps explicit zeros).
* Decoding rebuilds the exact canonical array on any device without a host synchronisation (ranks from a cumulative
  sum, merge positions from ``searchsorted``, two scatters). Range/order checks and the per-snapshot checksum run on
  the device too; :func:`decode_block` reads all of a block's results with one synchronisation (:class:`BlockCheck`).
* Normalised GCN values ``D^-1/2 (A + I) D^-1/2`` are never shipped:
  :func:`~lit_efficiency.dyn_gnn.adjacency.gcn_norm_adj_t` recomputes them from the decoded keys on the device.

Checksum (:func:`snapshot_checksum`): with the Mersenne prime ``P = 2**31 - 1``, each array ``x`` (keys as ``int64``;
weights as their raw IEEE bit patterns) is hashed as

.. math::
    h(x) = \sum_i \big( ((x_i \bmod P)\,k_1 + k_2)^2 \bmod P \big) \cdot \big((i\,c + d) \bmod P\big) \bmod P,

and the checksum is ``h(keys) * 2**31 + h(weights)`` (``h(weights) = 0`` when unweighted). Every intermediate value
stays below ``2**63`` for ``E < 2**32`` entries, so the ``int64`` torch ops give the same integer on every device and
backend; the position factor makes it order-sensitive and the squaring makes it non-linear in the values. It is a
corruption check, not a cryptographic hash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_efficiency.core.errors import DataError
from lit_efficiency.dyn_gnn.adjacency import edge_key, key_dtype, match_sorted

__all__ = [
    "HEADER_BYTES",
    "BlockCheck",
    "DecodedSnapshot",
    "EncodedGraph",
    "FullSnapshot",
    "SnapshotDiff",
    "TransferStats",
    "decode_block",
    "decode_snapshot",
    "encode_graph",
    "encode_snapshots",
    "iter_decode",
    "position_dtype",
    "snapshot_checksum",
    "theoretical_bytes_ratio",
    "transfer_stats",
]

HEADER_BYTES = 48
"""Fixed per-item header counted by :attr:`FullSnapshot.nbytes` and :attr:`SnapshotDiff.nbytes`: six ``int64``
slots (kind, t, num_nodes, num_edges, prev_num_edges, checksum). It is the same for both kinds, so it never decides
the full-versus-diff choice."""

_P = 2**31 - 1
# (k1, k2, c, d) of the checksum lanes; arbitrary constants below P.
_KEY_LANE = (1_103_515_245, 12_345, 2_654_435_761 % _P, 97_531)
_WEIGHT_LANE = (48_271, 1_013_904_223, 40_503, 7_777_777)
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def position_dtype(num_edges: int) -> torch.dtype:
    """Integer dtype of positions into an array of ``num_edges`` entries: ``int32`` when it fits, else ``int64``."""
    return torch.int32 if num_edges < 2**31 else torch.int64


def _bits(weights: Tensor) -> Tensor:
    """Raw IEEE bit patterns of ``weights`` as ``int64`` (bit-exact comparison: ``-0.0 != 0.0``, NaN == NaN)."""
    return weights.contiguous().view(_INT_OF_SIZE[weights.element_size()]).to(torch.int64)


def _hash_lane(values: Tensor, lane: tuple[int, int, int, int]) -> Tensor:
    k1, k2, c, d = lane
    # In place after the first op: two work arrays instead of ten (3x faster on the host at 10^7 keys).
    a = torch.remainder(values, _P)
    a.mul_(k1).add_(k2).remainder_(_P)
    a.mul_(a).remainder_(_P)
    m = torch.arange(values.numel(), device=values.device, dtype=torch.int64).remainder_(_P)
    m.mul_(c).add_(d).remainder_(_P)
    return torch.remainder(a.mul_(m).remainder_(_P).sum(), _P)


def snapshot_checksum(keys: Tensor, weights: Tensor | None = None) -> Tensor:
    """Order-sensitive integer checksum of one snapshot, computed with torch ops on the tensors' device.

    The formula is in the module docstring. The result does not depend on the key dtype (keys are widened to
    ``int64``) nor on the device.

    Args:
        keys: ``(E,)`` integer keys.
        weights: ``(E,)`` float weights, or ``None`` for an unweighted snapshot.

    Returns:
        A 0-dim ``int64`` tensor on ``keys.device``, in ``[0, 2**62)``.
    """
    hk = _hash_lane(keys.reshape(-1).to(torch.int64), _KEY_LANE)
    if weights is None:
        return hk * 2**31
    return hk * 2**31 + _hash_lane(_bits(weights.reshape(-1)), _WEIGHT_LANE)


def _nbytes(*tensors: Tensor | None) -> int:
    return HEADER_BYTES + sum(x.numel() * x.element_size() for x in tensors if x is not None)


@dataclass(frozen=True, eq=False)
class FullSnapshot:
    """Snapshot ``t`` shipped whole.

    Attributes:
        t: Snapshot index.
        num_nodes: Number of vertices ``N``.
        num_edges: Number of entries ``E_t`` (stored separately so that a truncated array is detected).
        keys: ``(E_t,)`` strictly increasing keys ``row * N + col`` (:func:`key_dtype`).
        weights: ``(E_t,)`` float weights aligned with ``keys``, or ``None``.
        checksum: :func:`snapshot_checksum` of ``(keys, weights)``.
    """

    t: int
    num_nodes: int
    num_edges: int
    keys: Tensor
    weights: Tensor | None
    checksum: int

    kind = "full"

    @property
    def nbytes(self) -> int:
        """Bytes shipped: the key and weight arrays plus :data:`HEADER_BYTES`."""
        return _nbytes(self.keys, self.weights)

    def pin_memory(self) -> FullSnapshot:
        """A copy with its tensors in pinned host memory (same object when CUDA is unavailable)."""
        if not torch.cuda.is_available():
            return self
        w = None if self.weights is None else self.weights.pin_memory()
        return FullSnapshot(self.t, self.num_nodes, self.num_edges, self.keys.pin_memory(), w, self.checksum)


@dataclass(frozen=True, eq=False)
class SnapshotDiff:
    """Snapshot ``t`` as a difference against the snapshot it is applied to (``A_{t-1}`` for a forward diff).

    Attributes:
        t: Index of the snapshot this diff produces.
        num_nodes: Number of vertices ``N``.
        num_edges: ``E_t``, entries of the produced snapshot.
        prev_num_edges: Entries of the snapshot the diff is applied to.
        deleted_pos: ``(D,)`` strictly increasing positions (:func:`position_dtype`) in the previous key array.
        added_keys: ``(A,)`` strictly increasing keys absent from the previous snapshot.
        added_weights: ``(A,)`` weights of the added keys, or ``None`` when unweighted.
        changed_pos: ``(C,)`` strictly increasing positions in the previous array of kept entries whose weight
            changed (bit-wise), or ``None`` when unweighted.
        changed_weights: ``(C,)`` their new weights, or ``None``.
        checksum: :func:`snapshot_checksum` of the produced snapshot.
        weights: Dense weights: ``(E_t,)`` weights of the produced snapshot in canonical order, shipped instead of
            ``added_weights`` / ``changed_pos`` / ``changed_weights`` (then all three ``None``) when that is smaller.
    """

    t: int
    num_nodes: int
    num_edges: int
    prev_num_edges: int
    deleted_pos: Tensor
    added_keys: Tensor
    added_weights: Tensor | None
    changed_pos: Tensor | None
    changed_weights: Tensor | None
    checksum: int
    weights: Tensor | None = None

    kind = "diff"

    @property
    def weighted(self) -> bool:
        """Whether the diff carries weights (sparse or dense)."""
        return self.added_weights is not None or self.weights is not None

    @property
    def nbytes(self) -> int:
        """Bytes shipped: all position, key and weight arrays plus :data:`HEADER_BYTES`."""
        return _nbytes(
            self.deleted_pos, self.added_keys, self.added_weights, self.changed_pos, self.changed_weights, self.weights
        )

    @property
    def num_entries(self) -> int:
        """Entries shipped (deleted + added + changed, or + ``E_t`` dense weights), the unit of the ratios in
        ``docs/dynamic_gnn.md``."""
        changed = 0 if self.changed_pos is None else self.changed_pos.numel()
        dense = 0 if self.weights is None else self.weights.numel()
        return self.deleted_pos.numel() + self.added_keys.numel() + changed + dense

    def pin_memory(self) -> SnapshotDiff:
        """A copy with its tensors in pinned host memory (same object when CUDA is unavailable)."""
        if not torch.cuda.is_available():
            return self

        def pin(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.pin_memory()

        return SnapshotDiff(
            self.t,
            self.num_nodes,
            self.num_edges,
            self.prev_num_edges,
            self.deleted_pos.pin_memory(),
            self.added_keys.pin_memory(),
            pin(self.added_weights),
            pin(self.changed_pos),
            pin(self.changed_weights),
            self.checksum,
            pin(self.weights),
        )


Item = FullSnapshot | SnapshotDiff


class DecodedSnapshot(NamedTuple):
    """One decoded snapshot: index, ``(E_t,)`` keys and ``(E_t,)`` weights (or ``None``) on the target device."""

    t: int
    keys: Tensor
    weights: Tensor | None


class TransferStats(NamedTuple):
    """Entry and byte totals of a snapshot sequence (see :func:`transfer_stats`).

    Attributes:
        full_entries: ``sum_t E_t`` (every snapshot shipped full).
        diff_entries: ``E_0 + sum_{t>=1} (|added| + |deleted| + |changed|)`` (every ``t >= 1`` shipped as a diff).
        full_bytes: Bytes if every snapshot is shipped full.
        encoded_bytes: Bytes of the adaptive encoding (full or diff, whichever is smaller).
    """

    full_entries: int
    diff_entries: int
    full_bytes: int
    encoded_bytes: int

    @property
    def entries_ratio(self) -> float:
        """``full_entries / diff_entries`` (below 1: diffs alone would ship more than full snapshots)."""
        return self.full_entries / max(self.diff_entries, 1)

    @property
    def bytes_ratio(self) -> float:
        """``full_bytes / encoded_bytes`` of the adaptive encoding (always >= 1)."""
        return self.full_bytes / max(self.encoded_bytes, 1)


@dataclass(frozen=True, eq=False)
class EncodedGraph:
    """A diff-encoded snapshot sequence, host-side.

    Attributes:
        num_nodes: Number of vertices ``N``.
        items: Per snapshot, the item to ship (``items[0]`` is always a :class:`FullSnapshot`).
        full_nbytes: Per snapshot, :attr:`FullSnapshot.nbytes` of the full version.
        diff_entries: Per snapshot, entries of its forward diff (``E_0`` at ``t = 0``), whether chosen or not.
        weighted: Whether the snapshots carry weights.
    """

    num_nodes: int
    items: tuple[Item, ...]
    full_nbytes: tuple[int, ...]
    diff_entries: tuple[int, ...]
    weighted: bool

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, t: int) -> Item:
        return self.items[t]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    @property
    def kinds(self) -> list[str]:
        """``"full"`` or ``"diff"`` per snapshot."""
        return [item.kind for item in self.items]

    @property
    def num_edges(self) -> list[int]:
        """``E_t`` per snapshot."""
        return [item.num_edges for item in self.items]

    def full_bytes(self) -> int:
        """Bytes shipped if every snapshot were sent full."""
        return sum(self.full_nbytes)

    def encoded_bytes(self) -> int:
        """Bytes shipped by this encoding (forward direction)."""
        return sum(item.nbytes for item in self.items)

    def stats(self) -> TransferStats:
        """Entry and byte totals (see :class:`TransferStats`)."""
        return TransferStats(
            full_entries=sum(self.num_edges),
            diff_entries=sum(self.diff_entries),
            full_bytes=self.full_bytes(),
            encoded_bytes=self.encoded_bytes(),
        )

    def pin_memory(self) -> EncodedGraph:
        """A copy whose shipped items live in pinned host memory (no-op without CUDA)."""
        if not torch.cuda.is_available():
            return self
        return EncodedGraph(
            self.num_nodes,
            tuple(item.pin_memory() for item in self.items),
            self.full_nbytes,
            self.diff_entries,
            self.weighted,
        )


# --------------------------------------------------------------------------------------------------------------------
# Encoding (host side)
# --------------------------------------------------------------------------------------------------------------------


def _canonical_keys(edge_index: Tensor, num_nodes: int, t: int) -> Tensor:
    """Validated ``int64`` keys of a canonical ``(2, E)`` edge_index."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise DataError(f"snapshot {t}: edge_index must be a (2, E) tensor, got {shape}")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise DataError(f"snapshot {t}: edge_index must be an integer tensor, got {edge_index.dtype}")
    ei = edge_index.to(torch.int64)
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
        raise DataError(
            f"snapshot {t}: vertex id out of range [0, {num_nodes}) (min {int(ei.min())}, max {int(ei.max())})"
        )
    keys = edge_key(ei[0], ei[1], num_nodes)
    if keys.numel() > 1:
        bad = torch.nonzero(keys[1:] <= keys[:-1])
        if bad.numel():
            i = int(bad[0]) + 1
            raise DataError(
                f"snapshot {t}: edges not in canonical order (sorted by row*N+col, no duplicates) at column {i}"
            )
    return keys


def _check_weights(weights: Tensor | None, num_edges: int, t: int, dtype: torch.dtype | None) -> Tensor | None:
    if weights is None:
        if dtype is not None:
            raise DataError(f"snapshot {t}: weights missing while other snapshots are weighted")
        return None
    if not isinstance(weights, Tensor) or weights.dim() != 1 or weights.numel() != num_edges:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise DataError(f"snapshot {t}: edge weights must have shape ({num_edges},), got {shape}")
    if not weights.dtype.is_floating_point:
        raise DataError(f"snapshot {t}: edge weights must be floating point, got {weights.dtype}")
    if dtype is not None and weights.dtype != dtype:
        raise DataError(f"snapshot {t}: edge weights are {weights.dtype} but earlier snapshots are {dtype}")
    return weights.detach().to("cpu").contiguous().clone()


def _diff(
    t: int, num_nodes: int, prev_keys: Tensor, prev_w: Tensor | None, keys: Tensor, w: Tensor | None, checksum: int
) -> SnapshotDiff:
    """Diff ``A_{t-1} -> A_t`` of two canonical ``int64`` key arrays (and their weights)."""
    n_prev = prev_keys.numel()
    pd_prev = position_dtype(n_prev)
    idx_in_prev, cur_present = match_sorted(prev_keys, keys)
    cur_kept = torch.nonzero(cur_present).flatten()
    prev_kept = idx_in_prev[cur_kept]  # the kept keys' positions in A_{t-1}: no second search needed
    prev_present = torch.zeros(n_prev, dtype=torch.bool, device=prev_keys.device)
    prev_present[prev_kept] = True
    deleted_pos = torch.nonzero(~prev_present).flatten()  # positions in A_{t-1}
    added_pos = torch.nonzero(~cur_present).flatten()  # positions in A_t
    changed_pos = changed_w = None
    if w is not None:
        assert prev_w is not None
        changed = _bits(prev_w[prev_kept]) != _bits(w[cur_kept])
        changed_pos, changed_w = prev_kept[changed].to(pd_prev), w[cur_kept[changed]]
    return SnapshotDiff(
        t=t,
        num_nodes=num_nodes,
        num_edges=keys.numel(),
        prev_num_edges=n_prev,
        deleted_pos=deleted_pos.to(pd_prev),
        added_keys=keys[added_pos].to(key_dtype(num_nodes)),
        added_weights=None if w is None else w[added_pos],
        changed_pos=changed_pos,
        changed_weights=changed_w,
        checksum=checksum,
    )


def _dense_if_smaller(diff: SnapshotDiff, weights: Tensor | None) -> SnapshotDiff:
    """``diff`` with its snapshot's whole weight array instead of per-entry changes, when that ships fewer bytes."""
    if weights is None or _nbytes(weights) >= _nbytes(diff.added_weights, diff.changed_pos, diff.changed_weights):
        return diff
    return dataclasses.replace(diff, added_weights=None, changed_pos=None, changed_weights=None, weights=weights)


def encode_snapshots(
    edge_indices: Sequence[Tensor],
    num_nodes: int,
    edge_weights: Sequence[Tensor | None] | None = None,
) -> EncodedGraph:
    r"""Encode a snapshot sequence, choosing per snapshot a full copy or a diff, whichever ships fewer bytes.

    .. math::
        \Delta^+_t = K_t \setminus K_{t-1}, \qquad
        \Delta^-_t = \{\, i : K_{t-1}[i] \notin K_t \,\}, \qquad
        \mathrm{item}_t = \begin{cases} \mathrm{diff}_t & \text{if } \mathrm{bytes}(\mathrm{diff}_t)
        < \mathrm{bytes}(\mathrm{full}_t),\ t \ge 1 \\ \mathrm{full}_t & \text{otherwise} \end{cases}

    where ``K_t`` is the sorted key array of snapshot ``t`` and ``\Delta^-_t`` holds positions in ``K_{t-1}``.

    Shapes:
        - edge_indices: ``S`` tensors of shape ``(2, E_t)``, sorted by ``row * N + col`` without duplicates
        - edge_weights: ``S`` tensors of shape ``(E_t,)`` (all float, same dtype) or ``None``

    Args:
        edge_indices: Per snapshot, its edges in canonical order.
        num_nodes: Number of vertices ``N`` shared by all snapshots.
        edge_weights: Per snapshot, its edge weights; ``None`` (or all ``None``) for an unweighted graph.

    Returns:
        The :class:`EncodedGraph` (host tensors).

    Raises:
        DataError: A snapshot is not canonical, has ids out of range or weights of the wrong shape/dtype (the message
            names the snapshot).
    """
    if num_nodes <= 0:
        raise DataError(f"num_nodes must be positive, got {num_nodes}")
    if edge_weights is not None and len(edge_weights) != len(edge_indices):
        raise DataError(f"edge_weights has {len(edge_weights)} snapshots but edge_indices has {len(edge_indices)}")
    weighted = edge_weights is not None and any(w is not None for w in edge_weights)
    if weighted:
        assert edge_weights is not None
        missing = [t for t, w in enumerate(edge_weights) if w is None]
        if missing:
            raise DataError(f"snapshot {missing[0]}: weights missing while other snapshots are weighted")
    if not edge_indices:
        return EncodedGraph(num_nodes, (), (), (), weighted)
    weights = list(edge_weights) if weighted else [None] * len(edge_indices)  # type: ignore[arg-type]
    return encode_stream(zip(edge_indices, weights, strict=True), num_nodes)


def encode_stream(
    snapshots: Iterable[tuple[Tensor, Tensor | None]],
    num_nodes: int,
    on_snapshot: Callable[[int, Tensor, Tensor | None], None] | None = None,
) -> EncodedGraph:
    """Adaptive full/diff encoding of a snapshot *stream*, holding only two snapshots' keys at a time.

    Same items as :func:`encode_snapshots` (which needs the whole list in memory),
    so a graph far larger than memory can be encoded from a generator such as
    :func:`~lit_efficiency.dyn_gnn.synthetic.iter_synthetic_snapshots`.

    Args:
        snapshots: ``(edge_index (2, E_t), weights (E_t,) or None)`` per snapshot, in canonical order.
        num_nodes: ``N``.
        on_snapshot: Called as ``on_snapshot(t, keys_int64, weights)`` for every snapshot (e.g. to sample targets).

    Returns:
        The :class:`EncodedGraph`.

    Raises:
        DataError: A snapshot is not canonical, out of range, or its weights are inconsistent (names the snapshot).
    """
    if num_nodes <= 0:
        raise DataError(f"num_nodes must be positive, got {num_nodes}")
    kd = key_dtype(num_nodes)
    items: list[Item] = []
    full_nbytes: list[int] = []
    diff_entries: list[int] = []
    prev: FullSnapshot | None = None
    prev_keys: Tensor | None = None
    weighted: bool | None = None
    w_dtype: torch.dtype | None = None
    for t, snap in enumerate(snapshots):
        edge_index, weights = snap[0], snap[1]
        keys = _canonical_keys(edge_index.detach().to("cpu"), num_nodes, t)
        if weighted is None:
            weighted = weights is not None
        elif weighted != (weights is not None):
            raise DataError(f"snapshot {t}: weighted and unweighted snapshots mixed")
        w = _check_weights(weights, keys.numel(), t, w_dtype)
        w_dtype = None if w is None else w.dtype
        if on_snapshot is not None:
            on_snapshot(t, keys, w)
        checksum = int(snapshot_checksum(keys, w))
        full = FullSnapshot(t, num_nodes, keys.numel(), keys.to(kd), w, checksum)
        full_nbytes.append(full.nbytes)
        if prev is None or prev_keys is None:
            items.append(full)
            diff_entries.append(full.num_edges)
        else:
            fwd = _diff(t, num_nodes, prev_keys, prev.weights, keys, w, checksum)
            diff_entries.append(fwd.num_entries)
            fwd = _dense_if_smaller(fwd, w)
            items.append(fwd if fwd.nbytes < full.nbytes else full)
        prev, prev_keys = full, keys
    if not items:
        raise DataError("encode_stream: the snapshot stream is empty")
    return EncodedGraph(num_nodes, tuple(items), tuple(full_nbytes), tuple(diff_entries), bool(weighted))


def encode_graph(graph: Any) -> EncodedGraph:
    """Encode any object with ``num_nodes``, ``edge_indices`` and ``edge_weights`` attributes (e.g. ``DynamicGraph``).

    Args:
        graph: Duck-typed dynamic graph; ``edge_weights`` may be missing or ``None``.

    Returns:
        :func:`encode_snapshots` of its snapshots.
    """
    return encode_snapshots(list(graph.edge_indices), int(graph.num_nodes), getattr(graph, "edge_weights", None))


def transfer_stats(
    edge_indices: Sequence[Tensor], num_nodes: int, edge_weights: Sequence[Tensor | None] | None = None
) -> TransferStats:
    """Entries and bytes of full versus diff-encoded transfer of a snapshot sequence, for reporting.

    Args:
        edge_indices: As in :func:`encode_snapshots`.
        num_nodes: As in :func:`encode_snapshots`.
        edge_weights: As in :func:`encode_snapshots`.

    Returns:
        :meth:`EncodedGraph.stats` of the encoding.
    """
    return encode_snapshots(edge_indices, num_nodes, edge_weights).stats()


def theoretical_bytes_ratio(
    num_edges: int,
    num_added: int,
    num_deleted: int,
    num_nodes: int,
    num_changed: int = 0,
    weight_bytes: int = 0,
) -> float:
    r"""Bytes of a full snapshot over bytes of its diff, from entry counts alone (headers ignored).

    .. math::
        \frac{E\,(b_k + b_w)}{D\,b_p + A\,(b_k + b_w) + C\,(b_p + b_w)}

    with ``b_k`` the key size (:func:`key_dtype`), ``b_p`` the position size (:func:`position_dtype` of the previous
    snapshot, approximated by ``E - A + D``) and ``b_w`` the weight size (0 when unweighted).

    Args:
        num_edges: ``E_t``.
        num_added: ``|added|``.
        num_deleted: ``|deleted|``.
        num_nodes: ``N``.
        num_changed: Kept entries whose weight changed.
        weight_bytes: Bytes per weight (4 for float32, 0 for unweighted).

    Returns:
        The ratio (``inf`` for an empty diff).
    """
    b_k = torch.empty((), dtype=key_dtype(num_nodes)).element_size()
    b_p = torch.empty((), dtype=position_dtype(num_edges - num_added + num_deleted)).element_size()
    diff = num_deleted * b_p + num_added * (b_k + weight_bytes) + num_changed * (b_p + weight_bytes)
    full = num_edges * (b_k + weight_bytes)
    return float("inf") if diff == 0 else full / diff


# --------------------------------------------------------------------------------------------------------------------
# Decoding (any device)
# --------------------------------------------------------------------------------------------------------------------


def _check_positions(pos: Tensor, limit: int, what: str, t: int) -> None:
    if pos.numel() == 0:
        return
    lo, hi = int(pos.min()), int(pos.max())
    if lo < 0 or hi >= limit:
        raise DataError(f"snapshot {t}: {what} position out of range [0, {limit}) (min {lo}, max {hi})")
    if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
        raise DataError(f"snapshot {t}: {what} positions are not strictly increasing")


def _check_keys(keys: Tensor, num_nodes: int, what: str, t: int) -> None:
    if keys.numel() == 0:
        return
    lo, hi = int(keys.min()), int(keys.max())
    if lo < 0 or hi >= num_nodes * num_nodes:
        raise DataError(f"snapshot {t}: {what} key out of range [0, N*N={num_nodes * num_nodes}) (min {lo}, max {hi})")
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise DataError(f"snapshot {t}: {what} keys are not strictly increasing")


def _sorted_in_range_flag(x: Tensor, limit: int) -> Tensor | None:
    """Device flag: some value of ``x`` is outside ``[0, limit)`` or ``x`` is not strictly increasing (no sync)."""
    if x.numel() == 0:
        return None
    bad = (x.min() < 0) | (x.max() >= limit)
    return bad | (x[1:] <= x[:-1]).any() if x.numel() > 1 else bad


def _value_flag(item: Item, n_prev: int) -> Tensor | None:
    """Device flag of :func:`_check_values`' conditions, computed without a host synchronisation."""
    n2 = item.num_nodes * item.num_nodes
    if isinstance(item, FullSnapshot):
        return _sorted_in_range_flag(item.keys, n2)
    flags = [_sorted_in_range_flag(item.deleted_pos, n_prev), _sorted_in_range_flag(item.added_keys, n2)]
    if item.changed_pos is not None:
        flags.append(_sorted_in_range_flag(item.changed_pos, n_prev))
        if item.changed_pos.numel() and item.deleted_pos.numel():
            _, hit = match_sorted(item.deleted_pos.to(torch.int64), item.changed_pos.to(torch.int64))
            flags.append(hit.any())
    present = [f for f in flags if f is not None]
    return torch.stack(present).any() if present else None


def _check_values(item: Item, n_prev: int) -> None:
    """Range and order of an item's positions and keys (synchronises with the host: error path and host items)."""
    t = item.t
    if isinstance(item, FullSnapshot):
        _check_keys(item.keys, item.num_nodes, "snapshot", t)
        return
    _check_positions(item.deleted_pos, n_prev, "deleted", t)
    _check_keys(item.added_keys, item.num_nodes, "added", t)
    if item.changed_pos is not None:
        _check_positions(item.changed_pos, n_prev, "changed", t)
        if item.changed_pos.numel() and item.deleted_pos.numel():
            _, hit = match_sorted(item.deleted_pos.to(torch.int64), item.changed_pos.to(torch.int64))
            if bool(hit.any()):
                raise DataError(f"snapshot {t}: a changed-weight position is also deleted")


def _check_full(item: FullSnapshot) -> None:
    """Shape checks of a full item (metadata only: no synchronisation)."""
    t = item.t
    if item.keys.dim() != 1 or item.keys.numel() != item.num_edges:
        raise DataError(f"snapshot {t}: truncated snapshot: {item.keys.numel()} keys for num_edges={item.num_edges}")
    if item.weights is not None and item.weights.numel() != item.num_edges:
        raise DataError(
            f"snapshot {t}: truncated snapshot: {item.weights.numel()} weights for num_edges={item.num_edges}"
        )


def _check_diff(item: SnapshotDiff, prev_keys: Tensor | None, prev_weights: Tensor | None) -> None:
    """Shape and type checks of a diff against its predecessor (metadata only: no synchronisation)."""
    t = item.t
    if prev_keys is None:
        raise DataError(f"snapshot {t}: a diff needs the previous snapshot's keys, got None")
    n_prev = prev_keys.numel()
    if n_prev != item.prev_num_edges:
        raise DataError(f"snapshot {t}: diff expects a previous snapshot of {item.prev_num_edges} edges, got {n_prev}")
    n_del, n_add = item.deleted_pos.numel(), item.added_keys.numel()
    if n_prev - n_del + n_add != item.num_edges:
        raise DataError(
            f"snapshot {t}: truncated diff: {n_prev} - {n_del} deleted + {n_add} added != num_edges={item.num_edges}"
        )
    weighted = item.weighted
    sparse = item.added_weights is not None
    if weighted != (prev_weights is not None) or sparse != (item.changed_pos is not None):
        raise DataError(f"snapshot {t}: weighted and unweighted data mixed (diff weighted: {weighted})")
    if item.weights is not None:
        if sparse:
            raise DataError(f"snapshot {t}: a diff has both dense and sparse weights")
        if item.weights.numel() != item.num_edges:
            raise DataError(
                f"snapshot {t}: truncated diff: {item.weights.numel()} dense weights for num_edges={item.num_edges}"
            )
        if prev_weights is not None and prev_weights.dtype != item.weights.dtype:
            raise DataError(f"snapshot {t}: previous weights are {prev_weights.dtype}, diff has {item.weights.dtype}")
    elif item.added_weights is not None:
        assert prev_weights is not None and item.changed_pos is not None
        if item.added_weights.numel() != n_add:
            raise DataError(
                f"snapshot {t}: truncated diff: {item.added_weights.numel()} added weights for {n_add} keys"
            )
        if item.changed_weights is None or item.changed_weights.numel() != item.changed_pos.numel():
            got = None if item.changed_weights is None else item.changed_weights.numel()
            raise DataError(
                f"snapshot {t}: truncated diff: {got} changed weights for {item.changed_pos.numel()} positions"
            )
        if prev_weights.dtype != item.added_weights.dtype:
            raise DataError(
                f"snapshot {t}: previous weights are {prev_weights.dtype}, diff has {item.added_weights.dtype}"
            )
        if prev_weights.numel() != n_prev:
            raise DataError(f"snapshot {t}: previous weights have {prev_weights.numel()} entries for {n_prev} keys")


def _apply_diff(
    prev_keys: Tensor, prev_weights: Tensor | None, item: SnapshotDiff, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Rebuild ``(keys, weights)`` from the previous snapshot without a host synchronisation.

    Each kept previous entry ``i`` lands at ``rank_kept(i) + #{added < key_i}``; added key ``j`` lands at
    ``j + p_j - #{deleted among the first p_j}``, with ``p_j = #{prev < a_j}`` (one binary search per *added* key).
    Since added and previous keys are distinct, ``a_j < key_i`` exactly when ``p_j <= i``: ``#{added < key_i}`` is a
    running count of the ``p_j`` (a scatter-add and a cumulative sum), not one binary search per previous entry.
    Deleted entries are scattered into a dummy slot ``E_t``.
    """
    n_prev, n_out = prev_keys.numel(), item.num_edges
    kd = item.added_keys.dtype
    prev_keys = prev_keys.to(device=device, dtype=kd)
    added = item.added_keys.to(device, non_blocking=True)
    # Clamped: a corrupted position must not index out of bounds before the (deferred) check reports it.
    deleted = item.deleted_pos.to(device, non_blocking=True).to(torch.int64).clamp(0, max(n_prev - 1, 0))

    keep = torch.ones(n_prev, dtype=torch.bool, device=device)
    keep.index_fill_(0, deleted, False)  # not keep[deleted] = False: that copies a host scalar (a synchronisation)
    deleted_before = torch.zeros(n_prev + 1, dtype=torch.int64, device=device)
    torch.cumsum(~keep, 0, out=deleted_before[1:])
    # rank among kept entries = i - #deleted before i
    kept_rank = torch.arange(n_prev, device=device) - deleted_before[:-1]
    n_prev_below = torch.searchsorted(prev_keys, added)  # p_j
    added_at = torch.zeros(n_prev + 1, dtype=torch.int64, device=device)
    added_at.scatter_add_(0, n_prev_below, torch.ones_like(n_prev_below))
    added_below = added_at[:n_prev].cumsum(0)  # #{j : p_j <= i} = #{added < key_i}
    new_pos = torch.where(keep, kept_rank + added_below, n_out).clamp(0, n_out)
    added_pos = (torch.arange(added.numel(), device=device) + n_prev_below - deleted_before[n_prev_below]).clamp(
        0, n_out
    )

    keys = torch.empty(n_out + 1, dtype=kd, device=device)
    keys.scatter_(0, new_pos, prev_keys)
    keys.scatter_(0, added_pos, added)
    if prev_weights is None or item.weights is not None:
        return keys[:n_out], None if item.weights is None else item.weights.to(device, non_blocking=True)
    assert item.added_weights is not None and item.changed_pos is not None and item.changed_weights is not None
    prev_weights = prev_weights.to(device)
    weights = torch.empty(n_out + 1, dtype=prev_weights.dtype, device=device)
    weights.scatter_(0, new_pos, prev_weights)
    weights.scatter_(0, added_pos, item.added_weights.to(device, non_blocking=True))
    changed = item.changed_pos.to(device, non_blocking=True).to(torch.int64).clamp(0, max(n_prev - 1, 0))
    weights.scatter_(0, new_pos[changed], item.changed_weights.to(device, non_blocking=True))
    return keys[:n_out], weights[:n_out]


class BlockCheck:
    """The deferred checks of a decoded block: one device flag and checksum per snapshot, read by one synchronisation.

    :func:`decode_block` queues every range/order check and checksum comparison on the device; :meth:`raise_if_failed`
    copies the ``S`` flags to the host once (call it after queuing the block's compute to overlap both) and, on a
    failure, re-runs the host checks on the first failing snapshot so the error names it and what is wrong.
    """

    def __init__(self, items: list[Item], prev_counts: list[int], flags: Tensor | None, sums: Tensor | None) -> None:
        self.items, self.prev_counts, self.flags, self.checksums = items, prev_counts, flags, sums

    def raise_if_failed(self) -> None:
        """Raise :class:`~lit_efficiency.core.errors.DataError` (one line naming the snapshot) if any check failed."""
        if self.flags is None:
            return
        failed = self.flags.nonzero()  # the one synchronisation of the block
        if failed.numel() == 0:
            return
        i = int(failed[0, 0])
        item = self.items[i]
        _check_values(_to_cpu(item), self.prev_counts[i])
        got = None if self.checksums is None else int(self.checksums[i])
        raise DataError(f"snapshot {item.t}: checksum mismatch (stored {item.checksum}, rebuilt {got})")


def _to_cpu(item: Item) -> Item:
    fields = {f: getattr(item, f) for f in item.__dataclass_fields__}  # type: ignore[union-attr]
    return type(item)(**{k: v.cpu() if isinstance(v, Tensor) else v for k, v in fields.items()})


def decode_block(
    prev_keys: Tensor | None,
    prev_weights: Tensor | None,
    items: Sequence[Item],
    device: torch.device | str | None = None,
    verify: bool = True,
) -> tuple[list[tuple[Tensor, Tensor | None]], BlockCheck]:
    r"""Rebuild consecutive snapshots on ``device`` with no host synchronisation; their checks are deferred.

    Each item is decoded from its predecessor (:func:`decode_snapshot`'s algorithm). Shape and type checks read only
    metadata and run at once; range, order and (with ``verify``) checksum checks are queued on the device and read by
    the returned :class:`BlockCheck`'s one synchronisation. Indices are clamped, so a corrupted item yields garbage
    that the check then reports, never an out-of-bounds access.

    Args:
        prev_keys: Keys of the snapshot before ``items[0]`` (``None`` allowed when it is a :class:`FullSnapshot`).
        prev_weights: Its weights, or ``None`` when unweighted.
        items: Consecutive :class:`FullSnapshot` / :class:`SnapshotDiff` items.
        device: Target device (default: ``prev_keys.device``, or CPU).
        verify: Also compare every rebuilt snapshot's checksum with the stored one.

    Returns:
        ``[(keys, weights)]`` per item, and the :class:`BlockCheck` to call :meth:`~BlockCheck.raise_if_failed` on.

    Raises:
        DataError: Truncated arrays or mixed weighted/unweighted items (at once); the rest from the check.
    """
    if device is None:
        device = prev_keys.device if prev_keys is not None else torch.device("cpu")
    device = torch.device(device)
    out: list[tuple[Tensor, Tensor | None]] = []
    flags: list[Tensor] = []
    sums: list[Tensor] = []
    prev_counts: list[int] = []
    keys, weights = prev_keys, prev_weights
    for item in items:
        n_prev = 0 if keys is None else keys.numel()
        if isinstance(item, FullSnapshot):
            _check_full(item)
            keys = item.keys.to(device, non_blocking=True)
            weights = None if item.weights is None else item.weights.to(device, non_blocking=True)
        elif isinstance(item, SnapshotDiff):
            _check_diff(item, keys, weights)
            assert keys is not None
            keys, weights = _apply_diff(keys, weights, item, device)
        else:
            raise DataError(f"cannot decode an object of type {type(item).__name__} as a snapshot")
        value_flag = _value_flag(item, n_prev)
        flag = torch.zeros((), dtype=torch.bool, device=device) if value_flag is None else value_flag.to(device)
        if verify:
            checksum = snapshot_checksum(keys, weights)
            flag = flag | (checksum != item.checksum)
            sums.append(checksum)
        flags.append(flag)
        prev_counts.append(n_prev)
        out.append((keys, weights))
    stacked = torch.stack(flags) if flags else None
    return out, BlockCheck(list(items), prev_counts, stacked, torch.stack(sums) if sums else None)


def decode_snapshot(
    prev_keys: Tensor | None,
    prev_weights: Tensor | None,
    item: Item,
    device: torch.device | str | None = None,
    verify: bool = True,
) -> tuple[Tensor, Tensor | None]:
    r"""Rebuild snapshot ``item.t`` on ``device`` from the previous snapshot and one encoded item, checked at once.

    For a diff: keep-mask from the deleted positions, compaction and merge-insertion of the added keys so that the
    canonical sorted order is reproduced exactly, then the changed weights. This is :func:`decode_block` on one item
    followed by its check (one synchronisation); decode a whole block with :func:`decode_block` to check once.

    .. math::
        K_t = \mathrm{merge}\big(K_{t-1}[\neg \Delta^-_t],\ \Delta^+_t\big)

    Shapes:
        - prev_keys: ``(E_{t-1},)`` on ``device`` (ignored for a full item)
        - prev_weights: ``(E_{t-1},)`` or ``None``
        - output: ``(E_t,)`` keys in :func:`key_dtype` and ``(E_t,)`` weights or ``None``

    Args:
        prev_keys: Keys of the snapshot the item applies to (``None`` allowed for a :class:`FullSnapshot`).
        prev_weights: Its weights, or ``None`` when unweighted.
        item: A :class:`FullSnapshot` or :class:`SnapshotDiff`.
        device: Target device (default: ``prev_keys.device``, or CPU).
        verify: Verify the checksum.

    Returns:
        ``(keys, weights)`` of the snapshot on ``device``.

    Raises:
        DataError: Bad checksum, truncated arrays, positions or keys out of range (the message names the snapshot).
    """
    (decoded,), check = decode_block(prev_keys, prev_weights, [item], device, verify)
    check.raise_if_failed()
    return decoded


def iter_decode(
    encoded: EncodedGraph, device: torch.device | str | None = None, verify: bool = True
) -> Iterator[DecodedSnapshot]:
    """Decode the snapshots forward in time on ``device``, keeping only the previous one resident.

    Args:
        encoded: Output of :func:`encode_snapshots`.
        device: Target device (default CPU).
        verify: Verify every checksum.

    Yields:
        :class:`DecodedSnapshot` for ``t = 0, ..., S - 1``.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    keys: Tensor | None = None
    weights: Tensor | None = None
    for item in encoded.items:
        keys, weights = decode_snapshot(keys, weights, item, device, verify)
        yield DecodedSnapshot(item.t, keys, weights)
