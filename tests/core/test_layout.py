"""The package layout's invariants (docs/architecture.md): pure-torch model files, import directions, old paths."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lit_efficiency"

#: Files usable from any PyTorch program: no Lightning, no wandb.
PURE_TORCH = [
    "power_bert/bert.py",
    "power_bert/model.py",
    "power_bert/retention.py",
    "dyn_gnn/graph.py",
    "dyn_gnn/adjacency.py",
    "dyn_gnn/codec.py",
    "dyn_gnn/feature_codec.py",
    "dyn_gnn/nn.py",
]


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` names anywhere in the file (function bodies included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("relpath", PURE_TORCH)
def test_pure_torch_files_import_no_lightning_or_wandb(relpath):
    path = PACKAGE / relpath
    assert path.is_file(), f"{relpath} is listed as pure torch but does not exist"
    banned = {m for m in _imported_modules(path) if _top(m) in {"lightning", "pytorch_lightning", "wandb"}}
    assert banned == set(), f"{relpath} imports {sorted(banned)}"


def test_pure_torch_files_stay_pure_transitively():
    """Importing all of them (and what they import from the package) loads neither lightning nor wandb."""
    modules = ", ".join("lit_efficiency." + f.removesuffix(".py").replace("/", ".") for f in PURE_TORCH)
    heavy = ("lightning", "pytorch_lightning", "wandb")
    code = f"import sys, {modules}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


#: The deprecated aliases at the old paths and the CLI: no module of the package may import them.
OLD_OR_TOP = tuple(
    f"lit_efficiency.{name}"
    for name in ("models", "data", "tasks", "distributed", "callbacks", "pipelines", "utils", "errors", "loggers",
                 "metrics", "cli")
)  # fmt: skip


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [("core", ("lit_efficiency.power_bert", "lit_efficiency.dyn_gnn", *OLD_OR_TOP)),
     ("power_bert", ("lit_efficiency.dyn_gnn", *OLD_OR_TOP)),
     ("dyn_gnn", ("lit_efficiency.power_bert", *OLD_OR_TOP))],
)  # fmt: skip
def test_no_upward_or_sideways_imports(folder, forbidden):
    """core imports neither system; neither system imports the other; nothing imports the old aliases or the CLI."""
    offenders = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        bad = sorted(m for m in _imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_old_class_paths_still_run_with_a_deprecation_warning(tmp_path):
    """A config written before the restructure (old class paths) still trains, and says where the classes moved."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "lit_efficiency.tasks.dyn_gnn.DynGNNTask",
            "init_args": {"hidden_dim": 8, "out_dim": 8, "num_layers": 1, "head_hidden_dim": 8},
        },
        "data": {
            "class_path": "lit_efficiency.data.snapshot_datamodule.SnapshotDataModule",
            "init_args": {"num_nodes": 30, "num_snapshots": 6, "edges_per_snapshot": 60, "num_negatives": 2},
        },
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [{"class_path": "lit_efficiency.callbacks.profilers.TransferProfiler"}],
        },
    }
    path = tmp_path / "old_config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "lit_efficiency", "fit", "--config", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for old, new in [
        ("lit_efficiency.tasks.dyn_gnn", "lit_efficiency.dyn_gnn.task"),
        ("lit_efficiency.data.snapshot_datamodule", "lit_efficiency.dyn_gnn.datamodule"),
        ("lit_efficiency.callbacks.profilers", "lit_efficiency.dyn_gnn.profilers"),
    ]:
        assert f"{old} moved to {new}" in proc.stderr, proc.stderr[-2000:]
    assert "LitEfficiencyDeprecationWarning" in proc.stderr


def test_old_import_paths_are_the_new_objects():
    import warnings

    from lit_efficiency.core.deprecation import LitEfficiencyDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LitEfficiencyDeprecationWarning)
        from lit_efficiency.models.power_bert import PowerBertEncoder as Old
        from lit_efficiency.utils.paths import resolve_data_root as old_resolve
    from lit_efficiency.core.paths import resolve_data_root
    from lit_efficiency.power_bert.model import PowerBertEncoder

    assert Old is PowerBertEncoder and old_resolve is resolve_data_root


def _expand_braces(path: str) -> list[str]:
    """``conf/trainer/{cpu,gpu}.yaml`` -> ``[conf/trainer/cpu.yaml, conf/trainer/gpu.yaml]`` (one brace group)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [path[: match.start()] + choice + path[match.end() :] for choice in match.group(1).split(",")]


def test_every_repository_path_named_in_the_readme_exists():
    """Paths the README and docs/ give a reader (configs, scripts, results, modules, folders) exist in this layout.

    Files with a known suffix, brace lists (``conf/logger/{csv,wandb}.yaml``) and folders written with a trailing
    slash (``benchmarks/results/gpu/``) are checked; placeholders (``<task>``) and globs are not paths.
    """
    roots = "conf|benchmarks|docs|lit_efficiency|tests"
    files = re.compile(rf"(?<![\w/.])((?:{roots})/[\w./{{}},-]*[\w}}]\.(?:yaml|py|md|json|png))")
    folders = re.compile(rf"(?<![\w/.])((?:{roots})/(?:[\w.-]+/)*)(?![\w<*{{])")
    missing = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        named = {p for found in files.findall(text) for p in _expand_braces(found)} | set(folders.findall(text))
        for path in sorted(named):
            if "*" not in path and "<" not in path and not (ROOT / path).exists() and not (doc.parent / path).exists():
                missing.setdefault(doc.name, []).append(path)
    assert missing == {}


def test_brace_lists_expand():
    assert _expand_braces("conf/logger/{csv,wandb}.yaml") == ["conf/logger/csv.yaml", "conf/logger/wandb.yaml"]
    assert _expand_braces("conf/defaults.yaml") == ["conf/defaults.yaml"]
