r"""Snapshot DataModule: a dynamic graph as blocks of consecutive snapshots with next-snapshot targets.

One data module, :class:`SnapshotDataModule`, composed of three parts chosen in YAML:

- **source** (``source: {class_path: ..., init_args: ...}``, :mod:`lit_efficiency.dyn_gnn.sources`): where the raw
  snapshots come from (a built-in dataset, an edge-list file, a PyG-Temporal JSON file, a saved PyG graph, a
  synthetic generator). The legacy arguments ``dataset=...`` (plus the synthetic sizes) still build the source.
- **storage** (``storage: resident | streamed``): ``resident`` normalises every input snapshot once in ``setup`` and
  keeps the CSR on the host; ``streamed`` keeps only the canonical keys on the host, diff-encoded
  (``transfer="diff"``) or whole, and rebuilds each block's adjacencies on the device
  (:mod:`lit_efficiency.dyn_gnn.streaming`, ``docs/dynamic_gnn.md`` sections 2-3).
- **partitioner** (``partitioner: none | snapshot``): ``snapshot`` cuts every global block into ``P`` contiguous
  sub-blocks balanced by edge count (``docs/dynamic_gnn.md`` section 4); rank ``p`` yields only its sub-block as a
  :class:`PartitionedBatch` and asks the source for only the snapshots it reads (:class:`~lit_efficiency.dyn_gnn.
  partitioned.PartitionedSnapshotDataModule` is this module with ``partitioner="snapshot"``).

A **batch** is a block of ``S`` consecutive snapshots ``t0 .. t0 + S - 1`` (:class:`SnapshotBatch`): their normalised
adjacencies :math:`\hat{A}_t = D^{-1/2}(A_t + I)D^{-1/2}` (or, streamed, the encoded items they are rebuilt from),
their node features, and for every snapshot ``t`` of the block the target of snapshot ``t + 1`` (embeddings at ``t``
predict ``t + 1``, as in EvolveGCN, https://arxiv.org/abs/1902.10191):

- ``link_prediction``: the edges of ``t + 1`` (label 1) and ``num_negatives`` sampled non-edges per edge (label 0),
  each made by keeping the edge's source and drawing a destination uniformly, rejecting true edges of ``t + 1`` and
  self loops. Training negatives depend only on (epoch, snapshot), so every storage and partition draws the same;
  validation/test/predict negatives are fixed by the seed.
- ``edge_sign``: the edges of ``t + 1`` with a non-zero sign label (1 = positive sign, 0 = negative).
- ``node_regression``: ``y[t + 1]`` for every node, with two baselines carried beside it: ``persistence``
  (``y[t]``) and ``mean`` (each node's mean target over the training period).

A target snapshot with nothing to predict (no edge, or no signed edge) is skipped with one warning listing the
snapshots; a split left with no target at all is an error.

**Chronological split** of the ``T - 1`` prediction pairs ``(t, t + 1)``: the first ``train_frac`` go to training,
the next ``val_frac`` to validation, then ``test_frac`` to test (EvolveGCN's 70/10/20 is the default). Validation,
test and predict batches run through **all snapshots from 0 in order** (so the temporal state reaching the evaluated
snapshots is the one built from the whole past) but carry targets only for their own pairs (predict: every pair).
Training batches cover the training pairs, in order, ``block_size`` snapshots at a time (default: all of them, one
step per epoch); the task carries the temporal state from block to block (truncated back-propagation through time).

With an edge-life window ``w > 1`` the model sees the windowed snapshots (``A_t`` = edges of steps
``t-w+1 .. t``) while the targets are the raw edges of step ``t + 1`` (otherwise edges already in ``A_t`` would be
targets).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.adjacency import edge_key
from lit_efficiency.dyn_gnn.graph import DynamicGraph
from lit_efficiency.dyn_gnn.partition import snapshot_blocks
from lit_efficiency.dyn_gnn.sources import DatasetSource, GraphSource, SyntheticChurnSource, SyntheticSource

__all__ = [
    "BlockPlan",
    "DynamicGraphDataModule",
    "PartitionedBatch",
    "SnapshotBatch",
    "SnapshotDataModule",
    "SnapshotStore",
    "SnapshotTarget",
    "TaskName",
    "chronological_split",
    "global_blocks",
    "sample_negatives",
]

TaskName = Literal["link_prediction", "edge_sign", "node_regression"]
Storage = Literal["resident", "streamed"]
Partitioner = Literal["none", "snapshot"]
REAL_DATASETS = ("bitcoin_otc", "bitcoin_alpha", "uci_messages", "chess", "twitter_tennis")
SYNTHETIC_DATASETS = ("synthetic", "synthetic_churn", "synthetic_stream")


class SnapshotTarget(NamedTuple):
    """Target of one snapshot ``t``: what the embeddings at ``t`` must predict about ``t + 1``."""

    edge_index: Tensor | None
    """``(2, C)`` candidate / labelled edges of ``t + 1`` (``None`` for node regression)."""
    label: Tensor
    """``(C,)`` float 0/1 (link prediction), ``(C,)`` long 0/1 (edge sign) or ``(N,)`` float (node regression)."""
    baselines: dict[str, Tensor] | None = None
    """Node regression: ``{"persistence": y[t], "mean": training mean}`` predictions ``(N,)``, else ``None``."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SnapshotTarget:
        """The target with every tensor on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        base = None if self.baselines is None else {k: move(v) for k, v in self.baselines.items()}
        return SnapshotTarget(move(self.edge_index), move(self.label), base)  # type: ignore[arg-type]


@dataclass
class SnapshotBatch:
    """A block of consecutive snapshots ``t0 .. t0 + S - 1`` with their next-snapshot targets.

    Shapes:
        - adjs: ``S`` sparse CSR ``(N, N)`` normalised adjacencies (``adj[target, source]``); empty while a streamed
          block still holds its encoded ``items`` (rebuilt on the device).
        - x: ``(S, N, F)`` or ``None``.
        - targets: ``S`` entries, ``None`` where snapshot ``t`` has no target in this split.
    """

    t0: int
    """Global index of the block's first snapshot."""
    adjs: list[Tensor]
    x: Tensor | None
    targets: list[SnapshotTarget | None]
    num_nodes: int
    items: list[Any] = dataclasses.field(default_factory=list)
    """Streamed storage: the ``S`` host items (diff or full) the adjacencies are rebuilt from; else empty."""
    x_items: list[Any] = dataclasses.field(default_factory=list)
    """Streamed storage with per-snapshot features: the ``S`` feature items ``x`` is rebuilt from; else empty."""

    @property
    def num_snapshots(self) -> int:
        """``S``."""
        return len(self.items) or len(self.adjs)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SnapshotBatch:
        """Copy every tensor to ``device`` (returns a new batch; ``self`` is unchanged)."""
        targets = [None if tg is None else tg.to(device, non_blocking) for tg in self.targets]
        adjs = [a.to(device, non_blocking=non_blocking) for a in self.adjs]
        x = None if self.x is None else self.x.to(device, non_blocking=non_blocking)
        return dataclasses.replace(self, adjs=adjs, x=x, targets=targets)


@dataclass(frozen=True)
class BlockPlan:
    """One global block ``[start, stop)`` and its snapshot partition over ranks.

    Attributes:
        start: first snapshot of the block (global index).
        stop: one past the last snapshot.
        snap_blocks: ``P`` contiguous ranges of **global** indices tiling ``range(start, stop)``.
        targets: the snapshots of the split that carry a target (global indices).
        skip: snapshots of ``targets`` without a target (their target snapshot is empty).
    """

    start: int
    stop: int
    snap_blocks: tuple[range, ...]
    targets: range
    skip: frozenset[int] = frozenset()
    """Snapshots whose target snapshot is empty (no target built, not counted)."""

    @property
    def num_targets(self) -> int:
        """Number of snapshots of the block with a target (over all ranks)."""
        span = range(max(self.start, self.targets.start), min(self.stop, self.targets.stop))
        return sum(1 for t in span if t not in self.skip)

    def relative_blocks(self) -> tuple[range, ...]:
        """``snap_blocks`` shifted to block-local indices (tiling ``range(stop - start)``), as the all-to-all wants."""
        return tuple(range(b.start - self.start, b.stop - self.start) for b in self.snap_blocks)


@dataclass
class PartitionedBatch(SnapshotBatch):
    """This rank's part of a global block: its snapshots ``S_p`` (preceded by ``num_halo`` halo snapshots).

    ``t0`` is the global index of the first snapshot held (halo included); ``adjs``/``items``, ``x`` and ``targets``
    cover ``num_halo + len(S_p)`` snapshots, the halo ones with no target. ``S_p`` may be empty.
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


def chronological_split(num_pairs: int, train_frac: float, val_frac: float, test_frac: float) -> dict[str, range]:
    """Split the prediction pairs ``(t, t + 1)``, ``t = 0 .. num_pairs - 1``, into consecutive ranges of ``t``.

    Counts are ``round(frac * num_pairs)`` for train and val; test gets the rest when the fractions sum to 1,
    else ``round(test_frac * num_pairs)``.

    Returns:
        ``{"train": range, "val": range, "test": range}`` of input snapshot indices ``t``.

    Raises:
        ConfigError: negative fractions, fractions summing to more than 1, or an empty training range.
    """
    fracs = {"train_frac": train_frac, "val_frac": val_frac, "test_frac": test_frac}
    for name, frac in fracs.items():
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {frac!r}")
    total = train_frac + val_frac + test_frac
    if total > 1.0 + 1e-6:
        raise ConfigError(f"train_frac + val_frac + test_frac must be <= 1, got {total:g}")
    n_train = round(train_frac * num_pairs)
    n_val = round(val_frac * num_pairs)
    n_test = num_pairs - n_train - n_val if math.isclose(total, 1.0) else round(test_frac * num_pairs)
    n_test = max(0, min(n_test, num_pairs - n_train - n_val))
    if n_train < 1:
        raise ConfigError(f"train_frac={train_frac} leaves no training snapshot pair out of {num_pairs}")
    return {
        "train": range(0, n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n_train + n_val + n_test),
    }


def sample_negatives(
    positives: Tensor, num_nodes: int, num_negatives: int, generator: torch.Generator, max_rounds: int = 50
) -> Tensor:
    r"""Corrupt the destination of every positive edge ``num_negatives`` times.

    Negative ``(u, v')`` keeps the positive's source ``u`` and draws ``v'`` uniformly from ``[0, N)``; a draw that is
    a positive edge or a self loop is redrawn (up to ``max_rounds`` times, then dropped), so the result never
    collides with ``positives``. Negatives may repeat.

    Args:
        positives: ``(2, P)`` edges, sorted by key ``u * N + v`` and unique (canonical order).
        num_nodes: ``N``.
        num_negatives: ``K`` per positive.
        generator: random source.
        max_rounds: redraw rounds before giving up on a colliding draw.

    Returns:
        ``(2, <= K * P)`` long; exactly ``K * P`` unless a source is connected to (almost) every node.

    Shapes:
        positives ``(2, P)`` -> ``(2, K P)``.
    """
    if num_negatives <= 0 or positives.shape[1] == 0:
        return positives.new_zeros((2, 0))
    pos_keys = edge_key(positives[0], positives[1], num_nodes)
    src = positives[0].repeat_interleave(num_negatives)
    dst = torch.randint(num_nodes, (src.numel(),), generator=generator)

    def bad(s: Tensor, d: Tensor) -> Tensor:
        keys = edge_key(s, d, num_nodes)
        pos = torch.searchsorted(pos_keys, keys).clamp_(max=pos_keys.numel() - 1)
        return (pos_keys[pos] == keys) | (s == d)

    todo = bad(src, dst)
    for _ in range(max_rounds):
        count = int(todo.sum())
        if count == 0:
            break
        idx = todo.nonzero().squeeze(1)
        dst[idx] = torch.randint(num_nodes, (count,), generator=generator)
        todo[idx] = bad(src[idx], dst[idx])
    keep = ~todo
    return torch.stack([src[keep], dst[keep]])


class SnapshotStore:
    """Everything ``setup`` precomputes, and the construction of one block (no Lightning, picklable).

    Args:
        adjs: ``T`` normalised adjacencies of the (windowed) snapshots the model reads (``None`` where this rank
            holds none).
        x: ``(T, N, F)``, static ``(N, F)`` or ``None``.
        target_edges: ``T`` raw ``(2, E_t)`` edge sets (canonical order) used as link / sign targets.
        target_signs: ``T`` ``(E_t,)`` signs, or ``None``.
        y: ``(T, N)`` node targets, or ``None``.
        task: the task.
        num_negatives: negatives per positive for training blocks.
        eval_num_negatives: negatives per positive for validation/test/predict blocks.
        seed: seed of the negative sampling.
        y_mean: node regression: each node's mean training target (the ``mean`` baseline).
        skip: snapshots ``t`` whose target ``t + 1`` is empty (no target is built for them).
    """

    def __init__(
        self,
        adjs: list[Tensor | None],
        x: Tensor | None,
        target_edges: list[Tensor],
        target_signs: list[Tensor] | None,
        y: Tensor | None,
        task: TaskName,
        num_negatives: int,
        eval_num_negatives: int,
        seed: int,
        y_mean: Tensor | None = None,
        skip: frozenset[int] = frozenset(),
        num_nodes: int | None = None,
    ) -> None:
        self.adjs = adjs
        self.x = x
        self.target_edges = target_edges
        self.target_signs = target_signs
        self.y = y
        self.task = task
        self.num_negatives = num_negatives
        self.eval_num_negatives = eval_num_negatives
        self.seed = seed
        self.y_mean = y_mean
        self.skip = skip
        self.num_nodes = num_nodes if num_nodes is not None else next(int(a.shape[0]) for a in adjs if a is not None)
        self.feature_size = 0 if x is None else int(x.shape[-1])
        self._train_draws = 0

    def __len__(self) -> int:
        return len(self.target_edges)

    def inputs(self, t0: int, t1: int) -> dict[str, list[Any]]:
        """The batch fields holding the model's adjacencies of snapshots ``t0 .. t1 - 1``."""
        return {"adjs": list(self.adjs[t0:t1])}

    def features(self, t0: int, t1: int) -> Tensor | None:
        """Node features of snapshots ``t0 .. t1 - 1``: ``(t1 - t0, N, F)`` or ``None``."""
        if self.x is None:
            return None
        return self.x[t0:t1] if self.x.dim() == 3 else self.x.unsqueeze(0).expand(t1 - t0, *self.x.shape)

    def target(self, t: int, split: str, draw: int | None = None) -> SnapshotTarget | None:
        """Target of input snapshot ``t`` (about snapshot ``t + 1``); ``None`` when ``t + 1`` is empty.

        ``draw`` numbers the training negative draw (the data module passes ``epoch * n_train + t + 1``); without it
        a counter of the draws made so far is used.
        """
        n = self.num_nodes
        if self.task == "node_regression":
            assert self.y is not None and self.y_mean is not None
            return SnapshotTarget(None, self.y[t + 1], {"persistence": self.y[t], "mean": self.y_mean})
        if t in self.skip:
            return None
        edges = self.target_edges[t + 1]
        if self.task == "edge_sign":
            assert self.target_signs is not None
            sign = self.target_signs[t + 1]
            keep = sign != 0
            return SnapshotTarget(edges[:, keep], (sign[keep] > 0).to(torch.long))
        if split == "train":
            if draw is None:
                self._train_draws += 1
                draw = self._train_draws
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + draw * 7919 + t)
            k = self.num_negatives
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 104_729 + t)
            k = self.eval_num_negatives
        neg = sample_negatives(edges, n, k, gen)
        label = torch.cat([torch.ones(edges.shape[1]), torch.zeros(neg.shape[1])])
        return SnapshotTarget(torch.cat([edges, neg], dim=1), label)

    def batch(
        self, t0: int, t1: int, targets: range, split: str, draw: Callable[[int], int | None] | None = None
    ) -> SnapshotBatch:
        """Block of snapshots ``t0 .. t1 - 1``; snapshot ``t`` carries a target iff ``t in targets``."""
        tgts = [self.target(t, split, draw(t) if draw else None) if t in targets else None for t in range(t0, t1)]
        return SnapshotBatch(
            t0=t0, x=self.features(t0, t1), targets=tgts, num_nodes=self.num_nodes, **self.inputs(t0, t1)
        )


class _Blocks(IterableDataset):
    """The batches of one split, one per block, built lazily in order."""

    def __init__(self, make: Callable[[Any], SnapshotBatch], blocks: list[Any]) -> None:
        self.make = make
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[SnapshotBatch]:
        for block in self.blocks:
            yield self.make(block)


def _unbatched(item: SnapshotBatch) -> SnapshotBatch:
    """Collate function: a block already is a batch."""
    return item


class DynamicGraphDataModule(L.LightningDataModule):
    """Dynamic graph -> blocks of snapshots with next-snapshot targets: source x storage x partitioner.

    See the module docstring. The data module's own options:

    Args:
        source: where the graph comes from (:mod:`lit_efficiency.dyn_gnn.sources`), by ``class_path`` in YAML.
        task: ``link_prediction``, ``edge_sign`` (needs signed edges) or ``node_regression`` (needs node targets).
        storage: ``resident`` (normalised CSR on the host) or ``streamed`` (encoded keys, rebuilt on the device).
        partitioner: ``none`` or ``snapshot`` (each DDP rank reads and yields only its snapshot sub-blocks; train
            with :class:`~lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask`).
        window: edge-life window ``w`` of the model's input snapshots (targets stay the raw next step).
        train_frac: fraction of the prediction pairs ``(t, t+1)`` used for training (the earliest).
        val_frac: fraction for validation (after training).
        test_frac: fraction for test (the latest).
        num_negatives: sampled non-edges per true edge in training (TM-GCN uses 19).
        eval_num_negatives: sampled non-edges per true edge for validation/test/predict (default ``num_negatives``).
        block_size: snapshots per training step (default all training snapshots: one step per epoch).
        eval_block_size: snapshots per validation/test/predict batch (default: one batch).
        use_edge_weights: use the edge weights in the adjacency, else 0/1.
        undirected: symmetrise the model's input adjacency (targets keep their direction).
        standardize_features: standardise node features with the training snapshots' mean and std.
        log_targets: node regression: predict ``log1p(y)``.
        seed: seed of negative sampling.
        transfer: streamed: ``diff`` (each snapshot full or diff, whichever is smaller) or ``full``.
        pin_memory: streamed: pin the host items once (CUDA only).
        prefetch: streamed: copy the next block's items on a side CUDA stream (CUDA only).
        verify: streamed: verify every rebuilt snapshot's checksum.
        halo: partitioned: preceding snapshots each rank also holds (``None``: the LightningModule's
            ``temporal_halo``, else 0).
        world_size: partitioned: ``P`` (``None``: the trainer's).
        rank: partitioned: this rank (``None``: the trainer's global rank).
    """

    def __init__(
        self,
        source: GraphSource | None = None,
        task: TaskName = "link_prediction",
        storage: Storage = "resident",
        partitioner: Partitioner = "none",
        window: int = 1,
        train_frac: float = 0.7,
        val_frac: float = 0.1,
        test_frac: float = 0.2,
        num_negatives: int = 19,
        eval_num_negatives: int | None = None,
        block_size: int | None = None,
        eval_block_size: int | None = None,
        use_edge_weights: bool = False,
        undirected: bool = True,
        standardize_features: bool = True,
        log_targets: bool = True,
        seed: int = 0,
        transfer: Literal["diff", "full"] = "diff",
        pin_memory: bool = True,
        prefetch: bool = True,
        verify: bool = True,
        halo: int | None = None,
        world_size: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        if source is None:
            raise ConfigError(
                "data.source is required (e.g. class_path: lit_efficiency.dyn_gnn.sources.EdgeListSource)"
            )
        choices = {
            "task": (task, ("link_prediction", "edge_sign", "node_regression")),
            "storage": (storage, ("resident", "streamed")),
            "partitioner": (partitioner, ("none", "snapshot")),
            "transfer": (transfer, ("diff", "full")),
        }
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(f"data.{name}: unknown value {value!r}; valid: {', '.join(valid)}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"data.window must be an int >= 1, got {window!r}")
        if num_negatives < 1 or (eval_num_negatives is not None and eval_num_negatives < 1):
            raise ConfigError(f"data.num_negatives / eval_num_negatives must be >= 1, got {num_negatives}")
        for name, value in (("block_size", block_size), ("eval_block_size", eval_block_size), ("halo", halo)):
            if value is not None and value < (0 if name == "halo" else 1):
                raise ConfigError(f"data.{name} must be >= {0 if name == 'halo' else 1} or null, got {value}")
        if world_size is not None and world_size < 1:
            raise ConfigError(f"data.world_size must be >= 1 or null, got {world_size}")
        if rank is not None and not 0 <= rank < (world_size or rank + 1):
            raise ConfigError(f"data.rank={rank} is outside [0, world_size={world_size})")
        chronological_split(10, train_frac, val_frac, test_frac)  # validates the fractions early
        self.save_hyperparameters(ignore=["source"])
        self.source = source
        self.task: TaskName = task
        self.storage: Storage = storage
        self.partitioner: Partitioner = partitioner
        self.transfer = transfer
        self.window = window
        self.block_size = block_size
        self.eval_block_size = eval_block_size
        self.pin_memory, self.prefetch, self.verify = pin_memory, prefetch, verify
        self._halo_arg, self._world_arg, self._rank_arg = halo, world_size, rank
        self.store: SnapshotStore | None = None
        self.graph: DynamicGraph | None = None
        self.splits: dict[str, range] = {}
        self._horizon = 0
        self.plans: dict[str, list[BlockPlan]] = {}
        self.edge_counts: list[int] = []
        self.owned: list[int] = []
        # streamed storage: the device cache of the last rebuilt snapshot and the transfer log
        from lit_efficiency.core.recorders import Recorder

        self.transfer_recorder: Recorder = Recorder()
        self.encoded: Any = None
        self._last: tuple[int, Tensor, Tensor | None] | None = None
        self._last_x: tuple[int, Tensor] | None = None
        self._prefetched: tuple[int, list[Any], Any] | None = None
        self._side_stream: Any = None

    # ------------------------------------------------------------------ who am I (partitioned)
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
        """Halo snapshots per block (partitioned; see ``halo``)."""
        if self._halo_arg is not None:
            return self._halo_arg
        module = self._trainer_attr("lightning_module")
        return int(getattr(module, "temporal_halo", 0) or 0)

    @property
    def partitioned(self) -> bool:
        """``partitioner == "snapshot"``."""
        return self.partitioner == "snapshot"

    # ------------------------------------------------------------------ setup
    @override
    def prepare_data(self) -> None:
        """Let the source fetch its files (once per node, before ``setup``)."""
        self.source.prepare()

    def _check_horizon(self, num_snapshots: int) -> None:
        name = self.source.name
        if num_snapshots < 2:
            raise DataError(f"{name}: needs at least 2 snapshots, got {num_snapshots}")
        if self.window > num_snapshots:
            raise ConfigError(f"data.window={self.window} is larger than the {num_snapshots} snapshots of {name}")
        hp = self.hparams
        self._horizon = num_snapshots
        self.splits = chronological_split(num_snapshots - 1, hp.train_frac, hp.val_frac, hp.test_frac)

    def _empty_targets(self, raw_counts: list[int]) -> frozenset[int]:
        """Snapshots ``t`` whose target snapshot ``t + 1`` has no edge (link/sign tasks): skipped with a warning."""
        if self.task == "node_regression":
            return frozenset()
        skip = frozenset(t for t in range(len(raw_counts) - 1) if raw_counts[t + 1] == 0)
        if skip:
            warnings.warn(
                f"{self.source.name}: snapshots {sorted(t + 1 for t in skip)} have no edges; the pairs predicting them "
                "are skipped",
                stacklevel=2,
            )
        if all(t in skip for t in self.splits["train"]):
            raise DataError(f"{self.source.name}: every training target snapshot is empty (no edges to predict)")
        return skip

    @override
    def setup(self, stage: str | None = None) -> None:
        """Read the graph (this rank's part), build the model inputs (normalised or encoded), targets and split."""
        if self.store is not None:
            return
        hp = self.hparams
        keep: set[int] | None = None
        if self.partitioned:
            self.edge_counts = list(self.source.edge_counts(self.window))
            self._check_horizon(len(self.edge_counts))
            raw_counts = self.source.edge_counts(1) if self.task != "node_regression" else self.edge_counts
            skip = self._empty_targets(raw_counts)
            self.plans = self.make_plans(self.edge_counts, skip)
            self.owned = self._owned_snapshots()
            if self.world_size > 1:
                keep = set(self.owned)
            raw = self.source.load(None if keep is None else self._needed_raw(keep, len(self.edge_counts)))
        else:
            raw = self.source.load()
            self._check_horizon(raw.num_snapshots)
            skip = self._empty_targets(raw.num_edges_per_snapshot)
        if self.task == "edge_sign" and raw.edge_labels is None:
            raise ConfigError(f"data.task=edge_sign needs signed edges; {self.source.name} has none")
        if self.task == "node_regression" and raw.y is None:
            raise ConfigError(f"data.task=node_regression needs node targets; {self.source.name} has none")
        model_graph = raw.with_window(self.window)
        snaps = self.model_snapshots(model_graph, keep)
        x = raw.x.float() if raw.x is not None else None
        if x is not None and hp.standardize_features:
            train_x = x[: self.splits["train"].stop] if x.dim() == 3 else x
            flat = train_x.reshape(-1, x.shape[-1])
            x = (x - flat.mean(0)) / flat.std(0).clamp_min(1e-6)
        target_edges = [ei[:, ei[0] != ei[1]] for ei in raw.edge_indices]
        signs = None
        if raw.edge_labels is not None:
            signs = [lab[ei[0] != ei[1]] for lab, ei in zip(raw.edge_labels, raw.edge_indices, strict=True)]
        y, y_mean = None, None
        if raw.y is not None and self.task == "node_regression":
            y = raw.y.float()
            if hp.log_targets:
                y = torch.log1p(y.clamp_min(0))
            train = self.splits["train"]
            y_mean = y[train.start + 1 : train.stop + 1].mean(0)
        self.hparams.update({"num_nodes": raw.num_nodes, "num_snapshots": raw.num_snapshots})
        self.graph = raw
        common = {
            "x": x,
            "target_edges": target_edges,
            "target_signs": signs,
            "y": y,
            "task": self.task,
            "num_negatives": hp.num_negatives,
            "eval_num_negatives": hp.eval_num_negatives or hp.num_negatives,
            "seed": hp.seed,
            "y_mean": y_mean,
            "skip": skip,
            "num_nodes": raw.num_nodes,
        }
        if self.storage == "streamed":
            from lit_efficiency.dyn_gnn.streaming import StreamingStore, encode_items

            items, full_nbytes, self.encoded = encode_items(snaps, raw.num_nodes, self.transfer)
            if self.pin_memory and torch.cuda.is_available():
                items = [None if item is None else item.pin_memory() for item in items]
            self.store = StreamingStore(items, full_nbytes, self.transfer, self.pin_memory, **common)
        else:
            from lit_efficiency.dyn_gnn.adjacency import gcn_norm

            n = raw.num_nodes
            adjs = [None if s is None else gcn_norm(s[0], n, s[1]) for s in snaps]
            self.store = SnapshotStore(adjs, **common)

    def _needed_raw(self, keep: set[int], num_snapshots: int) -> set[int]:
        """Raw snapshots this rank reads: its model snapshots, their ``window - 1`` predecessors, their targets."""
        needed: set[int] = set()
        for t in keep:
            needed.update(range(max(0, t - self.window + 1), t + 1))
            if t + 1 < num_snapshots:
                needed.add(t + 1)
        return needed

    def model_snapshots(
        self, model_graph: DynamicGraph, keep: set[int] | None = None
    ) -> list[tuple[Tensor, Tensor | None] | None]:
        """The model's input snapshots as ``(edge_index, weight or None)`` in canonical order (sorted by
        ``row * N + col``, no duplicates): symmetrised when ``undirected``, weighted when ``use_edge_weights``;
        ``None`` for the snapshots outside ``keep``."""
        from torch_geometric.utils import to_undirected

        hp = self.hparams
        n = model_graph.num_nodes
        out: list[tuple[Tensor, Tensor | None] | None] = []
        for t in range(model_graph.num_snapshots):
            if keep is not None and t not in keep:
                out.append(None)
                continue
            ei = model_graph.edge_indices[t]
            w = model_graph.edge_weights[t] if (hp.use_edge_weights and model_graph.edge_weights) else None
            if hp.undirected:
                if w is None:
                    ei = to_undirected(ei, num_nodes=n)
                else:
                    ei, w = to_undirected(ei, w, num_nodes=n, reduce="max")
            out.append((ei, w))
        return out

    # ------------------------------------------------------------------ partition plans
    def make_plans(self, edge_counts: list[int], skip: frozenset[int] = frozenset()) -> dict[str, list[BlockPlan]]:
        """Partition every global block of every split over the ranks, by edge count (identical on every rank).

        Args:
            edge_counts: edges of each model input snapshot (``len`` is ``T``).
            skip: snapshots without a target (not counted in the loss normaliser).
        """
        plans: dict[str, list[BlockPlan]] = {}
        world = self.world_size
        for split, span in self._spans().items():
            targets = self.split_targets(split)
            plans[split] = [
                BlockPlan(
                    t0,
                    t1,
                    tuple(range(b.start + t0, b.stop + t0) for b in snapshot_blocks(edge_counts[t0:t1], world)),
                    targets,
                    frozenset(skip),
                )
                for t0, t1 in span
            ]
        return plans

    def _spans(self) -> dict[str, list[tuple[int, int]]]:
        """``[t0, t1)`` blocks of every split: training blocks, evaluation runs from 0 (predict: every pair)."""
        spans = {"train": global_blocks(0, self.splits["train"].stop, self.block_size)}
        for split in ("val", "test"):
            targets = self.splits[split]
            spans[split] = global_blocks(0, targets.stop, self.eval_block_size) if len(targets) else []
        spans["predict"] = global_blocks(0, self._horizon - 1, self.eval_block_size)
        return spans

    def _owned_snapshots(self) -> list[int]:
        """Model snapshots this rank holds (its sub-blocks and their halos), sorted."""
        owned: set[int] = set()
        for plans in self.plans.values():
            for plan in plans:
                mine = plan.snap_blocks[self.rank]
                if len(mine):
                    owned.update(range(max(0, mine.start - self.halo), mine.stop))
        return sorted(owned)

    # ------------------------------------------------------------------ properties for the task
    def _require_setup(self) -> SnapshotStore:
        if self.store is None:
            raise ConfigError("the data module's setup() must run before num_nodes / num_features are known")
        return self.store

    @property
    def num_nodes(self) -> int:
        """``N`` (after ``setup``)."""
        return self._require_setup().num_nodes

    @property
    def num_features(self) -> int:
        """Node feature size ``F`` the model reads, 0 without features (after ``setup``)."""
        return self._require_setup().feature_size

    @property
    def num_snapshots(self) -> int:
        """``T`` (after ``setup``)."""
        return len(self._require_setup())

    def host_bytes(self) -> int:
        """Bytes of the host-resident streamed graph (after ``setup``; streamed storage only)."""
        store = self._require_setup()
        if not hasattr(store, "host_bytes"):
            raise ConfigError("host_bytes() needs data.storage=streamed")
        return store.host_bytes()

    # ------------------------------------------------------------------ loaders
    def _epoch(self) -> int:
        return int(self._trainer_attr("current_epoch") or 0)

    def _draw(self, t: int) -> int:
        """Training negative draw of snapshot ``t``: one per (epoch, snapshot), whatever the storage or partition."""
        train = self.splits["train"]
        return self._epoch() * len(train) + t - train.start + 1

    def split_targets(self, split: str) -> range:
        """Snapshots carrying a target in ``split`` (``predict``: every pair ``(t, t + 1)``)."""
        if split == "predict":
            return range(0, self._horizon - 1)
        return self.splits[split]

    def make_batch(self, plan: BlockPlan, split: str) -> PartitionedBatch:
        """This rank's :class:`PartitionedBatch` of the global block ``plan``."""
        store = self._require_setup()
        rank = self.rank
        mine = plan.snap_blocks[rank]
        halo = min(self.halo, mine.start) if len(mine) else 0
        held = range(mine.start - halo, mine.stop)
        targets: list[SnapshotTarget | None] = [None] * halo
        draw = self._draw if split == "train" else None
        targets += [store.target(t, split, draw(t) if draw else None) if t in plan.targets else None for t in mine]
        return PartitionedBatch(
            t0=held.start,
            x=store.features(held.start, held.stop),
            targets=targets,
            num_nodes=store.num_nodes,
            block_start=plan.start,
            block_stop=plan.stop,
            snap_blocks=plan.snap_blocks,
            num_halo=halo,
            num_targets=plan.num_targets,
            rank=rank,
            **store.inputs(held.start, held.stop),
        )

    def _loader(self, split: str) -> DataLoader:
        store = self._require_setup()
        if self.partitioned:
            dataset: IterableDataset = _Blocks(lambda plan: self.make_batch(plan, split), self.plans[split])
        else:
            targets = self.split_targets(split)
            # Without a trainer (no epoch) the store's own counter draws fresh negatives on every pass.
            draw = self._draw if split == "train" and self._trainer_attr("current_epoch") is not None else None
            dataset = _Blocks(lambda b: store.batch(b[0], b[1], targets, split, draw), self._spans()[split])
        return DataLoader(dataset, batch_size=None, collate_fn=_unbatched)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        """Every pair ``(t, t + 1)`` from snapshot 0 on, with the evaluation negatives (see the module docstring)."""
        return self._loader("predict")

    @override
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Host -> device copy of one block; a streamed block is rebuilt on ``device`` first (timed)."""
        if isinstance(batch, SnapshotBatch):
            if batch.items:
                from lit_efficiency.dyn_gnn.streaming import rebuild_block

                batch = rebuild_block(self, batch, torch.device(device))
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


class SnapshotDataModule(DynamicGraphDataModule):
    """:class:`DynamicGraphDataModule` with the source given by name (the original arguments).

    Args:
        dataset: a real dataset (``bitcoin_otc``, ``bitcoin_alpha``, ``uci_messages``, ``chess``, ``twitter_tennis``:
            :class:`~lit_efficiency.dyn_gnn.sources.DatasetSource`), ``synthetic``
            (:class:`~lit_efficiency.dyn_gnn.sources.SyntheticSource`), ``synthetic_stream`` (the churn model read one
            snapshot at a time: :class:`~lit_efficiency.dyn_gnn.synthetic.StreamingChurnSource`) or ``synthetic_churn``
            (:class:`~lit_efficiency.dyn_gnn.sources.SyntheticChurnSource`). Ignored when ``source`` is given.
        data_dir: real data: data root holding ``graphs/<dataset>/``.
        num_steps: real data: number of equal-width time steps.
        step_size: real data: step width in seconds.
        num_nodes: synthetic: ``N`` (for real data replaced by the loaded graph's ``N`` in ``setup``).
        num_snapshots: synthetic: ``T``.
        edges_per_snapshot: synthetic: edges per step.
        churn: synthetic: fraction of edges replaced per step.
        num_communities: ``synthetic``: planted communities.
        num_node_features: synthetic: node feature size (0 = none).
        source: a source object instead of ``dataset`` (then the options above are unused).
        **kwargs: :class:`DynamicGraphDataModule` arguments (``task``, ``storage``, ``partitioner``, ``window``, ...).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        data_dir: str | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        num_nodes: int = 200,
        num_snapshots: int = 12,
        edges_per_snapshot: int = 800,
        churn: float = 0.3,
        num_communities: int = 4,
        num_node_features: int = 8,
        source: GraphSource | None = None,
        **kwargs: Any,
    ) -> None:
        if source is None:
            synthetic = {
                "num_nodes": num_nodes,
                "num_snapshots": num_snapshots,
                "edges_per_snapshot": edges_per_snapshot,
                "churn": churn,
                "num_node_features": num_node_features,
                "seed": kwargs.get("seed", 0),
            }
            if dataset == "synthetic":
                source = SyntheticSource(num_communities=num_communities, **synthetic)
            elif dataset == "synthetic_churn":
                source = SyntheticChurnSource(**synthetic)
            elif dataset == "synthetic_stream":  # generated and encoded one snapshot at a time (streamed storage)
                from lit_efficiency.dyn_gnn.synthetic import StreamingChurnSource

                source = StreamingChurnSource(**synthetic)
            elif dataset in REAL_DATASETS:
                source = DatasetSource(dataset, data_dir=data_dir, num_steps=num_steps, step_size=step_size)
            else:
                valid = ", ".join(REAL_DATASETS + SYNTHETIC_DATASETS)
                raise ConfigError(
                    f"data.dataset: unknown dataset {dataset!r}; valid: {valid} (or give data.source, e.g. "
                    "lit_efficiency.dyn_gnn.sources.EdgeListSource for a file)"
                )
        self.dataset = dataset
        self.data_dir = data_dir
        super().__init__(source=source, **kwargs)
