"""Training step time with and without the overlapped all-to-alls, on ``P`` gloo ranks of this machine.

Every rank holds its snapshot block of the whole training period (one block = one step, as in
``comm_volume.py``) and runs :class:`~lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask`'s step
(spatial stage, snapshot -> vertex all-to-all, LSTM + head projection, vertex -> snapshot all-to-all, loss,
backward) with ``exchange_chunks = 1`` (one blocking exchange) and with ``exchange_chunks = C`` (the temporal
stage in ``C`` vertex chunks, each chunk's exchange started with ``async_op=True`` while the next is computed),
and each of those with ``spatial_chunks = S`` (the forward exchange overlapped the same way with the spatial stage,
in ``S`` snapshot chunks; variants ``chunks_C_spatial_S``).
The variants are timed interleaved on all ranks in lockstep (:func:`~lit_efficiency.core.timing.interleaved`,
rank 0's clock); DDP's gradient all-reduce, the same in both, is left out. Writes
``results/comm_volume_overlap.json``::

    python benchmarks/comm_volume_overlap.py                       # uci_messages, P = 2, C = 2, S = 2
    python benchmarks/comm_volume_overlap.py --dataset bitcoin_otc --chunks 2 4 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.timing import compare, interleaved, machine_busy
from lit_efficiency.dyn_gnn.partitioned import PartitionedSnapshotDataModule
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask

RESULTS = Path(__file__).resolve().parent / "results" / "comm_volume_overlap.json"


def _step(task: DistributedDynGNNTask, batch, chunks: int, spatial_chunks: int):
    def run() -> None:
        task.hparams.exchange_chunks = chunks
        task.hparams.spatial_chunks = spatial_chunks
        task.zero_grad()
        _, local_sum, _, num_targets = task._partitioned_block(batch, None)
        (local_sum / max(num_targets, 1)).backward()

    return run


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )  # fmt: skip
    try:
        dm = PartitionedSnapshotDataModule(dataset=args.dataset, world_size=world, rank=rank, num_negatives=19)
        dm.setup("fit")
        torch.manual_seed(0)
        task = DistributedDynGNNTask(
            model="wdgcn", hidden_dim=args.hidden_dim, out_dim=args.hidden_dim, num_layers=2,
            head_hidden_dim=args.hidden_dim, num_nodes=dm.num_nodes, num_features=dm.num_features, task=dm.task,
        )  # fmt: skip
        task.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        fns = {}
        for c in [1, *args.chunks]:
            fns[f"chunks_{c}"] = _step(task, batch, c, 1)
            fns.update({f"chunks_{c}_spatial_{s}": _step(task, batch, c, s) for s in args.spatial})
        times = interleaved(fns, repeats=args.repeats, warmup=1, progress=False)
        task.comm_recorder.drain()
        fns["chunks_1"]()  # once more, to read what each blocking exchange took: what overlap could hide at most
        exchange_ms: dict[str, float] = {}
        for event in task.comm_recorder.drain():
            exchange_ms[event.kind] = exchange_ms.get(event.kind, 0.0) + event.ms
        if rank == 0:
            record = {
                "world_size": world,
                "num_nodes": dm.num_nodes,
                "train_snapshots": dm.splits["train"].stop,
                "step_ms": times,
                "overlap_speedup": {name: compare(times["chunks_1"], times[name]) for name in list(fns)[1:]},
                "blocking_exchange_ms": exchange_ms,
                "loadavg_1min": os.getloadavg()[0],
            }
            Path(out).write_text(json.dumps(record))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="uci_messages")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2], help="exchange_chunks values besides 1")
    parser.add_argument("--spatial", type=int, nargs="*", default=[2], help="spatial_chunks values besides 1")
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        record_path = str(Path(tmp) / "rank0.json")
        mp.start_processes(
            _worker, args=(args.world_size, _free_port(), args, record_path), nprocs=args.world_size,
            start_method="fork",
        )  # fmt: skip
        record = json.loads(Path(record_path).read_text())
    load = os.getloadavg()
    meta = {
        "dataset": args.dataset,
        "model": f"wdgcn hidden {args.hidden_dim}, 2 GCN layers, {args.hidden_dim}-unit head, 19 negatives",
        "backend": "gloo, forked ranks on one machine",
        "threads_per_rank": args.threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "loadavg": list(load),
        "machine_busy": machine_busy(args.world_size * args.threads, load[0]),
        "what": "one training step (forward + backward, no DDP all-reduce), rank 0's wall time, interleaved",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"meta": meta, "record": record}, indent=2) + "\n")
    print(json.dumps({k: v["speedup"] for k, v in record["overlap_speedup"].items()}), f"wrote {args.out}")


if __name__ == "__main__":
    main()
