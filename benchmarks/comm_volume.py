"""Communication volume of snapshot-partitioned training vs. vertex-partitioned GCN halos, measured with real runs.

For each step **variant** and world size ``P`` this trains
:class:`~lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask` on ``P`` CPU processes (Lightning DDP,
gloo, forked workers) with :class:`~lit_efficiency.dyn_gnn.profilers.CommProfiler` and records, per training epoch
(one block = the whole training sequence, so one training step per epoch):

- ``alltoall_bytes``: bytes of the snapshot -> vertex all-to-all (forward), summed over ranks, as measured by the
  recorder inside the autograd Function;
- ``step_bytes``: all all-to-all bytes of the training step (both directions, forward and backward), and
  ``step_ratio``: ``step_bytes`` over the ``embeddings`` variant's at the same ``P``;
- ``return_bytes``: what goes back to the snapshot layout for the loss (forward, summed over ranks);
- ``formula_bytes``: ``4*N*T*d*(P-1)/P`` (:func:`~lit_efficiency.dyn_gnn.partition.alltoall_bytes`), and
  ``bound_4NTd``: ``4*N*T*d``, which no single redistribution exceeds;
- ``halo_bytes``: forward halo volume of vertex-partitioning the GCN stage instead, from the real training snapshots
  (:func:`~lit_efficiency.dyn_gnn.partition.halo_bytes`, all GCN layers);
- ``allreduce_bytes``: DDP gradient all-reduce bytes per rank per epoch (timing comm hook);
- ``epoch_s``: wall time of one training epoch (rank 0, median over the epochs after the first).

Variants (``--variants``): ``embeddings`` (the embeddings go back to the snapshot layout: four full-width
all-to-alls per step, the previous default), ``head_inputs`` (the head's per-vertex first-layer projections go back,
linear head: two full-width all-to-alls plus two of width 2), ``head_inputs_h8`` (same, 8-unit MLP head: width 16),
``bf16`` (embeddings, every buffer in bfloat16 on the wire).

    python benchmarks/comm_volume.py            # uci_messages, P = 1 2 4, writes results/comm_volume.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.recorders import Recorder
from lit_efficiency.core.timing import machine_busy
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.partition import alltoall_bytes, halo_bytes
from lit_efficiency.dyn_gnn.partitioned import PartitionedSnapshotDataModule
from lit_efficiency.dyn_gnn.profilers import CommProfiler
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask

RESULTS = Path(__file__).resolve().parent / "results"


class _KeepingRecorder(Recorder):
    """Keeps copies of the events that CommProfiler drains every step."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[str, int, float]] = []

    def record(self, event) -> None:
        super().record(event)
        self.kept.append((event.kind, int(event.bytes_sent), float(event.ms)))


class _Dump(L.Callback):
    def __init__(self, out: Path, profiler: CommProfiler) -> None:
        self.out, self.profiler = out, profiler
        self.epoch_s: list[float] = []
        self.allreduce_bytes: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._reduced = self.profiler.totals.get("train/allreduce_bytes", 0.0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_s.append(time.perf_counter() - self._start)
        self.allreduce_bytes.append(self.profiler.totals.get("train/allreduce_bytes", 0.0) - self._reduced)

    def on_fit_end(self, trainer, pl_module) -> None:
        payload = {"events": pl_module.comm_recorder.kept, "epoch_s": self.epoch_s, "allreduce": self.allreduce_bytes}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(payload))


#: name -> (DistributedDynGNNTask arguments, head_hidden_dim or None for the model's width)
VARIANTS: dict[str, tuple[dict, int | None]] = {
    "embeddings": ({"loss_exchange": "embeddings"}, None),
    "head_inputs": ({"loss_exchange": "head_inputs"}, 0),
    "head_inputs_h8": ({"loss_exchange": "head_inputs"}, 8),
    "bf16": ({"loss_exchange": "embeddings", "wire_dtype": "bfloat16"}, None),
}


def run(world: int, args: argparse.Namespace, data: dict, model: dict) -> dict:
    """Train on ``world`` processes; return the record for this world size."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        profiler = CommProfiler()
        strategy: object = "auto"
        if world > 1:
            strategy = DDPStrategy(
                start_method="fork", process_group_backend="gloo", timeout=datetime.timedelta(seconds=600)
            )
        trainer = quiet_trainer(
            devices=world,
            strategy=strategy,
            max_epochs=args.epochs,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[profiler, _Dump(out, profiler)],
        )
        torch.manual_seed(0)
        task = DistributedDynGNNTask(**model)
        task.comm_recorder = _KeepingRecorder()
        trainer.fit(task, PartitionedSnapshotDataModule(**data))
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    full = PartitionedSnapshotDataModule(world_size=1, rank=0, **data)
    full.setup("fit")
    train_stop = full.splits["train"].stop
    num_nodes = full.store.num_nodes
    dim = model["hidden_dim"]

    def per_epoch(kinds: tuple[str, ...]) -> float:
        return sum(b for r in ranks for kind, b, _ in r["events"] if kind in kinds) / args.epochs

    # Self loops are local; the normalised adjacency is symmetric, so "directed" counts each stored entry once.
    edge_indices = [adj.to_sparse_coo().coalesce().indices() for adj in full.store.adjs[:train_stop]]
    edge_indices = [ei[:, ei[0] != ei[1]] for ei in edge_indices]
    epoch_times = ranks[0]["epoch_s"][1:] or ranks[0]["epoch_s"]
    return {
        "world_size": world,
        "alltoall_bytes": per_epoch(("snapshot_to_vertex",)),
        "return_bytes": per_epoch(("vertex_to_snapshot",)),
        "step_bytes": per_epoch(
            ("snapshot_to_vertex", "vertex_to_snapshot", "snapshot_to_vertex.backward", "vertex_to_snapshot.backward")
        ),
        "formula_bytes": alltoall_bytes(num_nodes, train_stop, dim, world),
        "bound_4NTd": 4 * num_nodes * train_stop * dim,
        "halo_bytes": halo_bytes(edge_indices, num_nodes, dim, world, num_layers=model["num_layers"], directed=True),
        "allreduce_bytes": statistics.mean(ranks[0]["allreduce"]),
        "epoch_s": statistics.median(epoch_times),
        "alltoall_ms": sum(ms for _, _, ms in ranks[0]["events"]) / args.epochs,
        "num_nodes": num_nodes,
        "num_snapshots": train_stop,
        "dim": dim,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--dataset", default="uci_messages")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-steps", type=int, default=None, help="time steps of the real dataset")
    parser.add_argument("--model", default="wdgcn")
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=RESULTS / "comm_volume.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = {"dataset": args.dataset, "data_dir": args.data_dir, "num_steps": args.num_steps, "num_negatives": 19}
    base = {
        "model": args.model,
        "hidden_dim": args.hidden_dim,
        "out_dim": args.hidden_dim,
        "num_layers": args.num_layers,
    }
    results: dict[str, dict] = {}
    for name in args.variants:
        extra, head_hidden = VARIANTS[name]
        model = {**base, **extra, "head_hidden_dim": args.hidden_dim if head_hidden is None else head_hidden}
        records = []
        for world in args.world_sizes:
            before = os.getloadavg()[0]
            record = run(world, args, data, model)
            record["load_average_1min_before_after"] = [round(before, 2), round(os.getloadavg()[0], 2)]
            record["oversubscribed"] = world * args.threads > (os.cpu_count() or 1)
            print(name, json.dumps(record))
            records.append(record)
        results[name] = {"model": model, "records": records}
    if "embeddings" in results:
        reference = {r["world_size"]: r["step_bytes"] for r in results["embeddings"]["records"]}
        for variant in results.values():
            for record in variant["records"]:
                if reference.get(record["world_size"]):
                    record["step_ratio"] = record["step_bytes"] / reference[record["world_size"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "threads_per_process": args.threads,
        "machine": f"{torch.get_num_threads()} torch threads/process, {os.cpu_count()} CPU cores, gloo",
        # other jobs beyond our own processes: the 1-minute load trails from one run into the next, so it is compared
        # with the most threads the benchmark itself runs (the largest P)
        "machine_busy": machine_busy(
            max(args.world_sizes) * args.threads,
            *(load for v in results.values() for r in v["records"] for load in r["load_average_1min_before_after"]),
        ),
        "torch": torch.__version__,
        "units": "bytes per training epoch (= per step: one block per epoch); summed over ranks, allreduce per rank",
    }
    atomic_write_text(args.out, json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
