"""benchmarks/plots.py turns the committed benchmark JSON into PNGs."""

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plots_are_made_from_the_committed_json(tmp_path):
    for name in ("snapshot_transfer.json", "scale.json", "comm_volume.json"):
        shutil.copy(ROOT / "benchmarks" / "results" / name, tmp_path / name)
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    written = plots.main(["--results", str(tmp_path)])
    for name in ("transfer_bytes.png", "scale_breakdown.png", "comm_volume.png"):
        path = tmp_path / name
        assert path in written and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert (ROOT / "benchmarks" / "results" / name).is_file(), f"{name} is not committed (run benchmarks/plots.py)"


def test_power_bert_plots_come_from_the_task_json_only(tmp_path):
    """A side experiment (another file of the same task) must not overwrite the committed run's figures."""
    for name in ("power_bert_cola.json", "power_bert_cola_grid_low.json"):
        shutil.copy(ROOT / "benchmarks" / "results" / name, tmp_path / name)
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    written = plots.power_bert_plots(tmp_path)
    assert written == [tmp_path / "power_bert_cola_tradeoff.png", tmp_path / "power_bert_cola_retention.png"]
