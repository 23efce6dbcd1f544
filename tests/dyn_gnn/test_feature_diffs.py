"""Streamed storage ships per-snapshot node features as the rows that changed (feature_codec + streaming)."""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lit_efficiency.core.errors import DataError
from lit_efficiency.dyn_gnn.codec import HEADER_BYTES
from lit_efficiency.dyn_gnn.datamodule import DynamicGraphDataModule
from lit_efficiency.dyn_gnn.feature_codec import FeatureFull, FeatureRows, decode_features, encode_features
from lit_efficiency.dyn_gnn.sources import PyGSource
from lit_efficiency.dyn_gnn.task import DynGNNTask
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.dyn_gnn.test_composed_data import DATA, _fit, _task
from tests.dyn_gnn.test_sources import N, T, reference_graph, write_pyg


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_changed_rows_by_hand():
    """4 nodes x 2 features: two changed rows ship 48 + 2 * 4 + 2 * 8 bytes instead of 48 + 32; all changed: whole."""
    x = torch.arange(24, dtype=torch.float32).reshape(3, 4, 2)
    x[1] = x[0]
    x[1, 0, 0] = -0.0  # equal to 0.0 as a float, a different bit pattern: shipped
    x[1, 2] = torch.tensor([-1.0, 7.5])
    x[2] = x[1] + 1
    items = encode_features(x, [True, True, True])
    assert isinstance(items[0], FeatureFull) and isinstance(items[2], FeatureFull)
    assert isinstance(items[1], FeatureRows) and items[1].rows.tolist() == [0, 2]
    assert (items[0].nbytes, items[1].nbytes) == (HEADER_BYTES + 32, HEADER_BYTES + 8 + 16)
    got = decode_features(None, items, torch.device("cpu"))  # type: ignore[arg-type]
    assert all(torch.equal(g.view(torch.int32), x[t].view(torch.int32)) for t, g in enumerate(got))
    # a run starting after a snapshot not held starts whole; transfer=full ships every snapshot whole
    assert isinstance(encode_features(x, [True, False, True])[2], FeatureFull)
    assert encode_features(x, [False, True, True])[0] is None
    assert all(isinstance(i, FeatureFull) for i in encode_features(x, [True] * 3, rows=False))
    with pytest.raises(DataError, match=r"^snapshot 1: changed feature rows need"):
        decode_features(None, [items[1]], torch.device("cpu"))  # type: ignore[list-item]
    with pytest.raises(DataError, match=r"^snapshot 1: truncated feature rows"):
        bad = dataclasses.replace(items[1], values=items[1].values[:, :1])  # type: ignore[arg-type]
        decode_features(got[0], [bad], torch.device("cpu"))


def _slowly_changing(folder):
    """The reference graph with features that change in one or two rows per step, as a PyG list file."""
    ref = reference_graph()
    gen = torch.Generator().manual_seed(3)
    x = torch.empty(T, N, 3)
    x[0] = torch.randn(N, 3, generator=gen)
    for t in range(1, T):
        x[t] = x[t - 1]
        rows = torch.randperm(N, generator=gen)[: 1 + t % 2]
        x[t, rows] = torch.randn(len(rows), 3, generator=gen)
    write_pyg(dataclasses.replace(ref, x=x), folder / "g.pt")
    return PyGSource(str(folder / "g.pt"))


def _features(dm):
    """Every validation block's features as the model receives them (after the device transfer)."""
    dm.setup("fit")
    return [dm.transfer_batch_to_device(b, torch.device("cpu"), 0).x for b in dm.val_dataloader()]


def test_streamed_features_are_bit_identical_and_fewer_bytes(tmp_path):
    source = _slowly_changing(tmp_path)
    kw = {**DATA, "use_edge_weights": True, "eval_block_size": 2}
    resident = DynamicGraphDataModule(source, **kw)
    streamed = DynamicGraphDataModule(source, storage="streamed", **kw)
    ref, got = _features(resident), _features(streamed)
    assert len(ref) == len(got) > 1 and all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    store = streamed.store
    assert store.x is None and store.feature_size == 3 == streamed.num_features
    assert [type(i).__name__ for i in store.x_items] == ["FeatureFull"] + ["FeatureRows"] * (T - 1)
    shipped = sum(i.nbytes for i in store.x_items)
    full = T * (HEADER_BYTES + N * 3 * 4)
    assert shipped == HEADER_BYTES * T + N * 12 + sum(i.rows.numel() * 16 for i in store.x_items[1:])
    assert shipped < full
    # the transfer log counts the feature rows: an out-of-order block ships its predecessor whole
    events = streamed.transfer_recorder.drain()
    assert sum(e.full_bytes for e in events) - sum(e.h2d_bytes for e in events) > 0
    streamed._last_x = None
    batch = next(iter(streamed.val_dataloader()))
    batch = dataclasses.replace(batch, t0=2, items=store.items[2:4], x_items=store.x_items[2:4])
    streamed._last = None
    out = streamed.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert torch.equal(out.x, ref[1])


@pytest.mark.parametrize("partitioner", ["none", "snapshot"])
def test_streamed_features_train_like_resident(tmp_path, partitioner):
    """Identical losses: resident versus streamed storage (features shipped as changed rows)."""
    source = _slowly_changing(tmp_path)
    ref_dm = DynamicGraphDataModule(source, use_edge_weights=True, **DATA)
    ref_model = _task(DynGNNTask, ref_dm, "link_prediction", None)
    init = copy.deepcopy(ref_model.state_dict())
    ref = _fit(ref_dm, ref_model).losses
    dm = DynamicGraphDataModule(source, storage="streamed", partitioner=partitioner, use_edge_weights=True, **DATA)
    cls = DistributedDynGNNTask if partitioner == "snapshot" else DynGNNTask
    got = _fit(dm, _task(cls, dm, "link_prediction", init)).losses
    assert any(isinstance(i, FeatureRows) for i in dm.store.x_items)
    assert torch.equal(torch.tensor(got), torch.tensor(ref))


def test_snapshot_transfer_feature_row_bytes_by_hand(tmp_path):
    """The benchmark's feature row: full = T (48 + 4 N F); rows = one full matrix + per step 48 + R (4 + 4 F)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import snapshot_transfer

    args = ["--datasets", "none", "--synthetic-edges", "0", "--feature-nodes", "400", "--feature-dim", "8",
            "--synthetic-snapshots", "4", "--repeats", "1", "--out", str(tmp_path / "st.json")]  # fmt: skip
    (rec,) = snapshot_transfer.main(args)
    full = HEADER_BYTES + 4 * 400 * 8
    assert rec["exact"] and rec["row_items"] == 3 and rec["full_bytes"] == 4 * full
    rows_bytes = rec["diff_bytes"] - full - 3 * HEADER_BYTES
    assert rows_bytes % (4 + 4 * 8) == 0 and 0 < rows_bytes // (4 + 4 * 8) < 3 * 400 * 0.1
    assert rec["bytes_ratio"] > 3
