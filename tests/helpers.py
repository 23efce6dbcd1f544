"""Small real Lightning components for CLI tests (a linear regressor on a seeded synthetic problem)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_efficiency.core.paths import require_file


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
