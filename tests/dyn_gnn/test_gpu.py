"""Dynamic GNNs on CUDA: mixed precision through sparse ops, streaming with pinned memory + prefetch, codec decode.

On CPU, ``torch.sparse.mm`` on a CSR adjacency has no Half/BFloat16 kernel (MKL), and autocast casts the CSR operand
too, so mixed-precision dyn-GNN training crashes there. These tests establish what the CUDA path (cuSPARSE) does:
if a dtype is unsupported they fail with a message that says so, instead of a bare kernel error.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.codec import encode_snapshots, iter_decode
from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
from lit_efficiency.dyn_gnn.nn import spmm
from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule, rebuild_adjacency
from lit_efficiency.dyn_gnn.synthetic import iter_synthetic_snapshots
from lit_efficiency.dyn_gnn.task import DynGNNTask

pytestmark = pytest.mark.gpu

NUM_NODES = 120
DATA = dict(
    dataset="synthetic", num_nodes=NUM_NODES, num_snapshots=8, edges_per_snapshot=600, churn=0.2,
    num_node_features=8, num_negatives=3, block_size=2, train_frac=0.75, val_frac=0.125, test_frac=0.125, seed=0,
)  # fmt: skip
LOW_PRECISION = {"float16": (torch.float16, "16-mixed", 1e-2), "bfloat16": (torch.bfloat16, "bf16-mixed", 4e-2)}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _skip_unsupported_bf16(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16 support")


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(precision: str, data_cls: type = SnapshotDataModule, max_epochs: int = 3, **data_kwargs):
    """Fit a small WD-GCN on the GPU; returns (per-step losses, initial and final parameters on the CPU, data)."""
    L.seed_everything(0, verbose=False)
    task = DynGNNTask(
        hidden_dim=16, out_dim=16, num_layers=2, head_hidden_dim=16, lr=0.01,
        num_nodes=NUM_NODES, num_features=8, task="link_prediction",
    )  # fmt: skip
    init = {k: v.detach().clone() for k, v in task.state_dict().items()}
    record = _Losses()
    data = data_cls(**DATA, **data_kwargs)
    trainer = quiet_trainer(
        accelerator="gpu",
        precision=precision,
        max_epochs=max_epochs,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(task, data)
    final = {k: v.detach().cpu() for k, v in task.state_dict().items()}
    return record.losses, init, final, data


@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_spmm_under_autocast_matches_fp32(name):
    """``spmm(CSR, X W)`` forward and ``d/dX`` under CUDA autocast, against fp32 (relative error of norms).

    Plain ``torch.sparse.mm`` fails there (cuSPARSE has no fp32 x fp16/bf16 SpMM, torch 2.11 + CUDA 13 on an H200).
    """
    dtype, _, tol = LOW_PRECISION[name]
    _skip_unsupported_bf16(dtype)
    gen = torch.Generator().manual_seed(0)
    n = 5000
    adj = gcn_norm(torch.randint(0, n, (2, 40_000), generator=gen), n).cuda()
    x0 = torch.randn(n, 32, generator=gen).cuda()
    weight = (torch.randn(32, 32, generator=gen) / 32**0.5).cuda()

    def run(autocast: bool):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            y = spmm(adj, x @ weight)
        y.float().square().sum().backward()
        return y.detach().float(), x.grad

    want_y, want_grad = run(False)
    try:
        y, grad = run(True)
    except (RuntimeError, NotImplementedError) as err:
        pytest.fail(
            f"spmm on a CUDA CSR tensor fails under autocast({name}) (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}): {str(err).splitlines()[0]}. Dyn-GNN training with precision="
            f"'{LOW_PRECISION[name][1]}' cannot use this path; train in 32-true."
        )
    assert y.dtype == torch.float32 and torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert float((y - want_y).norm() / want_y.norm()) < tol
    assert float((grad - want_grad).norm() / want_grad.norm()) < tol


@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_mixed_precision_training_steps(name):
    """WD-GCN through Lightning with precision 16-mixed / bf16-mixed: finite losses close to fp32, weights move."""
    dtype, precision, _ = LOW_PRECISION[name]
    _skip_unsupported_bf16(dtype)
    ref_losses, _, _, _ = _fit("32-true")
    losses, init, final, _ = _fit(precision)
    assert len(losses) == len(ref_losses) > 0
    assert all(math.isfinite(v) for v in losses), losses
    # Same seed, data and initial weights: the first forward differs only by the precision of the kernels.
    assert losses[0] == pytest.approx(ref_losses[0], rel=5e-2, abs=1e-3)
    assert all(v.dtype == torch.float32 for v in final.values() if v.is_floating_point())
    assert any(not torch.equal(final[k].cpu(), init[k].cpu()) for k in init)
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_streaming_diff_with_pinned_prefetch_trains_like_full_transfer():
    """On the GPU, pinned diff items + side-stream prefetch train as shipping full snapshots without prefetch."""
    losses_diff, _, final_diff, dm_diff = _fit("32-true", StreamingSnapshotDataModule, transfer="diff", prefetch=True)
    losses_full, _, final_full, dm_full = _fit(
        "32-true", StreamingSnapshotDataModule, transfer="full", prefetch=False, pin_memory=False
    )
    diff_items = [item for item in dm_diff.store.items if item.kind == "diff"]
    assert diff_items and all(item.added_keys.is_pinned() and item.deleted_pos.is_pinned() for item in diff_items)
    assert not dm_full.store.items[0].keys.is_pinned()
    assert losses_diff == pytest.approx(losses_full, rel=1e-4, abs=1e-6)
    for key, value in final_full.items():
        torch.testing.assert_close(final_diff[key], value, rtol=1e-4, atol=1e-5)
    events_diff, events_full = dm_diff.transfer_recorder.drain(), dm_full.transfer_recorder.drain()
    assert sum(e.h2d_bytes for e in events_diff) < sum(e.h2d_bytes for e in events_full)
    assert all(e.h2d_bytes == e.full_bytes for e in events_full)


@pytest.mark.parametrize("num_nodes", [3000, 50_000])  # int32 keys (N*N < 2**31) and int64 keys
def test_codec_decode_on_cuda_equals_cpu(num_nodes):
    """Weighted snapshots (window 3: weights change) decoded on CUDA equal the CPU decode."""
    snaps = list(iter_synthetic_snapshots(num_nodes, 6, 20_000, churn=0.05, window=3, seed=2))
    encoded = encode_snapshots([s.edge_index for s in snaps], num_nodes, [s.edge_weight for s in snaps])
    diffs = [item for item in encoded.items if item.kind == "diff"]
    # both weight encodings: sparse changes, and dense weights where they are smaller (window 3 changes many)
    assert any(item.changed_pos is not None and item.changed_pos.numel() for item in diffs)
    assert any(item.weights is not None for item in diffs)
    encoded = encoded.pin_memory()
    forward_gpu, forward_cpu = list(iter_decode(encoded, "cuda")), list(iter_decode(encoded, "cpu"))
    for gpu, cpu in zip(forward_gpu, forward_cpu, strict=True):
        assert gpu.keys.is_cuda and torch.equal(gpu.keys.cpu(), cpu.keys)
        assert torch.equal(gpu.weights.cpu(), cpu.weights)
    last_gpu, last_cpu = forward_gpu[-1], forward_cpu[-1]
    adj_gpu = rebuild_adjacency(last_gpu.keys, last_gpu.weights, num_nodes, directed=True)
    adj_cpu = rebuild_adjacency(last_cpu.keys, last_cpu.weights, num_nodes, directed=True)
    assert torch.equal(adj_gpu.crow_indices().cpu(), adj_cpu.crow_indices())
    assert torch.equal(adj_gpu.col_indices().cpu(), adj_cpu.col_indices())
    torch.testing.assert_close(adj_gpu.values().cpu(), adj_cpu.values())
