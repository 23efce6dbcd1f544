r"""Streaming snapshot DataModule: the dynamic graph stays on the host, diff-encoded; blocks are rebuilt on the device.

Implements sections 2-3 of ``docs/dynamic_gnn.md`` (Chakaravarthy et al., SC'21, https://arxiv.org/abs/2109.07893)
for :class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` with ``storage="streamed"``:

* **Host-resident encoded graph.** ``setup`` keeps the model's input snapshots as canonical keys ``row * N + col``
  (:mod:`lit_efficiency.dyn_gnn.codec`): with ``transfer="diff"`` the adaptive full/diff encoding
  (:func:`encode_stream`), with ``transfer="full"`` one :class:`~lit_efficiency.dyn_gnn.codec.FullSnapshot` per
  snapshot. Nothing normalised is stored. On CUDA machines the items are pinned once (guarded: no-op without CUDA).
* **Device-side rebuild.** :func:`rebuild_block` (called by the data module's ``transfer_batch_to_device``) ships
  a block's items, applies the diffs to the previous snapshot's keys (kept on the device between blocks), verifies
  the checksums, and builds the CSR and the GCN normalisation from the degrees on the device
  (:func:`rebuild_adjacency`). Both transfer modes run the same rebuild on the same keys, so training is
  bit-identical between them.
* **Timing.** Every transfer and rebuild is timed (:class:`~lit_efficiency.core.timing.Timer`, CUDA-synchronised)
  and recorded, with the bytes shipped and the bytes a full transfer would have shipped, in
  the data module's ``transfer_recorder``, which
  :class:`~lit_efficiency.dyn_gnn.profilers.TransferProfiler` drains and logs.
* **Prefetch.** On CUDA, after a block is rebuilt the next block's items are copied on a side stream
  (``non_blocking`` from pinned memory) so the copy overlaps the current step's compute; the next transfer waits on
  that stream. On CPU this is a no-op, and a "transfer" is an explicit memory copy (so the CPU figures are memcpy +
  rebuild, not zero).

* **Partitioned.** With ``partitioner="snapshot"`` a rank encodes only the snapshots it holds: every contiguous run
  of them starts with a full item, so a rank never needs a snapshot it does not hold.

* **Node features.** Per-snapshot features ``X_t`` (``(T, N, F)``) are streamed too: snapshot ``t`` ships the rows
  that changed since ``t - 1`` (indices + values) or the whole matrix when that is not smaller
  (:mod:`lit_efficiency.dyn_gnn.feature_codec`), rebuilt on the device from the previous snapshot's features (kept
  there between blocks) and counted in the transfer bytes. Static features ``(N, F)`` and targets are moved as in the
  base class.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.recorders import TransferEvent
from lit_efficiency.core.timing import Timer
from lit_efficiency.dyn_gnn.adjacency import gcn_norm_adj_t, key_dtype, transpose_keys
from lit_efficiency.dyn_gnn.codec import (
    EncodedGraph,
    FullSnapshot,
    Item,
    SnapshotDiff,
    _canonical_keys,
    _check_weights,
    decode_block,
    encode_stream,
    snapshot_checksum,
)
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotDataModule, SnapshotStore
from lit_efficiency.dyn_gnn.feature_codec import FeatureFull, FeatureItem, decode_features, encode_features
from lit_efficiency.dyn_gnn.graph import DynamicGraph

if TYPE_CHECKING:  # pragma: no cover - typing only
    from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule

__all__ = [
    "StreamingBatch",
    "StreamingSnapshotDataModule",
    "StreamingStore",
    "encode_items",
    "encode_stream",
    "rebuild_adjacency",
    "rebuild_block",
    "ship",
    "stream_store",
    "ship_feature_item",
    "ship_item",
]

Transfer = Literal["diff", "full"]


def ship(x: Tensor | None, device: torch.device, non_blocking: bool = True) -> Tensor | None:
    """Host -> ``device`` copy; on a CPU target an explicit copy (so that a CPU "transfer" costs a memcpy)."""
    if x is None:
        return None
    if device.type == "cpu":
        return x.clone()
    return x.to(device, non_blocking=non_blocking)


def ship_item(item: Item, device: torch.device) -> Item:
    """The item with its tensors copied to ``device`` (headers stay Python ints)."""
    if isinstance(item, FullSnapshot):
        return dataclasses.replace(item, keys=ship(item.keys, device), weights=ship(item.weights, device))
    return dataclasses.replace(
        item,
        deleted_pos=ship(item.deleted_pos, device),
        added_keys=ship(item.added_keys, device),
        added_weights=ship(item.added_weights, device),
        changed_pos=ship(item.changed_pos, device),
        changed_weights=ship(item.changed_weights, device),
        weights=ship(item.weights, device),
    )


def rebuild_adjacency(keys: Tensor, weights: Tensor | None, num_nodes: int, directed: bool = False) -> Tensor:
    r"""GCN-normalised ``adj_t`` of one snapshot from its canonical keys, on their device.

    The one normalisation, :func:`~lit_efficiency.dyn_gnn.adjacency.gcn_norm_adj_t` (``bincount`` + ``cumsum``), reads
    keys of ``adj_t`` (``target * N + source``). Canonical keys are ``source * N + target``: for a symmetric snapshot
    they are the same set and are used as they are; a directed one is transposed first (one sort on the device).

    Shapes:
        keys ``(E,)``, weights ``(E,)`` or ``None`` -> sparse CSR ``(N, N)``.

    Args:
        keys: Canonical keys.
        weights: Edge weights or ``None``.
        num_nodes: ``N``.
        directed: The snapshot is not symmetric (transpose the keys).

    Returns:
        ``torch.sparse_csr`` float tensor ``adj_t[target, source]``.
    """
    if directed:
        keys, weights = transpose_keys(keys, num_nodes, weights)
    return gcn_norm_adj_t(keys, num_nodes, weights, dtype=torch.float32).to_sparse_csr()


#: A streamed block is a :class:`SnapshotBatch` whose ``items`` are set (kept as a name for older code).
StreamingBatch = SnapshotBatch


def encode_items(
    snaps: Iterable[tuple[Tensor, Tensor | None] | None], num_nodes: int, transfer: Transfer
) -> tuple[list[Item | None], list[int], EncodedGraph | None]:
    """Host items of the model snapshots (``None`` entries: snapshots this rank does not hold).

    ``snaps`` is consumed once, in order, and may be a generator: a snapshot is encoded as soon as it arrives, so only
    the current and previous snapshots' keys are ever in memory. ``transfer="diff"`` encodes every contiguous run of
    held snapshots adaptively (:func:`encode_stream`; the run's first item is full), ``"full"`` keeps one
    :class:`FullSnapshot` each.

    Returns:
        ``(items, full bytes of each snapshot (0 where not held), the EncodedGraph when one run covers all)``.
    """
    items: list[Item | None] = []
    full_nbytes: list[int] = []
    runs: list[EncodedGraph] = []
    for held, run in itertools.groupby(snaps, key=lambda snap: snap is not None):
        start = len(items)
        if not held:
            for _ in run:
                items.append(None)
                full_nbytes.append(0)
        elif transfer == "diff":
            graph = encode_stream(run, num_nodes)  # type: ignore[arg-type]
            items += [dataclasses.replace(item, t=start + item.t) for item in graph.items]
            full_nbytes += graph.full_nbytes
            runs.append(graph)
        else:
            for snap in run:
                items.append(_full_item(len(items), snap, num_nodes))  # type: ignore[arg-type]
                full_nbytes.append(items[-1].nbytes)  # type: ignore[union-attr]
    encoded = runs[0] if len(runs) == 1 and len(runs[0].items) == len(items) else None
    return items, full_nbytes, encoded


def _full_item(t: int, snap: tuple[Tensor, Tensor | None], num_nodes: int) -> FullSnapshot:
    keys = _canonical_keys(snap[0].detach().cpu(), num_nodes, t)
    w = _check_weights(snap[1], keys.numel(), t, None)
    return FullSnapshot(t, num_nodes, keys.numel(), keys.to(key_dtype(num_nodes)), w, int(snapshot_checksum(keys, w)))


class StreamingStore(SnapshotStore):
    """:class:`SnapshotStore` whose per-snapshot inputs are host items (diff-encoded or full; ``None`` where not held).

    Per-snapshot features ``(T, N, F)`` become feature items (:func:`encode_features`, changed rows with
    ``transfer="diff"``) held instead of ``x``; static features stay in ``x``.

    Args:
        items: ``T`` items to ship.
        full_nbytes: ``T`` bytes of the full version of each snapshot.
        transfer: ``diff`` (changed feature rows where smaller) or ``full``.
        pin_memory: Pin the feature items (CUDA only).
        **kwargs: The other :class:`SnapshotStore` arguments (``num_nodes`` required).
    """

    def __init__(
        self,
        items: list[Item | None],
        full_nbytes: list[int],
        transfer: Transfer = "diff",
        pin_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(adjs=[], **kwargs)
        self.items = items
        self.full_nbytes = full_nbytes
        self.x_items: list[FeatureItem | None] = []
        self.x_full_nbytes = 0
        if self.x is not None and self.x.dim() == 3:
            self.feature_size = int(self.x.shape[-1])
            self.x_items = encode_features(self.x, [item is not None for item in items], transfer == "diff")
            self.x_full_nbytes = FeatureFull(0, self.x[0]).nbytes
            self.x = None
            if pin_memory:
                self.x_items = [None if item is None else item.pin_memory() for item in self.x_items]

    def host_bytes(self) -> int:
        """Bytes of the host-resident graph (items shipped, node-feature items included)."""
        return sum(item.nbytes for item in [*self.items, *self.x_items] if item is not None)

    @override
    def inputs(self, t0: int, t1: int) -> dict[str, list[Any]]:
        return {"adjs": [], "items": list(self.items[t0:t1]), "x_items": list(self.x_items[t0:t1])}

    @override
    def features(self, t0: int, t1: int) -> Tensor | None:
        """Streamed per-snapshot features are rebuilt from ``x_items`` on the device (``None`` here; an empty block
        gets its empty ``(0, N, F)``); static features as in the base class."""
        if not self.x_items:
            return super().features(t0, t1)
        return None if t1 > t0 else torch.zeros(0, self.num_nodes, self.feature_size)

    def host_features(self, t: int) -> Tensor:
        """Decode snapshot ``t``'s features on the host from the last whole item at or before it (cache miss)."""
        start = max(s for s in range(t + 1) if isinstance(self.x_items[s], FeatureFull))
        return decode_features(None, self.x_items[start : t + 1], torch.device("cpu"))[-1]  # type: ignore[arg-type]


def _device_items(dm: DynamicGraphDataModule, batch: SnapshotBatch, device: torch.device) -> list[Item]:
    pre = dm._prefetched
    dm._prefetched = None
    if pre is not None and pre[0] == batch.t0 and len(pre[1]) == len(batch.items) and device.type == "cuda":
        torch.cuda.current_stream(device).wait_stream(pre[2])
        for item in pre[1]:
            for f in dataclasses.fields(item):
                value = getattr(item, f.name)
                if isinstance(value, Tensor):
                    value.record_stream(torch.cuda.current_stream(device))
        return pre[1]
    return [ship_item(item, device) for item in batch.items]


def _prefetch_next(dm: DynamicGraphDataModule, batch: SnapshotBatch, device: torch.device) -> None:
    """Copy the next block's items on a side stream (CUDA only; the next block is assumed to follow this one)."""
    if not (dm.prefetch and device.type == "cuda"):
        return
    store = dm.store
    assert isinstance(store, StreamingStore)
    t1 = batch.t0 + len(batch.items)
    nxt = store.items[t1 : t1 + len(batch.items)]
    if not nxt or any(item is None for item in nxt):
        return
    if dm._side_stream is None:
        dm._side_stream = torch.cuda.Stream(device)
    dm._side_stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(dm._side_stream):
        dm._prefetched = (t1, [ship_item(item, device) for item in nxt], dm._side_stream)


def ship_feature_item(item: FeatureItem, device: torch.device) -> FeatureItem:
    """The feature item with its tensors copied to ``device``."""
    if isinstance(item, FeatureFull):
        return dataclasses.replace(item, x=ship(item.x, device))
    return dataclasses.replace(item, rows=ship(item.rows, device), values=ship(item.values, device))


def _ship_features(
    dm: DynamicGraphDataModule, batch: SnapshotBatch, device: torch.device
) -> tuple[Tensor | None, list[FeatureItem], int]:
    """The block's feature items on ``device``, the previous snapshot's features and the bytes shipped.

    The previous features come from the device cache ``dm._last_x``; on a miss they are decoded on the host and
    shipped whole (counted in the bytes).
    """
    store = dm.store
    assert isinstance(store, StreamingStore)
    nbytes = sum(item.nbytes for item in batch.x_items)
    prev: Tensor | None = None
    if batch.x_items and not isinstance(batch.x_items[0], FeatureFull):
        last = dm._last_x
        if last is not None and last[0] == batch.t0 - 1 and last[1].device == device:
            prev = last[1]
        else:
            prev = ship(store.host_features(batch.t0 - 1), device)
            nbytes += store.x_full_nbytes
    return prev, [ship_feature_item(item, device) for item in batch.x_items], nbytes


def _catch_up(
    dm: DynamicGraphDataModule, store: StreamingStore, t0: int, device: torch.device
) -> tuple[tuple[Tensor, Tensor | None] | None, list[Item]]:
    """Where decoding of a block starting with a diff at ``t0`` begins, and the items before ``t0`` it needs.

    In order (the cache ``dm._last`` holds ``t0 - 1``) nothing more is shipped. Otherwise decoding starts from the
    cache when it holds an earlier snapshot of the same run (after the run's last full item before ``t0``), else from
    that full item, and the items in between are shipped: a snapshot-partitioned rank that trains on two of every
    four snapshots of a run ships two diffs per block instead of decoding the run from its start on the host.

    Returns:
        ``(previous keys and weights on device or None, the items to decode before the block's, on device)``.
    """
    start = max(s for s in range(t0) if isinstance(store.items[s], FullSnapshot))
    last = dm._last
    if last is not None and start <= last[0] < t0 and last[1].device == device:
        return (last[1], last[2]), [ship_item(item, device) for item in store.items[last[0] + 1 : t0]]  # type: ignore[arg-type]
    return None, [ship_item(item, device) for item in store.items[start:t0]]  # type: ignore[arg-type]


def rebuild_block(dm: DynamicGraphDataModule, batch: SnapshotBatch, device: torch.device) -> SnapshotBatch:
    """Ship a block's items, rebuild its adjacencies on ``device`` and record the transfer (see module doc).

    The device cache ``dm._last`` holds the last rebuilt snapshot's keys so that the next block's first diff applies;
    when it is not the snapshot just before the block, the items in between are shipped and decoded too
    (:func:`_catch_up`).

    Returns:
        The batch (same type) with ``adjs`` rebuilt and ``items`` emptied.

    Raises:
        DataError: Corrupted items (bad checksum, truncated diff, position out of range): one line naming the
            snapshot.
    """
    store = dm.store
    assert isinstance(store, StreamingStore)
    n = store.num_nodes
    h2d_bytes = sum(item.nbytes for item in batch.items)
    full_bytes = sum(store.full_nbytes[batch.t0 + s] for s in range(len(batch.items)))
    full_bytes += store.x_full_nbytes * len(batch.x_items)
    prev: tuple[Tensor, Tensor | None] | None = None
    gap: list[Item] = []
    with Timer(device) as h2d:
        if batch.items and isinstance(batch.items[0], SnapshotDiff):
            prev, gap = _catch_up(dm, store, batch.t0, device)
            h2d_bytes += sum(item.nbytes for item in gap)
        items = _device_items(dm, batch, device)
        prev_x, x_items, x_bytes = _ship_features(dm, batch, device)
    h2d_bytes += x_bytes
    directed = not dm.hparams.undirected
    with Timer(device) as rebuild:
        decoded, check = decode_block(*(prev or (None, None)), gap + items, device, verify=dm.verify)
        check.raise_if_failed()  # one host synchronisation per block
        decoded = decoded[len(gap) :]
        adjs = [rebuild_adjacency(keys, weights, n, directed) for keys, weights in decoded]
        xs = decode_features(prev_x, x_items, device)
    if decoded:
        dm._last = (batch.t0 + len(items) - 1, *decoded[-1])
    if xs:
        dm._last_x = (batch.t0 + len(xs) - 1, xs[-1])
    dm.transfer_recorder.record(TransferEvent(h2d.ms, rebuild.ms, int(h2d_bytes), int(full_bytes)))
    _prefetch_next(dm, batch, device)
    x = torch.stack(xs) if xs else batch.x
    return dataclasses.replace(batch, adjs=adjs, items=[], x_items=[], x=x)


def _target_sample(edges: Tensor, cap: int | None, seed: int, t: int) -> Tensor:
    """At most ``cap`` of the canonical ``edges`` (uniform, seeded by ``(seed, t)``), still in canonical order."""
    if cap is None or edges.shape[1] <= cap:
        return edges
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 52_361 + t)
    return edges[:, torch.unique(torch.randint(edges.shape[1], (cap,), generator=gen))]


def stream_store(dm: StreamingSnapshotDataModule) -> StreamingStore:
    """Build the store of a streaming source in one pass, never holding more than two snapshots.

    Each raw snapshot from ``dm.source.iter_snapshots()`` is turned into the model's input (symmetrised as
    configured), encoded at once (:func:`encode_items`), and its target edges kept (at most
    ``dm.target_edges_per_snapshot`` of them); a snapshot-partitioned rank encodes only the snapshots it holds and
    keeps only the targets it reads. A progress bar with ETA runs on rank 0 when the trainer shows one.

    Raises:
        ConfigError: a task other than ``link_prediction``, an edge-life window or node features (the streaming
            path has none of them).
    """
    if getattr(dm.source, "num_node_features", 0):
        raise ConfigError(f"data.num_node_features: {dm.source.name} streams no node features; set it to 0")
    if dm.task != "link_prediction":
        raise ConfigError(f"data.task: {dm.source.name} streams link_prediction only, got {dm.task!r}")
    if dm.window != 1:
        raise ConfigError(f"data.window: {dm.source.name} streams raw snapshots (window 1), got {dm.window}")
    hp = dm.hparams
    counts = list(dm.source.edge_counts(1))
    dm._check_horizon(len(counts))
    skip = dm._empty_targets(counts)
    keep: set[int] | None = None
    if dm.partitioned:
        dm.edge_counts = counts
        dm.plans = dm.make_plans(counts, skip)
        dm.owned = dm._owned_snapshots()
        if dm.world_size > 1:
            keep = set(dm.owned)
    needed = None if keep is None else dm._needed_raw(keep, len(counts))
    n = dm.source.num_nodes
    targets: list[Tensor] = []
    show = dm._trainer_attr("progress_bar_callback") is not None and dm.rank == 0
    bar = tqdm(total=len(counts), desc="encode snapshots", unit="snapshot", disable=not show, dynamic_ncols=True)

    def model_inputs() -> Iterator[tuple[Tensor, Tensor | None] | None]:
        for t, snap in enumerate(dm.source.iter_snapshots()):
            edges = snap.edge_index
            if needed is None or t in needed:
                targets.append(_target_sample(edges[:, edges[0] != edges[1]], dm.target_edges_per_snapshot, hp.seed, t))
            else:
                targets.append(edges.new_zeros((2, 0)))
            bar.update()
            one = DynamicGraph(num_nodes=n, edge_indices=[edges], edge_weights=[snap.edge_weight])
            yield dm.model_snapshots(one)[0] if keep is None or t in keep else None

    start = time.perf_counter()
    with bar:
        items, full_nbytes, dm.encoded = encode_items(model_inputs(), n, dm.transfer)
    if dm.pin_memory and torch.cuda.is_available():
        items = [None if item is None else item.pin_memory() for item in items]
    store = StreamingStore(
        items,
        full_nbytes,
        x=None,
        target_edges=targets,
        target_signs=None,
        y=None,
        task=dm.task,
        num_negatives=hp.num_negatives,
        eval_num_negatives=hp.eval_num_negatives or hp.num_negatives,
        seed=hp.seed,
        skip=skip,
        num_nodes=n,
    )
    dm.hparams.update({"num_nodes": n, "num_snapshots": len(counts)})
    full, host, seconds = sum(full_nbytes), store.host_bytes(), time.perf_counter() - start
    where = f" (rank {dm.rank} of {dm.world_size})" if dm.world_size > 1 else ""  # every rank says its own time
    print(
        f"encode{where}: {len(counts)} snapshots, {sum(counts)} edges, {n} nodes in {seconds:.1f} s; host store "
        f"{host / 2**20:.1f} MiB ({full / max(host, 1):.2f}x smaller than full snapshots)",
        flush=True,
    )
    return store


class StreamingSnapshotDataModule(SnapshotDataModule):
    """:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` with ``storage="streamed"``.

    With a streaming source (``dataset: synthetic_stream``, :class:`~lit_efficiency.dyn_gnn.synthetic.
    StreamingChurnSource`) the graph is never materialised: ``setup`` generates, encodes and samples the targets
    of one snapshot at a time (:func:`stream_store`), so host memory is the diff-encoded store plus the targets.
    Training negatives are then rejected against the kept target edges only (a negative may, with probability about
    ``E / N^2``, be an edge that was not kept).

    Args:
        *args: :class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` arguments.
        target_edges_per_snapshot: streaming source: keep at most this many target edges of every snapshot (a
            uniform sample; ``None``: all of them).
        **kwargs: its arguments (``dataset`` or ``source``, ``transfer``, ``partitioner``, ``window``, ...).
    """

    def __init__(self, *args: Any, target_edges_per_snapshot: int | None = None, **kwargs: Any) -> None:
        kwargs["storage"] = "streamed"
        super().__init__(*args, **kwargs)
        if target_edges_per_snapshot is not None and target_edges_per_snapshot < 1:
            raise ConfigError(f"data.target_edges_per_snapshot must be >= 1 or null, got {target_edges_per_snapshot}")
        if target_edges_per_snapshot is not None and not getattr(self.source, "streams_snapshots", False):
            raise ConfigError(
                f"data.target_edges_per_snapshot needs a streaming source (dataset: synthetic_stream); "
                f"{self.source.name} is loaded whole"
            )
        self.target_edges_per_snapshot = target_edges_per_snapshot

    @override
    def setup(self, stage: str | None = None) -> None:
        """Stream a streaming source into the encoded store (:func:`stream_store`); otherwise the base ``setup``."""
        if self.store is None and getattr(self.source, "streams_snapshots", False):
            self.store = stream_store(self)
        else:
            super().setup(stage)
