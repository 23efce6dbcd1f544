"""Loggers: a Weights & Biases logger that never hangs or crashes without an API key or network."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_offline_reason() -> str | None:
    """Why wandb must run offline (``None`` when online is possible).

    An explicit ``WANDB_MODE`` always wins; otherwise offline when there is no API key (``WANDB_API_KEY`` or a
    ``~/.netrc`` entry from ``wandb login``) or the wandb host cannot be reached within 3 s.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return f"WANDB_MODE={mode}" if mode in ("offline", "disabled", "dryrun") else None
    host = _wandb_host()
    if not _has_api_key(host):
        return "no wandb API key (set WANDB_API_KEY or run `wandb login`)"
    if not _reachable(host):
        return f"{host} is not reachable"
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that switches to offline mode by itself when it cannot log online.

    Offline runs are written under ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync``.

    Args:
        offline: force offline (``True``) or online (``False``); ``None`` decides from the API key and network.
        **kwargs: everything :class:`lightning.pytorch.loggers.WandbLogger` accepts (project, name, save_dir, ...).
    """

    def __init__(self, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            reason = wandb_offline_reason()
            offline = reason is not None
            if offline:
                rank_zero_info(f"wandb: logging offline ({reason}); upload later with `wandb sync`")
        if offline and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun"):
            os.environ["WANDB_MODE"] = "offline"
        for key in ("save_dir", "dir"):  # wandb's service process keeps the cwd it started in: pass absolute paths
            if kwargs.get(key) is not None:
                kwargs[key] = os.path.abspath(os.path.expanduser(str(kwargs[key])))
        super().__init__(offline=offline, **kwargs)

    def describe(
        self, name: str | None = None, group: str | None = None, job_type: str | None = None, config: dict | None = None
    ) -> None:
        """Fill in what the user did not set, before the run starts: its name, group, job type and config.

        ``config`` is merged under the user's own ``config`` (theirs wins). Has no effect once the run exists.
        """
        if self._experiment is not None:
            return
        for key, value in (("name", name), ("group", group), ("job_type", job_type)):
            if value is not None and not self._wandb_init.get(key):
                self._wandb_init[key] = value
        self._name = self._wandb_init.get("name")
        if config:
            self._wandb_init["config"] = {**config, **(self._wandb_init.get("config") or {})}


def finish_wandb_run() -> None:
    """End the current wandb run, if any (Lightning leaves it open): its files are complete and closed, and the next
    run of the same process (the next pipeline stage) starts a new run instead of reusing this one."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def run_name(config: dict[str, Any]) -> str:
    """``<model class>-<model kind>-<dataset or task>`` from a resolved CLI config (``DynGNNTask-wdgcn-chess``,
    ``PowerBertFinetune-rte``)."""
    model, data = config.get("model") or {}, config.get("data") or {}
    model_args, data_args = model.get("init_args") or {}, data.get("init_args") or {}
    parts = [str(model.get("class_path", "model")).rsplit(".", 1)[-1]]
    if isinstance(model_args.get("model"), str):
        parts.append(model_args["model"])
    parts.append(
        str(data_args.get("dataset") or data_args.get("task") or data.get("class_path", "data").rsplit(".")[-1])
    )
    return "-".join(parts)


def describe_wandb_runs(loggers: list[Any], config: dict[str, Any], job_type: str) -> None:
    """Name, group and configure every :class:`WandbLogger` of a trainer from the resolved CLI config.

    The run is named from the config (:func:`run_name`), grouped with the runs of the same config (under DDP only
    rank 0 logs, so the group holds one run per launch), typed by the subcommand (``fit``, ``test``...), and its
    config holds the whole resolved config under ``cli`` (trainer, class paths, seed, model and data arguments;
    Lightning adds the model's and data's hyperparameters at the top level, where a model argument called ``model``
    would otherwise overwrite the config's ``model`` section).
    """
    name = run_name(config)
    trainer = config.get("trainer") or {}
    # Not "world_size": the data module's own argument of that name is logged at the top level too.
    world = {"processes": int(trainer.get("num_nodes") or 1) * _device_count(trainer.get("devices"))}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.describe(name=name, group=name, job_type=job_type, config={"cli": config, **world})


def _device_count(devices: Any) -> int:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return 1  # "auto" or -1: decided by the accelerator at run time


def log_breakdown(loggers: list[Any], key: str, columns: list[str], rows: list[tuple]) -> None:
    """A small table (first column: the part, e.g. ``h2d`` or ``alltoall``) to every wandb logger, and its values
    into the run summary (``<key>/<part>_<column>``), so the dashboard shows the split without a custom panel."""
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger):
            logger.log_table(key=key, columns=columns, data=[list(r) for r in rows])
            logger.experiment.summary.update(
                {
                    f"{key}/{row[0]}_{col}": value
                    for row in rows
                    for col, value in zip(columns[1:], row[1:], strict=True)
                }
            )


def pipeline_run_info(output_dir: Path, stage: str, label: str | None = None) -> dict[str, str]:
    """``WandbLogger`` arguments of one pipeline stage: one run per stage, ``job_type`` = the stage, all stages of
    one output directory in one group (its absolute path, wandb's 128-character limit kept from the right).

    ``label`` names a stage inside the output directory that is not at its top (``candidates/lambda_x1/search``)."""
    output_dir = Path(output_dir).absolute()
    return {"name": f"{output_dir.name}-{label or stage}", "group": str(output_dir)[-128:], "job_type": stage}


def log_pipeline_report(
    project: str,
    output_dir: Path,
    report: dict[str, Any],
    config: dict[str, Any],
    artifacts: dict[str, Path],
    images: dict[str, Path],
) -> None:
    """The pipeline's last run (``job_type`` ``report``, same group as the stages): the report in the summary, the
    pipeline config, the retention per layer as a table, ``images`` (``{key: PNG}``: the pipeline's own figures, the
    retention bar chart among them, logged as they are rather than drawn a second time) and ``artifacts``
    (``{type: file or folder}``: the shipped model, the retention file) as wandb artifacts. Offline by itself, as
    :class:`WandbLogger`."""
    import wandb

    info = pipeline_run_info(output_dir, "report")
    mode = "offline" if wandb_offline_reason() is not None else "online"
    run = wandb.init(project=project, dir=str(output_dir), config=config, mode=mode, **info)
    try:
        run.summary.update({k: v for k, v in report.items() if isinstance(v, (int, float, str))})
        kept = wandb.Table(
            columns=["layer", "tokens kept"], data=[[i + 1, n] for i, n in enumerate(report["retention"])]
        )
        run.log({"retention_per_layer": kept, **{key: wandb.Image(str(png)) for key, png in images.items()}})
        for kind, path in artifacts.items():
            artifact = wandb.Artifact(f"{info['name']}-{kind}", type=kind)
            artifact.add_dir(str(path)) if Path(path).is_dir() else artifact.add_file(str(path))
            run.log_artifact(artifact)
    finally:
        run.finish()
