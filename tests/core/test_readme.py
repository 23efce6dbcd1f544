"""Every fenced shell command and Python snippet of README.md runs.

The blocks are discovered, not listed: a section added to the README is covered without touching this file. Shell
commands run with small overrides (:data:`OVERRIDES`: one training step, a few examples, CPU), each block in a fresh
working directory that sees the checkout's ``conf/``; Python snippets run verbatim in a directory prepared by the
commands of :data:`SNIPPET_SETUP` (the smoke pipeline's output). A command this test cannot run here (a second
node, SLURM, the network, an install) must match :data:`NOT_RUN`, with the reason; anything else fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: Commands not run by this test: regex (searched in the command) -> why.
NOT_RUN: dict[str, str] = {
    r"^make (demo|install)\b": "creates .venv and installs (pip); the demo's configs are parsed by the config tests",
    r"^make test\b": "the test suite itself",
    r"^make gpu-check\b": "tests/core/test_gpu_check.py runs its dry run",
    r"^pytest\b": "the test suite itself",
    r"^python -m venv\b": "creates an environment",
    r"^pip install\b": "needs the network",
    r"^conda\b": "needs the network",
    r"^wandb sync\b": "needs the network and an API key",
    r"^torchrun .*--nnodes=[2-9]": "needs two nodes",
    r"\bNODE_RANK=\d": "one half of a two-node run (the other half runs on another machine)",
    r"^srun\b": "needs a SLURM allocation",
    r"^python benchmarks/": "a measurement (minutes to hours) rewriting benchmarks/results",
}

#: Per-command overrides: regex (searched in the command) -> arguments appended, in this order, when it matches.
OVERRIDES: list[tuple[str, list[str]]] = [
    # Every trainer run: one short CPU epoch.
    (
        r"^lit-efficiency (fit|validate|test|predict)\b",
        [
            "--trainer.max_epochs=1",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.limit_predict_batches=2",
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--trainer.enable_progress_bar=false",
        ],
    ),  # fmt: skip
    # GLUE stages: a few short examples.
    (
        r"conf/power_bert/stages/",
        ["--data.init_args.train_limit=32", "--data.init_args.eval_limit=16", "--data.init_args.max_seq_len=32"],
    ),
    # NCCL on every GPU of the node -> 2 gloo processes. (Not conf/trainer/ddp_cpu.yaml: its `spawn` start method
    # fails on this config's modules, "cannot pickle '_thread.lock' object"; the default popen launcher works.)
    (
        r"conf/dyn_gnn/distributed_uci_messages\.yaml",
        ["--trainer.devices=2", "--trainer.num_nodes=1", "--trainer.strategy.init_args.process_group_backend=gloo"],
    ),
    # The pipeline: the smoke config (tiny random BERT, 200 RTE examples) on top, on CPU.
    (
        r"^lit-efficiency power-bert (?!--help|export)",
        ["--config", "conf/power_bert/smoke.yaml", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"],
    ),
]

#: Placeholders a reader fills in -> what this test uses.
PLACEHOLDERS: dict[str, str] = {"<task>.yaml": "conf/dyn_gnn/smoke.yaml"}

#: Commands that prepare a snippet's working directory: regex (searched in the snippet) -> commands.
SNIPPET_SETUP: dict[str, list[str]] = {
    r"outputs/rte/model": ["lit-efficiency power-bert --config conf/power_bert/smoke.yaml --output_dir outputs/rte"],
}

#: Commands that end before training (no slow mark needed for a block made only of these).
QUICK = re.compile(r"--help\b|--print_config\b")

#: Top-level folders of the checkout that README commands read (linked into each working directory).
LINKED = ("conf", "benchmarks", "docs")


@dataclass
class Block:
    """One fenced block: its language, first line number and text."""

    lang: str
    line: int
    code: str


def fenced_blocks(text: str) -> list[Block]:
    """Every ``` fenced block of a Markdown text (the fence's info string is the language)."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip().lower(), number, []
            else:
                blocks.append(Block(lang, start, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(shlex.join(tokens))
    return commands


def _blocks(*langs: str) -> list[Block]:
    return [b for b in fenced_blocks(README.read_text()) if b.lang in langs]


SHELL = _blocks("bash", "sh", "shell")
PYTHON = _blocks("python", "py")


def _not_run_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def _is_ours(tokens: list[str]) -> bool:
    return tokens[:1] == ["lit-efficiency"] or tokens[:3] == ["python", "-m", "lit_efficiency"]


def _split_env(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value ... program args`` -> (environment, argv)."""
    tokens = shlex.split(command)
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    return env, tokens


def prepared(command: str) -> list[str] | None:
    """The argv this test runs for a README command (``lit-efficiency ...``), or None when it is not run."""
    if _not_run_reason(command) is not None:
        return None
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    env, argv = _split_env(command)
    assert not env, f"{command}: environment prefixes are only expected on commands listed in NOT_RUN"
    assert _is_ours(argv), f"README command not run by this test and not in NOT_RUN (add a reason): {command}"
    argv = ["lit-efficiency", *argv[3:]] if argv[0] == "python" else argv
    normalized = shlex.join(argv)
    if not QUICK.search(normalized):
        for pattern, extra in OVERRIDES:
            if re.search(pattern, normalized):
                argv += extra
    return argv


def _is_slow(block: Block) -> bool:
    try:
        return any((argv := prepared(c)) and not QUICK.search(shlex.join(argv)) for c in shell_commands(block.code))
    except AssertionError:  # a command this test cannot run: reported by the tests, not as a collection error
        return False


def _params(blocks: list[Block], slow) -> list:
    return [pytest.param(b, id=f"line{b.line}", marks=[pytest.mark.slow] if slow(b) else []) for b in blocks]


def _workdir(path: Path) -> Path:
    for name in LINKED:
        (path / name).symlink_to(ROOT / name, target_is_directory=True)
    return path


def _configs(argv: list[str]) -> tuple[str, ...]:
    return tuple(a for i, a in enumerate(argv) if i and argv[i - 1] in ("--config", "-c"))


def _checkpoint_for(argv: list[str], configs: tuple[str, ...], fits: dict[tuple[str, ...], Path]) -> list[str]:
    """Replace a placeholder ``--ckpt_path .../<...>.ckpt`` by the checkpoint of an earlier fit of ``configs``."""
    out = []
    for token in argv:
        if "<" in token and token.endswith(".ckpt"):
            assert fits.get(configs), f"{shlex.join(argv)}: no earlier fit of {configs} in this block"
            token = str(sorted((fits[configs] / "checkpoints").glob("*.ckpt"))[0])
        out.append(token)
    return out


def run_command(argv: list[str], cwd: Path) -> None:
    """``lit-efficiency ARGS`` in a subprocess (DDP launchers re-run their own command line), checked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "lit_efficiency", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _run_in_process(argv: list[str]) -> None:
    from lit_efficiency.cli import main

    try:
        main(argv[1:])
    except SystemExit as exc:
        assert exc.code in (0, None), f"{shlex.join(argv)} exited with {exc.code}"


def _needs_subprocess(argv: list[str]) -> bool:
    """DDP runs: Lightning's launcher starts the other ranks from ``sys.argv`` (pytest's, in process)."""
    return any("distributed" in a or "ddp" in a for a in argv)


def _run(argv: list[str], cwd: Path) -> None:
    if _needs_subprocess(argv):
        run_command(argv, cwd)
    else:
        _run_in_process(argv)


def test_readme_has_shell_and_python_blocks():
    assert len(SHELL) >= 5 and len(PYTHON) >= 1


def test_every_readme_command_is_run_or_explained():
    """A command is either run (with its overrides) or listed in NOT_RUN with a reason; nothing falls through."""
    commands = [c for b in SHELL for c in shell_commands(b.code)]
    run = [c for c in commands if prepared(c) is not None]
    assert run and all(_not_run_reason(c) or prepared(c) for c in commands)


@pytest.mark.parametrize("block", _params(SHELL, _is_slow))
def test_readme_shell_block_runs(block, tmp_path, monkeypatch):
    """The block's commands, in order, in one fresh working directory (later commands see earlier outputs)."""
    monkeypatch.chdir(_workdir(tmp_path))
    fits: dict[tuple[str, ...], Path] = {}  # the configs of a fit -> its run folder (for a later --ckpt_path)
    for command in shell_commands(block.code):
        argv = prepared(command)
        if argv is None:
            continue
        configs = _configs(shlex.split(command))
        argv = _checkpoint_for(argv, configs, fits)
        _run(argv, tmp_path)
        if argv[1] == "fit" and configs:  # checkpoints in runs/<run_name>/checkpoints (default: the configs' names)
            what = [c for c in configs if re.search(r"conf/(dyn_gnn|power_bert)/", c)] or configs[:1]
            name = argv[argv.index("--run_name") + 1] if "--run_name" in argv else "+".join(Path(c).stem for c in what)
            fits.setdefault(configs, tmp_path / "runs" / name)


@pytest.mark.slow
@pytest.mark.parametrize("block", [pytest.param(b, id=f"line{b.line}") for b in PYTHON])
def test_readme_python_snippet_runs_verbatim(block, tmp_path, monkeypatch):
    monkeypatch.chdir(_workdir(tmp_path))
    for pattern, commands in SNIPPET_SETUP.items():
        if re.search(pattern, block.code):
            for command in commands:
                _run(shlex.split(command), tmp_path)
    exec(compile(block.code, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})


def test_command_parsing_joins_continuations_and_drops_comments():
    code = "# a comment\nlit-efficiency fit --config a.yaml \\\n    --trainer.max_epochs=5   # trailing\n\nmake demo\n"
    assert shell_commands(code) == ["lit-efficiency fit --config a.yaml --trainer.max_epochs=5", "make demo"]
    assert prepared("make demo") is None
    assert prepared("lit-efficiency fit --config a.yaml")[-1] == "--trainer.enable_progress_bar=false"
    assert prepared("lit-efficiency fit --config a.yaml --print_config") == [
        "lit-efficiency", "fit", "--config", "a.yaml", "--print_config"
    ]  # fmt: skip
    with pytest.raises(AssertionError, match="not in NOT_RUN"):
        prepared("curl https://example.org")
