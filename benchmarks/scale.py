"""Scale run: one training epoch of GCN+LSTM (WD-GCN) link prediction over a synthetic dynamic graph with >= 1e9
edges summed over its snapshots, on one CPU machine, the graph held on the host diff-encoded.

Phase 1 (encode): :func:`~lit_efficiency.dyn_gnn.synthetic.iter_synthetic_snapshots` streams the churn-model snapshots
(``N`` vertices, ``E`` edges each, a fraction ``churn`` replaced per step) and
:func:`~lit_efficiency.dyn_gnn.streaming.encode_stream` keeps only snapshot 0 full and the diffs of the others (int64
keys: ``N * N > 2**31``). For every snapshot a fixed-size sample of its edges is kept as link-prediction positives.

Phase 2 (one epoch, truncated BPTT over blocks of ``--block`` snapshots): per snapshot the diff is applied to the
previous keys ("device" = CPU here), the checksum verified, CSR + GCN normalisation rebuilt from the degrees
(:func:`~lit_efficiency.dyn_gnn.streaming.rebuild_adjacency` of the directed snapshot: ``adj_t``, keys transposed),
then :func:`~lit_efficiency.dyn_gnn.nn.bounded_forward` with per-snapshot spatial checkpoints and a vertex-chunked,
checkpointed LSTM. Embeddings at ``t`` score the sampled positives of ``t + 1`` and as many uniform random pairs
(negatives); BCE loss, Adam step per block. No node features: a learnable ``N x hidden`` embedding.

Run (about 25 min on 2 cores)::

    python benchmarks/scale.py                      # N=1M, T=100, E=10M, churn 5%: 1e9 edges
    python benchmarks/scale.py --num-nodes 2000 --num-snapshots 6 --edges 20000 --out /tmp/s.json   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_efficiency.core.timing import Timer  # noqa: E402
from lit_efficiency.dyn_gnn.adjacency import split_key  # noqa: E402
from lit_efficiency.dyn_gnn.codec import decode_snapshot  # noqa: E402
from lit_efficiency.dyn_gnn.nn import (  # noqa: E402
    WDGCN,
    LinkPredictor,
    bounded_forward,  # noqa: E402
    detach_state,
)
from lit_efficiency.dyn_gnn.streaming import encode_stream, rebuild_adjacency, ship_item  # noqa: E402
from lit_efficiency.dyn_gnn.synthetic import iter_synthetic_snapshots  # noqa: E402


def peak_rss_gb() -> float:
    """Peak resident set size of this process in GiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(args: argparse.Namespace) -> dict:
    """Encode the graph, train one epoch, return the figures (also written to ``args.out`` as the run goes)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    n, num_t = args.num_nodes, args.num_snapshots
    device = torch.device(args.device)
    result: dict = {
        "status": "encoding",
        "num_nodes": n,
        "num_snapshots": num_t,
        "edges_per_snapshot": args.edges,
        "churn": args.churn,
        "hidden_dim": args.hidden,
        "block_size": args.block,
        "temporal_chunk_size": args.temporal_chunk,
        "targets_per_snapshot": args.targets,
        "torch_threads": args.threads,
        "device": str(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["peak_rss_gb"] = round(peak_rss_gb(), 3)
        out.write_text(json.dumps(result, indent=2) + "\n")

    # ---------------------------------------------------------------- phase 1: encode on the fly
    gen = torch.Generator().manual_seed(args.seed + 1)
    positives: list[torch.Tensor] = []
    edges_total = 0
    start = time.perf_counter()

    def on_snapshot(t: int, keys: torch.Tensor, weights: torch.Tensor | None) -> None:
        nonlocal edges_total
        edges_total += keys.numel()
        pick = torch.randint(keys.numel(), (min(args.targets, keys.numel()),), generator=gen)
        positives.append(keys[pick].clone())
        if t % args.log_every == 0 or t == num_t - 1:
            print(
                f"encode t={t} edges_total={edges_total:.3e} {time.perf_counter() - start:.0f}s "
                f"rss={peak_rss_gb():.2f}GiB",
                flush=True,
            )

    snaps = ((s.edge_index, None) for s in iter_synthetic_snapshots(n, num_t, args.edges, args.churn, seed=args.seed))
    encoded = encode_stream(snaps, n, on_snapshot=on_snapshot)
    result.update(
        encode_s=round(time.perf_counter() - start, 1),
        edges_total=edges_total,
        host_bytes=encoded.encoded_bytes(),
        full_bytes=encoded.full_bytes(),
        host_bytes_ratio=round(encoded.full_bytes() / encoded.encoded_bytes(), 3),
        kinds={k: encoded.kinds.count(k) for k in ("full", "diff")},
        status="training",
    )
    save()

    # ---------------------------------------------------------------- phase 2: one epoch
    net = WDGCN(0, hidden_dim=args.hidden, out_dim=args.hidden, num_layers=1, num_nodes=n).to(device)
    head = LinkPredictor(args.hidden, 0).to(device)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=args.lr)
    state = None
    keys = None
    h2d_ms = rebuild_ms = 0.0
    losses = []
    start = time.perf_counter()
    for t0 in range(0, num_t - 1, args.block):
        t1 = min(t0 + args.block, num_t - 1)
        adjs = []
        for t in range(t0, t1):
            with Timer(device) as h2d:
                shipped = ship_item(encoded.items[t], device)
            with Timer(device) as rebuild:
                keys, _ = decode_snapshot(keys, None, shipped, device, verify=True)
                adjs.append(rebuild_adjacency(keys, None, n, directed=True))
            h2d_ms += h2d.ms
            rebuild_ms += rebuild.ms
        z, state = bounded_forward(
            net,
            None,
            adjs,
            state,
            spatial_block_size=1,
            checkpoint_spatial=True,
            temporal_chunk_size=args.temporal_chunk,
            checkpoint_temporal=True,
        )
        block_losses = []
        for s, t in enumerate(range(t0, t1)):
            pos = positives[t + 1].to(device)
            pos_ei = torch.stack(split_key(pos, n))
            neg_ei = torch.randint(n, (2, pos.numel()), device=device)
            ei = torch.cat([pos_ei, neg_ei], 1)
            label = torch.cat([torch.ones(pos.numel()), torch.zeros(pos.numel())]).to(device)
            block_losses.append(F.binary_cross_entropy_with_logits(head(z[s], ei), label))
        loss = torch.stack(block_losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = detach_state(state)
        del z, adjs
        losses.append(round(loss.item(), 5))
        elapsed = time.perf_counter() - start
        print(f"train t={t0}..{t1 - 1} loss={loss.item():.4f} {elapsed:.0f}s rss={peak_rss_gb():.2f}GiB", flush=True)
        result.update(
            epoch_s=round(elapsed, 1),
            snapshots_done=t1,
            losses=losses,
            h2d_ms=round(h2d_ms, 1),
            rebuild_ms=round(rebuild_ms, 1),
        )
        save()
    result["status"] = "done"
    result["edges_epoch_inputs"] = sum(encoded.num_edges[: num_t - 1])  # the last snapshot only supplies targets
    result["wall_s"] = round(result["encode_s"] + result["epoch_s"], 1)
    save()
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-nodes", type=int, default=1_000_000)
    p.add_argument("--num-snapshots", type=int, default=100)
    p.add_argument("--edges", type=int, default=10_000_000, help="edges per snapshot")
    p.add_argument("--churn", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--block", type=int, default=5, help="snapshots per training step (truncated BPTT)")
    p.add_argument("--temporal-chunk", type=int, default=262_144, help="vertices per LSTM chunk")
    p.add_argument("--targets", type=int, default=20_000, help="sampled positive edges per snapshot")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
