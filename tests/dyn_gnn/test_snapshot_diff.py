"""Tests of lit_efficiency.dyn_gnn.codec against independent references.

References: Python sets and per-element loops for the diffs and the checksum, a fresh decode/encode for round trips,
``torch_geometric``'s ``gcn_norm`` / ``to_torch_csr_tensor`` and a dense hand computation for the GCN normalisation,
and the numbers in ``docs/dynamic_gnn.md`` (measured from the raw files) for the real datasets.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from lit_efficiency.core.errors import DataError
from lit_efficiency.core.paths import resolve_data_root
from lit_efficiency.dyn_gnn.adjacency import csr_from_keys, gcn_norm_adj_t, key_dtype, split_key, transpose_keys
from lit_efficiency.dyn_gnn.codec import (
    HEADER_BYTES,
    FullSnapshot,
    SnapshotDiff,
    decode_block,
    decode_snapshot,
    encode_graph,
    encode_snapshots,
    iter_decode,
    position_dtype,
    snapshot_checksum,
    theoretical_bytes_ratio,
    transfer_stats,
)

# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def _edge_index(keys: torch.Tensor, n: int) -> torch.Tensor:
    keys = keys.to(torch.int64)
    return torch.stack([keys // n, keys % n])


def _random_sequence(
    n: int, steps: int, edges: int, churn: float, weighted: bool, seed: int, weight_change: float = 0.1
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Snapshots where a fraction ``churn`` of the edges is replaced per step (plus a full turnover, an empty step)."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(0, n * n, (edges,), generator=gen))
    weights = torch.rand(keys.numel(), generator=gen)
    all_keys, all_w = [keys], [weights]
    for t in range(1, steps):
        if t == steps // 2:  # complete turnover
            keep = torch.zeros(keys.numel(), dtype=torch.bool)
        else:
            keep = torch.rand(keys.numel(), generator=gen) >= churn
        new = torch.randint(0, n * n, (max(1, int(churn * edges)),), generator=gen)
        merged = torch.cat([keys[keep], new])
        w_merged = torch.cat([weights[keep], torch.rand(new.numel(), generator=gen)])
        # unique over keys; keep the first weight of duplicates
        uniq, inv = torch.unique(merged, return_inverse=True)
        first = torch.full((uniq.numel(),), merged.numel(), dtype=torch.int64).scatter_reduce(
            0, inv, torch.arange(merged.numel()), reduce="amin"
        )
        keys, weights = uniq, w_merged[first].clone()
        change = torch.rand(keys.numel(), generator=gen) < weight_change
        weights[change] = torch.rand(int(change.sum()), generator=gen)
        if t == steps - 2:  # an empty snapshot
            keys, weights = keys[:0], weights[:0]
        all_keys.append(keys)
        all_w.append(weights)
    return [_edge_index(k, n) for k in all_keys], (all_w if weighted else None)


def _assert_same(keys: torch.Tensor, weights: torch.Tensor | None, ei: torch.Tensor, w: torch.Tensor | None, n: int):
    expected = ei[0] * n + ei[1]
    assert keys.dtype == key_dtype(n)
    assert torch.equal(keys.to(torch.int64), expected)
    if w is None:
        assert weights is None
    else:
        assert weights is not None and weights.dtype == w.dtype
        assert torch.equal(weights.view(torch.int32), w.view(torch.int32))  # bit-exact, -0.0 and NaN included


def _py_checksum(keys: list[int], weights: list[float] | None) -> int:
    """Per-element Python re-implementation of the documented checksum formula (unbounded ints)."""
    import struct

    p = 2**31 - 1

    def lane(values, k1, k2, c, d):
        total = 0
        for i, v in enumerate(values):
            a = ((v % p) * k1 + k2) % p
            total += (a * a % p) * ((i * c + d) % p) % p
        return total % p

    hk = lane(keys, 1_103_515_245, 12_345, 2_654_435_761 % p, 97_531)
    if weights is None:
        return hk * 2**31
    bits = [struct.unpack("<i", struct.pack("<f", w))[0] for w in weights]
    return hk * 2**31 + lane(bits, 48_271, 1_013_904_223, 40_503, 7_777_777)


# --------------------------------------------------------------------------------------------------------------------
# dtypes, checksum
# --------------------------------------------------------------------------------------------------------------------


def test_key_and_position_dtypes():
    assert key_dtype(46_340) == torch.int32  # 46340^2 = 2_147_395_600 < 2^31
    assert key_dtype(46_341) == torch.int64
    assert position_dtype(2**31 - 1) == torch.int32
    assert position_dtype(2**31) == torch.int64


def test_checksum_matches_python_reference_and_is_dtype_invariant():
    keys = [0, 5, 17, 2**31 - 1, 2**40 + 3]
    weights = [0.5, -0.0, 3.25, float("nan"), 1e-30]
    k = torch.tensor(keys)
    w = torch.tensor(weights, dtype=torch.float32)
    assert int(snapshot_checksum(k, w)) == _py_checksum(keys, weights)
    assert int(snapshot_checksum(k)) == _py_checksum(keys, None)
    small = torch.tensor(keys[:3])
    assert int(snapshot_checksum(small.to(torch.int32))) == int(snapshot_checksum(small))
    assert int(snapshot_checksum(k[:0])) == 0
    # order, value and sign-bit sensitivity
    assert int(snapshot_checksum(k.flip(0), w.flip(0))) != int(snapshot_checksum(k, w))
    w2 = w.clone()
    w2[1] = 0.0
    assert int(snapshot_checksum(k, w2)) != int(snapshot_checksum(k, w))


# --------------------------------------------------------------------------------------------------------------------
# encode: diff contents and adaptive choice
# --------------------------------------------------------------------------------------------------------------------


def test_diff_contents_match_set_reference():
    n = 10
    prev = [3, 7, 12, 40, 41, 99]
    cur = [0, 7, 12, 41, 55, 98, 99]
    prev_w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    cur_w = [9.0, 2.0, -3.0, 5.0, 1.0, 1.5, 6.0]
    eis = [_edge_index(torch.tensor(prev), n), _edge_index(torch.tensor(cur), n)]
    enc = encode_snapshots(eis, n, [torch.tensor(prev_w), torch.tensor(cur_w)])
    assert enc.kinds == ["full", "diff"]
    diff = enc[1]
    assert isinstance(diff, SnapshotDiff)
    assert diff.added_keys.tolist() == sorted(set(cur) - set(prev)) == [0, 55, 98]
    assert diff.added_weights.tolist() == [9.0, 1.0, 1.5]
    assert diff.deleted_pos.tolist() == [i for i, k in enumerate(prev) if k not in cur] == [0, 3]
    assert diff.changed_pos.tolist() == [2]  # key 12 (prev position 2): 3.0 -> -3.0
    assert diff.changed_weights.tolist() == [-3.0]
    assert diff.deleted_pos.dtype == torch.int32 and diff.added_keys.dtype == torch.int32
    assert diff.num_entries == 2 + 3 + 1
    # bytes: header + 2 positions + 3 keys + 3 weights + 1 position + 1 weight, all 4 bytes
    assert diff.nbytes == HEADER_BYTES + 4 * (2 + 3 + 3 + 1 + 1)
    assert enc.full_nbytes[1] == HEADER_BYTES + 4 * 2 * len(cur)


def _unweighted_pair(n_prev: int, n_del: int, n_add: int) -> list[torch.Tensor]:
    prev = torch.arange(0, 2 * n_prev, 2)
    cur = torch.cat([prev[n_del:], torch.arange(1, 2 * n_add, 2) + 10_000]).sort().values
    return [_edge_index(prev, 200), _edge_index(cur, 200)]


@pytest.mark.parametrize(
    ("n_del", "n_add", "expected"),
    [
        (1, 1, "diff"),  # diff 2 entries < full 8 entries
        (4, 4, "full"),  # diff 8 entries == full 8 entries: a tie ships full
        (4, 5, "full"),  # diff 9 entries > full 9 entries
        (3, 4, "diff"),  # diff 7 entries < full 9 entries
    ],
)
def test_adaptive_choice_diff_exactly_when_smaller(n_del, n_add, expected):
    enc = encode_snapshots(_unweighted_pair(8, n_del, n_add), 200)
    assert enc.kinds == ["full", expected]
    diff_bytes = HEADER_BYTES + 4 * (n_del + n_add)  # int32 positions and keys
    full_bytes = HEADER_BYTES + 4 * (8 - n_del + n_add)
    assert enc.full_nbytes[1] == full_bytes
    assert (expected == "diff") == (diff_bytes < full_bytes)
    assert enc[1].nbytes == min(diff_bytes, full_bytes)
    assert enc.encoded_bytes() == enc.full_nbytes[0] + min(diff_bytes, full_bytes)


def test_adaptive_choice_on_random_sequence_matches_set_reference():
    n = 300
    eis, ws = _random_sequence(n, 12, 2000, 0.3, weighted=True, seed=3, weight_change=0.2)
    enc = encode_snapshots(eis, n, ws)
    assert enc.kinds[0] == "full"
    assert set(enc.kinds[1:]) == {"full", "diff"}  # both choices occur
    for t in range(1, len(eis)):
        prev = (eis[t - 1][0] * n + eis[t - 1][1]).tolist()
        cur = (eis[t][0] * n + eis[t][1]).tolist()
        pw = dict(zip(prev, ws[t - 1].tolist(), strict=True))
        cw = dict(zip(cur, ws[t].tolist(), strict=True))
        added = set(cur) - set(prev)
        deleted = set(prev) - set(cur)
        changed = [k for k in set(cur) & set(prev) if pw[k] != cw[k]]
        diff_bytes = HEADER_BYTES + 4 * len(deleted) + 8 * len(added) + 8 * len(changed)
        full_bytes = HEADER_BYTES + 8 * len(cur)
        assert enc.full_nbytes[t] == full_bytes
        assert enc.kinds[t] == ("diff" if diff_bytes < full_bytes else "full"), t
        assert enc.diff_entries[t] == len(added) + len(deleted) + len(changed)


# --------------------------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("n", "churn"), [(40, 0.05), (300, 0.3), (50_000, 0.1)])
def test_roundtrip_random_bit_exact(n, churn, weighted):
    eis, ws = _random_sequence(n, 10, 800, churn, weighted, seed=n)
    enc = encode_snapshots(eis, n, ws)
    assert enc.kinds.count("diff") >= len(eis) // 2  # the diff path is exercised
    decoded = list(iter_decode(enc))
    assert [d.t for d in decoded] == list(range(len(eis)))
    for d in decoded:
        _assert_same(d.keys, d.weights, eis[d.t], None if ws is None else ws[d.t], n)
        assert torch.equal(torch.stack(split_key(d.keys, n)), eis[d.t])


def test_roundtrip_special_weights_and_encode_graph_duck_typing():
    n = 5
    k0, k1 = torch.tensor([1, 6, 7, 24]), torch.tensor([1, 6, 8, 24])
    w0 = torch.tensor([0.0, float("nan"), 1.0, 2.0])
    w1 = torch.tensor([-0.0, float("nan"), 3.0, 2.0])  # sign-bit change of a zero must ship
    graph = SimpleNamespace(num_nodes=n, edge_indices=[_edge_index(k0, n), _edge_index(k1, n)], edge_weights=[w0, w1])
    enc = encode_graph(graph)
    assert enc.weighted and enc[1].kind == "diff"
    assert enc[1].changed_pos.tolist() == [0]
    for d, w in zip(iter_decode(enc), [w0, w1], strict=True):
        assert torch.equal(d.weights.view(torch.int32), w.view(torch.int32))
    unweighted = encode_graph(SimpleNamespace(num_nodes=n, edge_indices=graph.edge_indices))
    assert not unweighted.weighted and unweighted[1].added_weights is None


def test_stats_and_theoretical_ratio():
    eis = _unweighted_pair(8, 1, 1)
    stats = transfer_stats(eis, 200)
    assert stats.full_entries == 16 and stats.diff_entries == 8 + 2
    assert stats.entries_ratio == pytest.approx(1.6)
    assert stats.full_bytes == 2 * HEADER_BYTES + 4 * 16
    assert stats.encoded_bytes == 2 * HEADER_BYTES + 4 * 10
    # full 8 entries * 4 B over (1 position + 1 key) * 4 B; weighted: 8*8 / (4 + 8 + 2*(4+4))
    assert theoretical_bytes_ratio(8, 1, 1, num_nodes=200) == pytest.approx(4.0)
    assert theoretical_bytes_ratio(8, 1, 1, num_nodes=200, num_changed=2, weight_bytes=4) == pytest.approx(64 / 28)
    assert theoretical_bytes_ratio(8, 1, 1, num_nodes=100_000) == pytest.approx(64 / 12)


# --------------------------------------------------------------------------------------------------------------------
# corruption and bad input
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def encoded_weighted():
    n = 80
    eis, ws = _random_sequence(n, 8, 600, 0.05, weighted=True, seed=5)
    enc = encode_snapshots(eis, n, ws)
    assert enc.kinds[3] == "diff" and enc[3].changed_pos.numel() > 0
    states = [(d.keys, d.weights) for d in iter_decode(enc)]
    return enc, states


def _corruptions(item: SnapshotDiff) -> dict[str, tuple[SnapshotDiff, str]]:
    bad_pos = item.deleted_pos.clone()
    bad_pos[-1] = item.prev_num_edges
    bad_key = item.added_keys.clone()
    bad_key[-1] = item.num_nodes * item.num_nodes
    wrong_key = item.added_keys.clone()
    wrong_key[0] += 1 if int(wrong_key[0]) + 1 < int(wrong_key[1]) else -1
    return {
        "checksum": (dataclasses.replace(item, checksum=item.checksum ^ 1), "checksum mismatch"),
        "truncated deleted": (dataclasses.replace(item, deleted_pos=item.deleted_pos[:-1]), "truncated diff"),
        "truncated added": (dataclasses.replace(item, added_keys=item.added_keys[:-1]), "truncated diff"),
        "truncated weights": (dataclasses.replace(item, added_weights=item.added_weights[:-1]), "truncated diff"),
        "truncated changed": (dataclasses.replace(item, changed_weights=item.changed_weights[:-1]), "truncated"),
        "position out of range": (dataclasses.replace(item, deleted_pos=bad_pos), "out of range"),
        "negative position": (dataclasses.replace(item, changed_pos=item.changed_pos * 0 - 1), "out of range"),
        "key out of range": (dataclasses.replace(item, added_keys=bad_key), "out of range"),
        "wrong key value": (dataclasses.replace(item, added_keys=wrong_key), "checksum mismatch"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "checksum",
        "truncated deleted",
        "truncated added",
        "truncated weights",
        "truncated changed",
        "position out of range",
        "negative position",
        "key out of range",
        "wrong key value",
    ],
)
def test_corrupted_diff_raises_one_line_data_error(encoded_weighted, case):
    enc, states = encoded_weighted
    bad, message = _corruptions(enc[3])[case]
    with pytest.raises(DataError, match=message) as info:
        decode_snapshot(*states[2], bad)
    assert str(info.value).startswith("snapshot 3:") and "\n" not in str(info.value)
    # the same corruption met while streaming the whole sequence
    items = list(enc.items)
    items[3] = bad
    with pytest.raises(DataError, match="snapshot 3:"):
        list(iter_decode(dataclasses.replace(enc, items=tuple(items))))


def test_corrupted_full_snapshot_and_diff_raise(encoded_weighted):
    enc, states = encoded_weighted
    full = enc[0]
    assert isinstance(full, FullSnapshot)
    with pytest.raises(DataError, match=r"^snapshot 0: truncated snapshot"):
        decode_snapshot(None, None, dataclasses.replace(full, keys=full.keys[:-1]))
    flipped = full.weights.clone()
    flipped[0] = -flipped[0]
    with pytest.raises(DataError, match=r"^snapshot 0: checksum mismatch"):
        decode_snapshot(None, None, dataclasses.replace(full, weights=flipped))
    with pytest.raises(DataError, match=r"^snapshot 3: diff expects a previous snapshot"):
        decode_snapshot(*states[1], enc[3])


def test_encode_rejects_non_canonical_input():
    n = 10
    good = _edge_index(torch.tensor([1, 5, 9]), n)
    with pytest.raises(DataError, match=r"^snapshot 1: edges not in canonical order"):
        encode_snapshots([good, good.flip(1)], n)
    with pytest.raises(DataError, match=r"^snapshot 1: edges not in canonical order"):
        encode_snapshots([good, _edge_index(torch.tensor([1, 5, 5]), n)], n)
    with pytest.raises(DataError, match=r"^snapshot 0: vertex id out of range"):
        encode_snapshots([torch.tensor([[0], [10]])], n)
    with pytest.raises(DataError, match=r"^snapshot 1: edge weights must have shape"):
        encode_snapshots([good, good], n, [torch.ones(3), torch.ones(2)])
    with pytest.raises(DataError, match=r"^snapshot 0: weights missing"):
        encode_snapshots([good, good], n, [None, torch.ones(3)])
    with pytest.raises(DataError, match=r"^snapshot 1: edge weights are torch.float64"):
        encode_snapshots([good, good], n, [torch.ones(3), torch.ones(3, dtype=torch.float64)])


# --------------------------------------------------------------------------------------------------------------------
# CSR and GCN normalisation rebuilt from keys
# --------------------------------------------------------------------------------------------------------------------


def test_gcn_norm_dense_hand_computed():
    # path 0-1-2 (symmetric) plus isolated vertex 3: A + I has degrees 2, 3, 2, 1
    n = 4
    keys = torch.tensor([0 * n + 1, 1 * n + 0, 1 * n + 2, 2 * n + 1], dtype=torch.int32)
    dense = gcn_norm_adj_t(keys, n).to_sparse_csr().to_dense()  # symmetric: adj_t == adj
    d = torch.tensor([2.0, 3.0, 2.0, 1.0]).rsqrt()
    a = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(dense, d[:, None] * a * d[None, :])


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None, reason="needs torch_geometric")
@pytest.mark.parametrize("weighted", [False, True])
def test_csr_and_gcn_norm_match_pyg(weighted):
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import to_torch_csr_tensor

    n = 30
    eis, ws = _random_sequence(n, 4, 150, 0.2, weighted=True, seed=9)
    # add self-loops to some vertices of the last snapshot (they keep their weight, as PyG's gcn_norm does)
    keys = torch.unique(torch.cat([eis[1][0] * n + eis[1][1], torch.tensor([0, 3 * (n + 1), 7 * (n + 1)])]))
    ei = _edge_index(keys, n)
    w = torch.rand(keys.numel()) + 0.5 if weighted else None
    for edge_index, weights in [(eis[0], ws[0] if weighted else None), (ei, w)]:
        enc = encode_snapshots([eis[0], edge_index], n, [ws[0], weights] if weighted else None)
        k, dw = list(iter_decode(enc))[-1][1:]
        csr = csr_from_keys(k, n, dw)
        ref = to_torch_csr_tensor(edge_index, weights, size=(n, n))
        assert torch.equal(csr.crow_indices, ref.crow_indices())
        assert torch.equal(csr.col_indices, ref.col_indices())
        if weighted:
            assert torch.equal(csr.values, ref.values())
        ref_ei, ref_w = gcn_norm(edge_index, weights, n, add_self_loops=True)
        ref_dense = torch.sparse_coo_tensor(ref_ei, ref_w, (n, n)).to_dense()
        kt, wt = transpose_keys(k, n, dw)
        norm = gcn_norm_adj_t(kt, n, wt)
        torch.testing.assert_close(norm.to_sparse_csr().to_dense(), ref_dense.t())  # ours is [target, source]
        # canonical order of the normalised entries, self-loops included
        norm_keys = norm.col_indices + n * torch.repeat_interleave(torch.arange(n), norm.crow_indices.diff())
        assert bool((norm_keys.diff() > 0).all())
        assert norm_keys.numel() == ref_w.numel()


# --------------------------------------------------------------------------------------------------------------------
# real datasets (shared data); numbers of docs/dynamic_gnn.md
# --------------------------------------------------------------------------------------------------------------------


def _data_file(*parts: str):
    root = resolve_data_root()
    path = None if root is None else root.joinpath("graphs", *parts)
    if path is None or not path.is_file():
        pytest.skip(f"shared data file graphs/{'/'.join(parts)} not available")
    return path


def _raw_steps(name: str) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Independent minimal reader: chess = one snapshot per distinct month stamp, tennis = the JSON's hours."""
    _data_file(*_FILES[name])
    return _read_raw_steps(name)


_FILES = {"chess": ("chess", "out.chess.csv"), "twitter_tennis": ("twitter_tennis", "twitter_tennis_rg17.json")}


@functools.cache
def _read_raw_steps(name: str) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    if name == "chess":
        rows = [ln.split() for ln in _data_file("chess", "out.chess.csv").read_text().splitlines() if ln[:1] != "%"]
        u = torch.tensor([int(r[0]) for r in rows]) - 1
        v = torch.tensor([int(r[1]) for r in rows]) - 1
        _, step = torch.unique(torch.tensor([float(r[3]) for r in rows], dtype=torch.float64), return_inverse=True)
        return [(u[step == s], v[step == s]) for s in range(int(step.max()) + 1)], int(max(u.max(), v.max())) + 1
    data = json.loads(_data_file("twitter_tennis", "twitter_tennis_rg17.json").read_text())
    steps = []
    for t in range(data["time_periods"]):
        e = torch.tensor(data[str(t)]["edges"], dtype=torch.int64).reshape(-1, 2)
        steps.append((e[:, 0], e[:, 1]))
    return steps, 1000


def _windowed(steps, n: int, window: int) -> list[torch.Tensor]:
    out = []
    for t in range(len(steps)):
        lo = max(0, t - window + 1)
        u = torch.cat([s[0] for s in steps[lo : t + 1]])
        v = torch.cat([s[1] for s in steps[lo : t + 1]])
        out.append(_edge_index(torch.unique(u * n + v), n))
    return out


@pytest.mark.parametrize(
    ("name", "window", "doc_ratio"),
    [("chess", 1, 0.51), ("chess", 10, 5.1), ("twitter_tennis", 1, 0.61), ("twitter_tennis", 10, 6.6)],
)
def test_real_data_roundtrip_and_doc_entry_ratios(name, window, doc_ratio):
    steps, n = _raw_steps(name)
    eis = _windowed(steps, n, window)
    enc = encode_snapshots(eis, n)
    stats = enc.stats()
    # dynamic_gnn.md: entries shipped, full / diff-encoded (snapshot 0 full, every later one as a diff)
    assert stats.entries_ratio == pytest.approx(doc_ratio, abs=0.06)
    assert stats.bytes_ratio >= 1.0
    assert (window == 1) == (enc.kinds.count("diff") == 0)
    decoded = list(iter_decode(enc))
    for d in decoded:
        _assert_same(d.keys, d.weights, eis[d.t], None, n)


@pytest.mark.skipif(
    importlib.util.find_spec("lit_efficiency.dyn_gnn.datasets") is None, reason="graph_loaders not present"
)
@pytest.mark.parametrize(("name", "window", "doc_ratio"), [("chess", 10, 5.1), ("twitter_tennis", 10, 6.6)])
def test_loader_graphs_roundtrip_weighted(name, window, doc_ratio):
    from lit_efficiency.dyn_gnn.datasets import load_dataset

    _data_file(*_FILES[name])
    graph = load_dataset(name, window=window, download=False)
    enc = encode_graph(graph)
    assert enc.weighted == (graph.edge_weights is not None)
    assert transfer_stats(graph.edge_indices, graph.num_nodes).entries_ratio == pytest.approx(doc_ratio, abs=0.06)
    decoded = list(iter_decode(enc))
    for d in decoded:
        ws = None if graph.edge_weights is None else graph.edge_weights[d.t]
        _assert_same(d.keys, d.weights, graph.edge_indices[d.t], ws, graph.num_nodes)


# --------------------------------------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_decode_on_cuda_matches_cpu():
    n = 2000
    eis, ws = _random_sequence(n, 8, 20_000, 0.05, weighted=True, seed=1)
    enc = encode_snapshots(eis, n, ws).pin_memory()
    for d_gpu, d_cpu in zip(iter_decode(enc, "cuda"), iter_decode(enc, "cpu"), strict=True):
        assert d_gpu.keys.is_cuda
        assert torch.equal(d_gpu.keys.cpu(), d_cpu.keys) and torch.equal(d_gpu.weights.cpu(), d_cpu.weights)
        norm_gpu, norm_cpu = gcn_norm_adj_t(d_gpu.keys, n, d_gpu.weights), gcn_norm_adj_t(d_cpu.keys, n, d_cpu.weights)
        assert torch.equal(norm_gpu.crow_indices.cpu(), norm_cpu.crow_indices)
        torch.testing.assert_close(norm_gpu.values.cpu(), norm_cpu.values)


@pytest.mark.parametrize("case", ["checksum", "position out of range", "key out of range", "wrong key value"])
def test_decode_block_defers_checks_to_one_call_naming_the_snapshot(encoded_weighted, case):
    """A whole block decodes with its checks deferred: equal to iter_decode when clean; a corrupted item in the
    middle is reported by ``raise_if_failed`` (not before) with the same one-line message as decode_snapshot."""
    enc, states = encoded_weighted
    decoded, check = decode_block(None, None, enc.items)
    check.raise_if_failed()
    assert len(decoded) == len(states)
    for (keys, weights), (ref_keys, ref_weights) in zip(decoded, states, strict=True):
        assert torch.equal(keys, ref_keys) and torch.equal(weights, ref_weights)
    bad, message = _corruptions(enc[3])[case]
    items = list(enc.items)
    items[3] = bad
    _, check = decode_block(None, None, items)  # no error yet: nothing has been read back
    assert check.flags is not None and check.flags.tolist() == [False, False, False, True] + [False] * (len(items) - 4)
    with pytest.raises(DataError, match=message) as info:
        check.raise_if_failed()
    assert str(info.value).startswith("snapshot 3:") and "\n" not in str(info.value)


@pytest.mark.gpu
def test_decode_block_on_cuda_has_no_host_synchronisation():
    """The block decodes and queues its checks under ``set_sync_debug_mode("error")``; only the check synchronises."""
    n = 2000
    eis, ws = _random_sequence(n, 8, 20_000, 0.05, weighted=True, seed=1)
    enc = encode_snapshots(eis, n, ws).pin_memory()
    from lit_efficiency.dyn_gnn.streaming import ship_item

    items = [ship_item(item, torch.device("cuda")) for item in enc.items]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        decoded, check = decode_block(None, None, items, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    check.raise_if_failed()
    for (keys, weights), ref in zip(decoded, iter_decode(enc, "cpu"), strict=True):
        assert torch.equal(keys.cpu(), ref.keys) and torch.equal(weights.cpu(), ref.weights)
