"""Print the README table of ``benchmarks/results/power_bert_<task>.json`` beside the paper's numbers.

Files written by the fair protocol of ``benchmarks/power_bert_glue.py`` give one row each; files of the earlier,
unfair protocol (no ``summary``: baseline under-trained, selection on dev, one seed) are listed as superseded.

Usage: ``python benchmarks/power_bert_table.py [--results-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("cola", "rte", "mrpc", "sst2", "stsb")
# Published figures for BERTs of about this size (all-MiniLM-L6-v2: 6 layers, hidden 384, 22M parameters):
# BERT-Small (4 layers, hidden 512) / BERT-Mini (4 layers, hidden 256), GLUE *test* set, 4 epochs with tuned
# batch size and learning rate (Turc et al. 2019, "Well-Read Students Learn Better", table in the
# google/bert_uncased_L-4_H-512_A-8 model card). MRPC is F1, STS-B Spearman, CoLA Matthews correlation.
SMALL_BERTS_GLUE_TEST = {
    "cola": (27.8, 0.0),
    "rte": (61.8, 57.9),
    "mrpc": (83.4, 81.1),
    "sst2": (89.7, 85.9),
    "stsb": (77.0, 73.3),
}


def _mean(spread: dict, collapsed: tuple[str, ...] | list[str] = ()) -> str:
    flagged = f"; collapse guard: {', '.join(collapsed)}" if collapsed else ""
    return f"{spread['mean']:.1f} ± {spread['std']:.1f} ({len(spread['values'])}{flagged})"


def _row(task: str, result: dict) -> str:
    s, paper = result["summary"], result["paper"]
    low, high = s["speedup_static_range"]
    hf_low, hf_high = s["speedup_vs_hf_sdpa_dynamic_range"]
    retention = ",".join(map(str, s["retention"]))
    power_bert = _mean(s["power_bert"], s.get("seeds_collapsed", ()))
    return (
        f"| {task} | {s['metric_name']} | {_mean(s['baseline'])} | {power_bert} | "
        f"{s['constant_predictor_dev']:.1f} | {retention} | {s['speedup_static']:.2f}x [{low:.2f}-{high:.2f}] | "
        f"{s['speedup_vs_hf_sdpa_dynamic']:.2f}x [{hf_low:.2f}-{hf_high:.2f}] | {s['flop_ideal_static']:.2f}x "
        f"({s['percent_of_ideal_static']:.0f}%) | {paper['baseline']} / {paper['power_bert']} / {paper['speedup']}x | "
        "{} / {} |".format(*SMALL_BERTS_GLUE_TEST[task])
    )


def table(results: Path = RESULTS) -> str:
    """The markdown table (fair-protocol rows, then the tasks whose JSON is from the superseded protocol)."""
    rows = [
        "| task | metric | fair baseline (mean ± sd, seeds) | PoWER-BERT (mean ± sd, seeds) | constant predictor "
        "(dev) | retention (seed 1) | speedup static, batch 128 [quartile range] | vs HF SDPA dynamic, batch 128 "
        "| FLOP-ideal static (% reached) | paper (BERT-base): baseline / PoWER-BERT / speedup "
        "| BERT-Small / BERT-Mini (GLUE test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    superseded = []
    for task in TASKS:
        path = results / f"power_bert_{task}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        if "summary" in result:
            rows.append(_row(task, result))
        else:
            superseded.append(task)
    if superseded:
        rows.append(f"\nSuperseded protocol (rerun `benchmarks/power_bert_glue.py`): {', '.join(superseded)}")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(RESULTS))
    print(table(Path(parser.parse_args().results_dir)))
