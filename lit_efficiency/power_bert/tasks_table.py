"""The GLUE task table (labels, metrics, where the data lives) and the PoWER-BERT paper's per-task settings.

A leaf module: plain Python, imported by the model-free parts (data module, stages, pipeline) and by benchmarks.
The hyper-parameters are those of the reference code's table (Goyal et al., ICML 2020,
https://arxiv.org/abs/2001.08950, see ``docs/power_bert.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_efficiency.core.errors import ConfigError

__all__ = ["GLUE_TASKS", "TASK_DEFAULTS", "TASK_INFO", "TaskDefaults", "TaskInfo", "canonical_task"]


@dataclass(frozen=True)
class TaskDefaults:
    """Per-task hyper-parameters of the PoWER-BERT reference code (spec table, power_bert.md section 3).

    Attributes:
        max_seq_len: sequence length N; static padding pads every batch to it.
        batch_size: training batch size.
        lr_bert: learning rate of the BERT weights (fine-tuning and re-training).
        lr_soft_extract: learning rate of the soft-extract retention parameters (configuration search).
        mass_lambda: weight of the mass (retention) penalty in the configuration search.
        from_paper: False where the paper's table has no column for the task and the values are our choice.
    """

    max_seq_len: int
    batch_size: int
    lr_bert: float
    lr_soft_extract: float
    mass_lambda: float
    from_paper: bool = True


#: Task name -> reference hyper-parameters. ``wnli`` and ``imdb`` are not in the paper's table (``from_paper=False``):
#: WNLI copies RTE (the other small NLI task) with N=128; IMDB uses N=512 (long reviews) and RTE's search values.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "cola": TaskDefaults(64, 32, 2e-5, 1.5e-3, 7e-3),
    "rte": TaskDefaults(256, 16, 3e-5, 3e-3, 1e-3),
    "qqp": TaskDefaults(128, 64, 3e-5, 1e-4, 3e-4),
    "mrpc": TaskDefaults(128, 64, 6e-5, 3e-3, 3e-3),
    "sst2": TaskDefaults(64, 64, 3e-5, 5e-4, 2e-4),
    "mnli": TaskDefaults(128, 64, 3e-5, 2e-4, 1e-4),
    "mnli-mm": TaskDefaults(128, 64, 3e-5, 1e-4, 1e-4),
    "qnli": TaskDefaults(128, 16, 3e-5, 2e-4, 1.5e-4),
    "stsb": TaskDefaults(64, 64, 3e-5, 3e-3, 1e-3),
    "wnli": TaskDefaults(128, 16, 3e-5, 3e-3, 1e-3, from_paper=False),
    "imdb": TaskDefaults(512, 16, 2e-5, 3e-3, 1e-3, from_paper=False),
}


@dataclass(frozen=True)
class TaskInfo:
    """What a model and its metrics need to know about a task.

    Attributes:
        name: canonical task name (a key of :data:`TASK_INFO`).
        num_labels: classifier outputs; 1 for the STS-B regression.
        metrics: metric names, the task's headline metric first (``accuracy``, ``f1``, ``matthews_corrcoef``,
            ``spearman``, ``pearson``).
        labels: class names in label-id order (empty for STS-B); the order matches the HF ``nyu-mll/glue`` dataset.
        is_regression: True for STS-B (float labels, MSE loss).
        folder: sub-folder of the local GLUE directory (None for IMDB).
    """

    name: str
    num_labels: int
    metrics: tuple[str, ...]
    labels: tuple[str, ...]
    is_regression: bool = False
    folder: str | None = None


_NLI2 = ("entailment", "not_entailment")

#: Task name -> label set, metrics and where the data lives.
TASK_INFO: dict[str, TaskInfo] = {
    "cola": TaskInfo("cola", 2, ("matthews_corrcoef", "accuracy"), ("unacceptable", "acceptable"), False, "CoLA"),
    "sst2": TaskInfo("sst2", 2, ("accuracy",), ("negative", "positive"), False, "SST-2"),
    "mrpc": TaskInfo("mrpc", 2, ("f1", "accuracy"), ("not_equivalent", "equivalent"), False, "MRPC"),
    "qqp": TaskInfo("qqp", 2, ("f1", "accuracy"), ("not_duplicate", "duplicate"), False, "QQP"),
    "stsb": TaskInfo("stsb", 1, ("spearman", "pearson"), (), True, "STS-B"),
    "mnli": TaskInfo("mnli", 3, ("accuracy",), ("entailment", "neutral", "contradiction"), False, "MNLI"),
    "mnli-mm": TaskInfo("mnli-mm", 3, ("accuracy",), ("entailment", "neutral", "contradiction"), False, "MNLI"),
    "qnli": TaskInfo("qnli", 2, ("accuracy",), _NLI2, False, "QNLI"),
    "rte": TaskInfo("rte", 2, ("accuracy",), _NLI2, False, "RTE"),
    "wnli": TaskInfo("wnli", 2, ("accuracy",), ("not_entailment", "entailment"), False, "WNLI"),
    "imdb": TaskInfo("imdb", 2, ("accuracy",), ("neg", "pos"), False, None),
}

GLUE_TASKS: tuple[str, ...] = tuple(t for t in TASK_INFO if t != "imdb")


_ALIASES = {"mnlim": "mnli", "mnlimatched": "mnli", "mnlimm": "mnli-mm", "mnlimismatched": "mnli-mm"}


def canonical_task(task: str) -> str:
    """Return the canonical task name (``"SST-2"`` -> ``"sst2"``, ``"MNLI-m"`` -> ``"mnli"``).

    Raises:
        ConfigError: the task is not one of :data:`TASK_INFO`.
    """
    key = str(task).strip().lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in TASK_INFO:
        raise ConfigError(f"task: unknown task {task!r} (valid: {', '.join(TASK_INFO)})")
    return key
