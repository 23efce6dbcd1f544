"""Peak host memory per rank of the snapshot-partitioned data module against one process holding the whole graph.

For each storage (``resident``: normalised CSR per snapshot; ``streamed``: diff-encoded keys) the data module
(:class:`~lit_efficiency.dyn_gnn.datamodule.DynamicGraphDataModule`, ``partitioner="snapshot"``) is set up for rank
``r`` of ``P`` (``world_size`` / ``rank`` given explicitly, no process group) in a fresh subprocess, and one epoch of
its training, validation and test batches is built and moved to the CPU (streamed blocks rebuilt). Reported: the
peak resident set size (``ru_maxrss``) and the part added by the data (peak minus the RSS after the imports), per
rank, with ``P = 1`` as the single-process reference; ``data_share`` is a rank's added memory over the reference's
(``1 / P`` would be a perfect split). Sources:

* ``churn``: :class:`~lit_efficiency.dyn_gnn.sources.SyntheticChurnSource`, generated snapshot by snapshot, so a
  rank never holds the snapshots of other ranks;
* ``edge_list``: the same graph written to a CSV file sorted by time and read with
  :class:`~lit_efficiency.dyn_gnn.sources.EdgeListSource`, chunk by chunk: every rank validates the whole file but
  keeps only the rows of its snapshots, and stops reading past the last of them (``rows_read`` is reported);
* ``pgt_json``: the same graph written as a PyTorch Geometric Temporal JSON file (per-snapshot dicts, the
  twitter-tennis layout) and read with :class:`~lit_efficiency.dyn_gnn.sources.PGTJsonSource`: every rank holds the
  file text, walks it value by value and builds only its snapshots' tensors (``text_mb`` is the file size).

The model is not trained (its activations scale with the block a rank holds as well, see ``memory.py``). The CPU is
shared with other jobs while this runs: figures are single measurements (memory, not time, so little noise).

Run::

    python benchmarks/partition_rss.py
    python benchmarks/partition_rss.py --num-nodes 2000 --edges 5000 --steps 8 --out /tmp/rss.json   # quick
    python benchmarks/partition_rss.py --sources pgt_json --append   # the PGT JSON rows, added to the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _source(args: argparse.Namespace):
    from lit_efficiency.dyn_gnn.sources import EdgeListSource, PGTJsonSource, SyntheticChurnSource

    churn = SyntheticChurnSource(
        num_nodes=args.num_nodes, num_snapshots=args.steps, edges_per_snapshot=args.edges, churn=0.05,
        num_node_features=0, seed=0,
    )  # fmt: skip
    if args.source == "churn":
        return churn
    if args.source == "pgt_json":
        return PGTJsonSource(str(args.csv.with_suffix(".json")))
    return EdgeListSource(str(args.csv), step_size=1.0)


def child(args: argparse.Namespace) -> dict:
    """One measurement (run in its own process): set up rank ``args.rank`` of ``args.world`` and build one epoch."""
    import torch
    import torch_geometric.utils  # noqa: F401 - imported by setup; counted in the base, not in the data

    from lit_efficiency.dyn_gnn import adjacency, codec, streaming  # noqa: F401 - idem
    from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule

    torch.set_num_threads(1)
    base = _rss_mb()
    dm = DynamicGraphDataModule(
        _source(args), storage=args.storage, partitioner="snapshot", world_size=args.world, rank=args.rank,
        num_negatives=1, block_size=args.block, undirected=True,
    )  # fmt: skip
    dm.setup("fit")
    batches = 0
    for split in ("train", "val", "test"):
        for batch in dm._loader(split):
            dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
            batches += 1
    held = sum(1 for a in (getattr(dm.store, "items", None) or dm.store.adjs) if a is not None)
    peak = _rss_mb()
    out = {"peak_rss_mb": round(peak, 1), "data_mb": round(peak - base, 1), "held_snapshots": held, "batches": batches}
    if args.source == "edge_list":
        out["rows_read"] = dm.source.rows_read
    if args.source == "pgt_json":
        out["text_mb"] = round(dm.source.path.stat().st_size / 2**20, 1)
    return out


def write_csv(args: argparse.Namespace) -> None:
    """The churn graph as a CSV edge list (time = step index)."""
    from lit_efficiency.dyn_gnn.sources import SyntheticChurnSource

    graph = SyntheticChurnSource(args.num_nodes, args.steps, args.edges, churn=0.05, num_node_features=0).load()
    with open(args.csv, "w") as out:
        for t, ei in enumerate(graph.edge_indices):
            out.writelines(f"{u},{v},{t}\n" for u, v in ei.T.tolist())


def write_pgt_json(args: argparse.Namespace) -> None:
    """The churn graph as a PGT JSON file (per-snapshot dicts with ``edges`` and ``weights``)."""
    from lit_efficiency.dyn_gnn.sources import SyntheticChurnSource

    graph = SyntheticChurnSource(args.num_nodes, args.steps, args.edges, churn=0.05, num_node_features=0).load()
    with open(args.csv.with_suffix(".json"), "w") as out:  # one snapshot at a time: no whole-file document built
        out.write(f'{{"time_periods": {args.steps}, "node_ids": {json.dumps(list(range(args.num_nodes)))}')
        for t, ei in enumerate(graph.edge_indices):
            out.write(f', "{t}": {json.dumps({"edges": ei.T.tolist(), "weights": [1.0] * ei.shape[1]})}')
        out.write("}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-nodes", type=int, default=50_000)
    parser.add_argument("--edges", type=int, default=100_000, help="edges per snapshot")
    parser.add_argument("--steps", type=int, default=16, help="snapshots T")
    parser.add_argument("--block", type=int, default=8, help="training block size")
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--sources", default="churn,edge_list,pgt_json")
    parser.add_argument("--append", action="store_true", help="keep the other sources' runs of an existing --out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "partition_rss.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="churn", help=argparse.SUPPRESS)
    parser.add_argument("--storage", default="resident", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    args.csv = args.out.with_suffix(".edges.csv")
    sources = args.sources.split(",")
    if "edge_list" in sources:
        write_csv(args)
    if "pgt_json" in sources:
        write_pgt_json(args)
    sizes = ["--num-nodes", str(args.num_nodes), "--edges", str(args.edges), "--steps", str(args.steps)]
    result = {
        "benchmark": "partition_rss",
        "graph": {"num_nodes": args.num_nodes, "edges_per_snapshot": args.edges, "snapshots": args.steps},
        "block_size": args.block,
        "machine": platform.platform(),
        "machine_busy": True,
        "note": "peak RSS per rank of the data module (setup + one epoch of batches), fresh process per point",
        "runs": [],
    }
    if args.append and args.out.is_file():  # the other sources' runs and notes stay
        old = json.loads(args.out.read_text())
        if old["graph"] != result["graph"]:
            raise SystemExit(f"--append: {args.out} holds another graph ({old['graph']})")
        old["runs"] = [r for r in old["runs"] if r["source"] not in sources]
        result = {**old, "appended": {"sources": sources, "machine": result["machine"], "machine_busy": True}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for source in sources:
            for storage in ("resident", "streamed"):
                ref = None
                for world in (int(w) for w in args.worlds.split(",")):
                    for rank in range(world):
                        got = _measure(args, source, storage, world, rank, sizes)
                        ref = got if world == 1 else ref
                        got["data_share"] = round(got["data_mb"] / ref["data_mb"], 3) if ref else None
                        result["runs"].append(got)
                        print(json.dumps(got), flush=True)
                        args.out.write_text(json.dumps(result, indent=1) + "\n")  # keep partial results
    finally:
        args.csv.unlink(missing_ok=True)
        args.csv.with_suffix(".json").unlink(missing_ok=True)


def _measure(args: argparse.Namespace, source: str, storage: str, world: int, rank: int, sizes: list[str]) -> dict:
    """One point in a fresh process."""
    cmd = [sys.executable, __file__, "--child", "--source", source, "--storage", storage, "--world", str(world),
           "--rank", str(rank), "--block", str(args.block), "--csv", str(args.csv), *sizes]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got.update(source=source, storage=storage, world=world, rank=rank)
    return got


if __name__ == "__main__":
    main()
