"""Bytes and time of shipping snapshots full versus diff-encoded, on every shared dataset and a synthetic churn graph.

For each graph (the five shared datasets with window 1 and with a 10-step edge-life window; a synthetic 5%-churn
graph; the same churn graph *weighted*, every weight redrawn at every step) the snapshots' canonical keys
(unweighted, as the model's default input, except the weighted row) are encoded with
:func:`~lit_efficiency.dyn_gnn.streaming.encode_stream` and, per record:

* ``full_bytes`` / ``diff_bytes``: bytes shipped when every snapshot goes full / with the adaptive encoding (also the
  host memory of the two representations); ``bytes_ratio = full_bytes / diff_bytes``; ``theory_ratio``: the same
  ratio from entry counts alone (:func:`~lit_efficiency.dyn_gnn.codec.theoretical_bytes_ratio` per snapshot,
  adaptive choice, headers ignored); ``entries_ratio``: full entries over diff entries (the figure of
  ``docs/dynamic_gnn.md``: 5.1x chess, 6.6x twitter-tennis windowed).
* ``exact``: every snapshot decoded on the device equals the original keys and weights (and its checksum verifies).
* weighted row: ``dense_weight_items`` diffs ship the snapshot's weights whole (no positions) because every weight
  changed; without that mode the weighted row shipped as many bytes as full snapshots (1.00x).
* features row (``--feature-nodes``): per-snapshot node features ``(T, N, F)`` of which ``--feature-change`` of the
  rows change at every step, shipped whole versus as the changed rows
  (:func:`~lit_efficiency.dyn_gnn.feature_codec.encode_features`); ``exact``: the decoded features are bit-identical.
* ``full_ms``: ship every snapshot's keys to the device; ``diff_ms``: ship the encoded items and rebuild the keys on
  the device (position-based deletion, merge of added keys); ``time_ratio = full_ms / diff_ms``; medians of
  ``--repeats`` interleaved rounds after a warm-up (:func:`~lit_efficiency.core.timing.interleaved`,
  CUDA-synchronised), with IQRs, the quartile range of the ratio, rounds won and ``within_noise``
  (:func:`~lit_efficiency.core.timing.compare`); from pinned memory on a GPU. ``norm_ms``: CSR + GCN normalisation
  from degrees, needed by both paths, reported apart. On a CPU a "transfer" is a memory copy
  (``device`` says which device).

Run::

    python benchmarks/snapshot_transfer.py                          # writes benchmarks/results/snapshot_transfer.json
    python benchmarks/snapshot_transfer.py --synthetic-edges 32000000 --datasets none \\
        --out benchmarks/results/snapshot_transfer_gpu.json        # the GPU target (N = 4M, 32M edges, 5% churn)
    python benchmarks/snapshot_transfer.py --datasets none --synthetic-edges 0 --weighted-edges 200000 --append
                                                                    # the weighted row, added to the JSON
    python benchmarks/snapshot_transfer.py --datasets none --synthetic-edges 0 --feature-nodes 200000 --append
                                                                    # the node-feature row, added to the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_efficiency.core.timing import compare, interleaved, machine_busy  # noqa: E402
from lit_efficiency.dyn_gnn.adjacency import edge_key  # noqa: E402
from lit_efficiency.dyn_gnn.codec import (  # noqa: E402
    HEADER_BYTES,
    EncodedGraph,
    SnapshotDiff,
    decode_snapshot,
    iter_decode,
    key_dtype,
    position_dtype,
    theoretical_bytes_ratio,
)
from lit_efficiency.dyn_gnn.feature_codec import decode_features, encode_features  # noqa: E402
from lit_efficiency.dyn_gnn.streaming import (  # noqa: E402
    encode_stream,
    rebuild_adjacency,
    ship,
    ship_feature_item,
    ship_item,
)
from lit_efficiency.dyn_gnn.synthetic import iter_synthetic_snapshots  # noqa: E402

DATASETS = ("bitcoin_otc", "bitcoin_alpha", "uci_messages", "chess", "twitter_tennis")


def theory_ratio(encoded: EncodedGraph, header: int = 0) -> float:
    """``sum_t full_t / sum_t min(full_t, diff_t)`` from entry counts alone, plus ``header`` bytes per item.

    ``diff_t`` comes from :func:`theoretical_bytes_ratio` for snapshots shipped as diffs (with dense weights:
    ``D b_p + A b_k + E b_w``); a snapshot shipped full (the first one, or one whose diff was not smaller) counts its
    full bytes.
    """
    b_k = torch.empty((), dtype=key_dtype(encoded.num_nodes)).element_size()
    b_w = 4 if encoded.weighted else 0
    full_total = diff_total = 0.0
    for item in encoded.items:
        full_t = item.num_edges * (b_k + b_w) + header
        full_total += full_t
        if isinstance(item, SnapshotDiff) and item.weights is not None:
            b_p = item.deleted_pos.element_size()
            diff_total += item.deleted_pos.numel() * b_p + item.added_keys.numel() * b_k + item.num_edges * b_w + header
        elif isinstance(item, SnapshotDiff):
            changed = 0 if item.changed_pos is None else item.changed_pos.numel()
            ratio = theoretical_bytes_ratio(
                item.num_edges, item.added_keys.numel(), item.deleted_pos.numel(), item.num_nodes, changed, b_w
            )
            diff_total += min(full_t, (full_t - header) / ratio + header)
        else:
            diff_total += full_t
    return full_total / max(diff_total, 1.0)


def time_paths(encoded: EncodedGraph, device: torch.device, repeats: int) -> dict[str, dict]:
    """Interleaved timings (:func:`time_full_vs_diff`) of: shipping every snapshot full; shipping the encoded items and
    rebuilding; CSR + normalisation of a few snapshots."""
    full = [(d.keys.cpu(), d.weights) for d in iter_decode(encoded, "cpu", verify=False)]
    full_keys = [k for k, _ in full]
    items = list(encoded.items)
    if device.type == "cuda":
        full = [(k.pin_memory(), None if w is None else w.pin_memory()) for k, w in full]
        items = [item.pin_memory() for item in items]

    def full_pass() -> None:
        for k, w in full:
            ship(k, device)
            ship(w, device)

    def diff_pass() -> None:
        # On a GPU the pinned host item goes straight to decode_snapshot: its structural checks run on the host and
        # its arrays are copied non_blocking inside the rebuild. On a CPU the item is copied first (the "transfer").
        keys = weights = None
        for item in items:
            shipped = item if device.type == "cuda" else ship_item(item, device)
            keys, weights = decode_snapshot(keys, weights, shipped, device, verify=False)

    dev_keys = [k.to(device) for k in full_keys[: min(3, len(full_keys))]]

    def norm_pass() -> None:
        for k in dev_keys:
            rebuild_adjacency(k, None, encoded.num_nodes)

    times = time_full_vs_diff(full_pass, diff_pass, device, repeats, norm=norm_pass)
    times["norm"] = {
        k: v / max(len(dev_keys), 1) for k, v in times["norm"].items() if k != "rounds_ms" and v is not None
    }
    return times


def time_full_vs_diff(full_pass, diff_pass, device: torch.device, repeats: int, **others) -> dict[str, dict]:
    """The passes timed interleaved (:func:`~lit_efficiency.core.timing.interleaved`: one warm-up each, then
    ``repeats`` rounds in rotating order, CUDA-synchronised); ``"full_vs_diff"``: :func:`~lit_efficiency.core.timing.
    compare` of the two (speedup of the diff path, quartile range, rounds won, whether noise could explain it)."""
    times = interleaved({"full": full_pass, "diff": diff_pass, **others}, device, repeats, warmup=1, progress=False)
    times["full_vs_diff"] = compare(times["full"], times["diff"])
    return times


def timing_fields(times: dict[str, dict]) -> dict:
    """The record's timing fields: medians (``full_ms``, ``diff_ms``), their IQRs and the paired comparison."""
    full, diff, cmp = times["full"], times["diff"], times["full_vs_diff"]
    return {
        "full_ms": round(full["median_ms"], 3),
        "diff_ms": round(diff["median_ms"], 3),
        "full_iqr_ms": round(full["iqr_ms"], 3),
        "diff_iqr_ms": round(diff["iqr_ms"], 3),
        "time_ratio": round(cmp["speedup"], 3),
        "time_ratio_range": [round(x, 3) for x in cmp["speedup_range"]],
        "rounds_won_by_diff": cmp.get("rounds_won"),
        "within_noise": cmp["within_noise"],
    }


def record(
    name: str,
    window: int,
    snapshots: list,
    num_nodes: int,
    device: torch.device,
    repeats: int,
    weights: list | None = None,
) -> dict:
    start = time.perf_counter()
    weights = weights or [None] * len(snapshots)
    encoded = encode_stream(zip(snapshots, weights, strict=True), num_nodes)
    exact = True
    for t, dec in enumerate(iter_decode(encoded, device, verify=True)):
        ref = edge_key(snapshots[t][0], snapshots[t][1], num_nodes)
        exact &= torch.equal(dec.keys.cpu().to(torch.int64), ref)
        exact &= weights[t] is None or torch.equal(dec.weights.cpu(), weights[t])
    stats = encoded.stats()
    times = time_paths(encoded, device, repeats)
    rec = {
        "dataset": name,
        "window": window,
        "num_nodes": num_nodes,
        "num_snapshots": len(encoded),
        "edges_total": sum(encoded.num_edges),
        "full_bytes": stats.full_bytes,
        "diff_bytes": stats.encoded_bytes,
        "bytes_ratio": round(stats.bytes_ratio, 4),
        "theory_ratio": round(theory_ratio(encoded), 4),
        "theory_ratio_with_headers": round(theory_ratio(encoded, HEADER_BYTES), 4),
        "entries_ratio": round(stats.entries_ratio, 4),
        "host_full_bytes": stats.full_bytes,
        "host_encoded_bytes": stats.encoded_bytes,
        "diff_items": encoded.kinds.count("diff"),
        "weighted": encoded.weighted,
        "dense_weight_items": sum(1 for i in encoded.items if isinstance(i, SnapshotDiff) and i.weights is not None),
        "exact": bool(exact),
        "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        **timing_fields(times),
        "norm_ms_per_snapshot": round(times["norm"]["median_ms"], 3),
        "wall_s": 0.0,
    }
    rec["wall_s"] = round(time.perf_counter() - start, 2)
    print(
        f"{name:16s} w={window:2d} bytes {rec['bytes_ratio']:.2f}x (theory {rec['theory_ratio']:.2f}x, entries "
        f"{rec['entries_ratio']:.2f}x) exact={exact} full {rec['full_ms']:.2f} ms diff {rec['diff_ms']:.2f} ms "
        f"-> {rec['time_ratio']:.2f}x",
        flush=True,
    )
    return rec


def feature_record(
    num_nodes: int, num_features: int, steps: int, change: float, device: torch.device, repeats: int
) -> dict:
    """Per-snapshot node features whose rows change with probability ``change`` per step: whole versus changed rows."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(2)
    x = torch.empty(steps, num_nodes, num_features)
    x[0] = torch.randn(num_nodes, num_features, generator=gen)
    for t in range(1, steps):
        x[t] = x[t - 1]
        rows = torch.nonzero(torch.rand(num_nodes, generator=gen) < change).flatten()
        x[t, rows] = torch.randn(rows.numel(), num_features, generator=gen)
    full_items = encode_features(x, [True] * steps, rows=False)
    items = encode_features(x, [True] * steps)
    decoded = decode_features(None, items, device)  # type: ignore[arg-type]
    exact = all(torch.equal(d.cpu(), x[t]) for t, d in enumerate(decoded))
    del decoded
    if device.type == "cuda":
        full_items = [i.pin_memory() for i in full_items]  # type: ignore[union-attr]
        items = [i.pin_memory() for i in items]  # type: ignore[union-attr]

    def full_pass() -> None:  # keeps the block's matrices, as the rows path and the model do
        [ship(item.x, device) for item in full_items]  # type: ignore[union-attr]

    def diff_pass() -> None:
        decode_features(None, [ship_feature_item(i, device) for i in items], device)  # type: ignore[arg-type]

    full_bytes = sum(i.nbytes for i in full_items)  # type: ignore[union-attr]
    diff_bytes = sum(i.nbytes for i in items)  # type: ignore[union-attr]
    times = time_full_vs_diff(full_pass, diff_pass, device, repeats)
    rec = {
        "dataset": f"node features, {change:.0%} of rows change per step (N={num_nodes}, F={num_features})",
        "window": 1,
        "num_nodes": num_nodes,
        "num_snapshots": steps,
        "num_features": num_features,
        "full_bytes": full_bytes,
        "diff_bytes": diff_bytes,
        "bytes_ratio": round(full_bytes / diff_bytes, 4),
        "row_items": sum(1 for i in items if type(i).__name__ == "FeatureRows"),
        "exact": bool(exact),
        "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        **timing_fields(times),
        "wall_s": round(time.perf_counter() - start, 2),
        "note": "both paths keep the block's matrices; the rebuild copies the previous snapshot's features on the "
        "device (one device memcpy per snapshot) "
        "and scatters the changed rows; on a CPU a transfer is a memcpy too, so the rows path cannot be faster there: "
        "the gain is the host-to-device bytes on a GPU",
    }
    print(
        f"{rec['dataset']}: bytes {rec['bytes_ratio']:.2f}x exact={exact} full {rec['full_ms']:.2f} ms rows "
        f"{rec['diff_ms']:.2f} ms"
    )
    return rec


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma list, or 'none'")
    p.add_argument("--windows", default="1,10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--synthetic-nodes", type=int, default=None, help="default: max(200000, edges // 8)")
    p.add_argument("--synthetic-edges", type=int, default=1_000_000, help="edges per synthetic snapshot (0: skip)")
    p.add_argument("--synthetic-snapshots", type=int, default=6)
    p.add_argument("--churn", type=float, default=0.05)
    p.add_argument(
        "--weighted-edges", type=int, default=0, help="edges per snapshot of the reweighted churn graph (0: skip)"
    )
    p.add_argument("--feature-nodes", type=int, default=0, help="nodes of the node-feature row (0: skip)")
    p.add_argument("--feature-dim", type=int, default=32, help="features per node of the node-feature row")
    p.add_argument("--feature-change", type=float, default=0.05, help="fraction of feature rows changed per step")
    p.add_argument("--append", action="store_true", help="replace/add these records in the existing --out file")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "snapshot_transfer.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    records = []
    names = [] if args.datasets == "none" else [d for d in args.datasets.split(",") if d]
    if names:
        from lit_efficiency.dyn_gnn.datasets import load_dataset

        for name in names:
            raw = load_dataset(name, data_dir=args.data_dir)
            for w in (int(x) for x in args.windows.split(",")):
                graph = raw.with_window(w)
                records.append(record(name, w, list(graph.edge_indices), graph.num_nodes, device, args.repeats))
    if args.synthetic_edges > 0:
        e, steps = args.synthetic_edges, args.synthetic_snapshots
        n = args.synthetic_nodes or max(200_000, e // 8)
        snaps = [s.edge_index for s in iter_synthetic_snapshots(n, steps, e, churn=args.churn, seed=0)]
        name = f"synthetic(N={n}, E={e}, churn={args.churn})"
        records.append(record(name, 1, snaps, n, device, args.repeats))
        del snaps
    if args.weighted_edges > 0:
        e, steps = args.weighted_edges, args.synthetic_snapshots
        n = max(50_000, e // 8)
        snaps = [s.edge_index for s in iter_synthetic_snapshots(n, steps, e, churn=args.churn, seed=0)]
        gen = torch.Generator().manual_seed(1)
        weights = [torch.rand(ei.shape[1], generator=gen) for ei in snaps]  # every weight changes at every step
        name = f"synthetic weighted, all weights change (N={n}, E={e}, churn={args.churn})"
        records.append(record(name, 1, snaps, n, device, args.repeats, weights))
    if args.feature_nodes > 0:
        records.append(
            feature_record(
                args.feature_nodes,
                args.feature_dim,
                args.synthetic_snapshots,
                args.feature_change,
                device,
                args.repeats,
            )
        )
    meta = {
        "note": "full_ms: ship all snapshots full; diff_ms: ship items + rebuild keys on the device; on CPU a "
        "transfer is a memcpy. bytes = host memory of each representation.",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "machine_busy": machine_busy(torch.get_num_threads()),
        "position_dtype_small": str(position_dtype(1000)),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        old = json.loads(out.read_text())
        names = {(r["dataset"], r["window"]) for r in records}
        records = [r for r in old["records"] if (r["dataset"], r["window"]) not in names] + records
        meta = {**old["meta"], "appended": meta}
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    return records


if __name__ == "__main__":
    main()
