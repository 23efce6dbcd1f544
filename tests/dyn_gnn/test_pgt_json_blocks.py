"""PGT JSON read by snapshot: a rank parses and builds only its block, the same as the whole-file reader."""

from __future__ import annotations

import json
import tracemalloc
import warnings

import pytest
import torch

from lit_efficiency.core.errors import DataError
from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule
from lit_efficiency.dyn_gnn.graph import DynamicGraph, coalesce_edges
from lit_efficiency.dyn_gnn.sources import PGTJsonSource
from tests.dyn_gnn.test_sources import T, reference_graph, write_pgt_edge_mapping, write_pgt_snapshots

WRITERS = {"snapshots": write_pgt_snapshots, "edge_mapping": write_pgt_edge_mapping}


def _spy(monkeypatch) -> list[int]:
    """Record the snapshots whose edge tensors the source builds."""
    built: list[int] = []
    original = PGTJsonSource._snapshot

    def snapshot(self, t, n):
        built.append(t)
        return original(self, t, n)

    monkeypatch.setattr(PGTJsonSource, "_snapshot", snapshot)
    return built


@pytest.mark.parametrize("layout", ["snapshots", "edge_mapping"])
def test_a_block_builds_only_its_snapshots(tmp_path, monkeypatch, layout):
    ref = reference_graph()
    path = tmp_path / f"{layout}.json"
    WRITERS[layout](ref, path)
    whole = PGTJsonSource(str(path), lags=2).load()
    built = _spy(monkeypatch)
    want = {2, 3, 5}
    part = PGTJsonSource(str(path), lags=2).load(want)
    assert sorted(built) == sorted(want)  # one build each, none for the other snapshots
    for t in range(T):
        if t in want:
            assert torch.equal(part.edge_indices[t], whole.edge_indices[t])
            assert torch.equal(part.edge_weights[t], whole.edge_weights[t])
        else:
            assert part.edge_indices[t].shape[1] == 0
    assert torch.equal(part.x, whole.x) and torch.equal(part.y, whole.y)
    # a partitioned rank of the data module asks for its snapshots only (model inputs, halo, targets)
    built.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = DynamicGraphDataModule(
            PGTJsonSource(str(path)), partitioner="snapshot", world_size=2, rank=1, train_frac=0.5, val_frac=0.25
        )
        dm.setup("fit")
    load_builds = built[T:]  # edge_counts reads every snapshot's keys first
    assert sorted(built[:T]) == list(range(T))
    assert set(load_builds) == dm._needed_raw(set(dm.owned), T) and len(load_builds) < T


def test_peak_holds_the_text_and_one_block_not_every_snapshot(tmp_path):
    """Python objects at the peak of a one-snapshot load stay far below those of parsing the whole file."""
    gen = torch.Generator().manual_seed(0)
    n, steps = 400, 8
    edges = [coalesce_edges(torch.randint(n, (2, 3000), generator=gen), n).edge_index for _ in range(steps)]
    graph = DynamicGraph(num_nodes=n, edge_indices=edges, edge_weights=[torch.ones(e.shape[1]) for e in edges])
    doc = {"time_periods": steps, "node_ids": list(range(n))}
    doc |= {str(t): {"edges": e.T.tolist(), "weights": [1.0] * e.shape[1]} for t, e in enumerate(graph.edge_indices)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    del doc

    def peak(fn) -> int:
        tracemalloc.start()
        out = fn()
        got = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del out
        return got

    whole = peak(lambda: json.loads(path.read_text()))
    block = peak(lambda: PGTJsonSource(str(path)).load({3}))
    assert block < whole / 2, (block, whole)


def test_malformed_json_is_one_line_with_the_file_and_line(tmp_path):
    ref = reference_graph()
    path = tmp_path / "snaps.json"
    write_pgt_snapshots(ref, path)
    text = path.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"cut.json:1: invalid JSON \("):
        PGTJsonSource(str(tmp_path / "cut.json")).load()
    (tmp_path / "extra.json").write_text(text + "\n{}")
    with pytest.raises(DataError, match=r"extra.json:2: invalid JSON \(Extra data\)"):
        PGTJsonSource(str(tmp_path / "extra.json")).load()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"list.json: expected a JSON object"):
        PGTJsonSource(str(tmp_path / "list.json")).load()
    doc = json.loads(text)
    doc["3"] = [1, 2]
    (tmp_path / "three.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"three.json: snapshot '3' missing"):
        PGTJsonSource(str(tmp_path / "three.json")).load()
