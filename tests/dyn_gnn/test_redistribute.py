"""Snapshot <-> vertex redistribution: layout, bytes and gradients against single-process references.

The single-process tests simulate the all-to-all by routing the packed chunks by hand. The ``distributed``
tests spawn 2 and 3 gloo processes (one spawn per world size, all checks inside it, to keep startup cost
low) and compare every rank's result with the full ``(T, N, d)`` tensor that each rank can also build.
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_efficiency.core.recorders import CommEvent, Recorder, comm_metrics
from lit_efficiency.dyn_gnn import redistribute as rd
from lit_efficiency.dyn_gnn.partition import (
    alltoall_bytes,
    alltoall_bytes_exact,
    snapshot_blocks,
    vertex_blocks,
)
from lit_efficiency.dyn_gnn.redistribute import (
    new_redistribution_group,
    snapshot_to_vertex,
    vertex_to_snapshot,
)

# ---------------------------------------------------------------------------------------------------------------
# Single process
# ---------------------------------------------------------------------------------------------------------------


def _simulate_all_to_all(sends: list[tuple[torch.Tensor, list[int]]]) -> list[tuple[torch.Tensor, list[int]]]:
    """What ``all_to_all_single`` delivers: rank q receives chunk q of every rank's send buffer, in rank order."""
    chunks = [send.split(splits) for send, splits in sends]
    world = len(sends)
    received = []
    for q in range(world):
        parts = [chunks[p][q] for p in range(world)]
        received.append((torch.cat(parts), [c.numel() for c in parts]))
    return received


@pytest.mark.parametrize(("num_snapshots", "num_nodes", "world_size"), [(5, 7, 2), (6, 6, 3), (2, 5, 3), (4, 2, 3)])
def test_pack_unpack_layout_matches_indexing(num_snapshots, num_nodes, world_size):
    full = torch.randn(num_snapshots, num_nodes, 3, 2)  # two trailing feature dims: any (*F) works
    snaps = snapshot_blocks([1] * num_snapshots, world_size)
    verts = vertex_blocks(num_nodes, world_size)
    feat = (3, 2)
    # snapshot -> vertex
    sends = [rd._pack_snapshot_major(full[s.start : s.stop], verts) for s in snaps]
    received = _simulate_all_to_all(sends)
    for q, (recv, _) in enumerate(received):
        out = rd._unpack_vertex_major(recv, num_snapshots, len(verts[q]), feat)
        torch.testing.assert_close(out, full[:, verts[q].start : verts[q].stop], rtol=0, atol=0)
    # vertex -> snapshot
    sends = [rd._pack_vertex_major(full[:, v.start : v.stop], snaps) for v in verts]
    received = _simulate_all_to_all(sends)
    for p, (recv, splits) in enumerate(received):
        out = rd._unpack_snapshot_major(recv, splits, verts, len(snaps[p]), feat)
        torch.testing.assert_close(out, full[snaps[p].start : snaps[p].stop], rtol=0, atol=0)


def test_redistribution_is_identity_without_process_group():
    assert not dist.is_initialized()
    h = torch.randn(4, 5, 3, requires_grad=True)
    snaps, verts = [range(0, 4)], [range(0, 5)]
    recorder = Recorder()
    assert snapshot_to_vertex(h, snaps, verts, recorder=recorder) is h
    assert vertex_to_snapshot(h, snaps, verts, recorder=recorder) is h
    assert len(recorder) == 0  # no collective ran
    with pytest.raises(ValueError, match="2 snapshot and 2 vertex blocks given for a group of 1"):
        snapshot_to_vertex(h, [range(0, 2), range(2, 4)], [range(0, 3), range(3, 5)])
    with pytest.raises(ValueError, match=r"leading shape \(4, 6\)"):
        snapshot_to_vertex(h, snaps, [range(0, 6)])


def test_recorder_drain_and_comm_metrics():
    recorder = Recorder()
    recorder.record(CommEvent("snapshot_to_vertex", 100, 100, 1.5))
    recorder.record(CommEvent("snapshot_to_vertex.backward", 40, 60, 0.5))
    threads = [threading.Thread(target=recorder.record, args=(CommEvent("x", 1, 1, 0.25),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = recorder.drain()
    assert len(events) == 10 and len(recorder) == 0 and recorder.drain() == []
    assert events[1].bytes_received == 60
    assert comm_metrics(events, "alltoall") == {"alltoall_bytes": 148.0, "alltoall_ms": 4.0, "alltoall_calls": 10.0}


def test_new_redistribution_group_needs_init():
    with pytest.raises(RuntimeError, match="init_process_group"):
        new_redistribution_group()


# ---------------------------------------------------------------------------------------------------------------
# Multi-process (gloo)
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_workers(fn, world_size: int, start_method: str, timeout_s: float = 60.0) -> None:
    """Start ``world_size`` gloo workers running ``fn(rank, world_size, port)``; fail (not hang) after timeout."""
    port = _free_port()
    context = mp.start_processes(fn, args=(world_size, port), nprocs=world_size, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):  # raises ProcessRaisedException / ProcessExitedException on failure
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s (hang?)")


# Inside workers: plain comparisons (the first torch.testing.assert_close call costs ~1.5 s of imports per process).
def _assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and torch.equal(actual, expected), (actual, expected)


def _assert_near(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (what, (actual - expected).abs().max())


def _full(num_snapshots: int, num_nodes: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(num_snapshots, num_nodes, dim, generator=torch.Generator().manual_seed(seed))


def _check_layout_and_grads(
    rank, world, num_snapshots, num_nodes, dim, group, grad_on_empty: bool, loads: list[int] | None = None
) -> bool:
    """Forward equals full[:, V_p]; backward of sum(out * weight) equals weight[S_p] (weight = dL/dfull)."""
    if loads is None:
        loads = torch.randint(0, 20, (num_snapshots,), generator=torch.Generator().manual_seed(num_snapshots)).tolist()
    snaps, verts = snapshot_blocks(loads, world), vertex_blocks(num_nodes, world)
    s, v = snaps[rank], verts[rank]
    full, weight = _full(num_snapshots, num_nodes, dim, 0), _full(num_snapshots, num_nodes, dim, 1)
    h = full[s.start : s.stop].clone()
    if len(s) or grad_on_empty:
        h.requires_grad_()
    recorder = Recorder()
    out = snapshot_to_vertex(h, snaps, verts, group=group, recorder=recorder)
    assert out.shape == (num_snapshots, len(v), dim) and out.is_contiguous()
    _assert_same(out, full[:, v.start : v.stop])
    (out * weight[:, v.start : v.stop]).sum().backward()
    if h.requires_grad:
        _assert_same(h.grad, weight[s.start : s.stop])

    # Round trip and the reverse Function's gradient.
    z = full[:, v.start : v.stop].clone().requires_grad_()
    back = vertex_to_snapshot(z, snaps, verts, group=group, recorder=recorder)
    _assert_same(back, full[s.start : s.stop])
    (back * weight[s.start : s.stop]).sum().backward()
    _assert_same(z.grad, weight[:, v.start : v.stop])

    # Bytes: each of the 4 exchanges moves exactly the planned volume, summed over ranks.
    events = recorder.drain()
    assert [e.kind for e in events] == [
        "snapshot_to_vertex",
        "snapshot_to_vertex.backward",
        "vertex_to_snapshot",
        "vertex_to_snapshot.backward",
    ]
    assert all(e.ms >= 0 for e in events)
    totals = torch.tensor([[e.bytes_sent, e.bytes_received] for e in events], dtype=torch.float64)
    dist.all_reduce(totals)
    exact = alltoall_bytes_exact(snaps, verts, dim)
    assert totals.eq(exact).all(), (totals, exact)
    # Own bytes, independently: what this rank sends = its snapshots' rows of vertices it does not own.
    assert events[0].bytes_sent == len(s) * (num_nodes - len(v)) * dim * 4
    assert events[0].bytes_received == (num_snapshots - len(s)) * len(v) * dim * 4
    if num_snapshots % world == 0 and num_nodes % world == 0 and len(set(loads)) == 1:
        assert all(len(b) == num_snapshots // world for b in snaps)
        assert exact == alltoall_bytes(num_nodes, num_snapshots, dim, world)
        return True
    return False


def _toy_model(dim_in: int, dim: int) -> torch.nn.ModuleDict:
    torch.manual_seed(0)  # identical replicas on every rank, as DDP would broadcast
    return torch.nn.ModuleDict(
        {
            "spatial": torch.nn.Linear(dim_in, dim),
            "temporal": torch.nn.GRU(dim, dim, batch_first=True),
            "head": torch.nn.Linear(dim, 1),
        }
    )


def _toy_loss(model, adj, x, y, snaps_slice, verts_slice, to_vertex) -> torch.Tensor:
    """GCN-like spatial step per snapshot -> redistribute -> GRU per vertex over time -> squared error."""
    hidden = torch.relu(adj[snaps_slice] @ model["spatial"](x[snaps_slice]))  # (T_p, N, d)
    hidden = to_vertex(hidden)  # (T, N_p, d)
    out, _ = model["temporal"](hidden.transpose(0, 1))  # (N_p, T, d)
    pred = model["head"](out).squeeze(-1).transpose(0, 1)  # (T, N_p)
    return ((pred - y[:, verts_slice]) ** 2).sum()


def _check_toy_gradients(rank, world, num_snapshots, num_nodes, group) -> None:
    """Local loss x world_size, grads all-reduce-averaged (DDP) == single-process gradients."""
    gen = torch.Generator().manual_seed(123)
    dim_in, dim = 3, 4
    adj = torch.rand(num_snapshots, num_nodes, num_nodes, generator=gen)
    adj = adj / adj.sum(-1, keepdim=True)
    x = torch.randn(num_snapshots, num_nodes, dim_in, generator=gen)
    y = torch.randn(num_snapshots, num_nodes, generator=gen)
    norm = num_nodes * num_snapshots

    reference = _toy_model(dim_in, dim)
    ref_loss = _toy_loss(reference, adj, x, y, slice(None), slice(None), lambda h: h) / norm
    ref_loss.backward()

    model = _toy_model(dim_in, dim)
    snaps = snapshot_blocks((adj > 0.2).sum((1, 2)).tolist(), world)
    verts = vertex_blocks(num_nodes, world)
    s, v = snaps[rank], verts[rank]
    local = _toy_loss(
        model,
        adj,
        x,
        y,
        slice(s.start, s.stop),
        slice(v.start, v.stop),
        lambda h: snapshot_to_vertex(h, snaps, verts, group=group),
    )
    (local / norm * world).backward()
    loss_sum = local.detach().clone()
    dist.all_reduce(loss_sum)
    _assert_near(loss_sum / norm, ref_loss.detach(), "loss")
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters(), strict=True):
        grad = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)
        _assert_near(grad / world, ref_param.grad, name)


def _worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        group = new_redistribution_group(timeout_s=30)
        # Uneven T and N; P > T with the empty rank's input not requiring grad (promoted), then requiring it;
        # P > N (a rank with no vertices).
        cases = [(5, 7, 3, False), (world - 1, 4, 2, False), (world - 1, 5, 1, True), (3, world - 1, 2, False)]
        for i, (num_snapshots, num_nodes, dim, grad_on_empty) in enumerate(cases):
            group_i = None if i % 2 else group  # both the default group and the dedicated one
            _check_layout_and_grads(rank, world, num_snapshots, num_nodes, dim, group_i, grad_on_empty)
        # Even blocks with equal loads: bytes == 4*N*T*d*(P-1)/P.
        assert _check_layout_and_grads(rank, world, 2 * world, 3 * world, 3, group, False, loads=[5] * (2 * world))
        _check_toy_gradients(rank, world, num_snapshots=7, num_nodes=8, group=group)
        _check_toy_gradients(rank, world, num_snapshots=world - 1, num_nodes=5, group=None)  # a rank without snapshots
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


_needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)
# fork starts a worker in ~0.1 s; spawn re-imports torch in every worker (~4-7 s each on 2 cores), so the fast
# default forks (safe here: the parent never touches CUDA) and spawn, what real launchers do, runs as `slow`.
_can_fork = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()


def _forked_gloo_worlds(test):
    """Marks of a test run on 2 and 3 forked gloo workers (``world_size`` parameter)."""
    for mark in (
        pytest.mark.parametrize("world_size", [2, 3]),
        pytest.mark.skipif(not _can_fork, reason="needs the fork start method (POSIX) and no CUDA in the parent"),
        _needs_gloo,
        pytest.mark.timeout(90),
        pytest.mark.distributed,
    ):
        test = mark(test)
    return test


@_forked_gloo_worlds
def test_redistribute_gloo_matches_single_process(world_size):
    _run_workers(_worker, world_size, start_method="fork")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(120)
@_needs_gloo
def test_redistribute_gloo_spawned_workers():
    _run_workers(_worker, 2, start_method="spawn")


def _check_overlapped(rank, world, num_snapshots, num_nodes, num_chunks, group) -> None:
    """Chunked, asynchronously started vertex->snapshot == the one-shot exchange: values, input and weight grads."""
    torch.manual_seed(0)
    weight = torch.randn(3, 3, requires_grad=True)
    snaps = snapshot_blocks([1] * num_snapshots, world)
    verts = vertex_blocks(num_nodes, world)
    mine = verts[rank]
    h = _full(num_snapshots, num_nodes, 3, seed=5)[:, mine.start : mine.stop].requires_grad_()
    probe = _full(len(snaps[rank]), num_nodes, 3, seed=6)  # a different weighting of every output entry
    calls = []

    def compute(local: range) -> torch.Tensor:
        calls.append(local)
        return torch.tanh(h[:, local.start : local.stop] @ weight)

    outputs, grads = [], []
    for run in (lambda: vertex_to_snapshot(compute(range(0, len(mine))), snaps, verts, group=group),
                lambda: rd.vertex_to_snapshot_overlapped(compute, snaps, verts, num_chunks, group=group)):  # fmt: skip
        out = run()
        (out * probe).sum().backward()
        outputs.append(out.detach())
        grads.append((h.grad.clone(), weight.grad.clone()))
        h.grad, weight.grad = None, None
    _assert_near(outputs[1], outputs[0], "overlapped values")
    _assert_near(grads[1][0], grads[0][0], "overlapped input grad")
    _assert_near(grads[1][1], grads[0][1], "overlapped weight grad")
    assert len(calls) == 1 + num_chunks  # the compute really ran chunk by chunk
    assert sum(len(r) for r in calls[1:]) == len(mine)


def _check_forward_overlapped(rank, world, num_snapshots, num_nodes, num_chunks, group) -> None:
    """Chunked, asynchronously started snapshot->vertex == the one-shot exchange: values, input and weight grads."""
    torch.manual_seed(0)
    weight = torch.randn(3, 3, requires_grad=True)
    snaps = snapshot_blocks([1] * num_snapshots, world)
    verts = vertex_blocks(num_nodes, world)
    mine = snaps[rank]
    h = _full(num_snapshots, num_nodes, 3, seed=7)[mine.start : mine.stop].requires_grad_()
    probe = _full(num_snapshots, len(verts[rank]), 3, seed=8)
    calls = []

    def compute(local: range) -> torch.Tensor:
        calls.append(local)
        return torch.tanh(h[local.start : local.stop] @ weight)

    outputs, grads = [], []
    for run in (lambda: rd.snapshot_to_vertex(compute(range(0, len(mine))), snaps, verts, group=group),
                lambda: rd.snapshot_to_vertex_overlapped(compute, snaps, verts, num_chunks, group=group)):  # fmt: skip
        out = run()
        (out * probe).sum().backward()
        outputs.append(out.detach())
        grads.append((h.grad.clone(), weight.grad.clone()))
        h.grad, weight.grad = None, None
    _assert_near(outputs[1], outputs[0], "forward-overlapped values")
    _assert_near(grads[1][0], grads[0][0], "forward-overlapped input grad")
    _assert_near(grads[1][1], grads[0][1], "forward-overlapped weight grad")
    assert len(calls) == 1 + num_chunks  # the compute really ran chunk by chunk
    assert sum(len(r) for r in calls[1:]) == len(mine)


def _overlap_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )  # fmt: skip
    try:
        group = new_redistribution_group(timeout_s=30)
        # more chunks than some ranks' vertices (empty chunks), one chunk, uneven blocks, a rank without snapshots
        for num_snapshots, num_nodes, num_chunks in [(5, 11, 3), (4, 7, 1), (3, 2 * world + 1, 4), (world - 1, 9, 2)]:
            _check_overlapped(rank, world, num_snapshots, num_nodes, num_chunks, group)
            _check_forward_overlapped(rank, world, num_snapshots, num_nodes, num_chunks, group)
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


@_forked_gloo_worlds
def test_overlapped_exchanges_equal_one_exchange(world_size):
    _run_workers(_overlap_worker, world_size, start_method="fork")
