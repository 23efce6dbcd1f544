r"""Snapshot-partitioned data: each rank reads, builds and yields only its own block of snapshots.

The data side of the SC'21 distribution (Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural Networks",
https://arxiv.org/abs/2109.07893; ``docs/dynamic_gnn.md`` section 4), implemented by
:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` with ``partitioner="snapshot"``. Every **global block**
(the training blocks of ``block_size`` snapshots, the evaluation runs from snapshot 0) is cut into ``P`` contiguous
sub-blocks balanced by edge count (:func:`~lit_efficiency.dyn_gnn.partition.snapshot_blocks`, on the model's input
snapshots). Rank ``p`` yields, for every global block, a :class:`PartitionedBatch` holding only its sub-block ``S_p``
(plus ``halo`` preceding snapshots for models whose spatial stage mixes time, e.g. TM-GCN with ``mixing="input"``),
together with the plan of the whole block, so the task can run the all-to-all. A rank with no snapshot in a block
yields an empty batch (the collectives still run).

**What each rank reads.** The plans need only the per-snapshot edge counts (``source.edge_counts``); the rank then
asks its source for the raw snapshots it reads (its sub-blocks, their ``window - 1`` and ``halo`` predecessors, and
the next snapshot of each, which holds the targets). Sources that can (edge lists, PyG-Temporal JSON, the streaming
churn generator) build only those; the adjacencies (resident) or encoded items (streamed) of the other snapshots are
never made.

**Partition-independent negatives.** Training negatives of snapshot ``t`` in epoch ``e`` are draw
``e * n_train + t + 1`` whatever the storage and the partition, so every ``P`` trains on the same negatives as one
process (also after a resume, since ``e`` is the trainer's epoch).

**Data loaders.** The datasets are iterable, so Lightning does not wrap them in a ``DistributedSampler`` (which
would deal whole blocks to ranks instead of sub-blocks); no trainer flag is needed.
"""

from __future__ import annotations

from typing import Any

from lit_efficiency.dyn_gnn.datamodule import BlockPlan, PartitionedBatch, SnapshotDataModule, global_blocks

__all__ = ["BlockPlan", "PartitionedBatch", "PartitionedSnapshotDataModule", "global_blocks"]


class PartitionedSnapshotDataModule(SnapshotDataModule):
    """:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` with ``partitioner="snapshot"``.

    Args:
        **kwargs: its arguments (``dataset`` or ``source``, ``storage``, ``halo``, ``world_size``, ``rank``, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["partitioner"] = "snapshot"
        super().__init__(**kwargs)
