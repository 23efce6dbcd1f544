"""``benchmarks/memory.py --add-gpu-check``: the GPU peak-memory record lands in memory.json; bad input refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


def _record(device_type: str = "cuda") -> dict:
    rows = [{"config": c, "steps": 2, "peak_allocated_mib": mib} for c, mib in (("resident", 40.0), ("streamed", 30.5))]
    return {"section": "peak_memory", "status": "ok", "label": {"device": "Test GPU", "device_type": device_type},
            "config": {"block_size": 4}, "records": rows}  # fmt: skip


def test_gpu_record_is_merged_and_cpu_rows_kept(tmp_path):
    out = tmp_path / "memory.json"
    out.write_text(json.dumps({"meta": {"device": "cpu"}, "records": [{"config": "resident", "train_peak_mb": 1.0}]}))
    record = tmp_path / "peak_memory.json"
    record.write_text(json.dumps(_record()))
    run = _run("--add-gpu-check", str(record), "--out", str(out))
    assert run.returncode == 0, run.stderr
    saved = json.loads(out.read_text())
    assert saved["records"] == [{"config": "resident", "train_peak_mb": 1.0}]
    device = saved["device_peak_memory"]
    assert device["label"]["device"] == "Test GPU"
    assert [r["peak_allocated_mib"] for r in device["records"]] == [40.0, 30.5]


def test_a_cpu_dry_run_record_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "memory.json"
    out.write_text('{"meta": {}, "records": []}')
    before = out.read_bytes()
    record = tmp_path / "peak_memory.json"
    dry = _record("cpu")
    for row in dry["records"]:
        del row["peak_allocated_mib"]
    record.write_text(json.dumps(dry))
    run = _run("--add-gpu-check", str(record), "--out", str(out))
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and str(record) in run.stderr
    assert out.read_bytes() == before
