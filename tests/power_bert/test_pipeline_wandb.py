"""The power-bert pipeline on wandb: one run per stage, a report run with the report, PNG charts and artifacts."""

from pathlib import Path

import pytest

from lit_efficiency.cli import CONF_DIR, main
from tests.core.wandb_offline import read_offline_run


@pytest.mark.slow
def test_pipeline_logs_one_run_per_stage_and_a_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["power-bert", "--config", str(CONF_DIR / "power_bert/smoke.yaml"), "--output_dir", "out",
          "--trainer.logger", "wandb"])  # fmt: skip
    runs = {}
    for run_dir in Path("out").glob("**/wandb/offline-run-*"):
        run = read_offline_run(run_dir)
        runs[run.job_type] = run
    assert set(runs) == {"finetune", "search", "retrain", "report"}
    group = str((tmp_path / "out").absolute())
    for stage, run in runs.items():
        assert run.name == f"out-{stage}" and run.group == group
    assert any(key.startswith("train/loss") for key in runs["search"].history_keys)
    report = runs["report"]
    assert report.summary["task"] == "rte" and report.summary["speedup"] > 0
    assert report.config["search"]["mass_lambda"] == 0.01  # the pipeline config
    kinds = {kind: files for name, kind, files in report.artifacts}
    assert {"model.safetensors", "config.json", "retention.json"} <= set(kinds["model"])
    assert kinds["retention"] == ["retention.json"]
    assert "retention_per_layer.table.json" in kinds["run_table"]
    # The pipeline's own PNGs (retention bar chart, trade-off) as images, byte for byte: not a second drawing.
    assert {"plots/retention._type", "plots/tradeoff._type"} <= report.history_keys
    for name in ("retention", "tradeoff"):
        (logged,) = Path("out/wandb").glob(f"offline-run-*/files/media/images/plots/{name}_*.png")
        assert logged.read_bytes() == Path(f"out/{name}.png").read_bytes()
