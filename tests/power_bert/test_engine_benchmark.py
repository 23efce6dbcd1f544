"""benchmarks/power_bert_engine.py run one cell at a time: each run merges its cells into the JSON, keeps the others,
drops a task's cells measured at another retention, and records date, load and wall time per cell."""

import importlib.util
import json
import platform
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine():
    spec = importlib.util.spec_from_file_location("power_bert_engine", ROOT / "benchmarks" / "power_bert_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_timing(engine, monkeypatch):
    """Patched model loading and timing: each cell's record says which call made it (``call``)."""
    calls = []

    def time_setting(task, batch_size, examples, threads, args, models, tmp):
        calls.append((task, threads, batch_size))
        busy = task == "mrpc"
        return {"call": len(calls), "examples": examples, "vs_hf": {}, "wall_s": 1.0, "machine_busy": busy}

    monkeypatch.setattr(engine, "load_models", lambda: {})
    monkeypatch.setattr(engine, "time_setting", time_setting)
    return calls


@pytest.fixture
def reports(engine, monkeypatch, tmp_path):
    """GLUE reports of both kinds (not the committed ones, which reruns replace): SST-2 older, MRPC fair protocol."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "power_bert_sst2.json").write_text(json.dumps({"retention": [41, 34, 27, 20, 16, 3], "max_seq_len": 64}))
    fair = {"summary": {"retention": [63, 45, 34, 15, 4, 1]}, "seed1_report": {"max_seq_len": 128}}
    (results / "power_bert_mrpc.json").write_text(json.dumps(fair))
    monkeypatch.setattr(engine, "RESULTS", results)


def _tasks(path: Path) -> dict:
    return json.loads(path.read_text())["tasks"]


def test_cells_merge_into_one_file(engine, fake_timing, reports, tmp_path, capsys):
    out = tmp_path / "engine.json"
    engine.main(["--tasks", "sst2", "--threads", "1", "--quick", "--out", str(out)])
    sst2 = _tasks(out)["sst2"]
    assert {k for k in sst2 if k.startswith("threads_")} == {"threads_1_batch_16", "threads_1_batch_1"}
    assert sst2["retention"] == [41, 34, 27, 20, 16, 3] and sst2["retention_source"] == engine.OLDER
    assert sst2["threads_1_batch_1"]["examples"] == 4 and sst2["threads_1_batch_1"]["repeats"] == 2

    engine.main(["--tasks", "mrpc", "--threads", "1", "--batch-sizes", "128", "--out", str(out)])
    tasks = _tasks(out)
    assert tasks["sst2"] == sst2  # untouched
    assert tasks["mrpc"]["retention"] == [63, 45, 34, 15, 4, 1]  # the fair-protocol MRPC report's choice
    assert tasks["mrpc"]["retention_source"] == engine.FAIR and tasks["mrpc"]["max_seq_len"] == 128
    assert json.loads(out.read_text())["machine_busy"] is True  # the MRPC cell was busy

    engine.main(["--tasks", "sst2", "--threads", "1", "--batch-sizes", "1", "--out", str(out)])
    again = _tasks(out)
    assert again["sst2"]["threads_1_batch_1"]["call"] == 4  # replaced by the new run
    assert again["sst2"]["threads_1_batch_16"] == sst2["threads_1_batch_16"]  # kept
    assert again["mrpc"] == tasks["mrpc"]

    override = ["--retention", "sst2=9,8,7,6,5,4", "--out", str(out)]
    engine.main(["--tasks", "sst2", "--threads", "1", "--batch-sizes", "1", *override])
    changed = _tasks(out)["sst2"]
    assert {k for k in changed if k.startswith("threads_")} == {"threads_1_batch_1"}  # stale cells dropped
    assert changed["retention"] == [9, 8, 7, 6, 5, 4] and changed["retention_source"] == engine.OVERRIDE
    assert "dropping threads_1_batch_16" in capsys.readouterr().out

    engine.main(["--list", "--out", str(out)])
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed] == [["sst2", "threads_1_batch_1"], ["mrpc", "threads_1_batch_128"]]
    assert json.loads(out.read_text())["machine_busy"] is True


def test_retention_override_needs_its_own_out_file(engine, fake_timing, reports, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine.main(["--tasks", "sst2", "--retention", "sst2=9,8,7,6,5,4"])
    assert exit_info.value.code == 2 and "--out file of its own" in capsys.readouterr().err
    assert not fake_timing  # nothing measured, nothing written


def test_fresh_starts_over(engine, fake_timing, reports, tmp_path):
    out = tmp_path / "engine.json"
    engine.main(["--tasks", "mrpc", "--threads", "1", "--batch-sizes", "1", "--out", str(out)])
    engine.main(["--tasks", "sst2", "--threads", "1", "--batch-sizes", "1", "--out", str(out), "--fresh"])
    data = json.loads(out.read_text())
    assert list(data["tasks"]) == ["sst2"] and data["machine_busy"] is False


def test_real_cell_records_its_own_conditions(engine, tmp_path):
    """One real cell (eager rows only, 2 examples, 1 round): the record carries date, load, busy flag, wall time."""
    out = tmp_path / "engine.json"
    args = ["--tasks", "sst2", "--threads", "1", "--batch-sizes", "2", "--repeats", "1", "--warmup", "0"]
    engine.main([*args, "--compile-tasks", "--onnx-tasks", "--bucket", "0", "--out", str(out)])
    cell = _tasks(out)["sst2"]["threads_1_batch_2"]
    eager = {"ours_eager_static", "ours_eager_dynamic"}
    assert set(cell["ms"]) == {"hf_sdpa_static", "hf_sdpa_dynamic", "hf_packed_static", "hf_packed_dynamic", *eager}
    assert set(cell["vs_hf_packed"]) == eager  # eager against HF on the same packed linears
    assert cell["wall_s"] > 0 and cell["date"].startswith("20") and isinstance(cell["machine_busy"], bool)
    assert len(cell["load_average_1min_before_after"]) == 2 and cell["repeats"] == 1
    assert cell["vs_hf"]["ours_eager_static"]["speedup"] > 0
    # --allocator kept (the default) set glibc to keep freed memory before any candidate ran, and the cell says so
    assert ("mallopt" in cell["allocator"]) == (platform.libc_ver()[0] == "glibc")


def test_table_rows_follow_the_cells(engine, tmp_path, capsys):
    """``--table``: one row per cell in task order, "-" for a row not timed, "~" for a speedup within noise, "memory
    kept" where glibc kept freed memory."""
    row = {"speedup": 2.5, "pct_of_ideal": 80.0, "within_noise": False}
    cell = {"threads": 1, "load_average_1min_before_after": [1.0, 2.0], "date": "2026-11-28T10:00:00+00:00"}
    report = {"tasks": {
        "sst2": {"retention": [3, 2], "max_seq_len": 64, "retention_source": engine.OLDER,
                 "threads_1_batch_1": {**cell, "batch_size": 1, "vs_hf": {"ours_eager_static": row},
                                       "allocator": {"mallopt": {"mmap_threshold": 1 << 25}}}},
        "cola": {"retention": [4, 1], "max_seq_len": 64, "retention_source": engine.FAIR,
                 "threads_1_batch_128": {**cell, "batch_size": 128,
                                         "vs_hf": {"ours_eager_dynamic": {**row, "within_noise": True}}}},
    }}  # fmt: skip
    out = tmp_path / "engine.json"
    out.write_text(json.dumps(report))
    engine.main(["--table", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|") == 3 + len(engine.TABLE_COLUMNS) + 1
    assert lines[2].startswith("| cola (64), 4,1 | 1, 128 | 2026-11-28, 1.0 / 2.0 | - | ~2.50x (80%) | - |")
    kept = "| sst2 (64), 3,2 (older run) | 1, 1 | 2026-11-28, 1.0 / 2.0, memory kept | 2.50x (80%) | - |"
    assert lines[3].startswith(kept)


def test_readme_engine_table_is_printed_from_the_committed_json(engine, capsys):
    engine.main(["--table"])
    rows = capsys.readouterr().out.splitlines()
    readme = (ROOT / "README.md").read_text()
    missing = [row.split(" | ")[0] for row in rows if row not in readme]
    assert not missing, f"README engine table out of date (python benchmarks/power_bert_engine.py --table): {missing}"
