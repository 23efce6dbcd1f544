"""benchmarks/power_bert_glue.py at toy size (tiny random BERT, 160 examples, 2 seeds): the JSON it writes, and a
rerun after an interruption reuses finished seeds (not re-timed) and redoes only what is missing."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "power_bert_glue.py"), "--tasks", "rte", "--plan", "toy", *extra]
    cmd += ["--out-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=True)


@pytest.mark.slow
def test_toy_protocol_json_and_resume(tmp_path):
    _bench(tmp_path, "--train-threads", "2")
    result = json.loads((tmp_path / "results" / "power_bert_rte.json").read_text())
    assert result["protocol"]["train_threads"] == 2  # training on both cores, timing on one
    assert result["protocol"]["timing_threads"] == result["seed1_report"]["threads"] == 1
    summary = result["summary"]
    assert len(summary["baseline"]["values"]) == len(summary["power_bert"]["values"]) == 2  # two seeds
    assert summary["chosen"] in {c["name"] for c in result["seed1_report"]["candidates"]}
    assert set(result["targets"]) >= {"metric_within_1_point", "speedup_static_vs_paper"}
    assert [run["mass_lambda"] for run in result["runs"]] == pytest.approx([summary["mass_lambda"]] * 2)
    for seed, run in enumerate(result["runs"], start=1):  # what the pipeline's guard warned of is flagged
        guard_said = any("constant predictor" in w or "mass < 1" in w for w in run["warnings"])
        assert f"seed{seed}" in summary["seeds_collapsed"] or not guard_said
    assert result["targets"]["no_seed_collapsed"]["met"] == (not summary["seeds_collapsed"])
    walls = result["wall_s"]
    assert walls["seed1"] > 0 and walls["seed2"] > 0
    assert walls["total"] == pytest.approx(walls["seed1"] + walls["seed2"])
    for name in result["seed1_report"]["plots"]:
        assert (tmp_path / "results" / f"power_bert_rte_{name}").is_file()
    seed1 = tmp_path / "runs" / "toy" / "rte" / "seed1" / "report.json"
    seed2 = tmp_path / "runs" / "toy" / "rte" / "seed2" / "report.json"
    seed1_before = seed1.read_bytes()
    seed2.unlink()  # as if the run had been killed after seed 2's stages, before its report

    log = _bench(tmp_path).stdout
    assert "rte seed 1:" in log and "reused" in log
    assert seed1.read_bytes() == seed1_before  # not re-timed
    assert "retrain: already done" in log and seed2.is_file()  # seed 2's stages reused, its report rewritten
    again = json.loads((tmp_path / "results" / "power_bert_rte.json").read_text())
    assert again["summary"]["power_bert"]["values"] == summary["power_bert"]["values"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_collapse_flag_looks_at_the_dev_split_too():
    """RTE seed 1 shipped a model at 61.8 held-out (constant 52.2) that scores the dev majority (52.7): flagged."""
    collapsed = _script("power_bert_glue")._collapsed
    report = {
        "budget": 1.0,
        "masses": [40.0, 30.0, 20.0, 10.0, 5.0, 1.5],
        "heldout": {"power_bert": 61.8, "constant_predictor": 52.2, "baseline": 60.6},
        "power_bert_metric": 52.7,
        "fair_baseline": {"metric": 55.6},
    }
    assert collapsed(report, dev_constant=52.7)
    assert not collapsed({**report, "power_bert_metric": 56.0}, dev_constant=52.7)
    held_collapse = {**report, "heldout": {**report["heldout"], "power_bert": 52.5}, "power_bert_metric": 56.0}
    assert collapsed(held_collapse, dev_constant=52.7)  # the pipeline's own (held-out) test still counts
    thin = {**report, "masses": [40.0, 30.0, 20.0, 10.0, 5.0, 0.4], "power_bert_metric": 53.9}
    assert collapsed(thin, dev_constant=52.7)  # a mass below 1 and 1.7 points lost on dev


def test_a_finished_seed_is_reused_only_at_seed_1s_lambda(tmp_path):
    """Seeds 2 and 3 train at seed 1's LAMBDA: a report from another LAMBDA is refused, not silently averaged in."""
    glue = _script("power_bert_glue")
    (tmp_path / "report.json").write_text(json.dumps({"mass_lambda": 0.001, "power_bert_metric": 55.0}))
    plan = glue.PLANS["toy"]["rte"]
    assert glue._run("rte", plan, 2, tmp_path, 1, mass_lambda=0.001)["power_bert_metric"] == 55.0
    with pytest.raises(SystemExit, match=r"trained at LAMBDA 0.001, but seed 1 now chose 0.003; delete .* to retrain"):
        glue._run("rte", plan, 2, tmp_path, 1, mass_lambda=0.003)


def test_a_finished_seed_1_is_reused_only_for_its_own_grid(tmp_path):
    """Seed 1's report from another LAMBDA grid (a side experiment in the same --out-dir) is refused."""
    glue = _script("power_bert_glue")
    report = {"mass_lambda": 0.003, "candidates": [{"lambda_multiplier": m} for m in (0.3, 1.0, 3.0)]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    plan = glue.PLANS["toy"]["rte"]
    assert glue._run("rte", plan, 1, tmp_path, 1, budget=1.0, lambda_grid=[0.3, 1.0, 3.0]) == report
    with pytest.raises(SystemExit, match=r"searched the LAMBDA grid \[0.3, 1.0, 3.0\], not \[0.5\]"):
        glue._run("rte", plan, 1, tmp_path, 1, budget=1.0, lambda_grid=[0.5])


def test_a_side_experiment_cannot_write_into_the_committed_results():
    """--grid / --seeds with the full plan and the default results folder: one line, exit 2, nothing written."""
    results = ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("power_bert_*.json")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "power_bert_glue.py"), "--tasks", "stsb", "--grid", "0.5"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("give it its own --results-dir (and --out-dir)")
    assert before == {p.name: p.stat().st_mtime_ns for p in results.glob("power_bert_*.json")}


def test_readme_glue_table_is_printed_from_the_committed_json():
    module = _script("power_bert_table")
    rows = [row for row in module.table().splitlines() if row.startswith("| ")]
    assert len(rows) >= 3  # header, separator, at least one task
    readme = (ROOT / "README.md").read_text()
    missing = [row.split(" | ")[0] for row in rows if row not in readme]
    assert not missing, f"README table out of date (python benchmarks/power_bert_table.py): {missing}"
