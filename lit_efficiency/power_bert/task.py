"""PoWER-BERT training stages as LightningModules: fine-tune, configuration search, retrain.

One module per stage (:class:`PowerBertFinetune`, :class:`PowerBertSearch`, :class:`PowerBertRetrain`), sharing the
model, metrics and optimiser of :class:`PowerBertModule`. Stage hand-off is explicit: each stage loads
``model_name_or_path``, a HF-style folder written by the previous stage (``save_pretrained``), and the search stage
writes the induced retention configuration to ``retention_file``.

Paper: Goyal et al., "PoWER-BERT: Accelerating BERT Inference via Progressive Word-vector Elimination", ICML 2020.
Optimiser as in the reference code: Adam without weight decay, 10% linear warm-up, then linear decay to 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lit_efficiency.core.checkpoint import check_inside_dirpath, load_checked
from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.core.quiet import quiet_libraries
from lit_efficiency.power_bert.bert import load_hf_config, num_layer_applications
from lit_efficiency.power_bert.model import Mode, PowerBertForSequenceClassification, mass_penalty
from lit_efficiency.power_bert.retention import Rounding, induce_retention, load_retention, save_retention
from lit_efficiency.power_bert.tasks_table import TASK_DEFAULTS, TASK_INFO, canonical_task


def glue_metrics(task: str) -> torchmetrics.MetricCollection:
    """The task's GLUE metrics (headline first): MCC for CoLA, F1 + accuracy for MRPC/QQP, Spearman + Pearson for
    STS-B, accuracy otherwise. Inputs: predicted class ids (or scores for STS-B) and targets."""
    info = TASK_INFO[canonical_task(task)]
    makers = {
        "accuracy": lambda: torchmetrics.Accuracy(task="multiclass", num_classes=info.num_labels, average="micro"),
        "f1": lambda: torchmetrics.F1Score(task="binary"),
        "matthews_corrcoef": lambda: torchmetrics.MatthewsCorrCoef(task="binary"),
        "spearman": torchmetrics.SpearmanCorrCoef,
        "pearson": torchmetrics.PearsonCorrCoef,
    }
    return torchmetrics.MetricCollection({name: makers[name]() for name in info.metrics})


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: 0 -> 1 linearly over ``warmup_steps``, then 1 -> 0 linearly at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class PowerBertModule(L.LightningModule):
    """Shared base of the three stages: a :class:`PowerBertForSequenceClassification`, GLUE metrics, Adam + schedule.

    Args:
        model_name_or_path: HF name, local folder or alias (``minilm-l6``); later stages take the previous stage's
            output folder.
        task: GLUE task (``cola``, ``sst2``, ``mrpc``, ``stsb``, ``rte``, ...); sets labels, metrics and defaults.
        lr: learning rate of the BERT weights; None = the task's reference value.
        warmup_ratio: fraction of the training steps with linear warm-up.
        weight_decay: decoupled weight decay of the BERT weights (reference: 0).
        max_seq_len: padded length N (Soft-Extract size, retention bound); None = the task default.
        mask_padded_queries: exclude padded query rows from the significance score (reference: they count). With
            dynamic padding, set it so a token's score does not depend on how much padding its batch has.
        export_dir: at the end of fit, write the model (best checkpoint when one is monitored, else the last
            weights) as an HF-style folder with the tokenizer, ready for the next stage's ``model_name_or_path``.

    Besides the task's GLUE metrics, ``val/score`` (and ``test/score``) logs the headline metric under a
    task-independent name, so one checkpoint config (``monitor: val/score``) serves every task.
    """

    mode: Mode = "none"

    def __init__(
        self,
        model_name_or_path: str = "minilm-l6",
        task: str = "sst2",
        lr: float | None = None,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.0,
        max_seq_len: int | None = None,
        mask_padded_queries: bool = False,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # checkpoints rebuild the module with load_from_checkpoint
        self.task = canonical_task(task)
        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {warmup_ratio}")
        defaults = TASK_DEFAULTS[self.task]
        self.lr = float(lr if lr is not None else defaults.lr_bert)
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.max_seq_len = int(max_seq_len if max_seq_len is not None else defaults.max_seq_len)
        self.info = TASK_INFO[self.task]
        # from_pretrained returns eval mode (the HF convention); Lightning keeps a module's mode, so train it here
        self.model = self.build_model(model_name_or_path, mask_padded_queries).train()
        self.export_dir = export_dir
        self.val_metrics = glue_metrics(self.task).clone(prefix="val/")
        self.test_metrics = glue_metrics(self.task).clone(prefix="test/")
        self.val_score = glue_metrics(self.task)[self.headline_metric].clone()
        self.test_score = glue_metrics(self.task)[self.headline_metric].clone()

    def build_model(self, model_name_or_path: str, mask_padded_queries: bool) -> PowerBertForSequenceClassification:
        """Load the stage's model (overridden by stages that need a retention configuration)."""
        return PowerBertForSequenceClassification.from_pretrained(
            model_name_or_path,
            num_labels=self.info.num_labels,
            mode=self.mode,
            max_seq_len=self.max_seq_len,
            mask_padded_queries=mask_padded_queries,
            label_names=self.info.labels,
        )

    @property
    def headline_metric(self) -> str:
        """Name of the task's main metric (``val/<name>`` is what checkpoints monitor)."""
        return self.info.metrics[0]

    @override
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch.get("token_type_ids")
        ).logits

    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.model.loss(logits, labels)

    def predictions(self, logits: Tensor) -> Tensor:
        """Class ids, or scores for regression."""
        return logits.squeeze(-1) if self.info.is_regression else logits.argmax(-1)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.task_loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Tensor], metrics, score, stage: str) -> None:
        logits = self(batch)
        size = batch["labels"].shape[0]
        self.log(f"{stage}/loss", self.task_loss(logits, batch["labels"]), batch_size=size, sync_dist=True)
        preds = self.predictions(logits)
        metrics.update(preds, batch["labels"])
        score.update(preds, batch["labels"])
        self.log_dict(metrics, batch_size=size)
        self.log(f"{stage}/score", score, batch_size=size)

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_score, "val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_score, "test")

    @override
    def setup(self, stage: str) -> None:
        quiet_libraries()  # a rank started by spawn runs no CLI code: quiet it here, where every rank passes
        # A model and data module configured for different tasks or lengths fail later and obscurely: check now.
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if getattr(dm, "task", self.task) != self.task:
            raise ConfigError(
                f"model task {self.task!r} != data task {dm.task!r} (give both the same task; the CLI links it from "
                "the data)"
            )
        if getattr(dm, "max_seq_len", 0) > self.max_seq_len:
            raise ConfigError(
                f"data max_seq_len={dm.max_seq_len} exceeds the model's max_seq_len={self.max_seq_len} "
                "(give the model at least the data's N; the CLI links it from the data)"
            )

    @override
    def on_fit_end(self) -> None:
        if self.export_dir is None or not self.trainer.is_global_zero:
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if best and getattr(callback, "monitor", None):
            check_inside_dirpath(callback)  # a resumed state could name any file
            self.load_state_dict(load_checked(best)["state_dict"])
        folder = self.save_pretrained(self.export_dir)
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        rank_zero_info(f"exported {'best' if best else 'last'} model to {folder}")

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = {"prediction": self.predictions(self(batch))}
        if "idx" in batch:
            out["idx"] = batch["idx"]
        return out

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """``predict`` writes the GLUE submission file (``<TASK>.tsv``) beside the run's metrics."""
        from lit_efficiency.power_bert.submission import GlueSubmissionWriter

        return [GlueSubmissionWriter()]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups (the search stage adds one for the retention parameters)."""
        params = [p for n, p in self.model.named_parameters() if p.requires_grad and "soft_extracts" not in n]
        return [{"params": params, "lr": self.lr, "weight_decay": self.weight_decay}]

    @override
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups())
        total = int(self.trainer.estimated_stepping_batches)
        schedule = linear_warmup_decay(int(self.warmup_ratio * total), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the model as an HF-style folder (config.json + model.safetensors)."""
        return Path(self.model.save_pretrained(path))


class PowerBertFinetune(PowerBertModule):
    """Stage 1: fine-tune plain BERT on the task (cross-entropy; MSE for STS-B). Keep the best dev checkpoint."""

    mode: Mode = "none"


class PowerBertSearch(PowerBertModule):
    """Stage 2: configuration search with Soft-Extract and the mass regulariser.

    Loss: ``L_task + mass_lambda * sum_j j * sum_k r_j[k]`` (j 1-based, not divided by the batch size). The retention
    parameters ``r_j`` have their own parameter group (``retention_lr``, no weight decay) and are clamped to [0, 1]
    after every optimiser step. At the end of fit the configuration is induced (``rounding``) and written to
    ``retention_file``.

    Args:
        model_name_or_path: the fine-tuned model folder (stage 1's output).
        retention_lr: learning rate of the ``r_j``; None = the task's reference LR_SOFT_EXTRACT.
        mass_lambda: weight of the mass penalty; None = the task's reference LAMBDA.
        rounding: how masses become counts (reference: floor).
        retention_file: where to write ``{"retention": [...], ...}`` at the end of fit (None: don't write).
        overwrite_retention: replace an existing, different ``retention_file``.
        **kwargs: see :class:`PowerBertModule`.
    """

    mode: Mode = "soft"

    def __init__(
        self,
        model_name_or_path: str = "minilm-l6",
        task: str = "sst2",
        retention_lr: float | None = None,
        mass_lambda: float | None = None,
        rounding: Rounding = "floor",
        retention_file: str | None = None,
        overwrite_retention: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path=model_name_or_path, task=task, **kwargs)
        defaults = TASK_DEFAULTS[self.task]
        self.retention_lr = float(retention_lr if retention_lr is not None else defaults.lr_soft_extract)
        self.mass_lambda = float(mass_lambda if mass_lambda is not None else defaults.mass_lambda)
        if self.mass_lambda < 0:
            raise ConfigError(f"mass_lambda: must be >= 0, got {mass_lambda}")
        self.rounding = rounding
        self.retention_file = retention_file
        self.overwrite_retention = overwrite_retention

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        task_loss = self.task_loss(self(batch), batch["labels"])
        penalty = mass_penalty(self.model.encoder.soft_extracts)
        loss = task_loss + self.mass_lambda * penalty
        size = batch["labels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/task_loss", task_loss, batch_size=size)
        self.log("train/mass_penalty", penalty, batch_size=size)
        for j, layer in enumerate(self.model.encoder.soft_extracts, start=1):
            self.log(f"train/mass_layer_{j}", layer.mass().detach(), batch_size=size)
        return loss

    @override
    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = super().parameter_groups()
        retention = list(self.model.encoder.soft_extracts.parameters())
        return [*groups, {"params": retention, "lr": self.retention_lr, "weight_decay": 0.0}]

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.model.encoder.clamp_soft_extracts_()  # keep every r_j in [0, 1] after each step

    @override
    def on_fit_start(self) -> None:
        # Fail before training, not after it, when the retention file would have to be overwritten.
        path = Path(self.retention_file) if self.retention_file else None
        if path is not None and path.exists() and not self.overwrite_retention:
            raise ConfigError(
                f"retention_file {path} already exists (choose another path or set overwrite_retention: true)"
            )

    def masses(self) -> list[float]:
        """Current ``sum_k r_j[k]`` per layer."""
        return self.model.encoder.soft_extract_masses()

    def retention(self) -> list[int]:
        """The retention configuration induced from the current masses."""
        return induce_retention(self.masses(), rounding=self.rounding)

    @override
    def on_fit_end(self) -> None:
        super().on_fit_end()
        retention = self.retention()
        rank_zero_info(f"PoWER-BERT search: retention {retention} (masses {[round(m, 2) for m in self.masses()]})")
        if self.retention_file is not None and self.trainer.is_global_zero:
            save_retention(
                self.retention_file,
                retention,
                overwrite=self.overwrite_retention,
                task=self.task,
                max_seq_len=self.max_seq_len,
                rounding=self.rounding,
                masses=self.masses(),
                mass_lambda=self.mass_lambda,
            )


class PowerBertRetrain(PowerBertModule):
    """Stage 3: retrain with hard Extract under a fixed retention configuration; inference uses the same path.

    Args:
        model_name_or_path: the search stage's model folder.
        retention: tokens kept per layer: a list, or a JSON file written by the search stage.
        **kwargs: see :class:`PowerBertModule`.
    """

    mode: Mode = "hard"

    def __init__(
        self,
        model_name_or_path: str = "minilm-l6",
        task: str = "sst2",
        retention: Sequence[int] | str | None = None,
        **kwargs: Any,
    ) -> None:
        if retention is None:
            raise ConfigError("retention: required for PowerBertRetrain (a list of counts or a retention.json path)")
        self._retention = retention
        super().__init__(model_name_or_path=model_name_or_path, task=task, **kwargs)

    @override
    def build_model(self, model_name_or_path: str, mask_padded_queries: bool) -> PowerBertForSequenceClassification:
        # The edge: a retention file (or "64,48,..." string) is read and validated here, once; a list (the
        # pipeline's, already read) goes to the model as it is, which validates its arguments.
        retention = self._retention
        if isinstance(retention, (str, os.PathLike)):
            config = load_hf_config(resolve_pretrained(model_name_or_path))
            retention = load_retention(retention, num_layer_applications(config), self.max_seq_len)
        return PowerBertForSequenceClassification.from_pretrained(
            model_name_or_path,
            num_labels=self.info.num_labels,
            mode="hard",
            retention=retention,
            max_seq_len=self.max_seq_len,
            mask_padded_queries=mask_padded_queries,
        )
