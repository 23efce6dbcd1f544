r"""Snapshot DataModule: a dynamic graph as blocks of consecutive snapshots with next-snapshot targets.

A **batch** is a block of ``S`` consecutive snapshots ``t0 .. t0 + S - 1`` (:class:`SnapshotBatch`): their
pre-normalised adjacencies :math:`\hat{A}_t = D^{-1/2}(A_t + I)D^{-1/2}` (computed once in ``setup``), their node
features, and for every snapshot ``t`` of the block the target of snapshot ``t + 1`` (embeddings at ``t`` predict
``t + 1``, as in EvolveGCN, https://arxiv.org/abs/1902.10191):

- ``link_prediction``: the edges of ``t + 1`` (label 1) and ``num_negatives`` sampled non-edges per edge (label 0),
  each made by keeping the edge's source and drawing a destination uniformly, rejecting true edges of ``t + 1`` and
  self loops. Training negatives are re-drawn each time a block is built (each epoch); validation/test negatives
  are fixed by the seed.
- ``edge_sign``: the edges of ``t + 1`` with a non-zero sign label (1 = positive sign, 0 = negative).
- ``node_regression``: ``y[t + 1]`` for every node.

**Chronological split** of the ``T - 1`` prediction pairs ``(t, t + 1)``: the first ``train_frac`` go to training,
the next ``val_frac`` to validation, then ``test_frac`` to test (EvolveGCN's 70/10/20 is the default). Validation and
test batches run through **all snapshots from 0 in order** (so the temporal state reaching the evaluated snapshots
is the one built from the whole past) but carry targets only for their own pairs. Training batches cover the
training pairs, in order, ``block_size`` snapshots at a time (default: all of them, one step per epoch); the task
carries the temporal state from block to block (truncated back-propagation through time).

With an edge-life window ``w > 1`` the model sees the windowed snapshots (``A_t`` = edges of steps
``t-w+1 .. t``) while the targets are the raw edges of step ``t + 1`` (otherwise edges already in ``A_t`` would be
targets).

Extension points for the streaming issue: :meth:`SnapshotDataModule.load_graph` (the I/O), :meth:`SnapshotStore.batch`
(building one block) and :meth:`SnapshotDataModule.transfer_batch_to_device` (host -> device copy of one block).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.adjacency import edge_key
from lit_efficiency.dyn_gnn.graph import DynamicGraph

__all__ = [
    "SnapshotBatch",
    "SnapshotDataModule",
    "SnapshotStore",
    "SnapshotTarget",
    "TaskName",
    "chronological_split",
    "sample_negatives",
]

TaskName = Literal["link_prediction", "edge_sign", "node_regression"]
REAL_DATASETS = ("bitcoin_otc", "bitcoin_alpha", "uci_messages", "chess", "twitter_tennis")
SYNTHETIC_DATASETS = ("synthetic", "synthetic_churn")


class SnapshotTarget(NamedTuple):
    """Target of one snapshot ``t``: what the embeddings at ``t`` must predict about ``t + 1``."""

    edge_index: Tensor | None
    """``(2, C)`` candidate / labelled edges of ``t + 1`` (``None`` for node regression)."""
    label: Tensor
    """``(C,)`` float 0/1 (link prediction), ``(C,)`` long 0/1 (edge sign) or ``(N,)`` float (node regression)."""


@dataclass
class SnapshotBatch:
    """A block of consecutive snapshots ``t0 .. t0 + S - 1`` with their next-snapshot targets.

    Shapes:
        - adjs: ``S`` sparse CSR ``(N, N)`` normalised adjacencies (``adj[target, source]``).
        - x: ``(S, N, F)`` or ``None``.
        - targets: ``S`` entries, ``None`` where snapshot ``t`` has no target in this split.
    """

    t0: int
    """Global index of the block's first snapshot."""
    adjs: list[Tensor]
    x: Tensor | None
    targets: list[SnapshotTarget | None]
    num_nodes: int

    @property
    def num_snapshots(self) -> int:
        """``S``."""
        return len(self.adjs)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SnapshotBatch:
        """Copy every tensor to ``device`` (returns a new batch; ``self`` is unchanged)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        targets = [
            None if tg is None else SnapshotTarget(move(tg.edge_index), move(tg.label))  # type: ignore[arg-type]
            for tg in self.targets
        ]
        adjs = [a.to(device, non_blocking=non_blocking) for a in self.adjs]
        return dataclasses.replace(self, adjs=adjs, x=move(self.x), targets=targets)


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
        adjs: ``T`` normalised adjacencies of the (windowed) snapshots the model reads.
        x: ``(T, N, F)``, static ``(N, F)`` or ``None``.
        target_edges: ``T`` raw ``(2, E_t)`` edge sets (canonical order) used as link / sign targets.
        target_signs: ``T`` ``(E_t,)`` signs, or ``None``.
        y: ``(T, N)`` node targets, or ``None``.
        task: the task.
        num_negatives: negatives per positive for training blocks.
        eval_num_negatives: negatives per positive for validation/test blocks.
        seed: seed of the negative sampling.
    """

    def __init__(
        self,
        adjs: list[Tensor],
        x: Tensor | None,
        target_edges: list[Tensor],
        target_signs: list[Tensor] | None,
        y: Tensor | None,
        task: TaskName,
        num_negatives: int,
        eval_num_negatives: int,
        seed: int,
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
        self.num_nodes = int(adjs[0].shape[0]) if adjs else 0
        self._train_draws = 0

    def __len__(self) -> int:
        return len(self.adjs)

    def target(self, t: int, split: str) -> SnapshotTarget:
        """Target of input snapshot ``t`` (about snapshot ``t + 1``)."""
        n = self.num_nodes
        if self.task == "node_regression":
            assert self.y is not None
            return SnapshotTarget(None, self.y[t + 1])
        edges = self.target_edges[t + 1]
        if self.task == "edge_sign":
            assert self.target_signs is not None
            sign = self.target_signs[t + 1]
            keep = sign != 0
            return SnapshotTarget(edges[:, keep], (sign[keep] > 0).to(torch.long))
        if split == "train":
            # A fresh draw every time a training block is built: new negatives every epoch, reproducible per run.
            self._train_draws += 1
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._train_draws * 7919 + t)
            k = self.num_negatives
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 104_729 + t)
            k = self.eval_num_negatives
        neg = sample_negatives(edges, n, k, gen)
        label = torch.cat([torch.ones(edges.shape[1]), torch.zeros(neg.shape[1])])
        return SnapshotTarget(torch.cat([edges, neg], dim=1), label)

    def batch(self, t0: int, t1: int, targets: range, split: str) -> SnapshotBatch:
        """Block of snapshots ``t0 .. t1 - 1``; snapshot ``t`` carries a target iff ``t in targets``."""
        x = None
        if self.x is not None:
            x = self.x[t0:t1] if self.x.dim() == 3 else self.x.unsqueeze(0).expand(t1 - t0, *self.x.shape)
        tgts = [self.target(t, split) if t in targets else None for t in range(t0, t1)]
        return SnapshotBatch(t0=t0, adjs=self.adjs[t0:t1], x=x, targets=tgts, num_nodes=self.num_nodes)


class _BlockDataset(Dataset):
    """One item per block: ``(t0, t1)`` ranges built lazily by :meth:`SnapshotStore.batch`."""

    def __init__(self, store: SnapshotStore, blocks: list[tuple[int, int]], targets: range, split: str) -> None:
        self.store = store
        self.blocks = blocks
        self.targets = targets
        self.split = split

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> SnapshotBatch:
        t0, t1 = self.blocks[i]
        return self.store.batch(t0, t1, self.targets, self.split)


def _unbatched(item: SnapshotBatch) -> SnapshotBatch:
    """Collate function: a block already is a batch."""
    return item


def _blocks(start: int, stop: int, size: int | None) -> list[tuple[int, int]]:
    size = stop - start if size is None else size
    return [(t, min(t + size, stop)) for t in range(start, stop, max(size, 1))]


class SnapshotDataModule(L.LightningDataModule):
    """Dynamic graph -> blocks of snapshots with next-snapshot targets (see the module docstring).

    Args:
        dataset: a real dataset (``bitcoin_otc``, ``bitcoin_alpha``, ``uci_messages``, ``chess``, ``twitter_tennis``),
            ``synthetic`` (planted communities + persistence: learnable links; edge signs = same community) or
            ``synthetic_churn`` (power-law churn model, no signal; for timing).
        data_dir: data root holding ``graphs/<dataset>/``; default: ``$LIT_EFFICIENCY_DATA`` or ``../shared/data``,
            else downloaded.
        num_steps: real data: number of equal-width time steps (default: the loader's step size).
        step_size: real data: step width in seconds.
        window: edge-life window ``w`` of the model's input snapshots (targets stay the raw next step).
        num_nodes: synthetic: ``N`` (for real data replaced by the loaded graph's ``N`` in ``setup``).
        num_snapshots: synthetic: ``T`` (for real data replaced by the loaded graph's ``T`` in ``setup``).
        edges_per_snapshot: synthetic: edges per step.
        churn: synthetic: fraction of edges replaced per step (``synthetic``: ``1 - persistence``).
        num_communities: ``synthetic``: planted communities.
        num_node_features: synthetic: node feature size (0 = none; the model then learns an embedding).
        seed: seed of the synthetic graph and of negative sampling.
        task: ``link_prediction``, ``edge_sign`` (needs signed edges: Bitcoin, chess, synthetic) or
            ``node_regression`` (needs node targets: twitter_tennis, synthetic).
        train_frac: fraction of the prediction pairs ``(t, t+1)`` used for training (the earliest).
        val_frac: fraction for validation (after training).
        test_frac: fraction for test (the latest).
        num_negatives: sampled non-edges per true edge in training (TM-GCN uses 19).
        eval_num_negatives: sampled non-edges per true edge for validation/test (default ``num_negatives``).
        block_size: snapshots per training step (default all training snapshots: one step per epoch).
        eval_block_size: snapshots per validation/test batch (default: one batch).
        use_edge_weights: use the edge weights (event counts) in the adjacency, else 0/1.
        undirected: symmetrise the model's input adjacency (targets keep their direction).
        standardize_features: standardise node features with the training snapshots' mean and std.
        log_targets: node regression: predict ``log1p(y)``.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        data_dir: str | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        window: int = 1,
        num_nodes: int = 200,
        num_snapshots: int = 12,
        edges_per_snapshot: int = 800,
        churn: float = 0.3,
        num_communities: int = 4,
        num_node_features: int = 8,
        seed: int = 0,
        task: TaskName = "link_prediction",
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
    ) -> None:
        super().__init__()
        if dataset not in REAL_DATASETS + SYNTHETIC_DATASETS:
            valid = ", ".join(REAL_DATASETS + SYNTHETIC_DATASETS)
            raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; valid: {valid}")
        if task not in ("link_prediction", "edge_sign", "node_regression"):
            raise ConfigError(f"data.task: unknown task {task!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"data.window must be an int >= 1, got {window!r}")
        if num_negatives < 1 or (eval_num_negatives is not None and eval_num_negatives < 1):
            raise ConfigError(f"data.num_negatives / eval_num_negatives must be >= 1, got {num_negatives}")
        for name, value in (("block_size", block_size), ("eval_block_size", eval_block_size)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1 or null, got {value}")
        chronological_split(10, train_frac, val_frac, test_frac)  # validates the fractions early
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.task: TaskName = task
        self.window = window
        self.block_size = block_size
        self.eval_block_size = eval_block_size
        self.store: SnapshotStore | None = None
        self.graph: DynamicGraph | None = None
        self.splits: dict[str, range] = {}

    # ------------------------------------------------------------------ I/O
    def load_graph(self) -> DynamicGraph:
        """Load the raw (window 1) dynamic graph; the only place that reads files. Override to plug in a source."""
        hp = self.hparams
        if self.dataset == "synthetic":
            from lit_efficiency.dyn_gnn.synthetic import synthetic_link_graph

            graph = synthetic_link_graph(
                num_nodes=hp.num_nodes,
                num_snapshots=hp.num_snapshots,
                edges_per_snapshot=hp.edges_per_snapshot,
                num_communities=hp.num_communities,
                persistence=1.0 - hp.churn,
                num_features=hp.num_node_features,
                seed=hp.seed,
            )
            # Signed edges for the edge-sign task: positive inside a community, negative across.
            community = torch.arange(graph.num_nodes) % hp.num_communities
            signs = [torch.where(community[ei[0]] == community[ei[1]], 1, -1) for ei in graph.edge_indices]
            return dataclasses.replace(graph, edge_labels=signs).validate()
        if self.dataset == "synthetic_churn":
            from lit_efficiency.dyn_gnn.synthetic import synthetic_dynamic_graph

            return synthetic_dynamic_graph(
                hp.num_nodes,
                hp.num_snapshots,
                hp.edges_per_snapshot,
                churn=hp.churn,
                num_features=hp.num_node_features,
                seed=hp.seed,
            )
        from lit_efficiency.dyn_gnn.datasets import load_dataset

        return load_dataset(self.dataset, data_dir=self.data_dir, num_steps=hp.num_steps, step_size=hp.step_size)

    @override
    def prepare_data(self) -> None:
        """Download a real dataset when there is no local copy (once per node, before ``setup``)."""
        if self.dataset in REAL_DATASETS:
            from lit_efficiency.dyn_gnn.datasets import dataset_file

            dataset_file(self.dataset, self.data_dir)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load the graph, normalise every snapshot's adjacency, build targets and the chronological split."""
        if self.store is not None:
            return
        hp = self.hparams
        raw = self.load_graph()
        if raw.num_snapshots < 2:
            raise DataError(f"{raw.name or self.dataset}: needs at least 2 snapshots, got {raw.num_snapshots}")
        if self.task == "edge_sign" and raw.edge_labels is None:
            raise ConfigError(f"data.task=edge_sign needs signed edges; dataset {self.dataset!r} has none")
        if self.task == "node_regression" and raw.y is None:
            raise ConfigError(f"data.task=node_regression needs node targets; dataset {self.dataset!r} has none")
        model_graph = raw.with_window(self.window)
        self.splits = chronological_split(raw.num_snapshots - 1, hp.train_frac, hp.val_frac, hp.test_frac)

        adjs = self.build_inputs(model_graph)

        x = raw.x.float() if raw.x is not None else None
        if x is not None and hp.standardize_features:
            train_x = x[: self.splits["train"].stop] if x.dim() == 3 else x
            flat = train_x.reshape(-1, x.shape[-1])
            x = (x - flat.mean(0)) / flat.std(0).clamp_min(1e-6)

        target_edges = []
        for ei in raw.edge_indices:
            target_edges.append(ei[:, ei[0] != ei[1]])
        signs = None
        if raw.edge_labels is not None:
            signs = [lab[ei[0] != ei[1]] for lab, ei in zip(raw.edge_labels, raw.edge_indices, strict=True)]
        y = raw.y.float() if raw.y is not None else None
        if y is not None and hp.log_targets and self.task == "node_regression":
            y = torch.log1p(y.clamp_min(0))
        # For real data ``num_nodes`` / ``num_snapshots`` are not inputs: record the loaded graph's values (checkpoints
        # and ``self.hparams`` say what ran; the task keeps its own ``num_nodes`` out of the loggers' hparam merge).
        self.hparams.update({"num_nodes": raw.num_nodes, "num_snapshots": raw.num_snapshots})
        self.graph = raw
        self.store = self.make_store(
            adjs=adjs,
            x=x,
            target_edges=target_edges,
            target_signs=signs,
            y=y,
            task=self.task,
            num_negatives=hp.num_negatives,
            eval_num_negatives=hp.eval_num_negatives or hp.num_negatives,
            seed=hp.seed,
        )

    def model_snapshots(self, model_graph: DynamicGraph) -> list[tuple[Tensor, Tensor | None]]:
        """The model's input snapshots as ``(edge_index, weight or None)`` in canonical order (sorted by
        ``row * N + col``, no duplicates): symmetrised when ``undirected``, weighted when ``use_edge_weights``."""
        hp = self.hparams
        n = model_graph.num_nodes
        out: list[tuple[Tensor, Tensor | None]] = []
        for t in range(model_graph.num_snapshots):
            ei = model_graph.edge_indices[t]
            w = model_graph.edge_weights[t] if (hp.use_edge_weights and model_graph.edge_weights) else None
            if hp.undirected:
                from torch_geometric.utils import to_undirected

                if w is None:
                    ei = to_undirected(ei, num_nodes=n)
                else:
                    ei, w = to_undirected(ei, w, num_nodes=n, reduce="max")
            out.append((ei, w))
        return out

    def build_inputs(self, model_graph: DynamicGraph) -> list[Any]:
        """Per snapshot, what the store keeps for the model's adjacency (here: the normalised CSR, host-resident).

        Override (with :meth:`make_store`) to keep another representation, e.g. diff-encoded keys.
        """
        from lit_efficiency.dyn_gnn.adjacency import gcn_norm

        n = model_graph.num_nodes
        return [gcn_norm(ei, n, w) for ei, w in self.model_snapshots(model_graph)]

    def make_store(self, **kwargs: Any) -> SnapshotStore:
        """Build the :class:`SnapshotStore` from :meth:`build_inputs`' output (``adjs``) and the targets."""
        return SnapshotStore(**kwargs)

    # ------------------------------------------------------------------ properties for the task
    def _require_setup(self) -> SnapshotStore:
        if self.store is None:
            raise ConfigError("SnapshotDataModule.setup() must run before num_nodes / num_features are known")
        return self.store

    @property
    def num_nodes(self) -> int:
        """``N`` (after ``setup``)."""
        return self._require_setup().num_nodes

    @property
    def num_features(self) -> int:
        """Node feature size ``F`` the model reads, 0 without features (after ``setup``)."""
        x = self._require_setup().x
        return 0 if x is None else int(x.shape[-1])

    @property
    def num_snapshots(self) -> int:
        """``T`` (after ``setup``)."""
        return len(self._require_setup())

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str) -> DataLoader:
        store = self._require_setup()
        targets = self.splits[split]
        if split == "train":
            blocks = _blocks(0, targets.stop, self.block_size)
        else:
            # Run from snapshot 0 so the temporal state reaching the evaluated snapshots has seen the whole past.
            blocks = _blocks(0, targets.stop, self.eval_block_size) if len(targets) else []
        return DataLoader(_BlockDataset(store, blocks, targets, split), batch_size=None, collate_fn=_unbatched)

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
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Host -> device copy of one block (override to time it, stream it, or ship diffs instead)."""
        if isinstance(batch, SnapshotBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
