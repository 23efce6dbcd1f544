"""benchmarks/gpu_check.py on a CPU: the dry run writes every section with a valid status and the run's label; the
real run refuses without CUDA. Both run the script as the GPU machine does: a subprocess with the tree on PYTHONPATH."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("pytest_gpu", "power_bert", "diff_transfer", "peak_memory", "nccl_smoke", "sparse_precision")
#: Parts that need a GPU: skipped, with a reason, in a dry run.
GPU_ONLY = ("pytest_gpu", "peak_memory", "nccl_smoke")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        CUDA_VISIBLE_DEVICES="",  # CPU behaviour even on a GPU machine (nested pytest included)
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
    )
    return env


@pytest.mark.slow
def test_dry_run_records_every_section(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=420,  # the script caps itself at 345 s
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert tuple(summary["sections"]) == SECTIONS
    for name in SECTIONS:
        rec = json.loads((tmp_path / f"{name}.json").read_text())
        assert rec["section"] == name
        assert rec["status"] in ("ok", "skipped"), rec.get("error")
        if rec["status"] == "skipped":
            assert rec["reason"]
        label = rec["label"]
        assert label["dry_run"] is True and label["device_type"] == "cpu" and label["device"]
        assert label["torch"] == torch.__version__ and "cuda" in label
        datetime.datetime.fromisoformat(label["date"])
    for name in GPU_ONLY:
        assert summary["sections"][name]["status"] == "skipped"
    bert = json.loads((tmp_path / "power_bert.json").read_text())
    assert {"cuda_graph", "compile"} <= set(bert["skipped"])
    assert {r["candidate"] for r in bert["results"]} == {"hf_sdpa", "none_eager", "r80_eager", "r110_eager"}
    transfer = json.loads((tmp_path / "diff_transfer.json").read_text())
    assert transfer["exact"] and transfer["encoder_agrees"] and transfer["bytes"]["ratio"] > 1
    pytest_rec = json.loads((tmp_path / "pytest_gpu.json").read_text())
    assert pytest_rec["counts"]["skipped"] >= 10 and not pytest_rec["counts"]["failed"]
    for name in SECTIONS:
        assert name in proc.stdout  # the summary table
    assert (ROOT / "benchmarks" / "results" / "gpu") not in tmp_path.parents


def test_real_run_refuses_without_cuda(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "out").exists()
