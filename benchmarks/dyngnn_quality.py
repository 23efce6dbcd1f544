"""Link-prediction quality of every dynamic GNN on Bitcoin-OTC, Bitcoin-Alpha and UCI messages, and the speed of one
training epoch against a naive per-snapshot loop.

Protocol (EvolveGCN-like, https://arxiv.org/abs/1902.10191, see the README for what differs): the loaders' default
time steps, a chronological 70/10/20 split of the snapshot pairs ``(t, t + 1)``, 19 sampled negatives per true
edge in training (destination corrupted), 100 per true edge for validation/test, MAP/MRR per (snapshot, source node)
ranking and AUC over all candidates. Every model is trained for ``--epochs`` epochs (one step per epoch: the whole
training period is one block); the weights of the epoch with the best validation MAP are tested.

Naive baseline: the way PyTorch Geometric Temporal's examples iterate. For every training snapshot a PyG ``Data``
is built, a ``GCNConv``-based WD-GCN cell (two ``torch_geometric.nn.GCNConv`` layers, normalisation recomputed on
every call, then an ``nn.LSTMCell`` step for all vertices) is called, negatives are sampled and a loss computed per
snapshot; one backward and optimiser step per epoch. Same sizes as our WD-GCN. Our epoch: precomputed normalised
adjacencies, one batched LSTM call over the whole block, through the Lightning ``Trainer``.

Run::

    python benchmarks/dyngnn_quality.py            # writes benchmarks/results/dyngnn_quality.json
    python benchmarks/dyngnn_quality.py --epochs 5 --datasets uci_messages --models wdgcn   # quick look
    python benchmarks/dyngnn_quality.py --epochs 40 --models evolvegcn-o evolvegcn-h --merge   # redo some rows
    python benchmarks/dyngnn_quality.py --table    # the README's markdown table, from the JSON (no training)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import nn

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.timing import compare, interleaved, machine_busy
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule, sample_negatives
from lit_efficiency.dyn_gnn.nn import MODEL_NAMES, LinkPredictor, detach_state, lstm_by_steps
from lit_efficiency.dyn_gnn.task import DynGNNTask

DATASETS = ("bitcoin_otc", "bitcoin_alpha", "uci_messages")
RESULTS = Path(__file__).resolve().parent / "results" / "dyngnn_quality.json"
SPEED_RESULTS = RESULTS.with_name("epoch_speed.json")


class _EpochTimer(L.Callback):
    """Wall time of every training epoch (batches only, no validation), and the weights of the best validation MAP."""

    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self.best_map = -1.0
        self.best_epoch = -1
        self.best_state: dict | None = None
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning runs the epoch-end validation before ``on_train_epoch_end``: stop the clock at the last batch.
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_s.append(self._last - self._t0)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/map")
        if value is not None and float(value) > self.best_map:
            self.best_map = float(value)
            self.best_epoch = trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.state_dict())


def _trainer(epochs: int, callbacks: list) -> L.Trainer:
    return quiet_trainer(max_epochs=epochs, num_sanity_val_steps=0, callbacks=callbacks)


def train_and_test(dm: SnapshotDataModule, model: str, epochs: int, hidden: int, lr: float) -> dict:
    """Fit ``model`` on ``dm``, test the best-validation weights, return one result record."""
    L.seed_everything(0, verbose=False)
    task = DynGNNTask(model=model, hidden_dim=hidden, out_dim=hidden, num_layers=2, head_hidden_dim=hidden, lr=lr)
    timer = _EpochTimer()
    trainer = _trainer(epochs, [timer])
    start = time.perf_counter()
    trainer.fit(task, dm)
    fit_s = time.perf_counter() - start
    if timer.best_state is not None:
        task.load_state_dict(timer.best_state)
    test = trainer.test(task, dm, verbose=False)[0]
    # The first epoch includes one-off costs (lazy init, allocator warm-up): report the median of the rest.
    steady = sorted(timer.epoch_s[1:] or timer.epoch_s)
    return {
        "dataset": dm.dataset,
        "model": model,
        "map": test["test/map"],
        "mrr": test["test/mrr"],
        "auc": test["test/auc"],
        "val_map": timer.best_map,
        "best_epoch": timer.best_epoch,
        "epochs": epochs,
        "epoch_s": steady[len(steady) // 2],
        "fit_s": fit_s,
        "hidden": hidden,
        "lr": lr,
    }


class NaiveWDGCN(nn.Module):
    """WD-GCN written the PyG-Temporal way: ``GCNConv`` layers (normalising on every call) + ``LSTMCell`` per step."""

    def __init__(self, num_nodes: int, hidden: int) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.embedding = nn.Embedding(num_nodes, hidden)
        self.conv1 = GCNConv(hidden, hidden)
        self.conv2 = GCNConv(hidden, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)

    def forward(self, edge_index: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, tuple]:
        h = torch.relu(self.conv1(self.embedding.weight, edge_index))
        h = torch.relu(self.conv2(h, edge_index))
        hx, cx = self.cell(h, state)
        return hx, (hx, cx)


def naive_epoch(dm: SnapshotDataModule, hidden: int) -> Callable[[], None]:
    """One training epoch of the naive per-snapshot loop (a closure over its model, optimiser and RNG)."""
    from torch_geometric.utils import to_undirected

    graph = dm.graph
    assert graph is not None
    n = graph.num_nodes
    num_train = dm.splits["train"].stop
    torch.manual_seed(0)
    model = NaiveWDGCN(n, hidden)
    head = LinkPredictor(hidden, hidden)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.01)
    gen = torch.Generator().manual_seed(0)

    def epoch() -> None:
        opt.zero_grad()
        state, cost = None, 0.0
        for t in range(num_train):
            snapshot = graph[t]  # a PyG Data per snapshot, as the temporal-signal iterators yield
            edge_index = to_undirected(snapshot.edge_index, num_nodes=n)
            z, state = model(edge_index, state)
            pos = graph.edge_indices[t + 1]
            pos = pos[:, pos[0] != pos[1]]
            neg = sample_negatives(pos, n, dm.hparams.num_negatives, gen)
            candidates = torch.cat([pos, neg], dim=1)
            # The plain head on [Z_u || Z_v] (its nn.Sequential), as a user would write it.
            logits = head.mlp(torch.cat([z[candidates[0]], z[candidates[1]]], dim=-1)).squeeze(-1)
            label = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
            pos_weight = torch.tensor(neg.shape[1] / max(pos.shape[1], 1))
            cost = cost + nn.functional.binary_cross_entropy_with_logits(logits, label, pos_weight=pos_weight)
        (cost / num_train).backward()
        opt.step()

    return epoch


def our_epoch(dm: SnapshotDataModule, hidden: int) -> Callable[[], None]:
    """One training epoch of :class:`DynGNNTask`'s step (batch built by the data module, forward, loss, backward, Adam).

    The Lightning loop around it is left out, as it is for the naive loop; the work is ``training_step``'s.
    """
    torch.manual_seed(0)
    task = DynGNNTask(
        model="wdgcn", hidden_dim=hidden, out_dim=hidden, num_layers=2, head_hidden_dim=hidden,
        num_nodes=dm.num_nodes, num_features=dm.num_features, task=dm.task,
    )  # fmt: skip
    opt = torch.optim.Adam(task.parameters(), lr=0.01)

    def epoch() -> None:
        state = None
        for batch in dm.train_dataloader():
            opt.zero_grad()
            _, loss, state = task._block(batch, state)
            state = detach_state(state)
            loss.backward()
            opt.step()

    return epoch


def lstm_epoch(dm: SnapshotDataModule, hidden: int) -> Callable[[], None]:
    """The LSTM alone, forward + backward, at the epoch's sizes (``T`` training snapshots x ``N`` vertices x hidden).

    Both loops run this recurrent work the same way (our WD-GCN's CPU training path,
    :func:`~lit_efficiency.dyn_gnn.nn.lstm_by_steps`, runs the ``torch.lstm_cell`` steps the naive loop's
    ``LSTMCell`` runs), so ``naive / lstm_only`` bounds the speedup of any epoch that keeps the model.
    """
    torch.manual_seed(0)
    lstm = nn.LSTM(hidden, hidden)
    x = torch.randn(dm.splits["train"].stop, dm.num_nodes, hidden)

    def epoch() -> None:
        lstm.zero_grad()
        out, _ = lstm_by_steps(lstm, x.requires_grad_())
        out.sum().backward()
        x.grad = None

    return epoch


def naive_epoch_s(dm: SnapshotDataModule, hidden: int, repeats: int = 3) -> float:
    """Median wall time of one training epoch of the naive per-snapshot loop."""
    return summarize_s(interleaved({"naive": naive_epoch(dm, hidden)}, repeats=repeats, warmup=1)["naive"])


def summarize_s(summary: dict) -> float:
    """The median of a :func:`~lit_efficiency.core.timing.summarize` dict, in seconds."""
    return summary["median_ms"] / 1e3


def epoch_speed(datasets: tuple[str, ...], hidden: int, repeats: int, output: Path) -> list[dict]:
    """Interleaved epochs of our WD-GCN step and the naive loop per dataset; writes ``output``."""
    records = []
    for name in datasets:
        dm = SnapshotDataModule(dataset=name, num_negatives=19, eval_num_negatives=100)
        dm.prepare_data()
        dm.setup("fit")
        candidates = {"naive": naive_epoch(dm, hidden), "ours": our_epoch(dm, hidden), "lstm": lstm_epoch(dm, hidden)}
        times = interleaved(candidates, repeats=repeats, warmup=1)
        record = {
            "dataset": name,
            "num_nodes": dm.num_nodes,
            "train_snapshots": dm.splits["train"].stop,
            "naive_ms": times["naive"],
            "ours_ms": times["ours"],
            "lstm_only_ms": times["lstm"],
            **compare(times["naive"], times["ours"]),
            "target": 3.0,
            "lstm_share_of_ours": times["lstm"]["median_ms"] / times["ours"]["median_ms"],
            "speedup_bound_if_only_the_lstm_remained": times["naive"]["median_ms"] / times["lstm"]["median_ms"],
            "loadavg_1min": os.getloadavg()[0],
        }
        print(json.dumps({k: record[k] for k in ("dataset", "speedup", "within_noise")}), flush=True)
        records.append(record)
    meta = {
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine_busy": machine_busy(torch.get_num_threads()),
        "loadavg": list(os.getloadavg()),
        "repeats": repeats,
        "what": "one training epoch (the whole training period as one block), WD-GCN hidden 32, 2 GCN layers, "
        "32-unit head, 19 negatives; interleaved, median and IQR of repeats after one warm-up epoch each; "
        "lstm_only: the LSTM steps (torch.lstm_cell, as both loops run them), forward + backward alone, same sizes",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    return records


def main(
    datasets: tuple[str, ...] = DATASETS,
    models: tuple[str, ...] = MODEL_NAMES,
    epochs: int = 30,
    hidden: int = 32,
    lr: float = 0.01,
    threads: int = 1,
    output: Path = RESULTS,
    merge: bool = False,
) -> list[dict]:
    """Run every (dataset, model) pair and the naive-loop timing; write the JSON records to ``output``.

    With ``merge``, the records already in ``output`` for other (dataset, model) pairs are kept (in their order,
    a rerun record replacing the old one in place) instead of the file being overwritten.
    """
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    records: list[dict] = []
    previous = json.loads(output.read_text()) if merge and output.exists() else []

    def write() -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, json.dumps(_merged(previous, records), indent=2) + "\n")

    for name in datasets:
        dm = SnapshotDataModule(dataset=name, num_negatives=19, eval_num_negatives=100)
        dm.prepare_data()
        dm.setup("fit")
        naive_s = naive_epoch_s(dm, hidden) if "wdgcn" in models else float("nan")
        for model in models:
            rec = train_and_test(dm, model, epochs, hidden, lr)
            rec.update(
                num_nodes=dm.num_nodes,
                num_snapshots=dm.num_snapshots,
                split_pairs={k: [r.start, r.stop] for k, r in dm.splits.items()},
                protocol="70/10/20 chronological; 19 train / 100 eval negatives per edge (destination corrupted); "
                "learnable node embeddings; MAP/MRR per (snapshot, source) over sampled candidates",
                threads=threads,
            )
            if model == "wdgcn":
                rec["naive_epoch_s"] = naive_s
                rec["speedup_vs_naive"] = naive_s / rec["epoch_s"]
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ("dataset", "model", "map", "mrr", "auc", "epoch_s")}), flush=True)
            write()  # keep partial results if interrupted
    meta = {"torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    for rec in records:
        rec["env"] = meta
    write()
    return records


NAMES = {
    "bitcoin_otc": "Bitcoin-OTC",
    "bitcoin_alpha": "Bitcoin-Alpha",
    "uci_messages": "UCI messages",
    "wdgcn": "WD-GCN",
    "cdgcn": "CD-GCN",
    "tmgcn": "TM-GCN",
    "evolvegcn-o": "EvolveGCN-O",
    "evolvegcn-h": "EvolveGCN-H",
}
#: EvolveGCN's own link-prediction MAP / MRR (Pareja et al., AAAI 2020, "Performance of link prediction" table).
PAPER = {
    ("bitcoin_otc", "evolvegcn-o"): "0.0028 / 0.0968",
    ("bitcoin_otc", "evolvegcn-h"): "0.0026 / 0.0690",
    ("bitcoin_alpha", "evolvegcn-o"): "0.0036 / 0.1185",
    ("bitcoin_alpha", "evolvegcn-h"): "0.0049 / 0.1104",
    ("uci_messages", "evolvegcn-o"): "0.0270 / 0.1379",
    ("uci_messages", "evolvegcn-h"): "0.0126 / 0.0899",
}


def markdown_table(records: list[dict]) -> str:
    """The README's results table: one row per (dataset, model) record."""
    lines = [
        "| dataset | model | test MAP | test MRR | test AUC | best val MAP | epoch (s) | EvolveGCN paper MAP / MRR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        key = (r["dataset"], r["model"])
        lines.append(
            f"| {NAMES.get(r['dataset'], r['dataset'])} | {NAMES.get(r['model'], r['model'])} | {r['map']:.3f} | "
            f"{r['mrr']:.3f} | {r['auc']:.3f} | {r['val_map']:.3f} | {r['epoch_s']:.2f} | {PAPER.get(key, '-')} |"
        )
    return "\n".join(lines)


def _merged(previous: list[dict], new: list[dict]) -> list[dict]:
    """``previous`` with each record of the same (dataset, model) as a ``new`` one replaced; other new ones appended."""
    fresh = {(r["dataset"], r["model"]): r for r in new}
    out = [fresh.pop((r["dataset"], r["model"]), r) for r in previous]
    return out + list(fresh.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="keep the other (dataset, model) records in --output")
    parser.add_argument(
        "--speed", action="store_true", help="only time epochs against the naive loop (epoch_speed.json)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per candidate with --speed")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --output and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.output.read_text())))
        raise SystemExit(0)
    if args.speed:
        torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore")
        epoch_speed(tuple(args.datasets), args.hidden, args.repeats, SPEED_RESULTS)
        raise SystemExit(0)
    main(
        tuple(args.datasets),
        tuple(args.models),
        args.epochs,
        args.hidden,
        args.lr,
        args.threads,
        args.output,
        args.merge,
    )
