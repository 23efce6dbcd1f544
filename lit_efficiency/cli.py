"""The one command line: ``lit-efficiency`` (also ``python -m lit_efficiency``).

Trainer subcommands (``fit``, ``validate``, ``test``, ``predict``) are a :class:`LightningCLI`: the model and the
data module are chosen by class path in YAML (``model: {class_path: ..., init_args: ...}``), so every module of
the project, and any user module, plugs in without touching this file. Configs compose: ``--config`` may be
repeated and later files win; ``--print_config`` shows the resolved configuration.

Multi-stage pipelines (for example ``power-bert``: fine-tune -> search -> retrain -> evaluate) are subcommands
registered in :data:`PIPELINES` and run several trainer stages in one process.
"""

from __future__ import annotations  # noqa: I001 (the next import must come first)

import lit_efficiency.core.native_logs  # noqa: F401 (before torch loads: it sets torch's C++ log level)

import importlib
import importlib.resources
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lit_efficiency.core.checkpoint import attach_run_dir
from lit_efficiency.core.checks import check_at_least, check_limit, check_positive
from lit_efficiency.core.deprecation import LitEfficiencyDeprecationWarning
from lit_efficiency.core.errors import ConfigError, OneLineErrors, find_user_error
from lit_efficiency.core.faults import rank_failures_reported, use_watched_launcher
from lit_efficiency.core.lock import OutputLock
from lit_efficiency.core.loggers import describe_wandb_runs, finish_wandb_run
from lit_efficiency.core.paths import ensure_output_dir
from lit_efficiency.core.quiet import quiet_libraries


def conf_dir() -> Path:
    """The project's ``conf/``: the checkout's (source and editable installs), else the copy shipped in the package.

    A wheel installs ``conf/`` as ``lit_efficiency/conf`` (``pyproject.toml`` maps it); a checkout is recognised by
    the ``pyproject.toml`` beside its ``conf/``.
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf").is_dir():
        return checkout / "conf"
    return Path(str(importlib.resources.files("lit_efficiency") / "conf"))


#: The ``conf/`` folder in use (see :func:`conf_dir`).
CONF_DIR = conf_dir()

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


#: Model/data arguments that must be positive when set (learning rates and sizes), checked before instantiation.
POSITIVE_ARGS: tuple[str, ...] = (
    "lr", "retention_lr", "hidden_dim", "out_dim", "num_layers", "batch_size", "eval_batch_size",
    "max_seq_len", "train_limit", "eval_limit", "num_nodes", "num_snapshots", "edges_per_snapshot", "block_size",
    "num_communities",
)  # fmt: skip
#: Model arguments that must be >= 0 when set (``head_hidden_dim`` 0: a linear head).
NON_NEGATIVE_ARGS: tuple[str, ...] = ("head_hidden_dim",)


class _Parser(OneLineErrors, LightningArgumentParser):
    """The CLI's parser: parse errors are one line (exit 2)."""


def default_config_files() -> list[str]:
    """``conf/defaults.yaml`` (seed, trainer defaults, CSV logger, checkpointing), always applied first."""
    return [str(CONF_DIR / "defaults.yaml")]


def _packaged_configs(argv: list[str]) -> list[str]:
    """``--config conf/X.yaml`` -> the packaged ``conf/X.yaml`` when the working directory has no such file.

    The README's commands then run from any directory after a wheel install (no checkout needed).
    """
    out = []
    for i, token in enumerate(argv):
        key, sep, value = token.partition("=")
        previous = argv[i - 1] if i else ""
        path = value if sep and key in ("--config", "-c") else token if previous in ("--config", "-c") else None
        if path and path.startswith("conf/") and not Path(path).exists() and (CONF_DIR.parent / path).is_file():
            token = f"{key}={CONF_DIR.parent / path}" if sep else str(CONF_DIR.parent / path)
        out.append(token)
    return out


class LitEfficiencyCLI(LightningCLI):
    """LightningCLI with the project's defaults: subclass mode for model and data, ``conf/defaults.yaml``."""

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        defaults = {"default_config_files": default_config_files()}
        parser_kwargs = kwargs.pop("parser_kwargs", None) or {sub: dict(defaults) for sub in self.subcommands()}
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", _Parser)
        self._explicit_model_links = _explicit_model_links(sys.argv[1:] if args is None else args)
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        # Every task of the project builds its own optimizer and schedule (PoWER-BERT's search has its own parameter
        # group; the dynamic-GNN modules are built in setup()), so --optimizer/--lr_scheduler are not offered.
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """The trainer subcommands, then the pipelines, so that ``--help`` lists them all (``main`` runs a
        pipeline itself, with its own parser, before this one would parse it)."""
        super()._add_subcommands(parser, **kwargs)
        for name in PIPELINES:
            listed = LightningArgumentParser(description=f"see: lit-efficiency {name} --help")
            commands = "".join(f"; {p} {c} --help" for p, c in PIPELINE_COMMANDS if p == name)
            parser._subcommands_action.add_subcommand(
                name, listed, help=f"pipeline (see: lit-efficiency {name} --help{commands})"
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Values decided once, by the data module, and linked into the model (never typed twice).

        ``task`` (GLUE task or dynamic-graph task) and ``max_seq_len`` (PoWER-BERT's ``N``) are set on the data and
        copied to the model's argument of the same name when the model has one.
        """
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.{name}", apply_on="parse")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="checkpoints go to <trainer.default_root_dir>/<run_name>/checkpoints, where `--ckpt_path last` finds "
            "them again; default: the names of the --config files with a model or data section, joined by '+'",
        )

    def _config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_dir(self, root: str | Path) -> Path:
        """``<root>/<run_name>``: the stable folder of this run (same command, same folder)."""
        config = self._config()
        name = config.get("run_name")
        if not name:
            files = [str(f) for f in (config.get("config") or []) if str(f) not in default_config_files()]
            # The names of the files that say what is trained (a model or data section): a model overlay
            # (conf/dyn_gnn/model/tmgcn.yaml) makes its own run folder, a trainer or logger overlay does not.
            what = [f for f in files if _defines_model_or_data(f)] or files[:1]
            model_class = str(config.get("model.class_path", "model")).rsplit(".")[-1]
            name = "+".join(Path(f).stem for f in what) if what else model_class
        if not name or Path(name).name != name or name in (".", ".."):
            raise ConfigError(f"run_name: {name!r} must be a plain folder name (no path separators)")
        return Path(root).expanduser().absolute() / name

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, with verified checkpoints in the run folder, ``last.ckpt`` every epoch, per-epoch seeds."""
        trainer = super().instantiate_trainer(**kwargs)
        seed = self._config().get("seed_everything")
        attach_run_dir(trainer, self.run_dir(trainer.default_root_dir), None if seed is False else seed)
        use_watched_launcher(trainer.strategy)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """``fit`` holds the run folder's lock and refuses to start over a previous attempt without ``--ckpt_path``
        (global rank 0 only: the other ranks of a DDP run share its folder); a rank that dies ends the others with one
        line and the command that resumes (:func:`~lit_efficiency.core.faults.rank_failures_reported`)."""
        if subcommand != "fit":
            return super()._run_subcommand(subcommand)
        run_dir = self.run_dir(self.trainer.default_root_dir)
        with rank_failures_reported(self.trainer, self._argv, run_dir.name):
            self._fit(run_dir)

    def _fit(self, run_dir: Path) -> None:
        """``fit`` itself; global rank 0 first checks ``run_dir`` and holds its lock."""
        if self.trainer.global_rank != 0:
            return super()._run_subcommand("fit")
        folder = ensure_output_dir(run_dir, "run directory")
        last = folder / "checkpoints" / "last.ckpt"
        if last.exists() and self._config().get("ckpt_path") is None:
            raise ConfigError(
                f"{folder} holds a previous attempt ({last}): resume it with --ckpt_path last, or start a new run "
                "with another --run_name (nothing was changed)"
            )
        with OutputLock(folder):
            super()._run_subcommand("fit")

    def before_instantiate_classes(self) -> None:
        """Refuse what the link would otherwise hide: a model value that differs from the data's, or a model that
        takes a linked argument while the data module has none to give it (its value would vanish from the saved
        ``config.yaml``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        _check_values(config)
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

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, then describe the wandb runs (name, group, job type) and give them the
        whole resolved config (trainer, class paths, seed), not only the model and data arguments."""
        super().instantiate_classes()
        if not self.subcommand:
            return
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_check=True))[self.subcommand]
        describe_wandb_runs(self.trainer.loggers, config, job_type=self.subcommand)


def _check_values(config: Any) -> None:
    """Refuse values that would run but train nothing or the wrong way: non-positive learning rates and sizes
    (:data:`POSITIVE_ARGS`), ``trainer.max_epochs`` / ``trainer.max_steps`` 0 or below -1."""
    for section in ("data", "model"):  # data first: linked values are typed there
        init_args = config.get(f"{section}.init_args")
        for name in POSITIVE_ARGS:
            check_positive(f"{section}.init_args.{name}", init_args.get(name) if init_args is not None else None)
        for name in NON_NEGATIVE_ARGS:
            value = init_args.get(name) if init_args is not None else None
            check_at_least(f"{section}.init_args.{name}", value, 0, "0: linear head")
    check_limit("trainer.max_epochs", config.get("trainer.max_epochs"))
    check_limit("trainer.max_steps", config.get("trainer.max_steps"))


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


def _defines_model_or_data(path: str) -> bool:
    """Whether the YAML config file ``path`` has a ``model`` or ``data`` section (unreadable files: False)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and ("model" in data or "data" in data)


def _yaml_model_section(path: str) -> dict[str, Any]:
    """The ``model`` mapping of a YAML config file ({} when unreadable: the parser reports that itself).

    Raises:
        ConfigError: the file is not valid YAML (named here: the parser's own message does not name it).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError:
        return {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
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
    argv = _packaged_configs(list(sys.argv[1:] if args is None else args)) if not isinstance(args, dict) else None
    # Python hides DeprecationWarnings raised outside __main__; a config naming an old class path should say so.
    warnings.simplefilter("default", LitEfficiencyDeprecationWarning)
    quiet_libraries()
    try:
        if argv and tuple(argv[:2]) in PIPELINE_COMMANDS:
            module_name, func_name = PIPELINE_COMMANDS[(argv[0], argv[1])].split(":")
            getattr(importlib.import_module(module_name), func_name)(argv[2:])
        elif argv and argv[0] in PIPELINES:
            _run_pipeline(argv[0], argv[1:])
        elif argv is None:
            LitEfficiencyCLI(args=args)
        else:
            with warnings.catch_warnings():  # argv is sys.argv with packaged config paths: not a mistake
                warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended", UserWarning)
                LitEfficiencyCLI(args=argv)
    except Exception as err:  # a user error, possibly wrapped by jsonargparse while instantiating the classes
        user_error = find_user_error(err)
        if user_error is None:
            raise
        # One write: the ranks of a distributed run share stderr, and a separate newline could be interleaved.
        sys.stderr.write(f"lit-efficiency: error: {user_error}\n")
        sys.stderr.flush()
        sys.exit(2)
    finally:
        finish_wandb_run()
        _destroy_process_group()


if __name__ == "__main__":
    main()
