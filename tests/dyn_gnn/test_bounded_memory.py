"""Bounded-memory processing: checkpointed spatial blocks and vertex-chunked LSTM give the unblocked gradients;
configuration errors; the scale-run and memory benchmark scripts at tiny size."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.nn import TMGCN, WDGCN, bounded_forward
from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule
from lit_efficiency.dyn_gnn.task import DynGNNTask

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _graph(n=24, steps=5, edges=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [gcn_norm(torch.randint(n, (2, edges), generator=gen), n) for _ in range(steps)]


def _grads(net, xs, adjs, state, **kw):
    net.zero_grad()
    z, (hn, cn) = bounded_forward(net, xs, adjs, state, **kw)
    weight = torch.linspace(-1, 1, z.numel()).reshape(z.shape)
    ((z * weight).sum() + hn.square().sum() + cn.sum()).backward()
    return z.detach(), hn.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize(
    "kw",
    [
        dict(spatial_block_size=2, checkpoint_spatial=True),
        dict(temporal_chunk_size=5, checkpoint_temporal=True),
        dict(spatial_block_size=1, checkpoint_spatial=True, temporal_chunk_size=7, checkpoint_temporal=True),
        dict(spatial_block_size=3, temporal_chunk_size=24),
    ],
)
@pytest.mark.parametrize("features", [0, 3])
def test_blocked_checkpointed_equals_unblocked(kw, features):
    """Reference: the model's own forward (nn.LSTM over all vertices, all snapshots at once)."""
    torch.manual_seed(0)
    n = 24
    adjs = _graph(n)
    net = WDGCN(features, hidden_dim=6, out_dim=5, num_layers=2, num_nodes=n)
    xs = torch.randn(len(adjs), n, features) if features else None
    gen = torch.Generator().manual_seed(1)
    state = (torch.randn(1, n, 5, generator=gen), torch.randn(1, n, 5, generator=gen))
    z_ref, h_ref, g_ref = _grads(net, xs, adjs, state)
    z, h, g = _grads(net, xs, adjs, state, **kw)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_checkpointing_frees_spatial_activations():
    """With checkpoints, autograd keeps fewer saved tensors than without (counted with saved-tensor hooks)."""
    n = 40
    adjs = _graph(n, steps=6, edges=200)
    net = WDGCN(0, hidden_dim=16, out_dim=4, num_layers=3, num_nodes=n)

    def saved_bytes(**kw):
        total = 0

        def pack(t):
            nonlocal total
            if t.layout == torch.strided:
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            bounded_forward(net, None, adjs, None, **kw)
        return total

    plain = saved_bytes()
    ckpt = saved_bytes(spatial_block_size=1, checkpoint_spatial=True, temporal_chunk_size=10, checkpoint_temporal=True)
    assert ckpt < plain / 2


def test_task_blocked_training_step_matches_unblocked():
    """Through DynGNNTask on a streamed batch: the bounded-memory options leave loss and gradients unchanged."""
    dm = StreamingSnapshotDataModule(
        dataset="synthetic", num_nodes=40, num_snapshots=8, edges_per_snapshot=120, num_negatives=2, block_size=4
    )
    dm.setup("fit")
    batch = dm.transfer_batch_to_device(next(iter(dm.train_dataloader())), torch.device("cpu"), 0)
    out = {}
    for name, kw in {
        "plain": {},
        "bounded": dict(spatial_block_size=2, checkpoint_spatial=True, temporal_chunk_size=9, checkpoint_temporal=True),
    }.items():
        torch.manual_seed(0)
        task = DynGNNTask(hidden_dim=8, out_dim=8, num_layers=2, head_hidden_dim=8, **kw)
        task._build(dm.num_nodes, dm.num_features, dm.task)
        _, loss, _ = task._block(batch, None)
        loss.backward()
        out[name] = (loss.detach(), [p.grad.clone() for p in task.parameters()])
    torch.testing.assert_close(out["bounded"][0], out["plain"][0])
    for a, b in zip(out["bounded"][1], out["plain"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bounded_config_errors():
    with pytest.raises(ConfigError, match="temporal_chunk_size"):
        DynGNNTask(temporal_chunk_size=0)
    with pytest.raises(ConfigError, match="spatial_block_size"):
        DynGNNTask(spatial_block_size=-2)
    adjs = _graph(10, steps=3, edges=20)
    tm = TMGCN(0, hidden_dim=4, out_dim=4, num_nodes=10)
    with pytest.raises(ConfigError, match="spatial-then-temporal"):
        bounded_forward(tm, None, adjs, checkpoint_spatial=True)


@pytest.mark.slow
def test_scale_script_runs_the_cli_and_records_it(tmp_path):
    import scale

    res = scale.main(
        ["--num-nodes", "300", "--num-snapshots", "5", "--edges", "1000", "--out-dir", str(tmp_path / "results"),
         "--runs-dir", str(tmp_path / "runs")]
    )  # fmt: skip
    saved = json.loads((tmp_path / "results" / "scale.json").read_text())
    assert saved == res and saved["returncode"] == 0
    assert saved["encode_s"] > 0 and saved["epoch_s"] > 0 and saved["peak_rss_gb"] > 0
    assert "--data.init_args.num_nodes=300" in saved["command"] and "scale_1b.yaml" in saved["command"]


def test_scale_script_keeps_the_earlier_result_when_the_run_fails(tmp_path):
    import scale

    results = tmp_path / "results"
    results.mkdir()
    (results / "scale.json").write_text('{"kept": true}\n')
    with pytest.raises(SystemExit, match="exited 2; .*scale.json left as it was"):
        scale.main(["--edges", "-5", "--out-dir", str(results), "--runs-dir", str(tmp_path / "runs")])
    assert json.loads((results / "scale.json").read_text()) == {"kept": True}
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "result.json").read_text())["returncode"] == 2


def test_lstm_variants_refuses_a_variant_with_wrong_gradients(tmp_path, monkeypatch):
    import lstm_variants

    honest = lstm_variants._variants
    monkeypatch.setattr(lstm_variants.torch, "compile", lambda fn, **_: fn)  # eager gates: no inductor build here

    def with_a_wrong_one(lstm, compiled):
        return {**honest(lstm, compiled), "off_by_a_percent": lambda x: 1.01 * lstm(x)[0]}

    monkeypatch.setattr(lstm_variants, "_variants", with_a_wrong_one)
    out = tmp_path / "lstm.json"
    sizes = ["--steps", "3", "--vertices", "8", "--hidden", "4", "--repeats", "1", "--out", str(out)]
    with pytest.raises(SystemExit, match=r"more than 0.0001: \{'off_by_a_percent': '1.0e-02'\}; nothing timed"):
        lstm_variants.main(sizes)
    assert not out.exists()
    monkeypatch.setattr(lstm_variants, "_variants", honest)
    assert lstm_variants.main(sizes)["max_rel_err_vs_nn_lstm"]["hand_backward"] < lstm_variants.MAX_REL_ERR
