"""Shared test helpers: tiny configurations and small real Lightning components for CLI tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_efficiency.core.paths import require_file

#: Tiny synthetic dynamic graph for single-process dyn-GNN tests (``SnapshotDataModule`` arguments).
TINY_GRAPH = dict(num_nodes=60, num_snapshots=10, edges_per_snapshot=200, num_communities=3, num_node_features=4)

#: Small synthetic graph of the data-module tests (11 snapshots, 3 negatives per edge).
SMALL_GRAPH = dict(num_nodes=40, num_snapshots=11, edges_per_snapshot=120, num_communities=4, num_negatives=3, seed=1)

#: Synthetic graph with churn for the streaming tests (blocks of 3, node features).
STREAMING_GRAPH = dict(
    dataset="synthetic", num_nodes=50, num_snapshots=9, edges_per_snapshot=160, churn=0.1, block_size=3,
    num_negatives=3, num_node_features=4,
)  # fmt: skip

#: Generator arguments of the synthetic-graph tests.
SYNTHETIC_ARGS = {"num_nodes": 300, "num_snapshots": 6, "edges_per_snapshot": 1200}

#: Partitioned synthetic graph shared by the DDP tests and ``dyn_gnn/_dist_scripts/dyngnn_node.py``. 36 nodes are
#: divisible by 2 and 3, so the all-to-all volume equals ``4*N*T*d*(P-1)/P`` exactly.
DIST_DATA = {
    "dataset": "synthetic",
    "num_nodes": 36,
    "num_snapshots": 8,
    "edges_per_snapshot": 100,
    "num_negatives": 3,
    "block_size": 3,
    "train_frac": 0.6,
    "val_frac": 0.2,
    "test_frac": 0.2,
    "seed": 3,
}

#: WD-GCN for :data:`DIST_DATA` (``DynGNNTask`` / ``DistributedDynGNNTask`` arguments).
DIST_MODEL = {
    "model": "wdgcn",
    "hidden_dim": 8,
    "out_dim": 8,
    "num_layers": 2,
    "head_hidden_dim": 8,
    "num_nodes": 36,
    "num_features": 8,
    "task": "link_prediction",
}


class TinyRegressionData(L.LightningDataModule):
    """y = x @ w + noise with a fixed w; optional ``data_file`` exercises missing-file errors.

    Args:
        num_samples: number of training samples.
        batch_size: batch size.
        data_file: a file that must exist (checked in ``setup``).
    """

    def __init__(self, num_samples: int = 64, batch_size: int = 16, data_file: str | None = None) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.data_file = data_file

    def setup(self, stage: str) -> None:
        if self.data_file is not None:
            require_file(self.data_file, "training data")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.num_samples, 4, generator=gen)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01 * torch.randn(self.num_samples, generator=gen)
        self.dataset = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)


class TinyRegressor(L.LightningModule):
    """Linear regression trained with SGD.

    Args:
        lr: learning rate.
    """

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(4, 1)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
