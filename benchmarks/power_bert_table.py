"""Print the README table of ``benchmarks/results/power_bert_<task>.json`` beside the paper's numbers.

Usage: ``python benchmarks/power_bert_table.py``
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: Paper (BERT-base, GLUE test, K80, batch 128, static padding): metric, PoWER-BERT metric, speedup.
PAPER = {
    "cola": (52.5, 52.3, 4.5),
    "rte": (68.1, 67.4, 3.4),
    "mrpc": (88.7, 88.1, 2.7),
    "sst2": (93.0, 92.1, 2.4),
    "stsb": (85.8, 85.1, 2.0),
}


def table() -> str:
    rows = [
        "| task | metric | baseline | PoWER-BERT | retention (of N) | speedup static | vs dynamic padding "
        "| FLOP-ideal | paper: baseline / PoWER-BERT / speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, (p_base, p_pb, p_speed) in PAPER.items():
        path = RESULTS / f"power_bert_{task}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        retention = ",".join(map(str, r["retention"]))
        rows.append(
            f"| {task} | {r['metric_name']} | {r['baseline_metric']:.1f} | {r['power_bert_metric']:.1f} | "
            f"{retention} ({r['max_seq_len']}) | {r['speedup']:.2f}x | {r['speedup_vs_dynamic_padding']:.2f}x | "
            f"{r['ideal_speedup']:.2f}x | {p_base} / {p_pb} / {p_speed}x |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
