r"""Cost model of snapshot-partitioned training: epoch time and speedup for P = 1..128 on a configurable cluster.

Per epoch of ``T`` snapshots of a graph with ``N`` vertices and width ``d``, on ``P`` ranks (``g`` per node):

.. math::
    t(P) = C + A - \alpha \min(C, A) + R + o, \qquad
    C = \lceil T/P \rceil (c + x)\, s(P), \quad
    A = k \cdot \frac{4 N T d}{P} \frac{P-1}{P} / B(P), \quad
    R = 2 \frac{P-1}{P} W / B(P)

with ``C`` compute + host-to-device transfer, ``A`` the all-to-alls, ``R`` the gradient all-reduce, ``c`` the measured
compute per snapshot (forward + backward, spatial and temporal), ``x`` the host-to-device transfer per snapshot, ``k``
the all-to-alls per step in full-width equivalents (4 when the embeddings go back to the snapshot layout for the
loss: there and back, forward and backward; ``2 + 2 w/d`` when only the head's ``w``-wide per-vertex projections go
back), ``alpha`` the share of the all-to-all hidden behind compute (0: none; the overlapped exchanges exist
(``exchange_chunks``, ``spatial_chunks``) but gained nothing measurable on CPU gloo (``comm_volume_overlap.json``:
0.92-1.04x), so ``alpha > 0`` is a what-if for a GPU cluster, where the exchange runs beside the kernels),
``W`` the gradient bytes, ``o`` a fixed per-epoch overhead,
``s(P) = \max(1, P / \text{devices})`` the oversubscription of a machine with fewer devices than ranks, and the
per-rank bandwidth
``B(P) = B_intra`` within a node, else limited by the node's link shared by its ``g`` ranks:
:math:`B(P) = \big(\frac{g-1}{P-1} / B_\mathrm{intra} + \frac{P-g}{P-1} / (B_\mathrm{inter}/g)\big)^{-1}`.

Inputs come from ``results/comm_volume.json`` (measured here, variant ``--variant``: ``c`` and ``o`` fitted to P = 1
and P = 2, so P = 4 is the held-out check; the gloo bandwidth from the P = 2 all-to-all time; ``k`` from the measured
step bytes; ``o``'s share of the one-process epoch is reported as ``fixed_overhead_share``) and from
``docs/dynamic_gnn.md`` section 5 (H200 per-snapshot compute and transfer of a 4M-vertex, 32M-edge snapshot) for
the GPU-cluster prediction, plotted beside the paper's headline (30x at 128 GPUs).

    python benchmarks/scaling_model.py    # writes results/scaling_model.json and results/scaling_model.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lit_efficiency.core.paths import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Workload:
    """What one epoch computes and moves."""

    num_nodes: int
    num_snapshots: int
    dim: int
    compute_s_per_snapshot: float
    transfer_s_per_snapshot: float
    grad_bytes: float
    overhead_s: float = 0.0
    alltoalls_per_step: float = 4.0
    overlap: float = 0.0


@dataclass
class Cluster:
    """Devices per node and bandwidths in bytes/s (per rank within a node; per node link between nodes)."""

    devices_per_node: int
    intra_bw: float
    inter_bw: float
    num_devices: int | None = None  # physical devices in all (None: one per rank)


def rank_bandwidth(world: int, cluster: Cluster) -> float:
    """Effective per-rank all-to-all bandwidth ``B(P)`` (see the module docstring)."""
    g = cluster.devices_per_node
    if world <= g:
        return cluster.intra_bw
    frac_intra = (g - 1) / (world - 1)
    frac_inter = (world - g) / (world - 1)
    return 1.0 / (frac_intra / cluster.intra_bw + frac_inter / (cluster.inter_bw / g))


def epoch_time(world: int, work: Workload, cluster: Cluster) -> dict[str, float]:
    """Predicted epoch time and its parts for ``world`` ranks."""
    oversub = max(1.0, world / cluster.num_devices) if cluster.num_devices else 1.0
    compute = math.ceil(work.num_snapshots / world) * (work.compute_s_per_snapshot + work.transfer_s_per_snapshot)
    compute *= oversub
    comm = alltoall = allreduce = 0.0
    if world > 1:
        bw = rank_bandwidth(world, cluster)
        per_rank = 4 * work.num_nodes * work.num_snapshots * work.dim * (world - 1) / world / world
        alltoall = work.alltoalls_per_step * per_rank / bw
        allreduce = 2 * (world - 1) / world * work.grad_bytes / bw
        comm = alltoall + allreduce - work.overlap * min(compute, alltoall)
    total = compute + comm + work.overhead_s
    return {"epoch_s": total, "compute_s": compute, "alltoall_s": alltoall, "allreduce_s": allreduce}


def curve(work: Workload, cluster: Cluster, worlds: list[int]) -> list[dict[str, float]]:
    base = epoch_time(1, work, cluster)["epoch_s"]
    rows = []
    for p in worlds:
        parts = epoch_time(p, work, cluster)
        rows.append({"world_size": p, **parts, "speedup": base / parts["epoch_s"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, default=RESULTS / "comm_volume.json")
    parser.add_argument("--variant", default="head_inputs", help="the comm_volume.json step variant to fit")
    parser.add_argument("--gpus-per-node", type=int, default=6)
    parser.add_argument("--intra-gbps", type=float, default=50.0, help="GB/s per GPU within a node (NVLink)")
    parser.add_argument("--inter-gbps", type=float, default=25.0, help="GB/s per node between nodes (2x EDR IB)")
    parser.add_argument("--gpu-nodes", type=int, default=4_000_000, help="N of the GPU scenario")
    parser.add_argument("--gpu-snapshots", type=int, default=1024, help="T of the GPU scenario")
    parser.add_argument("--gpu-compute-ms", type=float, default=17.8 + 3 * 4.6, help="per snapshot, fwd+bwd")
    parser.add_argument("--gpu-transfer-ms", type=float, default=9.2, help="per snapshot H2D (full snapshot)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling_model.json")
    args = parser.parse_args(argv)

    measured = json.loads(args.measured.read_text())
    variants = measured["variants"]
    records = {r["world_size"]: r for v in (args.variant, "embeddings") for r in variants[v]["records"]}
    records.update({r["world_size"]: r for r in variants[args.variant]["records"]})
    one = records[1]
    n, t, d = one["num_nodes"], one["num_snapshots"], one["dim"]
    grad_bytes = max(r["allreduce_bytes"] for r in records.values())
    two = records.get(2)
    # Full-width all-to-alls per step, from the measured step bytes (4 for "embeddings", 2 + 2 w/d otherwise).
    k = two["step_bytes"] / two["formula_bytes"] if two else 4.0
    # Bandwidth seen by a rank in the measured P = 2 run: its sent bytes over its all-to-all time.
    gloo_bw = (two["step_bytes"] / 2) / (two["alltoall_ms"] / 1e3) if two else 1e9
    # Calibrate the two unknowns (compute per snapshot c, serial overhead o) on P = 1 and P = 2:
    #   c T + o = m1,   c ceil(T/2) + comm(2) + o = m2;   P = 4 (and beyond) is then a prediction.
    local_cluster = Cluster(devices_per_node=os.cpu_count() or 2, intra_bw=gloo_bw, inter_bw=gloo_bw)
    local_cluster.num_devices = local_cluster.devices_per_node
    probe = Workload(n, t, d, 0.0, 0.0, grad_bytes, alltoalls_per_step=k)
    comm2 = epoch_time(2, probe, local_cluster)["epoch_s"] if two else 0.0
    m1, m2 = one["epoch_s"], (two["epoch_s"] if two else one["epoch_s"] / 2)
    c = max(0.0, (m1 - m2 + comm2) / (t - math.ceil(t / 2)))
    local_work = Workload(n, t, d, c, 0.0, grad_bytes, overhead_s=max(0.0, m1 - c * t), alltoalls_per_step=k)
    local_worlds = sorted(records)
    local = curve(local_work, local_cluster, local_worlds)
    check = [
        {
            "world_size": row["world_size"],
            "predicted_epoch_s": row["epoch_s"],
            "measured_epoch_s": records[row["world_size"]]["epoch_s"],
            "ratio": row["epoch_s"] / records[row["world_size"]]["epoch_s"],
        }
        for row in local
    ]

    gpu_cluster = Cluster(args.gpus_per_node, args.intra_gbps * 1e9, args.inter_gbps * 1e9)
    worlds = list(range(1, 129))
    base = Workload(
        args.gpu_nodes, args.gpu_snapshots, d, args.gpu_compute_ms / 1e3, args.gpu_transfer_ms / 1e3, grad_bytes
    )
    scenarios = {  # transfer hidden: graph difference (docs/dynamic_gnn.md section 3)
        "four_alltoalls_full_h2d": base,
        "four_alltoalls": Workload(**{**asdict(base), "transfer_s_per_snapshot": 0.0}),
        "new_step": Workload(**{**asdict(base), "transfer_s_per_snapshot": 0.0, "alltoalls_per_step": k}),
        "new_step_overlap": Workload(
            **{**asdict(base), "transfer_s_per_snapshot": 0.0, "alltoalls_per_step": k, "overlap": 1.0}
        ),
    }
    gpu = {name: curve(work, gpu_cluster, worlds) for name, work in scenarios.items()}
    gpu_work = scenarios["new_step_overlap"]

    out = {
        "inputs": {
            "measured_file": str(args.measured.name),
            "variant": args.variant,
            "alltoalls_per_step_measured": k,
            "local": {"workload": asdict(local_work), "cluster": asdict(local_cluster)},
            "gpu": {"workload": asdict(gpu_work), "cluster": asdict(gpu_cluster)},
            "gpu_scenarios": {name: asdict(work) for name, work in scenarios.items()},
            "paper_headline": {"world_size": 128, "speedup": 30.0},
        },
        "fixed_overhead_share": local_work.overhead_s / m1,
        "check_measured": check,
        "speedup_at_128": {name: rows[-1]["speedup"] for name, rows in gpu.items()},
        "gpu_prediction": gpu,
        "note": "new_step_overlap assumes the all-to-all fully hidden behind compute: the chunked overlap is "
        "implemented (exchange_chunks, spatial_chunks) but measured no gain on CPU gloo (comm_volume_overlap.json), "
        "so a what-if",
    }
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(worlds, worlds, "k:", label="linear")
    labels = {
        "four_alltoalls_full_h2d": "4 all-to-alls, full H2D",
        "four_alltoalls": "4 all-to-alls, transfer hidden",
        "new_step": f"{k:.2f} full-width all-to-alls (head inputs), transfer hidden",
        "new_step_overlap": "same + all-to-all overlapped (what-if)",
    }
    for name, rows in gpu.items():
        ax1.plot(worlds, [r["speedup"] for r in rows], label=f"model: {labels[name]}")
    ax1.scatter([128], [30.0], color="red", zorder=5, label="paper headline: 30x at 128 GPUs")
    ax1.axvline(args.gpus_per_node, color="grey", lw=0.5)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="GPUs P",
        ylabel="speedup vs 1 GPU",
        title=f"GPU cluster: {args.gpus_per_node}/node, {args.intra_gbps:g} GB/s intra, "
        f"{args.inter_gbps:g} GB/s/node inter",
    )
    ax1.legend(fontsize=8)
    ax2.plot(local_worlds, [c["predicted_epoch_s"] for c in check], "o-", label="model")
    ax2.plot(local_worlds, [c["measured_epoch_s"] for c in check], "s--", label="measured (gloo, CPU processes)")
    ax2.set(
        xlabel="processes P",
        ylabel="epoch time (s)",
        title=f"this machine: {measured['meta']['dataset']}, {local_cluster.devices_per_node} cores",
        ylim=(0, None),
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)
    print(json.dumps(check, indent=1))
    print("fixed overhead share:", round(out["fixed_overhead_share"], 3))
    print("speedup at 128:", {name: round(v, 1) for name, v in out["speedup_at_128"].items()})


if __name__ == "__main__":
    main()
