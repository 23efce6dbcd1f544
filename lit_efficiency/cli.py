"""The one command line: ``lit-efficiency`` (also ``python -m lit_efficiency``).

Trainer subcommands (``fit``, ``validate``, ``test``, ``predict``) are a :class:`LightningCLI`: the model and the
data module are chosen by class path in YAML (``model: {class_path: ..., init_args: ...}``), so every module of
the project, and any user module, plugs in without touching this file. Configs compose: ``--config`` may be
repeated and later files win; ``--print_config`` shows the resolved configuration.

Multi-stage pipelines (for example ``power-bert``: fine-tune -> search -> retrain -> evaluate) are subcommands
registered in :data:`PIPELINES` and run several trainer stages in one process.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_efficiency.core.deprecation import LitEfficiencyDeprecationWarning
from lit_efficiency.core.errors import LitEfficiencyError

#: ``conf/`` of the checkout (present for source and editable installs).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Data-module arguments linked into the model's argument of the same name (set them on the data only).
LINKED_FROM_DATA: tuple[str, ...] = ("task", "max_seq_len")

#: Pipeline subcommands: name -> "module:function" taking the remaining argv (a list of strings).
PIPELINES: dict[str, str] = {
    "power-bert": "lit_efficiency.power_bert.pipeline:main",
}


def default_config_files() -> list[str]:
    """``conf/defaults.yaml`` when it exists (seed, trainer defaults, CSV logger, checkpointing)."""
    defaults = CONF_DIR / "defaults.yaml"
    return [str(defaults)] if defaults.is_file() else []


class LitEfficiencyCLI(LightningCLI):
    """LightningCLI with the project's defaults: subclass mode for model and data, ``conf/defaults.yaml``."""

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        defaults = {"default_config_files": default_config_files()}
        epilog = "pipelines: " + "; ".join(f"{name} (see: lit-efficiency {name} --help)" for name in PIPELINES)
        parser_kwargs = kwargs.pop("parser_kwargs", None) or {
            **{sub: dict(defaults) for sub in self.subcommands()},
            "epilog": epilog,
        }
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Values decided once, by the data module, and linked into the model (never typed twice).

        ``task`` (GLUE task or dynamic-graph task) and ``max_seq_len`` (PoWER-BERT's ``N``) are set on the data and
        copied to the model's argument of the same name when the model has one.
        """
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.{name}", apply_on="parse")


def _destroy_process_group() -> None:
    # gloo can abort the interpreter at exit after a successful DDP fit unless the group is destroyed first.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run_pipeline(name: str, argv: list[str]) -> None:
    module_name, func_name = PIPELINES[name].split(":")
    getattr(importlib.import_module(module_name), func_name)(argv)


def main(args: ArgsType = None) -> None:
    """Entry point of ``lit-efficiency``; ``args`` lets tests call it without touching ``sys.argv``."""
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    # Python hides DeprecationWarnings raised outside __main__; a config naming an old class path should say so.
    warnings.simplefilter("default", LitEfficiencyDeprecationWarning)
    try:
        if argv and argv[0] in PIPELINES:
            _run_pipeline(argv[0], argv[1:])
        else:
            LitEfficiencyCLI(args=args)
    except LitEfficiencyError as err:
        print(f"lit-efficiency: error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        _destroy_process_group()


if __name__ == "__main__":
    main()
