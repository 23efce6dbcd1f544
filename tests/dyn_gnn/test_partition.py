"""Partition plans and traffic formulas (pure functions) against brute force and hand-computed cases."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lit_efficiency.dyn_gnn.partition import (
    RedistributionPlan,
    alltoall_bytes,
    alltoall_bytes_exact,
    check_blocks,
    halo_bytes,
    plan_redistribution,
    snapshot_blocks,
    vertex_blocks,
)


def _brute_force_objective(loads: list[int], world_size: int) -> tuple[int, int]:
    """Lexicographic min of (max block load, max block size) over all contiguous splits into ``world_size`` blocks."""
    n = len(loads)
    objectives = []
    for cuts in itertools.combinations_with_replacement(range(n + 1), world_size - 1):
        bounds = [0, *cuts, n]
        pairs = list(itertools.pairwise(bounds))
        objectives.append((max(sum(loads[a:b]) for a, b in pairs), max(b - a for a, b in pairs)))
    return min(objectives)


def _assert_tiles(blocks: list[range], total: int, world_size: int) -> None:
    assert len(blocks) == world_size
    assert [i for b in blocks for i in b] == list(range(total))  # every item exactly once, in order
    assert all(b.step == 1 for b in blocks)


def test_snapshot_blocks_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        num_snapshots = rng.randint(1, 8)
        world_size = rng.randint(1, 5)
        loads = [rng.choice([0, 1, 2, 3, 10, 50]) for _ in range(num_snapshots)]
        blocks = snapshot_blocks(loads, world_size)
        _assert_tiles(blocks, num_snapshots, world_size)
        objective = (max(sum(loads[i] for i in b) for b in blocks), max(len(b) for b in blocks))
        assert objective == _brute_force_objective(loads, world_size), (loads, world_size, blocks)
        # Ranks are kept busy: min(P, T) non-empty blocks, the empty ones (if any) at the end.
        sizes = [len(b) for b in blocks]
        assert sum(s > 0 for s in sizes) == min(world_size, num_snapshots)
        assert sizes == sorted(sizes, key=lambda s: s == 0)


def test_snapshot_blocks_hand_cases():
    # One heavy snapshot takes a rank alone; the light ones share the other.
    assert snapshot_blocks([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    # Balanced by edges, not by count: 9 = 4+5 | 3+3+3.
    assert snapshot_blocks([4, 5, 3, 3, 3], 2) == [range(0, 2), range(2, 5)]
    # P > T: one snapshot per rank, then empty blocks.
    assert snapshot_blocks([7, 2], 4) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]
    # All-zero loads still spread over the ranks.
    assert [len(b) for b in snapshot_blocks([0] * 6, 3)] == [2, 2, 2]
    assert snapshot_blocks([], 3) == [range(0, 0)] * 3
    assert snapshot_blocks([3, 1, 2], 1) == [range(0, 3)]


def test_snapshot_blocks_large_is_fast_and_balanced():
    rng = random.Random(1)
    loads = [rng.randint(0, 10_000) for _ in range(10_000)]
    blocks = snapshot_blocks(loads, 64)
    _assert_tiles(blocks, len(loads), 64)
    # Any contiguous plan is at least the mean load and at least the biggest snapshot; the greedy bound is tight.
    bottleneck = max(sum(loads[i] for i in b) for b in blocks)
    assert bottleneck <= sum(loads) / 64 + max(loads)


@pytest.mark.parametrize("bad", [[1, -1], [1.5], [True]])
def test_snapshot_blocks_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="edge_counts"):
        snapshot_blocks(bad, 2)


def test_partition_rejects_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        snapshot_blocks([1, 2], 0)
    with pytest.raises(ValueError, match="world_size"):
        vertex_blocks(4, 0)


@pytest.mark.parametrize(("num_nodes", "world_size"), [(10, 3), (9, 3), (2, 5), (0, 2), (7, 1)])
def test_vertex_blocks_even_and_covering(num_nodes, world_size):
    blocks = vertex_blocks(num_nodes, world_size)
    _assert_tiles(blocks, num_nodes, world_size)
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_vertex_blocks_hand_case():
    assert vertex_blocks(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]


def test_alltoall_bytes_formula_and_exact():
    # Even blocks: the exact count equals 4*N*T*d*(P-1)/P.
    n, t, d, p = 12, 6, 5, 3
    formula = alltoall_bytes(n, t, d, p)
    assert formula == 4 * 12 * 6 * 5 * 2 / 3 == 960.0
    assert alltoall_bytes_exact(snapshot_blocks([1] * t, p), vertex_blocks(n, p), d) == 960
    # Bounded by 4NTd for any P, and zero for one rank.
    assert all(alltoall_bytes(n, t, d, q) < 4 * n * t * d for q in range(1, 200))
    assert alltoall_bytes(n, t, d, 1) == 0
    # Uneven, by hand: N=5, T=3, P=2, d=2; snapshots {0,1} | {2}, vertices {0,1,2} | {3,4}.
    # Rank 0 sends 2 snapshots x 2 remote vertices, rank 1 sends 1 snapshot x 3 remote vertices: 7 rows.
    snaps, verts = [range(0, 2), range(2, 3)], [range(0, 3), range(3, 5)]
    assert alltoall_bytes_exact(snaps, verts, dim=2) == 7 * 2 * 4
    assert alltoall_bytes_exact(snaps, verts, dim=2, dtype_bytes=2) == 7 * 2 * 2


def _cycle_graph() -> torch.Tensor:
    # 0 -> 1 -> 2 -> 3 -> 0 plus the chord 1 -> 3.
    return torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 3]])


def test_halo_bytes_hand_made_graph():
    edges = _cycle_graph()
    # P=2: rank 0 owns {0,1}, rank 1 owns {2,3}. Undirected cut edges 1-2, 3-0, 1-3.
    # Rank 0 needs {2, 3}; rank 1 needs {1, 0} (1 counted once though it neighbours both 2 and 3): 4 rows.
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=2) == 4 * 8 * 4
    # Directed (messages source -> target): rank 1 needs 1 (for 2 and 3, once), rank 0 needs 3 (for 0): 2 rows.
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=2, directed=True) == 2 * 8 * 4
    # P=4 (one vertex each): every distinct neighbour is remote: |N(0)|+|N(1)|+|N(2)|+|N(3)| = 2+3+2+3.
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=4) == 10 * 8 * 4
    # One rank: nothing to exchange.
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=1) == 0
    # Per snapshot, per layer, and the backward pass doubles it.
    single = halo_bytes([edges], num_nodes=4, dim=8, world_size=2)
    assert halo_bytes([edges, edges], num_nodes=4, dim=8, world_size=2) == 2 * single
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=2, num_layers=3) == 3 * single
    assert halo_bytes([edges], num_nodes=4, dim=8, world_size=2, include_backward=True) == 2 * single
    # Duplicate edges and self-loops add nothing.
    with_dups = torch.cat([edges, edges, torch.tensor([[2], [2]])], dim=1)
    assert halo_bytes([with_dups], num_nodes=4, dim=8, world_size=2) == single


def test_halo_bytes_grows_with_world_size_while_alltoall_stays_bounded():
    gen = torch.Generator().manual_seed(0)
    num_nodes, num_snapshots, dim = 64, 4, 16
    edges = [torch.randint(0, num_nodes, (2, 400), generator=gen) for _ in range(num_snapshots)]
    halos = [halo_bytes(edges, num_nodes, dim, p) for p in (1, 2, 4, 8, 16)]
    assert halos == sorted(halos) and halos[-1] > 4 * halos[1]
    assert halos[-1] > 4 * num_nodes * num_snapshots * dim  # exceeds the all-to-all's upper bound
    assert alltoall_bytes(num_nodes, num_snapshots, dim, 16) < 4 * num_nodes * num_snapshots * dim


def test_halo_bytes_rejects_bad_edges():
    with pytest.raises(ValueError, match=r"edge_indices\[0\]"):
        halo_bytes([torch.tensor([[0, 9], [1, 2]])], num_nodes=4, dim=1, world_size=2)
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        halo_bytes([torch.tensor([0, 1, 2])], num_nodes=4, dim=1, world_size=2)


def test_plan_redistribution_and_block_checks():
    plan = plan_redistribution([3, 1, 1, 1], num_nodes=5, world_size=2)
    assert plan == RedistributionPlan((range(0, 1), range(1, 4)), (range(0, 3), range(3, 5)))
    assert (plan.world_size, plan.num_snapshots, plan.num_nodes) == (2, 4, 5)
    assert plan.alltoall_bytes(dim=3) == (1 * 2 + 3 * 3) * 3 * 4
    with pytest.raises(ValueError, match="tile in order"):
        check_blocks([range(0, 2), range(3, 4)], "snap_blocks")
    with pytest.raises(ValueError, match="step 1"):
        check_blocks([range(0, 4, 2)])
    with pytest.raises(ValueError, match="2 snapshot blocks but 1 vertex"):
        RedistributionPlan((range(0, 1), range(1, 2)), (range(0, 3),))
