r"""Snapshot-partitioned DataModule: each rank builds and yields only its own block of snapshots.

The data side of the SC'21 distribution (Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural Networks",
https://arxiv.org/abs/2109.07893; ``docs/dynamic_gnn.md`` section 4). Every **global block** of the parent
:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` (the training blocks of ``block_size``
snapshots, the evaluation runs from snapshot 0) is cut into ``P`` contiguous sub-blocks balanced by edge count
(:func:`~lit_efficiency.dyn_gnn.partition.snapshot_blocks`, on the model's input snapshots). Rank ``p`` yields,
for every global block, a :class:`PartitionedBatch` holding only its sub-block ``S_p`` (plus ``halo`` preceding
snapshots for models whose spatial stage mixes time, e.g. TM-GCN with ``mixing="input"``), together with the plan of
the whole block, so the task can run the all-to-all. A rank with no snapshot in a block yields an empty batch (the
collectives still run).

**What each rank builds.** :meth:`PartitionedSnapshotDataModule.load_graph` loads the graph (the parent's I/O: the
file is one edge list, so it is scanned whole), computes the plans from the per-snapshot edge counts, then blanks
every raw snapshot this rank never reads (its sub-blocks, their ``window - 1`` and ``halo`` predecessors, and the
next snapshot of each, which holds the targets). The parent's ``setup`` then normalises only this rank's adjacencies
(the blanked ones become the identity, ``O(N)`` each) and targets are built only for this rank's snapshots.

**Partition-independent negatives.** The parent draws training negatives from a counter of draws made so far, which
depends on which snapshots a process built. Here the draw index of snapshot ``t`` in epoch ``e`` is set to
``e * n_train + t`` before drawing, which is exactly the parent's counter in a single-process run with the default
in-order loader; so every ``P`` trains on the same negatives as the single-process
:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` (also after a resume, since ``e`` is the
trainer's epoch).

**Data loaders.** The datasets are iterable, so Lightning does not wrap them in a ``DistributedSampler`` (which
would deal whole blocks to ranks instead of sub-blocks); no trainer flag is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotDataModule, SnapshotStore, SnapshotTarget
from lit_efficiency.dyn_gnn.graph import DynamicGraph
from lit_efficiency.dyn_gnn.partition import snapshot_blocks

__all__ = ["BlockPlan", "PartitionedBatch", "PartitionedSnapshotDataModule", "global_blocks"]


@dataclass(frozen=True)
class BlockPlan:
    """One global block ``[start, stop)`` and its snapshot partition over ranks.

    Attributes:
        start: first snapshot of the block (global index).
        stop: one past the last snapshot.
        snap_blocks: ``P`` contiguous ranges of **global** indices tiling ``range(start, stop)``.
        targets: the snapshots of the split that carry a target (global indices).
    """

    start: int
    stop: int
    snap_blocks: tuple[range, ...]
    targets: range

    @property
    def num_targets(self) -> int:
        """Number of snapshots of the block with a target (over all ranks)."""
        return len(range(max(self.start, self.targets.start), min(self.stop, self.targets.stop)))

    def relative_blocks(self) -> tuple[range, ...]:
        """``snap_blocks`` shifted to block-local indices (tiling ``range(stop - start)``), as the all-to-all wants."""
        return tuple(range(b.start - self.start, b.stop - self.start) for b in self.snap_blocks)


@dataclass
class PartitionedBatch(SnapshotBatch):
    """This rank's part of a global block: its snapshots ``S_p`` (preceded by ``num_halo`` halo snapshots).

    ``t0`` is the global index of the first snapshot held (halo included); ``adjs``, ``x`` and ``targets`` cover
    ``num_halo + len(S_p)`` snapshots, the halo ones with no target. ``S_p`` may be empty.
    """

    block_start: int = 0
    """First snapshot of the global block (state resets when it is 0)."""
    block_stop: int = 0
    """One past the last snapshot of the global block."""
    snap_blocks: tuple[range, ...] = ()
    """Global snapshot range of every rank in this block."""
    num_halo: int = 0
    """Leading snapshots held only as temporal halo (no output, no target)."""
    num_targets: int = 0
    """Snapshots with a target in the whole global block (all ranks): the loss normaliser."""
    rank: int = 0
    """The rank this batch was built for."""

    def relative_blocks(self) -> tuple[range, ...]:
        """Every rank's block in block-local indices."""
        return tuple(range(b.start - self.block_start, b.stop - self.block_start) for b in self.snap_blocks)


def global_blocks(start: int, stop: int, size: int | None) -> list[tuple[int, int]]:
    """Consecutive ``[t0, t1)`` blocks of ``size`` snapshots covering ``[start, stop)`` (one block if ``None``)."""
    size = stop - start if size is None else size
    return [(t, min(t + size, stop)) for t in range(start, stop, max(size, 1))]


class _PartitionedBlocks(IterableDataset):
    """This rank's batches of one split, one per global block, built lazily."""

    def __init__(self, make: Callable[[BlockPlan, str], PartitionedBatch], plans: list[BlockPlan], split: str):
        self.make = make
        self.plans = plans
        self.split = split

    def __len__(self) -> int:
        return len(self.plans)

    def __iter__(self) -> Iterator[PartitionedBatch]:
        for plan in self.plans:
            yield self.make(plan, self.split)


def _unbatched(item: PartitionedBatch) -> PartitionedBatch:
    return item


class PartitionedSnapshotDataModule(SnapshotDataModule):
    """:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` whose rank reads only its snapshot block.

    Arguments as the parent, plus:

    Args:
        halo: preceding snapshots each rank also holds (``None``: ask the LightningModule's ``temporal_halo``
            attribute, else 0). TM-GCN with ``mixing="input"`` needs ``bandwidth - 1``.
        world_size: number of ranks ``P`` (``None``: the trainer's).
        rank: this rank (``None``: the trainer's global rank).
        **kwargs: the parent's arguments (dataset, task, splits, ``block_size``, ...).
    """

    def __init__(
        self, halo: int | None = None, world_size: int | None = None, rank: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if halo is not None and halo < 0:
            raise ConfigError(f"data.halo must be >= 0 or null, got {halo}")
        if world_size is not None and world_size < 1:
            raise ConfigError(f"data.world_size must be >= 1 or null, got {world_size}")
        if rank is not None and not 0 <= rank < (world_size or rank + 1):
            raise ConfigError(f"data.rank={rank} is outside [0, world_size={world_size})")
        self._halo_arg = halo
        self._world_arg = world_size
        self._rank_arg = rank
        self.plans: dict[str, list[BlockPlan]] = {}
        self.edge_counts: list[int] = []
        self.owned: list[int] = []

    # ------------------------------------------------------------------ who am I
    def _trainer_attr(self, name: str) -> Any:
        trainer = getattr(self, "trainer", None)
        return getattr(trainer, name, None) if trainer is not None else None

    @property
    def world_size(self) -> int:
        """``P``: the explicit argument, else the trainer's, else 1."""
        if self._world_arg is not None:
            return self._world_arg
        return int(self._trainer_attr("world_size") or 1)

    @property
    def rank(self) -> int:
        """This process's rank: the explicit argument, else the trainer's global rank, else 0."""
        if self._rank_arg is not None:
            return self._rank_arg
        return int(self._trainer_attr("global_rank") or 0)

    @property
    def halo(self) -> int:
        """Halo snapshots per block (see the class docstring)."""
        if self._halo_arg is not None:
            return self._halo_arg
        module = self._trainer_attr("lightning_module")
        return int(getattr(module, "temporal_halo", 0) or 0)

    # ------------------------------------------------------------------ plans
    def make_plans(self, edge_counts: list[int], num_snapshots: int) -> dict[str, list[BlockPlan]]:
        """Partition every global block of every split over the ranks, by edge count.

        Args:
            edge_counts: edges of each model input snapshot.
            num_snapshots: ``T``.

        Returns:
            ``{"train" | "val" | "test": [BlockPlan, ...]}`` identical on every rank.
        """
        from lit_efficiency.dyn_gnn.datamodule import chronological_split

        hp = self.hparams
        self.splits = chronological_split(num_snapshots - 1, hp.train_frac, hp.val_frac, hp.test_frac)
        plans: dict[str, list[BlockPlan]] = {}
        world = self.world_size
        for split, targets in self.splits.items():
            if split == "train":
                spans = global_blocks(0, targets.stop, self.block_size)
            else:
                spans = global_blocks(0, targets.stop, self.eval_block_size) if len(targets) else []
            plans[split] = [
                BlockPlan(
                    t0,
                    t1,
                    tuple(range(b.start + t0, b.stop + t0) for b in snapshot_blocks(edge_counts[t0:t1], world)),
                    targets,
                )
                for t0, t1 in spans
            ]
        return plans

    def _owned_snapshots(self) -> list[int]:
        """Model snapshots this rank holds (its sub-blocks and their halos), sorted."""
        owned: set[int] = set()
        for plans in self.plans.values():
            for plan in plans:
                mine = plan.snap_blocks[self.rank]
                if len(mine):
                    owned.update(range(max(0, mine.start - self.halo), mine.stop))
        return sorted(owned)

    @override
    def load_graph(self) -> DynamicGraph:
        """The parent's graph with every raw snapshot this rank never reads replaced by an empty one."""
        raw = super().load_graph()
        counts = raw.with_window(self.window).num_edges_per_snapshot
        self.edge_counts = list(counts)
        self.plans = self.make_plans(self.edge_counts, raw.num_snapshots)
        self.owned = self._owned_snapshots()
        if self.world_size == 1:
            return raw
        needed: set[int] = set()
        for t in self.owned:
            needed.update(range(max(0, t - self.window + 1), t + 1))
            if t + 1 < raw.num_snapshots:
                needed.add(t + 1)  # holds the targets of t
        empty_index = torch.zeros((2, 0), dtype=torch.long)

        def blank(items: list[torch.Tensor] | None, fill: Callable[[torch.Tensor], torch.Tensor]) -> Any:
            if items is None:
                return None
            return [item if t in needed else fill(item) for t, item in enumerate(items)]

        return dataclasses.replace(
            raw,
            edge_indices=blank(raw.edge_indices, lambda _: empty_index),
            edge_weights=blank(raw.edge_weights, lambda w: w[:0]),
            edge_labels=blank(raw.edge_labels, lambda lab: lab[:0]),
        )

    @override
    def setup(self, stage: str | None = None) -> None:
        """The parent's setup on the blanked graph, then drop the adjacencies this rank does not own."""
        if self.store is not None:
            return
        super().setup(stage)
        assert self.store is not None
        if self.world_size > 1:
            keep = set(self.owned)
            self.store.adjs = [a if t in keep else None for t, a in enumerate(self.store.adjs)]  # type: ignore[misc]

    # ------------------------------------------------------------------ batches
    def _epoch(self) -> int:
        return int(self._trainer_attr("current_epoch") or 0)

    def _target(self, store: SnapshotStore, t: int, split: str) -> SnapshotTarget:
        if split == "train" and hasattr(store, "_train_draws"):
            # The single-process loader's draw counter at snapshot t of epoch e (see the module docstring).
            store._train_draws = self._epoch() * len(self.splits["train"]) + t - self.splits["train"].start
        return store.target(t, split)

    def make_batch(self, plan: BlockPlan, split: str) -> PartitionedBatch:
        """This rank's :class:`PartitionedBatch` of the global block ``plan``."""
        store = self._require_setup()
        rank = self.rank
        mine = plan.snap_blocks[rank]
        halo = min(self.halo, mine.start) if len(mine) else 0
        held = range(mine.start - halo, mine.stop)
        adjs = [store.adjs[t] for t in held]
        x = None
        if store.x is not None:
            if store.x.dim() == 3:
                x = store.x[held.start : held.stop]
            else:
                x = store.x.unsqueeze(0).expand(len(held), *store.x.shape)
        targets: list[SnapshotTarget | None] = [None] * halo
        targets += [self._target(store, t, split) if t in plan.targets else None for t in mine]
        return PartitionedBatch(
            t0=held.start,
            adjs=adjs,  # type: ignore[arg-type]
            x=x,
            targets=targets,
            num_nodes=store.num_nodes,
            block_start=plan.start,
            block_stop=plan.stop,
            snap_blocks=plan.snap_blocks,
            num_halo=halo,
            num_targets=plan.num_targets,
            rank=rank,
        )

    def _loader(self, split: str) -> DataLoader:
        self._require_setup()
        dataset = _PartitionedBlocks(self.make_batch, self.plans[split], split)
        return DataLoader(dataset, batch_size=None, collate_fn=_unbatched)
