"""``lit-efficiency predict`` on a GLUE task writes the benchmark's submission file (``<TASK>.tsv``).

The format of the GLUE server (https://gluebenchmark.com): a header ``index<TAB>prediction``, one row per test
example in file order; label names for the NLI tasks (RTE, QNLI, MNLI), class ids for the others, the score for
STS-B (clipped to the label range [0, 5]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.power_bert.tasks_table import TASK_INFO, canonical_task

#: Tasks whose submissions name the label instead of giving its id.
NAMED_LABELS = ("rte", "qnli", "mnli", "mnli-mm")

#: Submission file names that differ from the task's GLUE folder.
FILE_NAMES = {"mnli": "MNLI-m.tsv", "mnli-mm": "MNLI-mm.tsv", "imdb": "IMDB.tsv"}


def submission_name(task: str) -> str:
    """The file the GLUE server expects for ``task`` (``rte`` -> ``RTE.tsv``)."""
    task = canonical_task(task)
    return FILE_NAMES.get(task) or f"{TASK_INFO[task].folder}.tsv"


def format_prediction(task: str, value: float) -> str:
    """One prediction as the GLUE server reads it."""
    info = TASK_INFO[canonical_task(task)]
    if info.is_regression:
        return f"{min(max(float(value), 0.0), 5.0):.3f}"
    return info.labels[int(value)] if info.name in NAMED_LABELS else str(int(value))


def write_submission(path: Path, task: str, indices: torch.Tensor, predictions: torch.Tensor) -> Path:
    """Write ``index<TAB>prediction`` rows sorted by index (predict batches may be length-sorted)."""
    order = torch.argsort(indices)
    rows = [f"{int(indices[i])}\t{format_prediction(task, predictions[i].item())}" for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(["index\tprediction", *rows]) + "\n")  # never through a symlink


class GlueSubmissionWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs (``prediction`` and ``idx``) and writes the task's submission file.

    Args:
        output_dir: folder of the file; default: ``<trainer.log_dir>/predictions`` (beside the run's metrics).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        outputs = [o for per_loader in _per_dataloader(predictions) for o in per_loader]
        if not outputs or not trainer.is_global_zero:
            return
        indices = torch.cat([o["idx"] for o in outputs])
        values = torch.cat([o["prediction"] for o in outputs])
        folder = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        path = write_submission(folder / submission_name(pl_module.task), pl_module.task, indices, values)
        print(f"[predict] {len(values)} predictions written to {path}")


def _per_dataloader(predictions: Any) -> list[list[dict[str, torch.Tensor]]]:
    """Lightning passes one list per dataloader, or a flat list with a single dataloader."""
    if predictions and isinstance(predictions[0], dict):
        return [predictions]
    return list(predictions)
