"""Graph sources (edge list, PGT JSON in both layouts, PyG files, synthetic churn) against a graph built here, and the
one-line errors for bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lit_efficiency.cli import main
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule, SnapshotDataModule
from lit_efficiency.dyn_gnn.graph import DynamicGraph, coalesce_edges
from lit_efficiency.dyn_gnn.sources import (
    EdgeListSource,
    PGTJsonSource,
    PyGSource,
    SyntheticChurnSource,
    blank_snapshots,
)
from lit_efficiency.dyn_gnn.synthetic import synthetic_dynamic_graph

N, T = 12, 7


def reference_graph(seed: int = 0) -> DynamicGraph:
    """Random weighted graph with per-step node features (2) and targets; every snapshot has edges."""
    gen = torch.Generator().manual_seed(seed)
    edges, weights = [], []
    for _ in range(T):
        ei = torch.randint(N, (2, 18), generator=gen)
        ei = ei[:, ei[0] != ei[1]]
        merged = coalesce_edges(ei, N, torch.rand(ei.shape[1], generator=gen).mul(4).add(0.5).round())
        edges.append(merged.edge_index)
        weights.append(merged.edge_weight)
    x = torch.randint(0, 5, (T, N, 2), generator=gen).float()
    y = torch.randint(0, 9, (T, N), generator=gen).float()
    return DynamicGraph(num_nodes=N, edge_indices=edges, edge_weights=weights, x=x, y=y).validate()


def raw_id(node: int) -> int:
    """Raw ids in the files: sparse, increasing, one above 2**53 (must stay exact)."""
    return 2**53 + 1 + 1000 * node if node == N - 1 else 100 + 7 * node


def write_edge_list(graph: DynamicGraph, folder, sep: str = ",") -> dict:
    """CSV edge list (header, columns in an unusual order) + node feature and target files; returns source kwargs."""
    ext = {",": "csv", "\t": "tsv", " ": "txt"}[sep]
    lines = [sep.join(["when", "weight", "from", "to"])] if sep != " " else ["# time weight src dst"]
    for t, (ei, w) in enumerate(zip(graph.edge_indices, graph.edge_weights, strict=True)):
        for (u, v), wt in zip(ei.T.tolist(), w.tolist(), strict=True):
            lines.append(sep.join(map(str, [100 * t + 3 + (u % 5), wt, raw_id(u), raw_id(v)])))
    (folder / f"edges.{ext}").write_text("\n".join(lines) + "\n")
    feats, targets = ["node,time,deg,tri"], ["node,time,y"]
    for t in range(T):
        for u in range(N):
            feats.append(f"{raw_id(u)},{100 * t + 50},{graph.x[t, u, 0]:g},{graph.x[t, u, 1]:g}")
            targets.append(f"{raw_id(u)},{100 * t + 50},{graph.y[t, u]:g}")
    (folder / "x.csv").write_text("\n".join(feats) + "\n")
    (folder / "y.csv").write_text("\n".join(targets) + "\n")
    cols = {"src": "from", "dst": "to", "time": "when", "weight": "weight"} if sep != " " else {
        "src": 2, "dst": 3, "time": 0, "weight": 1}  # fmt: skip
    return {
        "path": str(folder / f"edges.{ext}"),
        **cols,
        "step_size": 100.0,
        "node_features": str(folder / "x.csv"),
        "node_targets": str(folder / "y.csv"),
    }


def write_pgt_snapshots(graph: DynamicGraph, path) -> None:
    """The twitter-tennis layout: per-snapshot dicts with edges, weights, X, y."""
    doc = {"time_periods": T, "node_ids": {str(i): i for i in range(N)}}
    for t in range(T):
        doc[str(t)] = {
            "edges": graph.edge_indices[t].T.tolist(),
            "weights": graph.edge_weights[t].tolist(),
            "X": graph.x[t].tolist(),
            "y": graph.y[t].tolist(),
        }
    path.write_text(json.dumps(doc))


def write_pgt_edge_mapping(graph: DynamicGraph, path) -> None:
    """The England-COVID layout: edge_mapping.edge_index / edge_weight per step and a y matrix."""
    doc = {
        "edge_mapping": {
            "edge_index": {str(t): graph.edge_indices[t].T.tolist() for t in range(T)},
            "edge_weight": {str(t): graph.edge_weights[t].tolist() for t in range(T)},
        },
        "time_periods": T,
        "y": graph.y.tolist(),
    }
    path.write_text(json.dumps(doc))


def write_pyg(graph: DynamicGraph, path) -> None:
    torch.save([d.to_dict() for d in graph.to_pyg_list()], path)


@pytest.mark.parametrize("sep", [",", "\t", " "])
def test_edge_list_source_rebuilds_the_graph(tmp_path, sep):
    ref = reference_graph()
    got = EdgeListSource(**write_edge_list(ref, tmp_path, sep)).load()
    assert got == ref  # edges, weights, carried features, summed targets
    assert got.node_ids[-1].item() == 2**53 + 1 + 1000 * (N - 1)  # exact, not rounded through a float


def test_pgt_json_layouts_and_pyg_file_rebuild_the_graph(tmp_path):
    ref = reference_graph()
    write_pgt_snapshots(ref, tmp_path / "snaps.json")
    assert PGTJsonSource(str(tmp_path / "snaps.json")).load() == ref
    write_pgt_edge_mapping(ref, tmp_path / "mapping.json")
    lagged = PGTJsonSource(str(tmp_path / "mapping.json"), lags=2).load()
    assert all(torch.equal(a, b) for a, b in zip(lagged.edge_indices, ref.edge_indices, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(lagged.edge_weights, ref.edge_weights, strict=True))
    assert torch.equal(lagged.y, ref.y)
    # features = targets of the last 2 steps, zeros before step 0
    assert torch.equal(lagged.x[0, :, 1], ref.y[0]) and torch.equal(lagged.x[0, :, 0], torch.zeros(N))
    assert torch.equal(lagged.x[3], torch.stack([ref.y[2], ref.y[3]], 1))
    write_pyg(ref, tmp_path / "g.pt")
    assert PyGSource(str(tmp_path / "g.pt")).load() == ref


def test_pyg_temporal_data_file_is_bucketed(tmp_path):
    from torch_geometric.data import TemporalData

    events = TemporalData(
        src=torch.tensor([0, 1, 2, 0]), dst=torch.tensor([1, 2, 0, 1]), t=torch.tensor([0, 5, 10, 12])
    )
    torch.save(events.to_dict(), tmp_path / "events.pt")
    got = PyGSource(str(tmp_path / "events.pt"), step_size=5.0).load()
    assert got.num_snapshots == 3 and got.num_edges_per_snapshot == [1, 1, 2]
    assert got.edge_weights[2].tolist() == [1.0, 1.0]


def test_sources_build_only_the_requested_snapshots(tmp_path):
    """A partitioned rank's request: the other snapshots hold no edge; features/targets stay whole."""
    ref = reference_graph()
    want = {2, 3, 4}
    expected = blank_snapshots(ref, want)
    assert [e.shape[1] == 0 for e in expected.edge_indices] == [t not in want for t in range(T)]
    write_pgt_snapshots(ref, tmp_path / "snaps.json")
    write_pyg(ref, tmp_path / "g.pt")
    for source in (
        EdgeListSource(**write_edge_list(ref, tmp_path)),
        PGTJsonSource(str(tmp_path / "snaps.json")),
        PyGSource(str(tmp_path / "g.pt")),
    ):
        assert source.load(want) == expected, type(source).__name__
        assert getattr(source, "_doc", None) is None  # PGT JSON: the parsed file is not held after load
        assert source.edge_counts(2) == ref.with_window(2).num_edges_per_snapshot
    churn = SyntheticChurnSource(num_nodes=30, num_snapshots=5, edges_per_snapshot=40, churn=0.2, num_node_features=0)
    full = synthetic_dynamic_graph(30, 5, 40, churn=0.2)
    assert churn.load() == full
    assert churn.load({1}).num_edges_per_snapshot == [0, 40, 0, 0, 0]
    assert churn.edge_counts(3) == synthetic_dynamic_graph(30, 5, 40, churn=0.2, window=3).num_edges_per_snapshot


def _sorted_copy(path, folder):
    """The edge file with its rows sorted by time (first column)."""
    header, *rows = path.read_text().splitlines()
    rows.sort(key=lambda row: float(row.split(",")[0]))
    out = folder / "sorted.csv"
    out.write_text("\n".join([header, *rows]) + "\n")
    return out, rows


def test_edge_list_reader_keeps_only_the_block_and_stops_past_it_when_sorted(tmp_path):
    """Chunked reading: a time-sorted file is read only up to the requested snapshots (rows counted), an unsorted one
    whole; both give the requested snapshots exactly; windowed edge counts equal those of the whole graph."""
    ref = reference_graph()
    kwargs = write_edge_list(ref, tmp_path)
    path, rows = _sorted_copy(Path(kwargs["path"]), tmp_path)
    steps = [int(float(row.split(",")[0]) // 100) for row in rows]
    for file, is_sorted in ((path, True), (kwargs["path"], False)):
        source = EdgeListSource(**{**kwargs, "path": str(file)})
        source.chunk_rows = 5
        for want in ({0, 1}, {3}, {5, 6}):
            assert source.load(want) == blank_snapshots(ref, want), (file, want)
            last = sum(1 for s in steps if s <= max(want))
            if is_sorted and last < len(rows):
                assert last < source.rows_read <= last + 5, (want, source.rows_read)
            else:
                assert source.rows_read == len(rows)
        for window in (1, 2, 3, 9):
            assert source.edge_counts(window) == ref.with_window(window).num_edges_per_snapshot
    # a partitioned rank of the data module asks only for its block: rank 0 of 2 stops early in the sorted file
    source = EdgeListSource(**{**kwargs, "path": str(path)})
    source.chunk_rows = 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = DynamicGraphDataModule(source, partitioner="snapshot", world_size=2, rank=0, block_size=2,
                                    train_frac=0.5, val_frac=0.25, test_frac=0.25)  # fmt: skip
        dm.setup("fit")
    held = max(t for t, e in enumerate(dm.graph.num_edges_per_snapshot) if e) + 1
    assert held < T and source.rows_read <= sum(1 for s in steps if s < held) + 5 < len(rows)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and row, exit status 2
# ---------------------------------------------------------------------------------------------------------------


def _cli_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-efficiency: error: "), err
    return err[0]


def _fit_args(tmp_path, source: dict, **data) -> list[str]:
    cfg = {
        "model": {"class_path": "lit_efficiency.dyn_gnn.task.DynGNNTask", "init_args": {"hidden_dim": 4, "out_dim": 4}},
        "data": {"class_path": "lit_efficiency.dyn_gnn.datamodule.DynamicGraphDataModule",
                 "init_args": {"source": source, "num_negatives": 2, **data}},
        "trainer": {"max_epochs": 1, "logger": False, "callbacks": [], "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return ["fit", "--config", str(tmp_path / "cfg.json")]


def test_non_finite_and_inexact_values_are_one_line_errors(tmp_path, capsys):
    csv = tmp_path / "e.csv"
    csv.write_text("src,dst,t,w\n0,1,0,1.0\n1,2,1,nan\n")
    src = {"class_path": "lit_efficiency.dyn_gnn.sources.EdgeListSource",
           "init_args": {"path": str(csv), "weight": "w", "step_size": 1.0}}  # fmt: skip
    assert f"{csv}:3: non-finite w value 'nan'" in _cli_error(capsys, _fit_args(tmp_path, src))
    txt = tmp_path / "e.txt"
    txt.write_text("0 1 0\n1 2 1.5e3\n2 1.0 2\n")
    src["init_args"] = {"path": str(txt), "step_size": 1.0}
    assert f"{txt}:3: column 1 value '1.0' is not an integer" in _cli_error(capsys, _fit_args(tmp_path, src))
    # built-in table formats parse ids through float64: an id above 2**53 is refused, not rounded
    uci = tmp_path / "graphs" / "uci_messages"
    uci.mkdir(parents=True)
    (uci / "CollegeMsg.txt").write_text("1 2 100\n9007199254740993 2 200\n")
    args = ["fit", "--config", "conf/dyn_gnn/uci_messages.yaml", "--data.data_dir", str(tmp_path),
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false"]  # fmt: skip
    err = _cli_error(capsys, args)
    assert "CollegeMsg.txt:2" in err and "2**53" in err
    bad = reference_graph()
    bad.x[4, 3, 1] = float("inf")
    write_pgt_snapshots(bad, tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"bad.json: snapshot '4' X\[3,1\]: non-finite value inf"):
        PGTJsonSource(str(tmp_path / "bad.json")).load()
    graph = reference_graph()
    graph.y[2, 0] = float("nan")
    with pytest.raises(DataError, match=r"y\[2, 0\] is non-finite"):
        graph.validate()


def test_unknown_dataset_window_beyond_horizon_and_empty_targets(tmp_path, capsys):
    err = _cli_error(capsys, ["fit", "--config", "conf/dyn_gnn/smoke.yaml", "--data.dataset", "nope"])
    assert "unknown dataset 'nope'" in err and "EdgeListSource" in err
    csv = tmp_path / "e.csv"
    csv.write_text("0,1,0\n1,2,1\n2,0,2\n")
    src = {"class_path": "lit_efficiency.dyn_gnn.sources.EdgeListSource",
           "init_args": {"path": str(csv), "step_size": 1.0}}  # fmt: skip
    assert "data.window=5 is larger than the 3 snapshots" in _cli_error(capsys, _fit_args(tmp_path, src, window=5))
    # step 2 of 5 empty: its pair is skipped with a warning; an empty training period is an error
    csv.write_text("0,1,0\n1,2,1\n2,0,3\n0,2,4\n1,0,5\n")
    dm = DynamicGraphDataModule(EdgeListSource(str(csv), step_size=1.0), num_negatives=1, train_frac=0.6)
    with pytest.warns(UserWarning, match=r"snapshots \[2\] have no edges"):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert [tg is None for tg in batch.targets] == [False, True, False]
    csv.write_text("0,1,0\n1,2,3\n2,0,4\n")
    dm = DynamicGraphDataModule(EdgeListSource(str(csv), step_size=1.0), train_frac=0.5, val_frac=0.25)
    with warnings.catch_warnings(), pytest.raises(DataError, match="every training target snapshot is empty"):
        warnings.simplefilter("ignore")
        dm.setup("fit")
    with pytest.raises(ConfigError, match="data.storage: unknown value 'disk'"):
        SnapshotDataModule(storage="disk")
