r"""Distributed dynamic-GNN training: snapshot-partitioned spatial stage, one all-to-all, vertex-partitioned temporal.

The SC'21 scheme (Chakaravarthy et al., "Efficient Scaling of Dynamic Graph Neural Networks",
https://arxiv.org/abs/2109.07893; ``docs/dynamic_gnn.md`` section 4) on top of
:class:`~lit_efficiency.dyn_gnn.task.DynGNNTask`, run by Lightning's DDP strategy (weights replicated, gradients
all-reduced by DDP). Per global block of ``T`` snapshots (a
:class:`~lit_efficiency.dyn_gnn.partitioned.PartitionedBatch` from
:class:`~lit_efficiency.dyn_gnn.partitioned.PartitionedSnapshotDataModule`), rank ``p`` runs

1. the **spatial** stage on its snapshots ``S_p``: :math:`H = \mathrm{spatial}(X_{S_p}, \hat{A}_{S_p})`,
   ``(T_p, N, d)``, no communication;
2. :func:`~lit_efficiency.dyn_gnn.redistribute.snapshot_to_vertex`: ``(T, N_p, d)``, all snapshots of its
   vertex block ``V_p``;
3. the **temporal** stage on ``V_p`` over all ``T`` (state carried across blocks per vertex block);
4. :func:`~lit_efficiency.dyn_gnn.redistribute.vertex_to_snapshot` back to the snapshot layout of what the head
   needs: the embeddings ``(T_p, N, d_out)``, or the head's per-vertex first-layer projections
   ``(T_p, N, 2k)`` computed in the vertex layout (``loss_exchange``, below);
5. the loss of its own targets.

**Choice for the loss: score from what is narrower.** The head's first layer is linear in :math:`[Z_u \| Z_v]`, so
rank ``q`` can apply its two halves to its own vertices (:meth:`~lit_efficiency.dyn_gnn.nn.LinkPredictor.vertex_part`)
and ship :math:`2k` values per vertex and snapshot instead of :math:`d_\mathrm{out}`; the snapshot owner adds the two
endpoints' halves and finishes the head. ``loss_exchange="auto"`` ships the projections when :math:`2k < d_\mathrm{out}`
(a linear head: 2 values), else the embeddings. Per training step the all-to-alls then move
:math:`4 N T (2d + 2w)(P-1)/P` bytes with :math:`w` the shipped width: with a linear head about half of the
:math:`4 N T \cdot 4d (P-1)/P` of shipping the embeddings. An endpoint exchange (ship :math:`Z_t[v]` for the
candidates' endpoints only) was not chosen: with 19 uniform negatives per edge the candidates touch nearly every
vertex. ``wire_dtype`` (``bfloat16``/``float16``) halves the bytes of every exchange at that precision. TM-GCN with
``mixing="input"`` has an identity temporal stage: it needs no redistribution at all, only a temporal **halo** of the
``bandwidth - 1`` snapshots before ``S_p`` (read from the data by each rank, see :attr:`temporal_halo`).

**Loss scaling.** Rank ``p`` computes :math:`\ell_p = \frac{1}{n}\sum_{t \in S_p} \mathcal{L}_t` with ``n`` the
number of targeted snapshots of the whole block (the single-process loss is :math:`\sum_p \ell_p`) and back-propagates
:math:`P \ell_p`: DDP averages the ``P`` gradients, and the all-to-all backward routes every rank's embedding
gradients to the rank that computed them, so the averaged gradient equals the single-process one. ``train/loss`` logs
:math:`\sum_p \ell_p` (one scalar all-reduce).

**Empty ranks** (``P`` larger than a block): the rank still joins every collective (an empty block is promoted to a
grad-requiring leaf by the redistribution) and adds :math:`0 \cdot \sum \theta` to its loss so every parameter gets a
gradient and DDP runs without ``find_unused_parameters``.

**Failures.** The redistribution group has its own timeout (``redistribution_timeout_s``); a collective that fails
(a peer died, or the timeout passed) raises :class:`DistributedTrainingError` naming the rank, the collective and how
to resume. Set the strategy's ``timeout`` to the same value so DDP's all-reduce is bounded too.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError, LitEfficiencyError
from lit_efficiency.core.recorders import CommEvent, Recorder
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotTarget
from lit_efficiency.dyn_gnn.nn import MODEL_NAMES, WDGCN, detach_state, model_class
from lit_efficiency.dyn_gnn.partition import vertex_blocks
from lit_efficiency.dyn_gnn.partitioned import PartitionedBatch
from lit_efficiency.dyn_gnn.redistribute import (
    new_redistribution_group,
    snapshot_to_vertex,
    snapshot_to_vertex_overlapped,
    vertex_to_snapshot,
    vertex_to_snapshot_overlapped,
)
from lit_efficiency.dyn_gnn.task import DynGNNTask

__all__ = ["DistributedDynGNNTask", "DistributedTrainingError"]

_LOSS_EXCHANGES = ("auto", "embeddings", "head_inputs")
_WIRE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DistributedTrainingError(LitEfficiencyError, RuntimeError):
    """A collective failed: a peer rank died or did not answer within the timeout."""


class DistributedDynGNNTask(DynGNNTask):
    """:class:`~lit_efficiency.dyn_gnn.task.DynGNNTask` trained snapshot-partitioned under DDP (module docstring).

    Use with :class:`~lit_efficiency.dyn_gnn.partitioned.PartitionedSnapshotDataModule` and a DDP strategy
    (``conf/trainer/ddp.yaml``, ``conf/trainer/ddp_cpu.yaml``). With one process it trains exactly like the parent.

    Args:
        redistribution_timeout_s: timeout of the redistribution process group's collectives, seconds.
        loss_exchange: what goes back to the snapshot layout for the loss: ``embeddings`` (``Z``, ``out_dim`` values
            per vertex and snapshot), ``head_inputs`` (the head's per-vertex first-layer projections,
            ``head.vertex_width`` values) or ``auto`` (the narrower of the two).
        wire_dtype: dtype the all-to-all buffers travel in (``bfloat16`` / ``float16`` halve the bytes; gradients are
            then equal to the single process only up to that precision).
        exchange_chunks: overlap of the return all-to-all with the temporal stage: the vertex block runs through the
            LSTM (and head projection) in this many chunks, and each chunk's exchange starts (``async_op=True``) while
            the next chunk is computed (:func:`~lit_efficiency.dyn_gnn.redistribute.vertex_to_snapshot_overlapped`).
            ``1`` turns it off; used where the temporal stage is per vertex with a vertex-sliceable state (WD-GCN,
            CD-GCN), one exchange otherwise. Same values and gradients either way.
        spatial_chunks: overlap of the forward all-to-all with the spatial stage: this rank's snapshots run through
            the GCN in this many chunks, and each chunk's exchange to the vertex layout starts while the next chunk
            is computed (:func:`~lit_efficiency.dyn_gnn.redistribute.snapshot_to_vertex_overlapped`). ``1`` (the
            default) turns it off; used for WD-GCN and CD-GCN. Same values and gradients either way.
        **kwargs: the parent's arguments (``model``, ``hidden_dim``, ..., ``num_nodes``, ``num_features``, ``task``).
    """

    sync_metrics_on_compute: ClassVar[bool] = False  # states are combined by _gather_metric_states

    def __init__(
        self,
        redistribution_timeout_s: float = 300.0,
        loss_exchange: Literal["auto", "embeddings", "head_inputs"] = "auto",
        wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        exchange_chunks: int = 4,
        spatial_chunks: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if redistribution_timeout_s <= 0:
            raise ConfigError(f"model.redistribution_timeout_s must be > 0, got {redistribution_timeout_s}")
        if loss_exchange not in _LOSS_EXCHANGES:
            raise ConfigError(f"model.loss_exchange must be one of {', '.join(_LOSS_EXCHANGES)}, got {loss_exchange!r}")
        if wire_dtype not in _WIRE_DTYPES:
            raise ConfigError(f"model.wire_dtype must be one of {', '.join(_WIRE_DTYPES)}, got {wire_dtype!r}")
        if exchange_chunks < 1:
            raise ConfigError(f"model.exchange_chunks must be >= 1, got {exchange_chunks}")
        if spatial_chunks < 1:
            raise ConfigError(f"model.spatial_chunks must be >= 1, got {spatial_chunks}")
        self._group: Any = None
        self._group_ready = False
        #: Every redistribution all-to-all (forward and backward), drained by
        #: :class:`~lit_efficiency.dyn_gnn.profilers.CommProfiler`.
        self.comm_recorder: Recorder[CommEvent] = Recorder()
        self._eval_any = False

    # ------------------------------------------------------------------ process layout
    @property
    def temporal_halo(self) -> int:
        """Snapshots before its block a rank needs (the model class's :meth:`~DynamicGNN.temporal_halo_for`)."""
        cls = model_class(self.hparams.model)
        return cls.temporal_halo_for(**{name: self.hparams[name] for name in cls.options})

    @property
    def _world(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @override
    def setup(self, stage: str) -> None:
        """Build the network (parent), check the model can be partitioned, create the redistribution group."""
        super().setup(stage)
        world = self._world
        if world > 1 and not model_class(self.hparams.model).partitionable:
            usable = [name for name in MODEL_NAMES if model_class(name).partitionable]
            raise ConfigError(
                f"model.model={self.hparams.model!r} is sequential in time and cannot be snapshot-partitioned; "
                f"use one of {', '.join(usable)} or a single process"
            )
        if world > 1 and not self._group_ready:
            self._group = new_redistribution_group(timeout_s=self.hparams.redistribution_timeout_s)
            self._group_ready = True

    # ------------------------------------------------------------------ collectives with clear errors
    def _collective(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except _LocalError as wrapped:  # the rank's own compute between chunks failed: not a communication error
            raise wrapped.__cause__ from None
        except RuntimeError as err:  # gloo/NCCL report a dead peer or a timeout as RuntimeError
            rank = dist.get_rank() if dist.is_initialized() else 0
            detail = str(err).splitlines()[0] if str(err) else repr(err)
            raise DistributedTrainingError(
                f"rank {rank}: {what} failed (a peer rank died or timed out after "
                f"{self.hparams.redistribution_timeout_s:g} s): {detail}; "
                "rerun the same command with ckpt_path=last to resume from the last checkpoint"
            ) from err

    def _global_sum(self, value: Tensor) -> Tensor:
        """Sum of a detached scalar over ranks (identity on one process)."""
        if self._world == 1:
            return value
        out = value.detach().clone()
        self._collective("loss all-reduce", dist.all_reduce, out, dist.ReduceOp.SUM, self._group)
        return out

    # ------------------------------------------------------------------ forward
    @property
    def ships_head_inputs(self) -> bool:
        """Whether the head's per-vertex projections, not the embeddings, go back to the snapshot layout."""
        choice = self.hparams.get("loss_exchange", "auto")
        if choice == "auto":
            assert self.net is not None and self.head is not None
            return self.head.vertex_width < self.net.out_dim
        return choice == "head_inputs"

    def partitioned_embeddings(self, batch: PartitionedBatch, state: Any) -> tuple[Tensor, Any, bool]:
        """What the head reads for this rank's snapshots, every vertex, and the new state of the vertex block.

        Returns ``(z, state, projected)``: ``z`` is ``(T_p, N, out_dim)`` embeddings, or, when ``projected``, the
        head's per-vertex projections ``(T_p, N, head.vertex_width)`` computed in the vertex layout
        (:attr:`ships_head_inputs`).

        Shapes:
            - **batch:** ``num_halo + T_p`` snapshots held; the block has ``T`` snapshots in all.
        """
        net, head = self.net, self.head
        if net is None or head is None:
            raise ConfigError("DistributedDynGNNTask is not built yet (setup() has not run)")
        num_nodes = batch.num_nodes
        xs, adjs = net.prepare_partitioned_block(batch.x, batch.adjs)
        halo = batch.num_halo
        adjs = adjs[halo:]
        if xs is not None:
            xs = xs[halo:] if isinstance(xs, Tensor) else list(xs)[halo:]

        @_local
        def spatial(local: range) -> Tensor:
            """The spatial stage of this rank's snapshots ``local`` (``(0, N, d)`` for none)."""
            if len(local) == 0:
                return torch.zeros(0, num_nodes, net.spatial_dim, device=self.device)
            part = None if xs is None else xs[local.start : local.stop]
            return net.spatial(part, adjs[local.start : local.stop])

        world = self._world
        snaps = batch.relative_blocks() if world > 1 else (range(0, len(adjs)),)
        verts = tuple(vertex_blocks(num_nodes, world))
        exchange = (
            snaps,
            verts,
            self._group,
            self.comm_recorder,
            _WIRE_DTYPES[self.hparams.get("wire_dtype", "float32")],
        )
        overlap = isinstance(net, WDGCN) and world > 1
        spatial_chunks = self.hparams.get("spatial_chunks", 1) if overlap else 1
        if net.temporal_is_identity:
            return spatial(range(0, len(adjs))), state, False
        if spatial_chunks == 1:
            h = spatial(range(0, len(adjs)))
            hv = self._collective("snapshot->vertex all-to-all", snapshot_to_vertex, h, *exchange)
        else:
            hv = self._collective(
                "snapshot->vertex all-to-all", snapshot_to_vertex_overlapped, spatial, snaps, verts, spatial_chunks,
                *exchange[2:],
            )  # fmt: skip
        projected = world > 1 and self.ships_head_inputs
        chunks = self.hparams.get("exchange_chunks", 4) if overlap else 1
        states: list[Any] = []

        @_local
        def temporal(local: range) -> Tensor:
            """The temporal stage (and head projection) of this rank's vertices ``local``; its state to ``states``."""
            if len(local) == 0:  # more ranks (or chunks) than vertices: nothing to run, keep the shape
                width = head.vertex_width if projected else net.out_dim
                return hv.new_zeros(hv.shape[0], 0, width)
            whole = chunks == 1 or state is None  # chunks slice an LSTM's (h, c); other states go in whole
            part = state if whole else tuple(s[:, local.start : local.stop] for s in state)
            zv, new_state = net.temporal(hv[:, local.start : local.stop], part)
            states.append(new_state)
            return head.vertex_part(zv) if projected else zv

        if chunks == 1:
            z = self._collective(
                "vertex->snapshot all-to-all", vertex_to_snapshot, temporal(range(0, hv.shape[1])), *exchange
            )
        else:
            z = self._collective(
                "vertex->snapshot all-to-all", vertex_to_snapshot_overlapped, temporal, snaps, verts, chunks,
                *exchange[2:],
            )  # fmt: skip
        return z, _joined_states(states, state), projected

    def _partitioned_block(
        self, batch: SnapshotBatch, state: Any
    ) -> tuple[list[tuple[int, Tensor, SnapshotTarget]], Tensor, Any, int]:
        """Outputs of this rank's targets, the sum of their losses, the new state and the block's target count."""
        if not isinstance(batch, PartitionedBatch):
            raise ConfigError("DistributedDynGNNTask needs a PartitionedSnapshotDataModule (PartitionedBatch batches)")
        z, state, projected = self.partitioned_embeddings(batch, state)
        zs = z.unbind(0)
        first = batch.t0 + batch.num_halo
        outputs, losses = [], []
        for s, target in enumerate(batch.targets[batch.num_halo :]):
            if target is None:
                continue
            out = self._head_from_projection(zs[s], target) if projected else self.predict_target(zs[s], target)
            outputs.append((first + s, out, target))
            losses.append(self.target_loss(out, target))
        local_sum = torch.stack(losses).sum() if losses else z.sum() * 0.0
        return outputs, local_sum, state, batch.num_targets

    def _head_from_projection(self, p_t: Tensor, target: SnapshotTarget) -> Tensor:
        """:meth:`predict_target` from the head's per-vertex projections of one snapshot."""
        assert self.head is not None
        if target.edge_index is None:
            return self.head.from_vertex_part(p_t)
        return self.head.from_vertex_part(p_t, target.edge_index)

    def _touch_all_parameters(self) -> Tensor:
        """``0 * sum(theta)``: every parameter takes part in the graph (empty ranks, heads without targets)."""
        return sum((p.sum() for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device)) * 0.0

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: PartitionedBatch, batch_idx: int) -> Tensor:
        state = None if batch.block_start == 0 else self._train_state
        _, local_sum, state, num_targets = self._partitioned_block(batch, state)
        self._train_state = detach_state(state)
        local = local_sum / max(num_targets, 1)
        total = self._global_sum(local.detach())
        self.log_train_loss(total)
        return local * self._world + self._touch_all_parameters()

    # ------------------------------------------------------------------ evaluation
    @override
    def _eval_step(self, batch: SnapshotBatch, stage: str) -> None:
        state = None if batch.block_start == 0 else self._eval_state  # type: ignore[attr-defined]
        outputs, local_sum, self._eval_state, num_targets = self._partitioned_block(batch, state)
        if num_targets == 0:
            return
        loss = self._global_sum(local_sum.detach()) / num_targets
        self.add_eval_loss(loss, num_targets)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        self.update_eval_metrics(metrics, outputs, batch.num_nodes)
        self._eval_any = True

    def _gather_metric_states(self, module: torch.nn.Module) -> None:
        """Replace every torchmetrics state by its all-rank reduction, then compute locally (no torchmetrics sync).

        torchmetrics' own sync fails when a rank holds no sample of a list state (``No samples to concatenate``),
        which is normal here: a rank whose snapshots have no target in the split adds nothing. List states are
        gathered (all ranks' tensors, in rank order), tensor states reduced with their reduction function.
        """
        from torchmetrics import Metric

        world = self._world
        for metric in module.modules():
            if not isinstance(metric, Metric):
                continue
            if world == 1:
                continue
            for name, reduce in metric._reductions.items():
                value = getattr(metric, name)
                local = [v.cpu() for v in value] if isinstance(value, list) else value.cpu()
                gathered: list[Any] = [None] * world
                self._collective("metric all-gather", dist.all_gather_object, gathered, local, self._group)
                if isinstance(value, list):
                    setattr(metric, name, [v.to(self.device) for part in gathered for v in part])
                elif callable(reduce):
                    setattr(metric, name, reduce(torch.stack(gathered)).to(self.device))
                else:
                    raise ConfigError(f"metric state {name!r} has no reduction: cannot combine it across ranks")

    @override
    def _eval_epoch_end(self, stage: str) -> None:
        # Every rank must take part in the gather, or none: decide on "any rank updated".
        self._eval_updated = bool(self._global_sum(torch.tensor(float(self._eval_any), device=self.device)) > 0)
        self._eval_any = False
        if self._eval_updated:
            self._gather_metric_states(self.val_metrics if stage == "val" else self.test_metrics)
        with warnings.catch_warnings():
            # A rank whose snapshots had no target now holds the other ranks' states, which torchmetrics does not
            # count as updates: its "compute before update" warning is wrong here.
            warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric \w+ was called before")
            super()._eval_epoch_end(stage)

    @override
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._eval_any = False

    @override
    def predict_step(self, batch: SnapshotBatch, batch_idx: int) -> list[dict[str, Any]]:
        """This rank's predicted snapshots of the block (every snapshot is predicted by exactly one rank)."""
        state = None if batch.block_start == 0 else self._eval_state  # type: ignore[attr-defined]
        outputs, _, self._eval_state, _ = self._partitioned_block(batch, state)
        return self.prediction_records(outputs)

    @override
    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._eval_any = False


class _LocalError(Exception):
    """A rank's own compute failed inside a chunked exchange; carries the error (``__cause__``) past the handler
    that reports communication failures, so a GCN or LSTM error is not blamed on a dead peer."""


def _local(fn: Any) -> Any:
    """``fn`` with its ``RuntimeError`` wrapped in :class:`_LocalError` (the chunked exchanges call it between
    collectives)."""

    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except RuntimeError as err:
            raise _LocalError from err

    return run


def _joined_states(states: list[Any], previous: Any) -> Any:
    """The temporal state of the whole vertex block from its chunks' states (in vertex order).

    One chunk: its state as is (any model's); several (an LSTM's ``(h_n, c_n)``): concatenated over the vertex axis.
    No chunk ran (no vertices on this rank): the previous state.
    """
    if not states:
        return previous
    if len(states) == 1:
        return states[0]
    return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
