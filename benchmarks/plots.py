"""PNG plots of the committed benchmark JSON (dynamic-GNN side): ``python benchmarks/plots.py``.

Reads ``benchmarks/results/*.json`` (nothing is re-measured) and writes, beside them:

* ``transfer_bytes.png``: bytes shipped per dataset, full snapshots vs diff-encoded (``snapshot_transfer.json``);
* ``scale_breakdown.png``: where the 1e9-edge scale run's time went (``scale.json``);
* ``comm_volume.png``: all-to-all volume per epoch vs the number of processes P, measured and the formula
  ``4 N T d (P-1) / P``, with the halo of a vertex-partitioned GCN (``comm_volume.json``).

The PoWER-BERT plots come from ``lit_efficiency.power_bert.plots`` when that module exists (it is called with the
same results folder); the README shows every PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def transfer_bytes(results: Path, plt) -> Path:
    """Grouped bars: full vs diff-encoded MB per dataset (windowed runs only; raw snapshots ship full anyway)."""
    records = [r for r in _load(results, "snapshot_transfer.json")["records"] if r["bytes_ratio"] > 1.0]
    names = [r["dataset"].split("(")[0] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = range(len(records))
    ax.bar([i - 0.2 for i in x], [r["full_bytes"] / 1e6 for r in records], 0.4, label="full snapshots")
    ax.bar([i + 0.2 for i in x], [r["diff_bytes"] / 1e6 for r in records], 0.4, label="diff-encoded")
    for i, r in enumerate(records):
        ax.annotate(f"{r['bytes_ratio']:.1f}x", (i, r["full_bytes"] / 1e6), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MB shipped (log)")
    ax.set_title("Snapshot transfer: full vs diff-encoded (10-step windows; synthetic 5% churn)")
    ax.legend(fontsize=8)
    return _save(fig, results / "transfer_bytes.png")


def scale_breakdown(results: Path, plt) -> Path:
    """One bar split into encoding, rebuild, transfer and the rest of the epoch (seconds)."""
    run = _load(results, "scale.json")
    rebuild_s, h2d_s = run["rebuild_ms"] / 1e3, run["h2d_ms"] / 1e3
    parts = {
        "encode (once)": run["encode_s"],
        "epoch: rebuild snapshots": rebuild_s,
        "epoch: host-to-device": h2d_s,
        "epoch: GCN + LSTM + loss": run["epoch_s"] - rebuild_s - h2d_s,
    }
    fig, ax = plt.subplots(figsize=(7, 2.4))
    left = 0.0
    for label, seconds in parts.items():
        ax.barh([0], [seconds], left=left, label=f"{label}: {seconds:.0f} s")
        left += seconds
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    size = f"{run['edges_total']:.1e} edges, N = {run['num_nodes']:.0e}, T = {run['num_snapshots']}"
    ax.set_title(f"Scale run: {size} ({run['device']})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
    return _save(fig, results / "scale_breakdown.png")


def comm_volume(results: Path, plt) -> Path:
    """All-to-all MB per training step vs P for each loss-exchange variant, with the formula, bound and halo."""
    data = _load(results, "comm_volume.json")
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name, variant in data["variants"].items():
        records = sorted(variant["records"], key=lambda r: r["world_size"])
        p = [r["world_size"] for r in records]
        ax.plot(p, [r["step_bytes"] / 1e6 for r in records], "o-", label=f"measured, {name}")
    base = sorted(data["variants"]["embeddings"]["records"], key=lambda r: r["world_size"])
    p = [r["world_size"] for r in base]
    ax.plot(p, [r["formula_bytes"] / 1e6 for r in base], "x--", color="0.3", label="one redistribution, 4NTd(P-1)/P")
    ax.plot(p, [r["halo_bytes"] / 1e6 for r in base], "s:", color="0.5", label="halo (vertex-partitioned GCN)")
    ax.axhline(
        base[0]["bound_4NTd"] / 1e6, color="grey", lw=0.8, label=f"bound 4NTd = {base[0]['bound_4NTd'] / 1e6:.1f} MB"
    )
    ax.set_xticks(p)
    ax.set_xlabel("processes P")
    ax.set_ylabel("MB per training step")
    ax.set_title(f"Communication volume ({data['meta']['dataset']})")
    ax.legend(fontsize=6)
    return _save(fig, results / "comm_volume.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def power_bert_plots(results: Path) -> list[Path]:
    """The pipeline's own two figures (trade-off, retention per layer) for every committed PoWER-BERT report of the
    fair protocol (``benchmarks/power_bert_glue.py``: reports with candidates), as ``power_bert_<task>_*.png``."""
    from lit_efficiency.power_bert.plots import retention_png, tradeoff_png

    written = []
    for path in sorted(results.glob("power_bert_*.json")):
        report = json.loads(path.read_text()).get("seed1_report")  # the seed that ran the LAMBDA grid
        stem = f"power_bert_{report['task']}" if report is not None else None
        # older files (before the fair protocol) hold no candidates: nothing to draw; side experiments
        # (power_bert_cola_grid_low.json) are not the task's committed run and draw nothing either
        if stem == path.stem:
            written += [tradeoff_png(report, results / f"{stem}_tradeoff.png"),
                        retention_png(report, results / f"{stem}_retention.png")]  # fmt: skip
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmark JSON (and the PNGs)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [plot(args.results, plt) for plot in (transfer_bytes, scale_breakdown, comm_volume)]
    plt.close("all")
    written += power_bert_plots(args.results)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
