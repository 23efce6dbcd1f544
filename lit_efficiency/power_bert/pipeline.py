"""``lit-efficiency power-bert``: fine-tune -> search -> retrain -> evaluate -> time, in one output directory.

Layout of ``--output_dir DIR``::

    DIR/pipeline.json          the resolved pipeline config (a rerun must match its task and model)
    DIR/finetune/              checkpoints/, csv/ metrics, model/ (HF folder of the best held-out checkpoint), done.json
    DIR/search/                checkpoints/, csv/, model/ (weights after the search), done.json
    DIR/retention.json         {"retention": [...], "masses": [...], ...}
    DIR/retrain/               checkpoints/, csv/, model/, done.json
    DIR/candidates/lambda_x<m>/ with --budget: search/, retention.json, retrain/ of each LAMBDA of the grid
    DIR/model/                 the shipped PoWER-BERT model: config.json (+ retention), model.safetensors, tokenizer
    DIR/report.json            metrics, retention, candidates, timings with spread, speedups, FLOP-ideal, warnings
    DIR/tradeoff.png           metric vs measured speedup of every candidate (FLOP-ideal beside it)
    DIR/retention.png          tokens kept per layer

Checkpoints are selected on a held-out slice of the training set (:mod:`~lit_efficiency.power_bert.heldout`); the
reported metrics are on GLUE dev (IMDB: its labelled test split). Before anything is shipped, the guard rails of
:mod:`~lit_efficiency.power_bert.guards` check for a collapsed search and for a model that is not faster than its
baseline: ``guard: refuse`` (default) stops with one line and writes nothing, ``guard: warn`` ships and warns.

A rerun with the same ``--output_dir`` skips finished stages (``done.json``) and resumes an interrupted stage from
its ``checkpoints/last.ckpt``. Each stage is also available alone: ``lit-efficiency fit --config
conf/power_bert/stages/<stage>.yaml``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lit_efficiency.core.checkpoint import EpochSeed, LastCheckpoint, SafeCheckpointIO, load_checked
from lit_efficiency.core.checks import check_at_least, check_limit, check_positive
from lit_efficiency.core.errors import ConfigError, OneLineErrors
from lit_efficiency.core.lock import OutputLock
from lit_efficiency.core.paths import atomic_write_text, ensure_output_dir, read_json_state, refuse_symlinks

Device = Literal["auto", "cpu", "cuda"]

#: Multipliers of the task's reference LAMBDA tried in accuracy-budget mode (``--budget``).
DEFAULT_LAMBDA_GRID = [0.1, 0.3, 1.0, 3.0]


@dataclass
class DataConfig:
    """GLUE data options (see :class:`lit_efficiency.power_bert.glue.GLUEDataModule`).

    Attributes:
        data_dir: data root holding ``glue/``; default: ``$LIT_EFFICIENCY_DATA`` or ``../shared/data``.
        glue_dir: the GLUE folder itself (wins over ``data_dir``).
        imdb_dir: the ``aclImdb`` folder itself (task ``imdb``; wins over ``data_dir``).
        heldout_fraction: share of the training split held out for checkpoint selection, the budget and the guards
            (IMDB: its held-out 10 %).
        max_seq_len: padded length N; None = the task's reference value.
        batch_size: training batch size; None = the task's reference value.
        eval_batch_size: batch size for validation; None = ``batch_size``.
        train_limit: use a seeded subset of this many training examples (CPU runs).
        eval_limit: the same for the reported split (GLUE dev, IMDB test).
        num_workers: DataLoader workers.
        padding: padding of the training/validation batches: ``static`` (to N, the paper) or ``dynamic`` (to the
            longest example in the batch; same model, much faster training on short sentences). Timing always
            measures both.
    """

    data_dir: str | None = None
    glue_dir: str | None = None
    imdb_dir: str | None = None
    heldout_fraction: float = 0.1
    max_seq_len: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    num_workers: int = 0
    padding: Literal["static", "dynamic"] = "static"


@dataclass
class StageConfig:
    """One training stage.

    Attributes:
        epochs: training epochs.
        lr: learning rate of the BERT weights; None = the task's LR_BERT.
        max_steps: stop after this many optimiser steps (-1: no limit).
        patience: stop when the held-out metric has not improved for this many validations (None: never).
    """

    epochs: int = 3
    lr: float | None = None
    max_steps: int = -1
    patience: int | None = None


@dataclass
class SearchConfig(StageConfig):
    """The configuration-search stage.

    Attributes:
        retention_lr: learning rate of the Soft-Extract parameters; None = the task's LR_SOFT_EXTRACT.
        mass_lambda: weight of the mass penalty; None = the task's LAMBDA.
        rounding: how per-layer masses become token counts (reference: floor).
    """

    retention_lr: float | None = None
    mass_lambda: float | None = None
    rounding: Literal["floor", "ceil", "round"] = "floor"


@dataclass
class TimingConfig:
    """Inference timing: baseline, PoWER-BERT and HF SDPA interleaved, static and dynamic padding, two batch sizes.

    Attributes:
        batch_size: examples per batch (the paper: 128).
        num_batches: batches timed per repeat (reported-split examples, repeated cyclically if it is smaller).
        batch1_examples: examples timed one by one (batch size 1); 0 skips batch 1.
        warmup: untimed calls of each candidate first.
        repeats: timed rounds; median and quartiles are reported (10 or more for a trustworthy spread).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: CPU threads for timing (None: torch's default).
        hf_baseline: also time ``transformers`` with SDPA attention (same weights as the baseline).
        compile: also time the shipped model compiled for static shapes (``torch.compile``), static padding.
    """

    batch_size: int = 128
    num_batches: int = 2
    batch1_examples: int = 32
    warmup: int = 2
    repeats: int = 10
    device: Device = "auto"
    threads: int | None = None
    hf_baseline: bool = True
    compile: bool = False


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` options shared by the three stages.

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu``.
        devices: device count or ``auto``.
        precision: ``32-true``, ``16-mixed``, ``bf16-mixed``.
        logger: ``csv`` (always written) or ``wandb`` (CSV + wandb, offline without an API key).
        wandb_project: wandb project name.
        enable_progress_bar: show progress bars.
        val_check_interval: validate this often within an epoch (float fraction or int batches).
    """

    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    logger: Literal["csv", "wandb"] = "csv"
    wandb_project: str = "lit-efficiency"
    enable_progress_bar: bool = True
    val_check_interval: float | int = 1.0


def _trainer(stage_dir: Path, cfg: TrainerConfig, stage: StageConfig, name: str, callbacks: list[Any]):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(stage_dir, name="csv")]  # a resumed stage logs to a new version
    if cfg.logger == "wandb":
        from lit_efficiency.core.loggers import WandbLogger, pipeline_run_info

        # One run per stage, grouped by the output directory (a candidate's stages sit below it, in candidates/).
        root = next(p for p in stage_dir.parents if (p / "pipeline.json").is_file())
        info = pipeline_run_info(root, name, stage_dir.relative_to(root).as_posix())
        loggers.append(WandbLogger(project=cfg.wandb_project, save_dir=str(stage_dir), **info))
    return L.Trainer(
        default_root_dir=stage_dir,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        max_epochs=stage.epochs,
        max_steps=stage.max_steps,
        logger=loggers,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],  # atomic, digest-checked, weights-only checkpoints
        enable_progress_bar=cfg.enable_progress_bar,
        val_check_interval=cfg.val_check_interval,
        log_every_n_steps=10,
    )


def _headline(metrics: dict[str, float], name: str, split: str = "val") -> float:
    return 100.0 * float(metrics[f"{split}/{name}"])


def _run_stage(
    name: str,
    out: Path,
    make_module,
    datamodule,
    stage_cfg: StageConfig,
    trainer_cfg: TrainerConfig,
    monitor_best: bool,
    seed: int,
) -> dict[str, Any]:
    """Fit one stage (resuming from ``last.ckpt``), export its model folder, validate, and mark it done.

    The stage is seeded on its own (``seed``, then per epoch): a rerun after a kill gives the same result.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_efficiency.core.loggers import finish_wandb_run

    stage_dir = out / name
    done = stage_dir / "done.json"
    if done.is_file():
        print(f"[power-bert] {name}: already done ({done}), skipping")
        fix = f"delete {stage_dir} to run the {name} stage again"
        return {**read_json_state(done, fix), "resumed": False, "reused": True}  # resumed: by an earlier attempt
    L.seed_everything(seed, workers=True, verbose=False)
    module = make_module()
    ckpt_dir = stage_dir / "checkpoints"
    refuse_symlinks(stage_dir, ckpt_dir, stage_dir / "model")
    callbacks: list[Any] = [LastCheckpoint(ckpt_dir), EpochSeed(seed)]  # last.ckpt: the latest epoch
    best = ckpt_dir / "best.ckpt"  # the best checkpoint on the held-out slice, always inside the stage folder
    if monitor_best:
        monitor = "val/score"  # the task's headline metric on the held-out slice
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename=best.stem, monitor=monitor, mode="max", save_top_k=1,
            enable_version_counter=False,
        ))  # fmt: skip
        if stage_cfg.patience is not None:
            from lightning.pytorch.callbacks import EarlyStopping

            callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=stage_cfg.patience))
    trainer = _trainer(stage_dir, trainer_cfg, stage_cfg, name, callbacks)
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        print(f"[power-bert] {name}: resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best = best if monitor_best and best.is_file() else last
    module.load_state_dict(load_checked(best)["state_dict"])
    module.save_pretrained(stage_dir / "model")
    datamodule.tokenizer.save_pretrained(stage_dir / "model")
    metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    record = {"stage": name, "checkpoint": str(best.relative_to(out)), "metrics": metrics, "resumed": bool(resume)}
    if name == "search":
        record["masses"] = module.masses()
    atomic_write_text(done, json.dumps(record, indent=2))
    finish_wandb_run()  # the next stage starts its own run
    return record


def _timing_features(datamodule, count: int) -> list[dict[str, list[int]]]:
    """``count`` tokenised examples of the reported split, repeated cyclically when the split is smaller."""
    from lit_efficiency.power_bert.heldout import REPORT

    split = datamodule.datasets[REPORT]
    pairs = zip(split["input_ids"], split["token_type_ids"], strict=True)
    features = [{"input_ids": ids, "token_type_ids": tt} for ids, tt in pairs]
    return [features[i % len(features)] for i in range(count)]


#: Config sections that do not change the trained models: they may change on a rerun.
_RERUNNABLE = ("timing", "trainer", "guard")


def _check_output_dir(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse a directory holding another run (or unrelated files); writes nothing (see :func:`_record_config`)."""
    config_file = out / "pipeline.json"
    if config_file.is_file():
        previous = read_json_state(config_file, f"delete {out} or choose another --output_dir")
        changed = sorted(k for k in fingerprint if k not in _RERUNNABLE and previous.get(k) != fingerprint[k])
        if changed:
            raise ConfigError(
                f"output_dir {out} holds a run with different {', '.join(changed)} (its settings are in "
                f"{config_file}); choose another --output_dir to train with new settings (nothing was changed)"
            )
        return
    if any(p.name != OutputLock.NAME for p in ensure_output_dir(out).iterdir()):
        raise ConfigError(f"output_dir {out} is not empty and holds no pipeline.json (choose another --output_dir)")


def _record_config(out: Path, fingerprint: dict[str, Any]) -> None:
    """Write ``pipeline.json`` once, after every option and the data were validated; never rewrite it."""
    config_file = out / "pipeline.json"
    if not config_file.is_file():
        atomic_write_text(config_file, json.dumps(fingerprint, indent=2, default=str))


def _validate_options(
    budget: float | None, lambda_grid: list[float], stages: dict[str, StageConfig], timing: TimingConfig
) -> None:
    """One-line errors for option values no stage would reject before training (checked before anything is written)."""
    check_at_least("budget", budget, 0, "the allowed metric loss, in points")
    if not lambda_grid or any(not m > 0 for m in lambda_grid):
        raise ConfigError(f"lambda_grid: needs positive multipliers of the reference LAMBDA, got {lambda_grid}")
    for name, stage in stages.items():
        for field in ("lr", "retention_lr"):
            check_positive(f"{name}.{field}", getattr(stage, field, None))
        check_at_least(f"{name}.epochs", stage.epochs, 1)
        check_limit(f"{name}.max_steps", stage.max_steps)
        check_at_least(f"{name}.patience", stage.patience, 1, "or null")
    for field, low in (("batch_size", 1), ("num_batches", 1), ("repeats", 1), ("warmup", 0), ("batch1_examples", 0)):
        check_at_least(f"timing.{field}", getattr(timing, field), low)
    check_at_least("timing.threads", timing.threads, 1, "or null: torch's default")
    if timing.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("timing.device: cuda, but torch sees no CUDA device here (use auto or cpu)")
    if timing.compile and timing.warmup < 1:
        raise ConfigError("timing.warmup: must be >= 1 with timing.compile (each batch size compiles in its warm-up)")


def _check_trainer(cfg: TrainerConfig) -> None:
    """Build (and drop) a Trainer with the user's accelerator, devices and precision: a one-line error if Lightning
    refuses them, before anything is written."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"trainer (accelerator={cfg.accelerator}, devices={cfg.devices}): {first}") from err


def evaluate(module, datamodule, accelerator: str, split: Literal["val", "test"] = "val") -> dict[str, float]:
    """Metrics of ``module`` on the held-out slice (``val``) or the reported split (``test``); one device, no logs."""
    from lit_efficiency.core.trainer import quiet_trainer

    trainer = quiet_trainer(accelerator=accelerator)
    loop = trainer.validate if split == "val" else trainer.test
    return {k: float(v) for k, v in loop(module, datamodule=datamodule, verbose=False)[0].items()}


def _time_all(
    models: dict[str, Any], features: dict[int, list], pad_id: int, max_seq_len: int, timing: TimingConfig,
    device: torch.device, retention: list[int], show_progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Time ``models`` at every batch size of ``features`` (static and dynamic padding); per-batch ms and rows."""
    from lit_efficiency.power_bert.speed import STATIC_ONLY, comparisons, make_workloads, time_models

    config = models["baseline"].config
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for batch_size, examples in features.items():
        workloads = make_workloads(examples, batch_size, pad_id, max_seq_len)
        ms = time_models(
            models, workloads, device, timing.warmup, timing.repeats, static_only=STATIC_ONLY, progress=show_progress
        )
        flops = {f"{m}/{p}": w.flops(config, retention if m.startswith("power_bert") else None)
                 for m in models for p, w in workloads.items()}  # fmt: skip
        results[f"batch_{batch_size}"] = {"examples": len(examples), "ms_per_batch": ms, "flops": flops}
        rows += comparisons(ms, flops, batch_size)
    return results, rows


def _padding_of(candidate: str) -> str:
    return candidate.split("/")[1]


def _candidate_name(multiplier: float) -> str:
    return f"lambda_x{multiplier:g}"


def run(
    task: str,
    output_dir: str,
    model: str = "minilm-l6",
    seed: int = 42,
    data: DataConfig = DataConfig(),  # noqa: B008
    finetune: StageConfig = StageConfig(),  # noqa: B008
    search: SearchConfig = SearchConfig(),  # noqa: B008
    retrain: StageConfig = StageConfig(),  # noqa: B008
    timing: TimingConfig = TimingConfig(),  # noqa: B008
    trainer: TrainerConfig = TrainerConfig(),  # noqa: B008
    mask_padded_queries: bool = True,
    budget: float | None = None,
    lambda_grid: list[float] = DEFAULT_LAMBDA_GRID,  # noqa: B006 (never mutated)
    guard: Literal["refuse", "warn"] = "refuse",
    fair_baseline: bool = False,
) -> dict[str, Any]:
    """Run the PoWER-BERT pipeline and return the report (also written to ``output_dir/report.json``).

    Args:
        task: GLUE task (cola, sst2, mrpc, stsb, rte, qnli, qqp, mnli, wnli) or imdb.
        output_dir: where every artifact goes; rerunning resumes.
        model: pretrained BERT/ALBERT: HF name, local folder, or alias ``minilm-l6``.
        seed: global seed.
        data: data options.
        finetune: fine-tuning stage.
        search: configuration-search stage.
        retrain: retraining stage.
        timing: inference timing.
        trainer: Lightning trainer options.
        mask_padded_queries: exclude padded query rows from the significance score, so a token's score, and which
            tokens are kept, do not depend on the batch's padding: training (dynamic or static padding) and
            evaluation then select the same tokens. With ``false`` (the reference), evaluation uses the training
            padding.
        budget: accuracy-budget mode: the largest held-out metric loss (points) to accept. The search and retrain
            stages run once per ``lambda_grid`` entry and the fastest candidate within the budget is shipped.
            None: one search with the task's LAMBDA (``search.mass_lambda``).
        lambda_grid: multipliers of the reference LAMBDA tried with ``budget``.
        guard: ``refuse`` to ship a collapsed search or a model not faster than its baseline (exit status 2,
            nothing written), or ``warn`` and ship anyway.
        fair_baseline: also give the unpruned model PoWER-BERT's training budget: search with LAMBDA = 0 (rounding
            ``ceil``, so it keeps all N tokens) and retrain, from the same fine-tuned model. The budget and the guards
            then compare with this baseline's held-out metric instead of the fine-tuned model's, and the report
            gives its metric on the reported split.
    """
    import lightning as L

    from lit_efficiency.core.paths import resolve_pretrained
    from lit_efficiency.power_bert.guards import (
        DEFAULT_BUDGET,
        ShipRefused,
        collapse_reasons,
        constant_predictor_metric,
        slowdown_reason,
    )
    from lit_efficiency.power_bert.heldout import HeldOutGLUEDataModule
    from lit_efficiency.power_bert.model import ideal_speedup
    from lit_efficiency.power_bert.plots import PLOTS, write_plots
    from lit_efficiency.power_bert.retention import save_retention
    from lit_efficiency.power_bert.speed import compiled_twin, find_row, hf_sdpa_model, logits_of, make_workloads
    from lit_efficiency.power_bert.task import PowerBertFinetune, PowerBertRetrain
    from lit_efficiency.power_bert.tasks_table import TASK_DEFAULTS, canonical_task

    task = canonical_task(task)
    resolve_pretrained(model)  # fail early on a bad model path
    if str(trainer.devices) != "1":
        raise ConfigError(
            f"trainer.devices={trainer.devices}: the power-bert pipeline runs on one device; for DDP run each stage "
            "with `lit-efficiency fit --config conf/power_bert/stages/<stage>.yaml --config conf/trainer/ddp.yaml`"
        )
    if guard not in ("refuse", "warn"):
        raise ConfigError(f"guard: must be 'refuse' or 'warn', got {guard!r}")
    _validate_options(budget, list(lambda_grid), {"finetune": finetune, "search": search, "retrain": retrain}, timing)
    _check_trainer(trainer)
    out = Path(output_dir).expanduser().absolute()
    config = {
        "task": task,
        "model": model,
        "seed": seed,
        "mask_padded_queries": mask_padded_queries,
        "budget": budget,
        "lambda_grid": list(lambda_grid) if budget is not None else None,
        "guard": guard,
        "fair_baseline": fair_baseline,
        **{k: asdict(v) for k, v in
           dict(data=data, finetune=finetune, search=search, retrain=retrain, timing=timing, trainer=trainer).items()},
    }  # fmt: skip
    _check_output_dir(out, config)
    L.seed_everything(seed, workers=True)

    def datamodule(**over: Any) -> HeldOutGLUEDataModule:
        kwargs = {**asdict(data), "task": task, "tokenizer_name": model, "seed": seed, **over}
        built = HeldOutGLUEDataModule(**kwargs)
        built.show_progress = trainer.enable_progress_bar  # the tokenisation bar follows the stages' bars
        return built

    # Resolve N once and give the same value to data and model (their hparams must agree for the loggers).
    max_seq_len = data.max_seq_len or TASK_DEFAULTS[task].max_seq_len
    dm = datamodule(max_seq_len=max_seq_len)
    # With padded queries counted, a token's score depends on the padding: evaluate with the training padding.
    eval_padding = "static" if mask_padded_queries else data.padding
    eval_dm = datamodule(max_seq_len=max_seq_len, padding=eval_padding)
    dm.setup("fit")  # reads and tokenises the data now: bad data fails before pipeline.json is written
    eval_dm.setup("test")
    _record_config(out, config)
    common = {"task": task, "max_seq_len": max_seq_len, "mask_padded_queries": mask_padded_queries}

    ft = _run_stage(
        "finetune",
        out,
        lambda: PowerBertFinetune(model_name_or_path=model, lr=finetune.lr, **common),
        dm,
        finetune,
        trainer,
        monitor_best=True,
        seed=seed,
    )
    reference_lambda = search.mass_lambda if search.mass_lambda is not None else TASK_DEFAULTS[task].mass_lambda
    multipliers = list(lambda_grid) if budget is not None else [1.0]
    candidates = []
    for multiplier in multipliers:
        where = out / "candidates" / _candidate_name(multiplier) if budget is not None else out
        refuse_symlinks(out / "candidates", where)
        record = _train_candidate(where, out, multiplier * reference_lambda, common, dm, search, retrain, trainer, seed)
        candidates.append({"name": _candidate_name(multiplier), "lambda_multiplier": multiplier, **record})

    metric_name = dm.task_info.metrics[0]
    fair = None
    if fair_baseline:
        unpruned = replace(search, rounding="ceil")
        refuse_symlinks(out / "fair_baseline")
        fair = _train_candidate(out / "fair_baseline", out, 0.0, common, dm, unpruned, retrain, trainer, seed)
        fair["heldout_metric"] = _headline(fair["retrain_metrics"], metric_name)
    baseline_module = PowerBertFinetune(model_name_or_path=str(out / "finetune" / "model"), **common)
    baseline = baseline_module.model
    modules = [PowerBertRetrain(model_name_or_path=str(out / c["model_dir"]), retention=c["retention"], **common)
               for c in candidates]  # fmt: skip
    heldout_finetuned = _headline(ft["metrics"], metric_name)
    heldout_baseline = fair["heldout_metric"] if fair else heldout_finetuned
    constant = constant_predictor_metric(task, dm.datasets["dev"]["labels"])
    for c in candidates:
        c["heldout_metric"] = _headline(c["retrain_metrics"], metric_name)
        c["ideal_speedup"] = ideal_speedup(baseline.config, c["retention"], max_seq_len)

    device = torch.device("cuda" if timing.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if timing.device == "auto" else timing.device))  # fmt: skip
    if timing.threads:
        torch.set_num_threads(timing.threads)
    pad_id = dm.tokenizer.pad_token_id or 0
    features = {timing.batch_size: _timing_features(eval_dm, timing.batch_size * timing.num_batches)}
    if timing.batch1_examples:
        features[1] = _timing_features(eval_dm, timing.batch1_examples)

    static = make_workloads(features[timing.batch_size], timing.batch_size, pad_id, max_seq_len)["static"]
    chosen, reasons = 0, []
    if budget is not None:
        models = {c["name"]: m.model for c, m in zip(candidates, modules, strict=True)}
        chosen, reasons = _choose_within_budget(candidates, models, baseline, static, heldout_baseline, budget,
                                                timing, device, trainer.enable_progress_bar)  # fmt: skip
    pick = candidates[chosen]
    pruned_module = modules[chosen]
    pruned, retention = pruned_module.model, pick["retention"]

    print(f"[power-bert] timing on {device}: batch sizes {list(features)}, N={max_seq_len}, {timing.repeats} rounds")
    models = {"baseline": baseline, "power_bert": pruned}
    if timing.hf_baseline:
        models["hf_sdpa"] = hf_sdpa_model(str(out / "finetune" / "model"))
    compiled_diff = None
    if timing.compile:
        models["power_bert_compiled"], compiled_diff = compiled_twin(pruned.to(device), static.to(device).batches[0])
    timings, rows = _time_all(models, features, pad_id, max_seq_len, timing, device, retention,
                              trainer.enable_progress_bar)  # fmt: skip
    hf_diff = None
    if timing.hf_baseline:
        with torch.inference_mode():
            batch = static.to(device).batches[0]
            hf_diff = float((logits_of(models["hf_sdpa"], batch) - logits_of(baseline, batch)).abs().max())

    # Guard rails: decided before anything is shipped.
    reasons += collapse_reasons(
        pick["heldout_metric"], constant, heldout_baseline, budget if budget is not None else DEFAULT_BUDGET,
        pick["masses"],
    )  # fmt: skip
    headline = find_row(rows, "power_bert/static", "baseline/static", timing.batch_size)
    pick["speedup"] = headline["speedup"]  # the shipped model's figure: this interleaved session's, as reported
    slow = slowdown_reason(headline)
    if slow:
        reasons.append(slow)
    if reasons and guard == "refuse":
        raise ShipRefused(
            f"refusing to ship the {task} model ({pick['name']}, retention {','.join(map(str, retention))}): "
            f"{'; '.join(reasons)}. Nothing was shipped ({out}/model and report.json unchanged); retry with a "
            "smaller --search.mass_lambda or --budget, or pass --guard warn to ship anyway"
        )
    same = [r for r in rows if r is not headline and _padding_of(r["candidate"]) == _padding_of(r["reference"])]
    warnings = reasons + [r for r in map(slowdown_reason, same) if r]
    if heldout_baseline <= constant + 1.0:
        warnings.append(f"the baseline's held-out metric {heldout_baseline:.1f} is at the constant predictor "
                        f"({constant:.1f}): train it longer")  # fmt: skip

    # Metrics on the reported split (GLUE dev, IMDB test), with the padding that selects the trained tokens.
    eval_device = "cpu" if trainer.accelerator == "cpu" else "auto"
    baseline_eval = evaluate(baseline_module, eval_dm, eval_device, "test")
    pruned_eval = evaluate(pruned_module, eval_dm, eval_device, "test")
    if fair:
        fair_module = PowerBertRetrain(model_name_or_path=str(out / fair["model_dir"]), retention=fair["retention"],
                                       **common)  # fmt: skip
        fair["metrics"] = evaluate(fair_module, eval_dm, eval_device, "test")
        fair["metric"] = _headline(fair["metrics"], metric_name, "test")

    def ms(name: str, batch_size: int = timing.batch_size) -> float:
        return timings[f"batch_{batch_size}"]["ms_per_batch"][name]["median_ms"]

    def speedup(candidate: str, reference: str) -> float:
        return find_row(rows, candidate, reference, timing.batch_size)["speedup"]

    report = {
        "task": task,
        "metric_name": metric_name,
        "reported_split": "IMDB test" if task == "imdb" else "GLUE dev",
        "selection_split": f"held-out {data.heldout_fraction:.0%} of the training split"
        if task != "imdb"
        else "held-out 10% of the IMDB training split",  # fmt: skip
        "baseline_metric": _headline(baseline_eval, metric_name, "test"),
        "power_bert_metric": _headline(pruned_eval, metric_name, "test"),
        "heldout": {
            "baseline": heldout_baseline,
            "finetuned": heldout_finetuned,
            "power_bert": pick["heldout_metric"],
            "constant_predictor": constant,
        },  # fmt: skip
        "fair_baseline": fair,
        "search_metric": _headline(pick["search_metrics"], metric_name),
        "eval_padding": eval_padding,
        "train_padding": data.padding,
        "mask_padded_queries": mask_padded_queries,
        "all_metrics": {"baseline": baseline_eval, "power_bert": pruned_eval},
        "training_metrics": {
            "finetune": ft["metrics"],
            "search": pick["search_metrics"],
            "retrain": pick["retrain_metrics"],
        },  # fmt: skip
        "budget": budget,
        "candidates": candidates,
        "chosen": pick["name"],
        "mass_lambda": pick["mass_lambda"],
        "retention": retention,
        "masses": pick["masses"],
        "word_vectors_kept": int(sum(retention)),
        "word_vectors_total": int(len(retention) * max_seq_len),
        "baseline_ms": ms("baseline/static"),
        "power_bert_ms": ms("power_bert/static"),
        "speedup": speedup("power_bert/static", "baseline/static"),
        "dynamic_padding_ms": ms("baseline/dynamic"),
        "power_bert_dynamic_padding_ms": ms("power_bert/dynamic"),
        "speedup_vs_dynamic_padding": speedup("power_bert/dynamic", "baseline/dynamic"),
        "ideal_speedup": ideal_speedup(baseline.config, retention, max_seq_len),
        "speedups": rows,
        "timing": {**timings, "warmup": timing.warmup, "repeats": timing.repeats, "order": "interleaved, rotating"},
        "batch_size": timing.batch_size,
        "max_seq_len": max_seq_len,
        "device": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model,
        "train_limit": data.train_limit,
        "eval_limit": data.eval_limit,
        "epochs": {"finetune": finetune.epochs, "search": search.epochs, "retrain": retrain.epochs},
        "warnings": warnings,
        # Stages resumed from a killed attempt's last.ckpt, and stages whose done.json an earlier attempt left.
        "stages_resumed": [s for r in (ft, *candidates, fair or {}) for s in _stages(r, "resumed")],
        "stages_reused": [s for r in (ft, *candidates, fair or {}) for s in _stages(r, "reused")],
    }
    if timing.hf_baseline:
        report["hf_sdpa_dynamic_ms"] = ms("hf_sdpa/dynamic")
        report["speedup_vs_hf_sdpa_dynamic"] = speedup("power_bert/dynamic", "hf_sdpa/dynamic")
        report["hf_sdpa_max_abs_logit_diff"] = hf_diff
    if timing.compile:
        report["power_bert_compiled_ms"] = ms("power_bert_compiled/static")
        report["compiled_max_abs_logit_diff"] = compiled_diff

    # Ship: the retrained model (HF folder + tokenizer + retention), the report and its plots.
    refuse_symlinks(out / "model", out / "report.json", *(out / name for name in PLOTS))
    pruned.save_pretrained(out / "model")
    dm.tokenizer.save_pretrained(out / "model")
    save_retention(out / "model" / "retention.json", retention, overwrite=True, task=task, max_seq_len=max_seq_len)
    if importlib.util.find_spec("matplotlib") is not None:
        report["plots"] = [p.name for p in write_plots(report, out)]
    else:
        report["plots"] = []
        report["warnings"].append("no plots: matplotlib is not installed (pip install 'lit_efficiency[plots]')")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    if trainer.logger == "wandb":
        from lit_efficiency.core.loggers import log_pipeline_report

        artifacts = {"model": out / "model", "retention": out / "model" / "retention.json"}
        images = {f"plots/{Path(name).stem}": out / name for name in report["plots"]}
        log_pipeline_report(trainer.wandb_project, out, report, config, artifacts, images)
    print(format_report(report))
    print(f"[power-bert] outputs: {out}/report.json, plots: {', '.join(report['plots'])}, model: {out}/model")
    return report


def _stages(record: dict[str, Any], flag: Literal["resumed", "reused"]) -> list[str]:
    """Stage names flagged ``flag`` in a stage record (``finetune``) or a candidate record (its list)."""
    if "stage" in record:
        return [record["stage"]] if record.get(flag) else []
    return record.get(f"stages_{flag}", [])


def _choose_within_budget(
    candidates: list[dict[str, Any]], models: dict[str, Any], baseline: Any, static: Any, heldout_baseline: float,
    budget: float, timing: TimingConfig, device: torch.device, show_progress: bool,
) -> tuple[int, list[str]]:  # fmt: skip
    """Time every candidate against the baseline (static padding, interleaved); pick the fastest within budget.

    Records ``timing_static``, ``ms`` and ``speedup`` in each candidate. Returns the chosen index and, when no
    candidate fits the budget, the most accurate one with the reason.
    """
    from lit_efficiency.power_bert.guards import choose_candidate
    from lit_efficiency.power_bert.speed import time_models

    ms = time_models({"baseline": baseline, **models}, {"static": static}, device, timing.warmup, timing.repeats,
                     progress=show_progress)  # fmt: skip
    for c in candidates:
        c["timing_static"] = ms[f"{c['name']}/static"]
        c["ms"] = c["timing_static"]["median_ms"]
        c["speedup"] = ms["baseline/static"]["median_ms"] / c["ms"]
    picked = choose_candidate(candidates, heldout_baseline, budget)
    if picked is not None:
        return picked, []
    best = max(range(len(candidates)), key=lambda i: candidates[i]["heldout_metric"])
    return best, [f"no candidate is within the budget of {budget:g} points (the most accurate is reported)"]


def _train_candidate(
    where: Path, out: Path, mass_lambda: float, common: dict[str, Any], dm, search: SearchConfig,
    retrain: StageConfig, trainer: TrainerConfig, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Search with ``mass_lambda`` from the fine-tuned model, then retrain, in ``where``; returns the record.

    The stages are seeded ``seed + 1`` and ``seed + 2`` (the fine-tuning stage has ``seed``).
    """
    from lit_efficiency.power_bert.bert import load_hf_config, num_layer_applications
    from lit_efficiency.power_bert.retention import load_retention
    from lit_efficiency.power_bert.task import PowerBertRetrain, PowerBertSearch

    retention_file = where / "retention.json"
    sr = _run_stage(
        "search",
        where,
        lambda: PowerBertSearch(
            model_name_or_path=str(out / "finetune" / "model"),
            lr=search.lr,
            retention_lr=search.retention_lr,
            mass_lambda=mass_lambda,
            rounding=search.rounding,
            retention_file=str(retention_file),
            overwrite_retention=True,  # the pipeline's own artifact, rewritten when the stage is (re)run
            **common,
        ),
        dm,
        search,
        trainer,
        monitor_best=False,
        seed=seed + 1,
    )
    # The edge: the search's retention file is read and validated once; the retrain module gets the list.
    search_config = load_hf_config(str(where / "search" / "model"))
    retention = load_retention(retention_file, num_layer_applications(search_config), common["max_seq_len"])
    rt = _run_stage(
        "retrain",
        where,
        lambda: PowerBertRetrain(
            model_name_or_path=str(where / "search" / "model"), retention=retention, lr=retrain.lr, **common
        ),
        dm,
        retrain,
        trainer,
        monitor_best=True,
        seed=seed + 2,
    )
    prefix = "" if where == out else f"{where.relative_to(out).as_posix()}/"
    return {
        "mass_lambda": mass_lambda,
        "model_dir": str((where / "retrain" / "model").relative_to(out)),
        "stages_resumed": [prefix + r["stage"] for r in (sr, rt) if r.get("resumed")],
        "stages_reused": [prefix + r["stage"] for r in (sr, rt) if r.get("reused")],
        "retention": retention,
        "masses": sr.get("masses"),
        "search_metrics": sr["metrics"],
        "retrain_metrics": rt["metrics"],
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_report(report: dict[str, Any]) -> str:
    """The summary printed at the end: metrics, retention, times with spread, every speedup, warnings."""
    from lit_efficiency.power_bert.speed import format_rows

    name = report["metric_name"]
    static = report["timing"][f"batch_{report['batch_size']}"]["ms_per_batch"]
    rows = [
        ("task / chosen", f"{report['task']} / {report['chosen']} (LAMBDA {report['mass_lambda']:.3g})"),
        (f"baseline {name} ({report['reported_split']})", f"{report['baseline_metric']:.2f}"),
        (f"PoWER-BERT {name} ({report['reported_split']})", f"{report['power_bert_metric']:.2f}"),
        ("held-out baseline / PoWER-BERT / constant",
         "{baseline:.2f} / {power_bert:.2f} / {constant_predictor:.2f}".format(**report["heldout"])),
        ("retention", ",".join(map(str, report["retention"]))),
        *((f"ms/batch {key} (median [q1-q3])", f"{s['median_ms']:.2f} [{s['q1_ms']:.2f}-{s['q3_ms']:.2f}]")
          for key, s in static.items()),
        ("device / batch / N", f"{report['device']} / {report['batch_size']} / {report['max_seq_len']}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}} | {v}" for k, v in rows]
    lines += ["speedups (median [q1/q3 range]), FLOP-ideal (% reached):", *format_rows(report["speedups"])]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    line = "-" * max(len(x) for x in lines)
    return "\n".join([line, *lines, line])


def main(argv: list[str]) -> None:
    """``lit-efficiency power-bert [--config FILE ...] --output_dir DIR [--task.. overrides]``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    class _Parser(OneLineErrors, ArgumentParser):
        """Parse errors as one line."""

    parser = _Parser(
        prog="lit-efficiency power-bert",
        description="PoWER-BERT pipeline: fine-tune -> configuration search -> retrain -> evaluate -> time.",
        exit_on_error=True,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config; repeat to compose")
    parser.add_function_arguments(run, as_positional=False)
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k != "config" and not k.startswith("__")}
    out = Path(kwargs["output_dir"]).expanduser().absolute()
    created = not out.exists()
    try:
        with OutputLock(ensure_output_dir(out)):
            run(**kwargs)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run refused before it wrote anything leaves no folder behind
