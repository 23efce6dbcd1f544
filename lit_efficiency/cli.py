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
from lit_efficiency.core.errors import ConfigError, LitEfficiencyError

#: ``conf/`` of the checkout (present for source and editable installs).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Data-module arguments linked into the model's argument of the same name (set them on the data only).
LINKED_FROM_DATA: tuple[str, ...] = ("task", "max_seq_len")

#: Pipeline subcommands: name -> "module:function" taking the remaining argv (a list of strings).
PIPELINES: dict[str, str] = {
    "power-bert": "lit_efficiency.power_bert.pipeline:main",
}

#: Commands under a pipeline subcommand: (pipeline, command) -> "module:function" taking the remaining argv.
PIPELINE_COMMANDS: dict[tuple[str, str], str] = {
    ("power-bert", "export"): "lit_efficiency.power_bert.export:main",
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
        self._explicit_model_links = _explicit_model_links(sys.argv[1:] if args is None else args)
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

    def before_instantiate_classes(self) -> None:
        """Refuse what the link would otherwise hide: a model value that differs from the data's, or a model that
        takes a linked argument while the data module has none to give it (its value would vanish from the saved
        ``config.yaml``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        model_args, data_args = config.get("model.init_args"), config.get("data.init_args")
        if model_args is None or data_args is None:
            return
        for name in LINKED_FROM_DATA:
            if name not in model_args:
                continue
            if name not in data_args:
                raise ConfigError(
                    f"model.init_args.{name} is linked from data.init_args.{name}, but the data module "
                    f"({config.get('data.class_path')}) has no `{name}` argument: add one to it"
                )
            given = self._explicit_model_links.get(name)
            if given is not None and str(given[0]) != str(data_args[name]):
                raise ConfigError(
                    f"{given[1]}: model.init_args.{name}={given[0]!r} differs from data.init_args.{name}="
                    f"{data_args[name]!r}; set {name} once, on the data (the CLI copies it to the model)"
                )


def _explicit_model_links(args: Any) -> dict[str, tuple[Any, str]]:
    """Model values of :data:`LINKED_FROM_DATA` typed on the command line or in a ``--config`` file.

    The link overwrites them with the data's value; they are collected here, before parsing, so that a differing
    one is an error instead of being dropped silently. Returns ``{name: (value, where)}``.
    """
    found: dict[str, tuple[Any, str]] = {}
    if isinstance(args, dict):
        model = (args.get("model") or {}) if isinstance(args.get("model"), dict) else {}
        for name in LINKED_FROM_DATA:
            if name in (model.get("init_args") or {}):
                found[name] = (model["init_args"][name], "args")
        return found
    argv = [str(a) for a in (args or [])]
    for i, token in enumerate(argv):
        key, sep, value = token.partition("=")
        if key in ("--config", "-c"):
            path = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
            model = _yaml_model_section(path)
            for name in LINKED_FROM_DATA:
                if name in (model.get("init_args") or {}):
                    found[name] = (model["init_args"][name], path)
        for name in LINKED_FROM_DATA:
            if key in (f"--model.init_args.{name}", f"--model.{name}"):
                found[name] = (value if sep else (argv[i + 1] if i + 1 < len(argv) else ""), "command line")
    return found


def _yaml_model_section(path: str) -> dict[str, Any]:
    """The ``model`` mapping of a YAML config file ({} when unreadable: the parser reports that itself)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, dict) else {}


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
        if argv and tuple(argv[:2]) in PIPELINE_COMMANDS:
            module_name, func_name = PIPELINE_COMMANDS[(argv[0], argv[1])].split(":")
            getattr(importlib.import_module(module_name), func_name)(argv[2:])
        elif argv and argv[0] in PIPELINES:
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
