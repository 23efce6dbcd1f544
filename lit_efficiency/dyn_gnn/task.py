r"""Lightning task for dynamic GNNs: link prediction, edge-sign classification and node regression over snapshots.

The task follows EvolveGCN's protocol (Pareja et al., AAAI 2020, https://arxiv.org/abs/1902.10191) and the TM-GCN
code (IBM/TM-GCN): node embeddings :math:`Z_t` computed from snapshots ``0 .. t`` score the candidates of snapshot
``t + 1`` (:class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule` builds them),

.. math::
    s_{uv} = [Z_t[u] \,\|\, Z_t[v]]\, U, \qquad
    \mathcal{L}_t = -\frac{1}{|C_t|}\sum_{(u,v) \in C_t} \big(w_+\, y_{uv} \log\sigma(s_{uv})
    + (1 - y_{uv}) \log(1 - \sigma(s_{uv}))\big)

with :math:`w_+ = \#\text{negatives} / \#\text{positives}` by default (positives weighted up as the sampled
negatives outnumber them), averaged over the block's snapshots.

**State across blocks.** A training batch is a block of consecutive snapshots. The temporal state (LSTM ``(h, c)``,
TM-GCN history, EvolveGCN weights) returned by one block is passed, detached, to the next block of the same epoch:
truncated back-propagation through time at block boundaries. It is reset at snapshot 0 (each epoch). Validation and
test batches run from snapshot 0 in order with the current weights, so the state reaching the evaluated snapshots
is built chronologically from the whole past (training period included).

Metrics (torchmetrics): link prediction MAP / MRR (one ranking per source node and snapshot) and AUC
(:class:`~lit_efficiency.dyn_gnn.metrics.LinkPredictionMetrics`); edge sign accuracy / F1 / AUC; node regression
MSE / MAE.
Logged as ``train/loss``, ``val/loss``, ``val/map``, ``val/mrr``, ``val/auc`` (``test/...`` likewise); node regression
also logs two baselines beside the model, ``val/persistence_mse`` (predict ``y[t]`` for ``y[t + 1]``) and
``val/mean_mse`` (each node's mean training target), and their MAE. ``predict`` returns per-snapshot scores, written
to files by :class:`~lit_efficiency.dyn_gnn.writers.SnapshotPredictionWriter`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.quiet import quiet_libraries
from lit_efficiency.dyn_gnn.datamodule import SnapshotBatch, SnapshotTarget, TaskName
from lit_efficiency.dyn_gnn.metrics import LinkPredictionMetrics, edge_sign_metrics, node_regression_metrics
from lit_efficiency.dyn_gnn.nn import (
    MODEL_NAMES,
    DynamicGNN,
    EdgeClassifier,
    LinkPredictor,
    NodeRegressor,
    bounded_forward,
    detach_state,
    model_class,
)

__all__ = ["DynGNNTask"]


class DynGNNTask(L.LightningModule):
    """Train a dynamic GNN (:data:`~lit_efficiency.dyn_gnn.nn.MODEL_NAMES`) on blocks of snapshots.

    ``num_nodes``, ``num_features`` and ``task`` default to the data module's (read in ``setup``) and are then
    stored in the hyperparameters, so checkpoints reload without the data.

    Args:
        model: ``wdgcn``, ``cdgcn``, ``tmgcn``, ``evolvegcn-o`` or ``evolvegcn-h``.
        hidden_dim: GCN hidden size (also the learnable node-embedding size when the data has no features).
        out_dim: embedding size of the model's output.
        num_layers: GCN layers.
        bandwidth: TM-GCN: time steps averaged by ``M``.
        mixing: TM-GCN: ``input`` (exact M-product) or ``output`` (mix GCN outputs per vertex).
        head_hidden_dim: hidden size of the prediction head's MLP (0: linear head).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        task: ``link_prediction``, ``edge_sign`` or ``node_regression``; default: the data module's.
        pos_weight: link prediction: weight of the positive class, ``auto`` = negatives / positives of each
            snapshot, 1.0 = unweighted.
        balance_classes: edge sign: weight the two signs inversely to their frequency in each snapshot.
        num_nodes: ``N``; default: the data module's.
        num_features: node feature size (0 = learnable embedding); default: the data module's.
        spatial_block_size: bounded memory: snapshots of a batch processed per spatial block (see
            :func:`~lit_efficiency.dyn_gnn.nn.bounded_forward`; ``None`` = the whole batch).
        checkpoint_spatial: bounded memory: activation-checkpoint each spatial block (GCN recomputed in backward).
        temporal_chunk_size: bounded memory: vertices per LSTM chunk (``None`` = all vertices at once).
        checkpoint_temporal: bounded memory: activation-checkpoint each temporal chunk.
    """

    #: Let torchmetrics sync metric states across processes in ``compute`` (the snapshot-partitioned subclass
    #: combines them itself: its ranks may hold no sample).
    sync_metrics_on_compute: ClassVar[bool] = True

    def __init__(
        self,
        model: str = "wdgcn",
        hidden_dim: int = 32,
        out_dim: int = 32,
        num_layers: int = 2,
        bandwidth: int = 3,
        mixing: Literal["input", "output"] = "input",
        head_hidden_dim: int = 32,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        task: TaskName | None = None,
        pos_weight: float | Literal["auto"] = "auto",
        balance_classes: bool = True,
        num_nodes: int | None = None,
        num_features: int | None = None,
        spatial_block_size: int | None = None,
        checkpoint_spatial: bool = False,
        temporal_chunk_size: int | None = None,
        checkpoint_temporal: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("spatial_block_size", spatial_block_size), ("temporal_chunk_size", temporal_chunk_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"model.{name} must be an int >= 1 or null, got {value!r}")
        if model.lower() not in MODEL_NAMES:
            raise ConfigError(f"model.model: unknown dynamic GNN {model!r}; valid names: {', '.join(MODEL_NAMES)}")
        if pos_weight != "auto" and not (isinstance(pos_weight, (int, float)) and pos_weight > 0):
            raise ConfigError(f"model.pos_weight must be 'auto' or a positive number, got {pos_weight!r}")
        # num_nodes / num_features / task usually come from the data (resolved in setup, then added to ``hparams`` so
        # that checkpoints reload without it); they are left out of the *initial* hparams the loggers merge with the
        # data module's, whose ``num_nodes`` is a synthetic-graph size and ``task`` may still be unresolved here.
        self.save_hyperparameters(ignore=["num_nodes", "num_features", "task"])
        self.hparams.update({"num_nodes": num_nodes, "num_features": num_features, "task": task})
        self.net: DynamicGNN | None = None
        self.head: nn.Module | None = None
        self._train_state: Any = None
        self._eval_state: Any = None
        # Epoch means reduced across DDP ranks once per epoch (the metric's own sync), never per step.
        self.train_loss = MeanMetric()
        self._eval_loss_sum: Tensor | float = 0.0
        self._eval_loss_count = 0
        if num_nodes is not None and num_features is not None and task is not None:
            self._build(num_nodes, num_features, task)

    # ------------------------------------------------------------------ construction
    def _build(self, num_nodes: int, num_features: int, task: TaskName) -> None:
        hp = self.hparams
        cls = model_class(hp.model)
        self.net = cls(
            num_features=num_features,
            hidden_dim=hp.hidden_dim,
            out_dim=hp.out_dim,
            num_layers=hp.num_layers,
            num_nodes=num_nodes,
            **{name: hp[name] for name in cls.options},
        )
        sync = self.sync_metrics_on_compute
        if task == "link_prediction":
            self.head = LinkPredictor(self.net.out_dim, hp.head_hidden_dim)
            self.val_metrics: nn.Module = LinkPredictionMetrics(sync)
            self.test_metrics: nn.Module = LinkPredictionMetrics(sync)
        elif task == "edge_sign":
            self.head = EdgeClassifier(self.net.out_dim, 2, hp.head_hidden_dim)
            self.val_metrics, self.test_metrics = edge_sign_metrics(sync), edge_sign_metrics(sync)
        elif task == "node_regression":
            self.head = NodeRegressor(self.net.out_dim, hp.head_hidden_dim)
            self.val_metrics, self.test_metrics = node_regression_metrics(sync), node_regression_metrics(sync)
            # persistence (y[t] for y[t+1]) and per-node training mean, beside the model (sum states: always synced)
            self.val_baselines = nn.ModuleDict({k: node_regression_metrics() for k in ("persistence", "mean")})
            self.test_baselines = nn.ModuleDict({k: node_regression_metrics() for k in ("persistence", "mean")})
        else:
            raise ConfigError(f"model.task: unknown task {task!r}")
        self.hparams.update({"num_nodes": num_nodes, "num_features": num_features, "task": task})

    @override
    def setup(self, stage: str) -> None:
        """Build the network from the data module's ``num_nodes`` / ``num_features`` / ``task`` if not given."""
        quiet_libraries()  # a rank started by spawn runs no CLI code: quiet it here, where every rank passes
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        hp = self.hparams
        num_nodes = hp.num_nodes if hp.num_nodes is not None else getattr(dm, "num_nodes", None)
        num_features = hp.num_features if hp.num_features is not None else getattr(dm, "num_features", None)
        task = hp.task if hp.task is not None else getattr(dm, "task", None)
        if num_nodes is None or num_features is None or task is None:
            raise ConfigError(
                "DynGNNTask needs num_nodes, num_features and task: give them or use a SnapshotDataModule"
            )
        dm_task = getattr(dm, "task", None)
        if dm_task is not None and dm_task != task:
            raise ConfigError(f"model.task={task!r} differs from data.task={dm_task!r}")
        self._build(int(num_nodes), int(num_features), task)

    # ------------------------------------------------------------------ forward and loss
    @override
    def forward(self, batch: SnapshotBatch, state: Any = None) -> tuple[Tensor, Any]:
        """Embeddings of a block: ``((S, N, out_dim), new state)``."""
        if self.net is None:
            raise ConfigError("DynGNNTask is not built yet (setup() has not run and num_nodes/num_features not given)")
        hp = self.hparams
        out = bounded_forward(
            self.net,
            batch.x,
            batch.adjs,
            state,
            spatial_block_size=hp.get("spatial_block_size"),
            checkpoint_spatial=bool(hp.get("checkpoint_spatial", False)),
            temporal_chunk_size=hp.get("temporal_chunk_size"),
            checkpoint_temporal=bool(hp.get("checkpoint_temporal", False)),
        )
        return out.z, out.state

    def predict_target(self, z_t: Tensor, target: SnapshotTarget) -> Tensor:
        """Head output for one snapshot: link logits ``(C,)``, sign logits ``(C, 2)`` or node values ``(N,)``."""
        assert self.head is not None
        if target.edge_index is None:
            return self.head(z_t)
        return self.head(z_t, target.edge_index)

    def target_loss(self, out: Tensor, target: SnapshotTarget) -> Tensor:
        """Loss of one snapshot's prediction (see the module docstring)."""
        task = self.hparams.task
        label = target.label
        if task == "link_prediction":
            if self.hparams.pos_weight == "auto":
                num_pos = label.sum().clamp_min(1.0)
                pos_weight = (label.numel() - num_pos).clamp_min(1.0) / num_pos
            else:
                pos_weight = torch.tensor(float(self.hparams.pos_weight), device=out.device)
            return F.binary_cross_entropy_with_logits(out, label.float(), pos_weight=pos_weight)
        if task == "edge_sign":
            weight = None
            if self.hparams.balance_classes:
                counts = torch.bincount(label, minlength=2).float().clamp_min(1.0)
                weight = counts.sum() / (2.0 * counts)
            return F.cross_entropy(out, label, weight=weight)
        return F.mse_loss(out, label.float())

    def _block(self, batch: SnapshotBatch, state: Any) -> tuple[list[tuple[int, Tensor, SnapshotTarget]], Tensor, Any]:
        z, state = self(batch, state)
        # One unbind instead of S selects: each select's backward would write a zero-filled (S, N, d) gradient.
        zs = z.unbind(0)
        outputs, losses = [], []
        for s, target in enumerate(batch.targets):
            if target is None:
                continue
            out = self.predict_target(zs[s], target)
            outputs.append((batch.t0 + s, out, target))
            losses.append(self.target_loss(out, target))
        loss = torch.stack(losses).mean() if losses else z.sum() * 0.0
        return outputs, loss, state

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: SnapshotBatch, batch_idx: int) -> Tensor:
        state = None if batch.t0 == 0 else self._train_state
        _, loss, state = self._block(batch, state)
        self._train_state = detach_state(state)  # truncated BPTT: no gradient into the previous block
        self.log_train_loss(loss)
        return loss

    def log_train_loss(self, loss: Tensor) -> None:
        """``train/loss_step`` (this step) and ``train/loss_epoch`` (the epoch's mean, over every rank under DDP)."""
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, prog_bar=True, on_step=True, on_epoch=True)

    @override
    def on_train_epoch_start(self) -> None:
        self._train_state = None

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: SnapshotBatch, stage: str) -> None:
        state = None if batch.t0 == 0 else self._eval_state
        outputs, loss, self._eval_state = self._block(batch, state)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if not outputs:
            return
        self.add_eval_loss(loss, len(outputs))
        self.update_eval_metrics(metrics, outputs, batch.num_nodes)
        self._eval_updated = True

    def update_eval_metrics(
        self, metrics: Any, outputs: list[tuple[int, Tensor, SnapshotTarget]], num_nodes: int
    ) -> None:
        """Feed one block's predictions to the task's metrics (ranking per (snapshot, source) for links)."""
        task = self.hparams.task
        for t, out, target in outputs:
            if task == "link_prediction":
                assert target.edge_index is not None
                metrics.update(out, target.label, target.edge_index[0], t, num_nodes)
            elif task == "edge_sign":
                metrics.update(out.softmax(-1)[:, 1], target.label)
            else:
                metrics.update(out, target.label.float())
                baselines = getattr(self, "val_baselines" if metrics is self.val_metrics else "test_baselines")
                for name, pred in (target.baselines or {}).items():
                    baselines[name].update(pred, target.label.float())

    def add_eval_loss(self, loss: Tensor, count: int) -> None:
        """Add a block's mean loss over ``count`` targets to the epoch's ``{stage}/loss``."""
        self._eval_loss_sum = self._eval_loss_sum + loss.detach() * count
        self._eval_loss_count += count

    def _eval_epoch_end(self, stage: str) -> None:
        # Logged once per epoch with sync_dist: the loss is the target-weighted mean over ranks; the metrics are
        # already synced on compute (identical on every rank), so their mean over ranks is the same value.
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        baselines = getattr(self, f"{stage}_baselines", {})
        if getattr(self, "_eval_updated", False):
            count = self._eval_loss_count
            loss = self._eval_loss_sum / max(count, 1)
            self.log(f"{stage}/loss", loss, batch_size=count, sync_dist=True)
            values = metrics.compute()
            self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
            for name, base in baselines.items():
                self.log_dict({f"{stage}/{name}_{k}": v for k, v in base.compute().items()}, sync_dist=True)
        metrics.reset()
        for base in baselines.values():
            base.reset()
        self._reset_eval_epoch()

    def _reset_eval_epoch(self) -> None:
        self._eval_state = None
        self._eval_updated = False
        self._eval_loss_sum, self._eval_loss_count = 0.0, 0

    @override
    def on_validation_epoch_start(self) -> None:
        self._reset_eval_epoch()

    @override
    def validation_step(self, batch: SnapshotBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_start(self) -> None:
        self._reset_eval_epoch()

    @override
    def test_step(self, batch: SnapshotBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ predict
    @override
    def on_predict_epoch_start(self) -> None:
        self._eval_state = None

    @override
    def predict_step(self, batch: SnapshotBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Per predicted snapshot ``t + 1``: link scores, sign probabilities or node values (see ``writers``)."""
        if len(getattr(batch, "snap_blocks", ())) > 1:
            raise ConfigError(
                "a snapshot-partitioned predict on several ranks needs model.class_path "
                "lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask (or --trainer.devices=1)"
            )
        state = None if batch.t0 == 0 else self._eval_state
        outputs, _, self._eval_state = self._block(batch, state)
        return self.prediction_records(outputs)

    def prediction_records(self, outputs: list[tuple[int, Tensor, SnapshotTarget]]) -> list[dict[str, Any]]:
        """One record (a dict of tensors, see ``writers``) per predicted snapshot of ``(t, output, target)``."""
        task = self.hparams.task
        records = []
        for t, out, target in outputs:
            record: dict[str, Any] = {"snapshot": t, "target_snapshot": t + 1}
            if target.edge_index is None:
                record.update(node=torch.arange(out.shape[0]), prediction=out, target=target.label)
            else:
                score = out.sigmoid() if task == "link_prediction" else out.softmax(-1)[:, 1]
                name = "score" if task == "link_prediction" else "p_positive"
                record.update({"src": target.edge_index[0], "dst": target.edge_index[1], name: score})
                record["label"] = target.label
            records.append(record)
        return records

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """Add a :class:`~lit_efficiency.dyn_gnn.writers.SnapshotPredictionWriter` to ``predict`` runs without one."""
        from lightning.pytorch.callbacks import BasePredictionWriter
        from lightning.pytorch.trainer.states import TrainerFn

        from lit_efficiency.dyn_gnn.writers import SnapshotPredictionWriter

        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.PREDICTING:
            return []
        if any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks):
            return []
        return [SnapshotPredictionWriter()]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
