"""The one CLI: help, config composition, every YAML in conf/, logging, error reporting."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_efficiency.cli import CONF_DIR, PIPELINES, main

TINY = {
    "model": {"class_path": "tests.helpers.TinyRegressor"},
    "data": {"class_path": "tests.helpers.TinyRegressionData"},
}


def _write(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_help_lists_subcommands(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for sub in ("fit", "validate", "test", "predict", *PIPELINES):
        assert sub in out


def test_cli_fit_help(capsys):
    code, out, _ = _run(["fit", "--help"], capsys)
    assert code == 0
    assert "--model" in out and "--trainer.max_epochs" in out and "--print_config" in out


def test_python_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "lit_efficiency", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--trainer.max_epochs" in proc.stdout


def test_cli_defaults_are_applied(capsys, tmp_path):
    base = _write(tmp_path / "tiny.yaml", TINY)
    code, out, _ = _run(["fit", "--config", str(base), "--print_config"], capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    defaults = yaml.safe_load((CONF_DIR / "defaults.yaml").read_text())
    assert cfg["seed_everything"] == defaults["seed_everything"]
    assert cfg["trainer"]["accelerator"] == "auto"
    assert any("ModelCheckpoint" in cb["class_path"] for cb in cfg["trainer"]["callbacks"])


def test_cli_later_config_wins(capsys, tmp_path):
    base = _write(tmp_path / "tiny.yaml", TINY)
    first = _write(tmp_path / "a.yaml", {"trainer": {"max_epochs": 7}, "model": {"init_args": {"lr": 0.5}}})
    second = _write(tmp_path / "b.yaml", {"trainer": {"max_epochs": 2}})
    args = ["fit", "--config", str(base), "--config", str(first), "--config", str(second), "--print_config"]
    code, out, _ = _run(args, capsys)
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["max_epochs"] == 2
    assert cfg["model"]["init_args"]["lr"] == 0.5


def _flatten(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict) and "class_path" not in value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _is_pipeline_config(name: str) -> bool:
    """power-bert pipeline configs (conf/power_bert/*.yaml) are not LightningCLI configs; their own tests parse them."""
    return name.startswith("power_bert/") and not name.startswith("power_bert/stages/")


ALL_CONFIGS = sorted(
    name
    for name in (p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml"))
    if not _is_pipeline_config(name)
)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_parses(name, capsys, tmp_path):
    """Every YAML in conf/ resolves with --print_config; overlays are checked on top of a tiny model."""
    path = CONF_DIR / name
    own = yaml.safe_load(path.read_text()) or {}
    args = ["fit"]
    if "model" not in own:
        args += ["--config", str(_write(tmp_path / "tiny.yaml", TINY))]
    code, out, err = _run([*args, "--config", str(path), "--print_config"], capsys)
    assert code == 0, err
    resolved = dict(_flatten(yaml.safe_load(out)))
    for key, value in _flatten(own):
        if key.startswith(("model", "data")) and not isinstance(value, dict):
            continue  # class_path/init_args already checked below
        if isinstance(value, (str, int, float, bool)):
            assert resolved.get(key) == value, f"{name}: {key}"


def test_cli_fit_writes_csv_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = _write(tmp_path / "tiny.yaml", TINY)
    main(["fit", "--config", str(base), "--config", str(CONF_DIR / "trainer/cpu.yaml"), "--trainer.max_epochs=3"])
    metrics = list((tmp_path / "runs/csv").glob("version_*/metrics.csv"))
    assert len(metrics) == 1
    rows = list(csv.DictReader(metrics[0].open()))
    losses = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert list((tmp_path / "runs/csv").glob("version_*/config.yaml"))
    assert (tmp_path / "runs/tiny/checkpoints/last.ckpt").is_file()  # the stable run folder (run_name: tiny)
    assert (tmp_path / "runs/tiny/checkpoints/last.ckpt.sha256").is_file()


def test_cli_wandb_goes_offline_without_api_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    base = _write(tmp_path / "tiny.yaml", TINY)
    args = ["fit", "--config", str(base), "--config", str(CONF_DIR / "logger/wandb.yaml"), "--trainer.max_epochs=1"]
    main([*args, "--trainer.accelerator=cpu"])
    assert list((tmp_path / "runs/wandb").glob("offline-run-*")), "wandb did not write an offline run"
    assert list((tmp_path / "runs/csv").glob("version_*/metrics.csv")), "CSV metrics must always be written"


def test_cli_missing_file_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = _write(tmp_path / "tiny.yaml", TINY)
    missing = tmp_path / "nope.csv"
    code, _, err = _run(["fit", "--config", str(base), f"--data.init_args.data_file={missing}"], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("lit-efficiency: error:")]
    assert len(lines) == 1 and str(missing) in lines[0] and "LIT_EFFICIENCY_DATA" in lines[0]


def test_cli_bad_config_field_exits_nonzero(tmp_path, capsys):
    base = _write(tmp_path / "tiny.yaml", TINY)
    code, _, err = _run(["fit", "--config", str(base), "--trainer.max_epochs=abc"], capsys)
    assert code != 0
    assert "max_epochs" in err


def test_cli_help_lists_the_pipelines_as_subcommands(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    assert "{fit,validate,test,predict," + ",".join(PIPELINES) + "}" in out


def test_optimizer_flags_are_not_offered(capsys, tmp_path):
    """Every task builds its own optimizer: --optimizer/--lr_scheduler are neither listed nor accepted."""
    code, out, _ = _run(["fit", "--help"], capsys)
    assert code == 0 and "--optimizer" not in out and "--lr_scheduler" not in out
    base = _write(tmp_path / "tiny.yaml", TINY)
    code, _, err = _run(["fit", "--config", str(base), "--optimizer=Adam", "--print_config"], capsys)
    assert code != 0 and "optimizer" in err


def test_power_bert_trainer_section_is_the_documented_subset(capsys):
    """`power-bert` takes its own configs (conf/power_bert/<task>.yaml) and the trainer fields the README lists;
    another Trainer argument is refused by name (run the stages with `fit` for those)."""
    code, out, _ = _run(["power-bert", "--help"], capsys)
    assert code == 0
    for field in ("accelerator", "devices", "precision", "logger", "enable_progress_bar", "val_check_interval"):
        assert f"--trainer.{field}" in out
    code, _, err = _run(
        ["power-bert", "--output_dir", "x", "--task", "rte", "--trainer.gradient_clip_val", "1"], capsys
    )
    assert code != 0 and "gradient_clip_val" in err


def test_no_lightning_tips_or_library_internal_warnings(tmp_path):
    """A plain fit prints neither Lightning's advertisements nor warnings about library internals."""
    from lit_efficiency.core.quiet import INTERNAL_WARNINGS, TIP_PREFIX

    config = CONF_DIR / "dyn_gnn" / "smoke.yaml"  # sparse CSR adjacencies: torch's beta warning without the filter
    proc = subprocess.run(
        [sys.executable, "-m", "lit_efficiency", "fit", "--config", str(config), "--trainer.max_epochs=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert TIP_PREFIX not in output and "Trainer.fit` stopped" in output
    for message in INTERNAL_WARNINGS:
        assert not re.search(message, output), message
