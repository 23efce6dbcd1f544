"""A quiet Lightning ``Trainer`` for short internal runs: evaluation inside the pipeline, benchmarks and tests."""

from __future__ import annotations

from typing import Any

import lightning as L


def quiet_trainer(accelerator: str = "cpu", devices: int | str = 1, **kwargs: Any) -> L.Trainer:
    """A ``Trainer`` without logger, checkpoints, progress bar or model summary.

    Args:
        accelerator: Lightning accelerator (``"cpu"`` by default: these runs are small and reproducible there).
        devices: devices per node.
        **kwargs: any other ``Trainer`` argument; it overrides the quiet defaults (``logger=CSVLogger(...)`` too).
    """
    defaults: dict[str, Any] = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return L.Trainer(accelerator=accelerator, devices=devices, **{**defaults, **kwargs})
