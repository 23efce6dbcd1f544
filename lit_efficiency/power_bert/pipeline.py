"""``lit-efficiency power-bert``: fine-tune -> search -> retrain -> evaluate -> time, in one output directory.

Layout of ``--output_dir DIR``::

    DIR/pipeline.json          the resolved pipeline config (a rerun must match its task and model)
    DIR/finetune/              checkpoints/, csv/ metrics, model/ (HF folder of the best dev checkpoint), done.json
    DIR/search/                checkpoints/, csv/, model/ (weights after the search), done.json
    DIR/retention.json         {"retention": [...], "masses": [...], ...}
    DIR/retrain/               checkpoints/, csv/, model/, done.json
    DIR/model/                 the shipped PoWER-BERT model: config.json (+ retention), model.safetensors, tokenizer
    DIR/report.json            metrics, retention, timings, speedups

A rerun with the same ``--output_dir`` skips finished stages (``done.json``) and resumes an interrupted stage from
its ``checkpoints/last.ckpt``. Each stage is also available alone: ``lit-efficiency fit --config
conf/power_bert/stages/<stage>.yaml``.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lit_efficiency.core.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]


@dataclass
class DataConfig:
    """GLUE data options (see :class:`lit_efficiency.power_bert.glue.GLUEDataModule`).

    Attributes:
        data_dir: data root holding ``glue/``; default: ``$LIT_EFFICIENCY_DATA`` or ``../shared/data``.
        glue_dir: the GLUE folder itself (wins over ``data_dir``).
        max_seq_len: padded length N; None = the task's reference value.
        batch_size: training batch size; None = the task's reference value.
        eval_batch_size: batch size for validation; None = ``batch_size``.
        train_limit: use a seeded subset of this many training examples (CPU runs).
        eval_limit: the same for the dev split.
        num_workers: DataLoader workers.
        padding: padding of the training/validation batches: ``static`` (to N, the paper) or ``dynamic`` (to the
            longest example in the batch; same model, much faster training on short sentences). Timing always
            measures static padding and a dynamic-padding baseline side by side.
    """

    data_dir: str | None = None
    glue_dir: str | None = None
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
    """

    epochs: int = 3
    lr: float | None = None
    max_steps: int = -1


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
    """Inference timing (same device, same examples, warm-up, median of repeats).

    Attributes:
        batch_size: examples per batch (the paper: 128).
        num_batches: batches timed per repeat (dev examples, repeated cyclically if the dev set is smaller).
        warmup: untimed repeats first.
        repeats: timed repeats (the median is reported).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: CPU threads for timing (None: torch's default).
    """

    batch_size: int = 128
    num_batches: int = 2
    warmup: int = 1
    repeats: int = 5
    device: Device = "auto"
    threads: int | None = None


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


def _trainer(stage_dir: Path, cfg: TrainerConfig, stage: StageConfig, name: str, checkpoint: Any):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(stage_dir, name="csv")]  # a resumed stage logs to a new version
    if cfg.logger == "wandb":
        from lit_efficiency.core.loggers import WandbLogger, pipeline_run_info

        info = pipeline_run_info(stage_dir.parent, name)  # one run per stage, grouped by the output directory
        loggers.append(WandbLogger(project=cfg.wandb_project, save_dir=str(stage_dir), **info))
    return L.Trainer(
        default_root_dir=stage_dir,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        max_epochs=stage.epochs,
        max_steps=stage.max_steps,
        logger=loggers,
        callbacks=[checkpoint],
        enable_progress_bar=cfg.enable_progress_bar,
        val_check_interval=cfg.val_check_interval,
        log_every_n_steps=10,
    )


def _headline(metrics: dict[str, float], name: str) -> float:
    return 100.0 * float(metrics[f"val/{name}"])


def _run_stage(
    name: str,
    out: Path,
    make_module,
    datamodule,
    stage_cfg: StageConfig,
    trainer_cfg: TrainerConfig,
    monitor_best: bool,
) -> dict[str, Any]:
    """Fit one stage (resuming from ``last.ckpt``), export its model folder, validate, and mark it done."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_efficiency.core.loggers import finish_wandb_run

    stage_dir = out / name
    done = stage_dir / "done.json"
    if done.is_file():
        print(f"[power-bert] {name}: already done ({done}), skipping")
        return json.loads(done.read_text())
    module = make_module()
    ckpt_dir = stage_dir / "checkpoints"
    monitor = "val/score" if monitor_best else None  # the task's headline metric
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1 if monitor else 0,
        save_last=True,
        enable_version_counter=False,
    )
    trainer = _trainer(stage_dir, trainer_cfg, stage_cfg, name, checkpoint)
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        print(f"[power-bert] {name}: resuming from {last}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best = Path(checkpoint.best_model_path) if monitor and checkpoint.best_model_path else last
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.save_pretrained(stage_dir / "model")
    datamodule.tokenizer.save_pretrained(stage_dir / "model")
    metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    record = {"stage": name, "checkpoint": str(best.relative_to(out)), "metrics": metrics}
    if name == "search":
        record["masses"] = module.masses()
    done.write_text(json.dumps(record, indent=2))
    finish_wandb_run()  # the next stage starts its own run
    return record


def _timing_batches(datamodule, batch_size: int, num_batches: int, max_seq_len: int) -> tuple[list, list]:
    """The same dev examples as static batches (padded to N) and as length-sorted dynamic batches."""
    from lit_efficiency.power_bert.glue import PadCollator

    datamodule.setup("validate")
    dev = datamodule.datasets["dev"]
    pairs = zip(dev["input_ids"], dev["token_type_ids"], strict=True)
    features = [{"input_ids": ids, "token_type_ids": tt} for ids, tt in pairs]
    wanted = batch_size * num_batches
    features = [features[i % len(features)] for i in range(wanted)]  # repeat cyclically when dev is small
    pad_id = datamodule.tokenizer.pad_token_id or 0
    static = PadCollator(pad_id, pad_to=max_seq_len)
    dynamic = PadCollator(pad_id, pad_to=None)
    chunks = [features[i : i + batch_size] for i in range(0, wanted, batch_size)]
    by_length = sorted(features, key=lambda f: len(f["input_ids"]), reverse=True)
    sorted_chunks = [by_length[i : i + batch_size] for i in range(0, wanted, batch_size)]
    return [static(c) for c in chunks], [dynamic(c) for c in sorted_chunks]


def time_inference(model, batches: list[dict[str, torch.Tensor]], device: torch.device, warmup: int, repeats: int):
    """Median milliseconds per batch of ``model`` over ``batches`` (all batches per repeat)."""
    from lit_efficiency.core.timing import benchmark

    model = model.to(device).eval()
    moved = [{k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
             for b in batches]  # fmt: skip

    def run_all():
        for b in moved:
            model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])

    result = benchmark(run_all, device=device, warmup=warmup, repeats=repeats)
    return result.median_ms / len(batches)


#: Config sections that only affect timing and execution, not the trained models: they may change on a rerun.
_RERUNNABLE = ("timing", "trainer")


def _check_output_dir(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse a directory holding another run (or unrelated files); record the config once, never rewrite it."""
    config_file = out / "pipeline.json"
    if config_file.is_file():
        previous = json.loads(config_file.read_text())
        changed = sorted(k for k in fingerprint if k not in _RERUNNABLE and previous.get(k) != fingerprint[k])
        if changed:
            raise ConfigError(
                f"output_dir {out} holds a run with different {', '.join(changed)} (its settings are in "
                f"{config_file}); choose another --output_dir to train with new settings (nothing was changed)"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output_dir {out} is not empty and holds no pipeline.json (choose another --output_dir)")
    out.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(fingerprint, indent=2, default=str))


def evaluate(module, datamodule, accelerator: str) -> dict[str, float]:
    """Dev-set metrics of ``module`` on ``datamodule`` (one device, no logging)."""

    from lit_efficiency.core.trainer import quiet_trainer

    trainer = quiet_trainer(accelerator=accelerator)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}


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
    mask_padded_queries: bool = False,
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
        mask_padded_queries: exclude padded query rows from the significance score.
    """
    import lightning as L

    from lit_efficiency.core.paths import resolve_pretrained
    from lit_efficiency.power_bert.bert import load_hf_config, num_layer_applications
    from lit_efficiency.power_bert.glue import GLUEDataModule
    from lit_efficiency.power_bert.model import ideal_speedup
    from lit_efficiency.power_bert.retention import load_retention, save_retention
    from lit_efficiency.power_bert.task import PowerBertFinetune, PowerBertRetrain, PowerBertSearch
    from lit_efficiency.power_bert.tasks_table import TASK_DEFAULTS, canonical_task

    task = canonical_task(task)
    resolve_pretrained(model)  # fail early on a bad model path
    if str(trainer.devices) != "1":
        raise ConfigError(
            f"trainer.devices={trainer.devices}: the power-bert pipeline runs on one device; for DDP run each stage "
            "with `lit-efficiency fit --config conf/power_bert/stages/<stage>.yaml --config conf/trainer/ddp.yaml`"
        )
    out = Path(output_dir).absolute()
    config = {
        "task": task,
        "model": model,
        "seed": seed,
        **{k: asdict(v) for k, v in
           dict(data=data, finetune=finetune, search=search, retrain=retrain, timing=timing, trainer=trainer).items()},
    }  # fmt: skip
    _check_output_dir(out, config)
    L.seed_everything(seed, workers=True)

    def datamodule(**over: Any) -> GLUEDataModule:
        kwargs = {**asdict(data), "task": task, "tokenizer_name": model, "seed": seed, **over}
        return GLUEDataModule(**kwargs)

    # Resolve N once and give the same value to data and model (their hparams must agree for the loggers).
    max_seq_len = data.max_seq_len or TASK_DEFAULTS[task].max_seq_len
    dm = datamodule(max_seq_len=max_seq_len)
    common = {"task": task, "max_seq_len": max_seq_len, "mask_padded_queries": mask_padded_queries}

    ft = _run_stage(
        "finetune",
        out,
        lambda: PowerBertFinetune(model_name_or_path=model, lr=finetune.lr, **common),
        dm,
        finetune,
        trainer,
        monitor_best=True,
    )
    retention_file = out / "retention.json"
    sr = _run_stage(
        "search",
        out,
        lambda: PowerBertSearch(
            model_name_or_path=str(out / "finetune" / "model"),
            lr=search.lr,
            retention_lr=search.retention_lr,
            mass_lambda=search.mass_lambda,
            rounding=search.rounding,
            retention_file=str(retention_file),
            overwrite_retention=True,  # the pipeline's own artifact, rewritten when the stage is (re)run
            **common,
        ),
        dm,
        search,
        trainer,
        monitor_best=False,
    )
    # The edge: the search's retention file is read and validated once; both retrain modules get the list.
    search_config = load_hf_config(str(out / "search" / "model"))
    retention = load_retention(retention_file, num_layer_applications(search_config), max_seq_len)
    rt = _run_stage(
        "retrain",
        out,
        lambda: PowerBertRetrain(
            model_name_or_path=str(out / "search" / "model"), retention=retention, lr=retrain.lr, **common
        ),
        dm,
        retrain,
        trainer,
        monitor_best=True,
    )

    # The two compared models, loaded once: evaluated, shipped and timed.
    baseline_module = PowerBertFinetune(model_name_or_path=str(out / "finetune" / "model"), **common)
    pruned_module = PowerBertRetrain(model_name_or_path=str(out / "retrain" / "model"), retention=retention, **common)
    baseline, pruned = baseline_module.model, pruned_module.model

    # Ship the retrained model: HF folder + tokenizer + retention.
    pruned.save_pretrained(out / "model")
    dm.setup("validate")  # loads the tokenizer when every stage was already done
    dm.tokenizer.save_pretrained(out / "model")
    save_retention(out / "model" / "retention.json", retention, overwrite=True, task=task, max_seq_len=max_seq_len)

    # Metrics of the two compared models, both evaluated with static padding to N: the setting that is timed
    # (with mask_padded_queries=False, the reference default, padding changes the significance scores).
    eval_dm = datamodule(padding="static", max_seq_len=max_seq_len)
    eval_device = "cpu" if trainer.accelerator == "cpu" else "auto"
    baseline_eval = evaluate(baseline_module, eval_dm, eval_device)
    pruned_eval = evaluate(pruned_module, eval_dm, eval_device)

    # Timing: same device, same examples, warm-up, median of repeats.
    device = torch.device("cuda" if timing.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if timing.device == "auto" else timing.device))  # fmt: skip
    if timing.threads:
        torch.set_num_threads(timing.threads)
    static_batches, dynamic_batches = _timing_batches(dm, timing.batch_size, timing.num_batches, max_seq_len)
    print(f"[power-bert] timing on {device}: {timing.num_batches} batches of {timing.batch_size}, N={max_seq_len}")
    baseline_ms = time_inference(baseline, static_batches, device, timing.warmup, timing.repeats)
    power_bert_ms = time_inference(pruned, static_batches, device, timing.warmup, timing.repeats)
    dynamic_ms = time_inference(baseline, dynamic_batches, device, timing.warmup, timing.repeats)
    pruned_dynamic_ms = time_inference(pruned, dynamic_batches, device, timing.warmup, timing.repeats)

    metric_name = dm.task_info.metrics[0]
    report = {
        "task": task,
        "metric_name": metric_name,
        "baseline_metric": _headline(baseline_eval, metric_name),
        "power_bert_metric": _headline(pruned_eval, metric_name),
        "search_metric": _headline(sr["metrics"], metric_name),
        "eval_padding": "static",
        "all_metrics": {"baseline": baseline_eval, "power_bert": pruned_eval},
        "training_metrics": {"finetune": ft["metrics"], "search": sr["metrics"], "retrain": rt["metrics"]},
        "train_padding": data.padding,
        "retention": retention,
        "masses": sr.get("masses"),
        "word_vectors_kept": int(sum(retention)),
        "word_vectors_total": int(len(retention) * max_seq_len),
        "baseline_ms": baseline_ms,
        "power_bert_ms": power_bert_ms,
        "speedup": baseline_ms / power_bert_ms,
        "dynamic_padding_ms": dynamic_ms,
        "speedup_vs_dynamic_padding": dynamic_ms / power_bert_ms,
        "power_bert_dynamic_padding_ms": pruned_dynamic_ms,
        "ideal_speedup": ideal_speedup(baseline.config, retention, max_seq_len),
        "batch_size": timing.batch_size,
        "max_seq_len": max_seq_len,
        "device": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model,
        "train_limit": data.train_limit,
        "eval_limit": data.eval_limit,
        "epochs": {"finetune": finetune.epochs, "search": search.epochs, "retrain": retrain.epochs},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if trainer.logger == "wandb":
        from lit_efficiency.core.loggers import log_pipeline_report

        artifacts = {"model": out / "model", "retention": retention_file}
        log_pipeline_report(trainer.wandb_project, out, report, config, artifacts)
    print(format_report(report))
    print(f"[power-bert] outputs: {out}/report.json, model: {out}/model, retention: {retention_file}")
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_report(report: dict[str, Any]) -> str:
    """A small table: baseline vs PoWER-BERT metric, retention, measured and ideal speedups."""
    rows = [
        ("task", report["task"]),
        (f"baseline {report['metric_name']}", f"{report['baseline_metric']:.2f}"),
        (f"PoWER-BERT {report['metric_name']}", f"{report['power_bert_metric']:.2f}"),
        ("retention", ",".join(map(str, report["retention"]))),
        ("baseline ms/batch (static)", f"{report['baseline_ms']:.1f}"),
        ("PoWER-BERT ms/batch", f"{report['power_bert_ms']:.1f}"),
        ("speedup (static padding)", f"{report['speedup']:.2f}x"),
        ("speedup vs dynamic padding", f"{report['speedup_vs_dynamic_padding']:.2f}x"),
        ("FLOP-ideal speedup", f"{report['ideal_speedup']:.2f}x"),
        ("device / batch / N", f"{report['device']} / {report['batch_size']} / {report['max_seq_len']}"),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(str(v)) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}} | {v}" for k, v in rows), line])


def main(argv: list[str]) -> None:
    """``lit-efficiency power-bert [--config FILE ...] --output_dir DIR [--task.. overrides]``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lit-efficiency power-bert",
        description="PoWER-BERT pipeline: fine-tune -> configuration search -> retrain -> evaluate -> time.",
        exit_on_error=True,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config; repeat to compose")
    parser.add_function_arguments(run, as_positional=False)
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k != "config" and not k.startswith("__")}
    run(**kwargs)
