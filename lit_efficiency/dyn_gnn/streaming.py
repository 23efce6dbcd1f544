r"""Streaming snapshot DataModule: the dynamic graph stays on the host, diff-encoded; blocks are rebuilt on the device.

Implements sections 2-3 of ``docs/dynamic_gnn.md`` (Chakaravarthy et al., SC'21, https://arxiv.org/abs/2109.07893)
on top of :class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule`:

* **Host-resident encoded graph.** ``setup`` keeps the model's input snapshots as canonical keys ``row * N + col``
  (:mod:`lit_efficiency.dyn_gnn.codec`): with ``transfer="diff"`` the adaptive full/diff encoding
  (:func:`encode_stream`), with ``transfer="full"`` one :class:`~lit_efficiency.dyn_gnn.codec.FullSnapshot` per
  snapshot. Nothing normalised is stored. On CUDA machines the items are pinned once (guarded: no-op without CUDA).
* **Device-side rebuild.** :meth:`StreamingSnapshotDataModule.transfer_batch_to_device` ships a block's items, applies
  the diffs to the previous snapshot's keys (kept on the device between blocks), verifies the checksums, and builds
  the CSR and the GCN normalisation from the degrees on the device (:func:`rebuild_adjacency`). Both transfer modes
  run the same rebuild on the same keys, so training is bit-identical between them.
* **Timing.** Every transfer and rebuild is timed (:class:`~lit_efficiency.core.timing.Timer`, CUDA-synchronised)
  and recorded, with the bytes shipped and the bytes a full transfer would have shipped, in
  :attr:`StreamingSnapshotDataModule.transfer_recorder`, which
  :class:`~lit_efficiency.dyn_gnn.profilers.TransferProfiler` drains and logs.
* **Prefetch.** On CUDA, after a block is rebuilt the next block's items are copied on a side stream
  (``non_blocking`` from pinned memory) so the copy overlaps the current step's compute; the next transfer waits on
  that stream. On CPU this is a no-op, and a "transfer" is an explicit memory copy (so the CPU figures are memcpy +
  rebuild, not zero).

Only the adjacencies are streamed this way; node features and targets of the block are moved as in the base class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.recorders import Recorder, TransferEvent
from lit_efficiency.core.timing import Timer
from lit_efficiency.dyn_gnn.adjacency import gcn_norm_adj_t, key_dtype, transpose_keys
from lit_efficiency.dyn_gnn.codec import (
    EncodedGraph,
    FullSnapshot,
    Item,
    SnapshotDiff,
    _canonical_keys,
    _check_weights,
    decode_snapshot,
    encode_stream,
    snapshot_checksum,
)
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotDataModule, SnapshotStore
from lit_efficiency.dyn_gnn.graph import DynamicGraph

__all__ = [
    "StreamingBatch",
    "StreamingSnapshotDataModule",
    "StreamingStore",
    "encode_stream",
    "rebuild_adjacency",
    "ship",
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


@dataclass
class StreamingBatch(SnapshotBatch):
    """A block whose adjacencies are still host-side encoded items (``adjs`` is empty until the device rebuild).

    Attributes:
        items: ``S`` host items (diff or full) of snapshots ``t0 .. t0 + S - 1``.
    """

    items: list[Item] = dataclasses.field(default_factory=list)

    @property
    def num_snapshots(self) -> int:
        return len(self.items)


class StreamingStore(SnapshotStore):
    """:class:`SnapshotStore` whose per-snapshot inputs are host items (:class:`EncodedGraph` items or full copies).

    Args:
        items: ``T`` items to ship (diff-encoded or all full).
        full_nbytes: ``T`` bytes of the full version of each snapshot.
        num_nodes: ``N``.
        **kwargs: The other :class:`SnapshotStore` arguments.
    """

    def __init__(self, items: list[Item], full_nbytes: list[int], num_nodes: int, **kwargs: Any) -> None:
        super().__init__(adjs=[], **kwargs)
        self.items = items
        self.full_nbytes = full_nbytes
        self.num_nodes = num_nodes

    def __len__(self) -> int:
        return len(self.items)

    def host_bytes(self) -> int:
        """Bytes of the host-resident graph (items shipped)."""
        return sum(item.nbytes for item in self.items)

    @override
    def batch(self, t0: int, t1: int, targets: range, split: str) -> StreamingBatch:
        base = super().batch(t0, t1, targets, split)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return StreamingBatch(**fields, items=list(self.items[t0:t1]))

    def host_keys(self, t: int) -> tuple[Tensor, Tensor | None]:
        """Decode snapshot ``t`` on the host from the last full item at or before it (after a device-cache miss)."""
        start = max(s for s in range(t + 1) if isinstance(self.items[s], FullSnapshot))
        keys: Tensor | None = None
        weights: Tensor | None = None
        for s in range(start, t + 1):
            keys, weights = decode_snapshot(keys, weights, self.items[s], "cpu", verify=False)
        assert keys is not None
        return keys, weights


class StreamingSnapshotDataModule(SnapshotDataModule):
    """:class:`SnapshotDataModule` with a host-resident, diff-encoded graph streamed block by block to the device.

    Args:
        transfer: ``diff`` ships each snapshot as full or diff (whichever is smaller) and applies diffs on the
            device; ``full`` ships every snapshot whole. Both rebuild CSR and normalisation on the device.
        pin_memory: Pin the host items once (only when CUDA is available; ignored otherwise).
        prefetch: Copy the next block's items on a side CUDA stream while the current step computes (CUDA only).
        verify: Verify every rebuilt snapshot's checksum (one device synchronisation per snapshot).
        *args: :class:`SnapshotDataModule` arguments.
        **kwargs: :class:`SnapshotDataModule` arguments (``dataset``, ``window``, ``block_size``, ...).

    Attributes:
        transfer_recorder: :class:`~lit_efficiency.core.recorders.Recorder` with one
            :class:`~lit_efficiency.core.recorders.TransferEvent` per transferred block (``h2d_ms``, ``rebuild_ms``,
            ``h2d_bytes``, ``full_bytes``).
        encoded: The :class:`EncodedGraph` (``transfer="diff"``), else ``None``.
    """

    def __init__(
        self,
        *args: Any,
        transfer: Transfer = "diff",
        pin_memory: bool = True,
        prefetch: bool = True,
        verify: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if transfer not in ("diff", "full"):
            raise ConfigError(f"data.transfer must be 'diff' or 'full', got {transfer!r}")
        self.transfer: Transfer = transfer
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self.verify = verify
        self.transfer_recorder: Recorder[TransferEvent] = Recorder()
        self.encoded: EncodedGraph | None = None
        self._directed = not self.hparams.undirected
        # Device cache: (t, keys, weights) of the last rebuilt snapshot, so that the next block's first diff applies.
        self._last: tuple[int, Tensor, Tensor | None] | None = None
        self._prefetched: tuple[int, list[Item], Any] | None = None
        self._side_stream: Any = None

    # ------------------------------------------------------------------ host side
    @override
    def build_inputs(self, model_graph: DynamicGraph) -> list[Item]:
        """Encode the model's snapshots (diff) or keep them as full items, host-resident (pinned on CUDA machines)."""
        n = model_graph.num_nodes
        snaps = self.model_snapshots(model_graph)
        if self.transfer == "diff":
            self.encoded = encode_stream(snaps, n)
            items: list[Item] = list(self.encoded.items)
            self._full_nbytes = list(self.encoded.full_nbytes)
        else:
            kd = key_dtype(n)
            items = []
            for t, (ei, w) in enumerate(snaps):
                keys = _canonical_keys(ei.detach().cpu(), n, t)
                w = _check_weights(w, keys.numel(), t, None)
                items.append(FullSnapshot(t, n, keys.numel(), keys.to(kd), w, int(snapshot_checksum(keys, w))))
            self._full_nbytes = [item.nbytes for item in items]
        if self.pin_memory and torch.cuda.is_available():
            items = [item.pin_memory() for item in items]
        return items

    @override
    def make_store(self, **kwargs: Any) -> StreamingStore:
        items = kwargs.pop("adjs")
        return StreamingStore(items, self._full_nbytes, self.graph_num_nodes(items), **kwargs)

    @staticmethod
    def graph_num_nodes(items: list[Item]) -> int:
        """``N`` of the encoded items."""
        return items[0].num_nodes

    def host_bytes(self) -> int:
        """Bytes of the host-resident graph (after ``setup``)."""
        store = self._require_setup()
        assert isinstance(store, StreamingStore)
        return store.host_bytes()

    # ------------------------------------------------------------------ device side
    def _device_items(self, batch: StreamingBatch, device: torch.device) -> list[Item]:
        pre = self._prefetched
        self._prefetched = None
        if pre is not None and pre[0] == batch.t0 and len(pre[1]) == len(batch.items) and device.type == "cuda":
            torch.cuda.current_stream(device).wait_stream(pre[2])
            for item in pre[1]:
                for f in dataclasses.fields(item):
                    value = getattr(item, f.name)
                    if isinstance(value, Tensor):
                        value.record_stream(torch.cuda.current_stream(device))
            return pre[1]
        return [ship_item(item, device) for item in batch.items]

    def _prefetch_next(self, batch: StreamingBatch, device: torch.device) -> None:
        """Copy the next block's items on a side stream (CUDA only; the next block is assumed to follow this one)."""
        if not (self.prefetch and device.type == "cuda"):
            return
        store = self.store
        assert isinstance(store, StreamingStore)
        t1 = batch.t0 + len(batch.items)
        if t1 >= len(store):
            return
        size = len(batch.items)
        nxt = store.items[t1 : t1 + size]
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device)
        self._side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side_stream):
            self._prefetched = (t1, [ship_item(item, device) for item in nxt], self._side_stream)

    def rebuild_block(self, batch: StreamingBatch, device: torch.device) -> SnapshotBatch:
        """Ship a block's items, rebuild its adjacencies on ``device`` and record the transfer (see module doc).

        Raises:
            DataError: Corrupted items (bad checksum, truncated diff, position out of range): one line naming the
                snapshot.
        """
        store = self.store
        assert isinstance(store, StreamingStore)
        n = store.num_nodes
        h2d_bytes = sum(item.nbytes for item in batch.items)
        full_bytes = sum(store.full_nbytes[batch.t0 + s] for s in range(len(batch.items)))
        prev: tuple[Tensor, Tensor | None] | None = None
        first = batch.items[0] if batch.items else None
        with Timer(device) as h2d:
            if isinstance(first, SnapshotDiff):
                if self._last is not None and self._last[0] == batch.t0 - 1 and self._last[1].device == device:
                    prev = (self._last[1], self._last[2])
                else:  # cache miss (a block out of order): ship the previous snapshot whole
                    keys, weights = store.host_keys(batch.t0 - 1)
                    prev = (ship(keys, device), ship(weights, device))  # type: ignore[assignment]
                    h2d_bytes += keys.numel() * keys.element_size()
                    h2d_bytes += 0 if weights is None else weights.numel() * weights.element_size()
            items = self._device_items(batch, device)
        adjs = []
        with Timer(device) as rebuild:
            keys = None if prev is None else prev[0]
            weights = None if prev is None else prev[1]
            for item in items:
                keys, weights = decode_snapshot(keys, weights, item, device, verify=self.verify)
                adjs.append(rebuild_adjacency(keys, weights, n, self._directed))
        if keys is not None:
            self._last = (batch.t0 + len(items) - 1, keys, weights)
        self.transfer_recorder.record(TransferEvent(h2d.ms, rebuild.ms, int(h2d_bytes), int(full_bytes)))
        self._prefetch_next(batch, device)
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(SnapshotBatch)}
        fields["adjs"] = adjs
        return SnapshotBatch(**fields)

    @override
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Rebuild a :class:`StreamingBatch` on ``device`` (timed), then move features and targets as the base class."""
        if isinstance(batch, StreamingBatch):
            return self.rebuild_block(batch, torch.device(device)).to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
