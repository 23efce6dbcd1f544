"""Peak memory of one training epoch: resident vs streamed vs streamed+checkpointed at the same block size.

Four configurations of WD-GCN link prediction on the synthetic churn graph (``N`` vertices, ``E`` edges per
snapshot, 5% churn, no node features). The first three use the **same** block size (``--block`` snapshots per
optimiser step, temporal state carried detached between blocks: truncated BPTT), so they differ only in where the
graph lives and what activations are kept:

* ``resident``: :class:`~lit_efficiency.dyn_gnn.datamodule.SnapshotDataModule`, every normalised adjacency
  built once and kept in host memory.
* ``streamed``: :class:`~lit_efficiency.dyn_gnn.streaming.StreamingSnapshotDataModule` (diff-encoded host graph),
  each block rebuilt on the device.
* ``streamed+ckpt``: the same plus per-snapshot activation checkpoints of the GCN and a vertex-chunked, checkpointed
  LSTM (:func:`~lit_efficiency.dyn_gnn.nn.bounded_forward`).
* ``resident_one_block``: resident with the whole training period as one block (no truncated BPTT): the effect of
  truncated BPTT, on its own row.

Every point runs in a fresh subprocess (so peaks do not leak between points): on CPU the peak resident set size
(``resource.getrusage``, ``ru_maxrss``) after the epoch, and the increase over the RSS measured after ``setup`` and
model construction (``train_peak_mb``: what the training itself adds). On a GPU, ``torch.cuda.max_memory_allocated``.
Writes ``benchmarks/results/memory.json`` and ``memory.png``.

Run::

    python benchmarks/memory.py                       # T = 8, 16
    python benchmarks/memory.py --steps 4,8 --num-nodes 2000 --edges 8000 --out /tmp/m.json   # quick
    python benchmarks/memory.py --add-gpu-check benchmarks/results/gpu/peak_memory.json   # device rows, see below

The device rows come from ``make gpu-check`` (section ``peak_memory``: the same three configurations at equal block
size on a GPU, ``torch.cuda.max_memory_allocated``); ``--add-gpu-check`` copies that labelled record into
``memory.json`` under ``device_peak_memory`` without rerunning the CPU points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.timing import machine_busy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("resident", "streamed", "streamed+ckpt", "resident_one_block")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config: str, num_snapshots: int, args: argparse.Namespace) -> dict:
    """One point, in this process: build data and model, train one epoch, return peak memory figures."""
    import warnings

    import torch

    sys.path.insert(0, str(ROOT))
    from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
    from lit_efficiency.dyn_gnn.nn import detach_state
    from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule
    from lit_efficiency.dyn_gnn.task import DynGNNTask

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    data = dict(
        dataset="synthetic_churn", num_nodes=args.num_nodes, num_snapshots=num_snapshots,
        edges_per_snapshot=args.edges, churn=0.05, num_node_features=0, num_negatives=1, train_frac=1.0,
        val_frac=0.0, test_frac=0.0,
    )  # fmt: skip
    bounded = {}
    if config.startswith("resident"):
        block = None if config == "resident_one_block" else args.block
        dm: SnapshotDataModule = SnapshotDataModule(**data, block_size=block)
    else:
        dm = StreamingSnapshotDataModule(**data, block_size=args.block, transfer="diff")
        if config == "streamed+ckpt":
            bounded = dict(
                spatial_block_size=1,
                checkpoint_spatial=True,
                temporal_chunk_size=args.temporal_chunk,
                checkpoint_temporal=True,
            )
    dm.setup("fit")
    task = DynGNNTask(hidden_dim=args.hidden, out_dim=args.hidden, num_layers=2, head_hidden_dim=0, **bounded)
    task._build(dm.num_nodes, dm.num_features, dm.task)
    task.to(device)
    opt = torch.optim.Adam(task.parameters(), lr=0.01)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    base = _rss_mb()
    start = time.perf_counter()
    state = None
    steps = 0
    for batch in dm.train_dataloader():
        batch = dm.transfer_batch_to_device(batch, device, 0)
        _, loss, state = task._block(batch, state)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = detach_state(state)
        steps += 1
        del batch, loss
    rec = {
        "config": config,
        "num_snapshots": num_snapshots,
        "steps": steps,
        "epoch_s": round(time.perf_counter() - start, 3),
        "rss_after_setup_mb": round(base, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "train_peak_mb": round(_rss_mb() - base, 1),
        "device": str(device),
    }
    if device.type == "cuda":
        rec["cuda_max_allocated_mb"] = round((torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20, 1)
    return rec


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "cuda_max_allocated_mb" if any("cuda_max_allocated_mb" in r for r in records) else "train_peak_mb"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for config, marker in zip(CONFIGS, "osdx", strict=True):
        pts = sorted((r["num_snapshots"], r[key], r["peak_rss_mb"]) for r in records if r["config"] == config)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker=marker, label=config)
        axes[1].plot(xs, [p[2] for p in pts], marker=marker, label=config)
    axes[0].set_title("memory added by training (MiB)" if key == "train_peak_mb" else "CUDA max allocated (MiB)")
    axes[1].set_title("process peak RSS (MiB)")
    for ax in axes:
        ax.set_xlabel("snapshots T")
        ax.set_xscale("log", base=2)
        ts = sorted({r["num_snapshots"] for r in records})
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_gpu_check(record_path: Path, out: Path) -> list[dict]:
    """Copy ``make gpu-check``'s labelled ``peak_memory`` record into ``out`` (``device_peak_memory``); the CPU rows
    stay. Bad input: one line naming the file or field, exit status 2, ``out`` untouched."""

    def refuse(message: str) -> NoReturn:
        print(f"memory.py: {message}", file=sys.stderr)
        raise SystemExit(2)

    try:
        record = json.loads(record_path.read_text())
        saved = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError) as err:
        refuse(f"cannot read {getattr(err, 'filename', None) or record_path}: {err}")
    if record.get("section") != "peak_memory" or record.get("status") != "ok":
        refuse(f"{record_path}: not a finished gpu_check peak_memory record (section/status fields)")
    rows = [r for r in record.get("records", []) if "peak_allocated_mib" in r]
    if not rows or record.get("label", {}).get("device_type") != "cuda":
        refuse(f"{record_path}: records[].peak_allocated_mib / label.device_type missing: not measured on a GPU")
    resolved = record_path.resolve()
    shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else record_path.name  # no machine paths
    saved["device_peak_memory"] = {
        "source": f"make gpu-check, section peak_memory ({shown})",
        "label": record["label"],
        "config": record.get("config"),
        "records": rows,
    }
    atomic_write_text(out, json.dumps(saved, indent=2) + "\n")
    for r in rows:
        print(f"{record['label']['device']}: {r['config']:14s} peak {r['peak_allocated_mib']:.0f} MiB")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="8,16", help="values of T")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--num-nodes", type=int, default=20_000)
    p.add_argument("--edges", type=int, default=100_000)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--temporal-chunk", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    p.add_argument("--add-gpu-check", default=None, metavar="JSON", help="merge a gpu_check peak_memory record")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # "config:T", run one point and print JSON
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = p.parse_args(argv)
    if args.point:
        config, t = args.point.rsplit(":", 1)
        print("RESULT " + json.dumps(measure(config, int(t), args)))
        return []
    if args.add_gpu_check:
        return add_gpu_check(Path(args.add_gpu_check), Path(args.out))
    if args.replot:
        saved = json.loads(Path(args.out).read_text())
        m = saved["meta"]
        title = (
            f"WD-GCN link prediction, synthetic churn graph N={m['num_nodes']}, E={m['edges_per_snapshot']}/snapshot, "
            f"hidden {m['hidden_dim']}, block {m['block_size']}, {m['device']}"
        )
        plot(saved["records"], Path(args.out).with_suffix(".png"), title)
        return saved["records"]
    records = []
    passthrough = [
        f"--num-nodes={args.num_nodes}", f"--edges={args.edges}", f"--hidden={args.hidden}", f"--block={args.block}",
        f"--temporal-chunk={args.temporal_chunk}", f"--threads={args.threads}", f"--device={args.device}",
    ]  # fmt: skip
    for t in (int(x) for x in args.steps.split(",")):
        for config in args.configs.split(","):
            cmd = [sys.executable, "-W", "ignore", __file__, f"--point={config}:{t}", *passthrough]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise RuntimeError(f"point {config}:{t} failed: {proc.stderr.strip().splitlines()[-1:]}")
            rec = json.loads(line[0][len("RESULT ") :])
            records.append(rec)
            print(
                f"T={t:3d} {config:14s} train +{rec['train_peak_mb']:.0f} MiB peak {rec['peak_rss_mb']:.0f} MiB "
                f"{rec['epoch_s']:.1f}s",
                flush=True,
            )
    load = os.getloadavg()
    meta = {
        "num_nodes": args.num_nodes,
        "edges_per_snapshot": args.edges,
        "churn": 0.05,
        "hidden_dim": args.hidden,
        "block_size": args.block,
        "temporal_chunk_size": args.temporal_chunk,
        "torch_threads": args.threads,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "loadavg": list(load),  # RSS does not depend on the load; the epoch seconds do
        "machine_busy": machine_busy(args.threads, load[0]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "records": records}
    if out.is_file() and "device_peak_memory" in (old := json.loads(out.read_text())):
        result["device_peak_memory"] = old["device_peak_memory"]  # another machine's labelled rows: kept
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    title = (
        f"WD-GCN link prediction, synthetic churn graph N={args.num_nodes}, E={args.edges}/snapshot, "
        f"hidden {args.hidden}, block {args.block}, {args.device}"
    )
    plot(records, out.with_suffix(".png"), title)
    return records


if __name__ == "__main__":
    main()
