"""Tests of lit_efficiency.dyn_gnn.nn against independent references (PyG layers, nn.LSTM, dense math)."""

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn import nn as dg
from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.nn import (
    CDGCN,
    TMGCN,
    WDGCN,
    EdgeClassifier,
    EvolveGCNH,
    EvolveGCNO,
    GCNLayer,
    LinkPredictor,
    NodeRegressor,
    build_model,
    causal_moving_average,
    detach_state,
    m_matrix,
    m_mix_adjacency,
    spmm,
)

pytest.importorskip("torch_geometric")

# torch warns once per process that CSR support is "beta" and that invariant checks are off: expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sparse CSR tensor support:UserWarning", "ignore:Sparse invariant:UserWarning"
)


def _random_graph(num_nodes: int, num_edges: int, seed: int, weighted: bool = False) -> tuple[Tensor, Tensor | None]:
    """Random directed multigraph (duplicate edges, some self loops) with at most one self loop per node.

    PyG's ``add_remaining_self_loops`` keeps one of several parallel self loops where ``gcn_norm`` sums them (as it
    sums every duplicate), so the PyG-parity tests use graphs without parallel self loops.
    """
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    weight = torch.rand(num_edges, generator=gen) + 0.1 if weighted else None
    loop = edge_index[0] == edge_index[1]
    first = torch.ones_like(loop)
    for node in edge_index[0, loop].unique():
        first[(loop & (edge_index[0] == node)).nonzero()[1:, 0]] = False
    return edge_index[:, first], (None if weight is None else weight[first])


def _snapshots(num_steps: int, num_nodes: int, num_features: int, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """Random directed snapshots (some self loops, some isolated nodes) with normalised CSR adjacencies."""
    gen = torch.Generator().manual_seed(seed)
    adjs = []
    for t in range(num_steps):
        edge_index, weight = _random_graph(num_nodes, 3 * num_nodes, seed * 100 + t, weighted=t % 2 == 1)
        adjs.append(gcn_norm(edge_index, num_nodes, weight))
    xs = torch.randn(num_steps, num_nodes, num_features, generator=gen) if num_features else None
    return xs, adjs


def _make(name: str, num_features: int, num_nodes: int, **kwargs) -> dg.DynamicGNN:
    torch.manual_seed(0)
    return build_model(name, num_features=num_features, hidden_dim=8, out_dim=6, num_nodes=num_nodes, **kwargs)


ALL_MODELS = [
    ("wdgcn", {}),
    ("cdgcn", {}),
    ("tmgcn", {"mixing": "input", "num_layers": 2}),
    ("tmgcn", {"mixing": "output", "num_layers": 2}),
    ("evolvegcn-o", {}),
    ("evolvegcn-h", {}),
]
ALL_IDS = ["wdgcn", "cdgcn", "tmgcn-input", "tmgcn-output", "evolvegcn-o", "evolvegcn-h"]


# ---------------------------------------------------------------------------------------------- normalisation, GCN


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_norm_matches_pyg_gcn_norm(weighted: bool, add_self_loops: bool) -> None:
    from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm
    from torch_geometric.utils import to_dense_adj

    num_nodes = 12  # nodes 10, 11 are isolated unless the random edges hit them
    edge_index, weight = _random_graph(10, 40, seed=1, weighted=weighted)
    # A new self loop on a node without one (7) and a duplicate edge (3 -> 5 is already there).
    assert not ((edge_index[0] == 7) & (edge_index[1] == 7)).any()
    assert ((edge_index[0] == 3) & (edge_index[1] == 5)).any()
    edge_index = torch.cat([edge_index, torch.tensor([[7, 3], [7, 5]])], dim=1)
    if weight is not None:
        weight = torch.cat([weight, torch.tensor([2.5, 0.7])])
    ref_index, ref_value = pyg_gcn_norm(edge_index, weight, num_nodes, add_self_loops=add_self_loops)
    # to_dense_adj sums duplicates and is indexed [source, target]; ours is [target, source].
    ref = to_dense_adj(ref_index, edge_attr=ref_value, max_num_nodes=num_nodes)[0].t()
    ours = gcn_norm(edge_index, num_nodes, weight, add_self_loops=add_self_loops)
    assert ours.layout == torch.sparse_csr
    assert_close(ours.to_dense(), ref)


def test_gcn_norm_sums_duplicate_self_loops() -> None:
    # Duplicates are summed, self loops included (PyG's add_remaining_self_loops would keep only one of the two loops).
    adj = gcn_norm(torch.tensor([[0, 0, 0], [0, 0, 1]]), 2, torch.tensor([1.0, 2.0, 1.0])).to_dense()
    # A^T = [[3, 0], [1, 0]] + I on node 1: in-degrees 3, 2.
    d = torch.tensor([3.0, 2.0]).rsqrt()
    assert_close(adj, d[:, None] * torch.tensor([[3.0, 0.0], [1.0, 1.0]]) * d[None, :])


def test_gcn_norm_hand_case() -> None:
    # Path 0 - 1 (both directions) plus self loops: degrees 2, 2 -> every entry 1/2. Node 2 isolated -> only its loop.
    adj = gcn_norm(torch.tensor([[0, 1], [1, 0]]), 3).to_dense()
    assert_close(adj, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("weighted", [False, True])
def test_gcn_layer_matches_pyg_gcnconv(weighted: bool) -> None:
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    num_nodes = 15
    edge_index, weight = _random_graph(num_nodes, 50, seed=2, weighted=weighted)
    x = torch.randn(num_nodes, 5)
    ours = GCNLayer(5, 7)
    nn.init.normal_(ours.bias)
    ref = GCNConv(5, 7)
    ref.lin.weight.data.copy_(ours.lin.weight.data)
    ref.bias.data.copy_(ours.bias.data)
    expected = ref(x, edge_index, weight)
    assert_close(ours(x, gcn_norm(edge_index, num_nodes, weight)), expected)
    # Dense adjacency gives the same result.
    assert_close(ours(x, gcn_norm(edge_index, num_nodes, weight).to_dense()), expected)


# ---------------------------------------------------------------------------------------------- WD-GCN / CD-GCN


@pytest.mark.parametrize("num_lstm_layers", [1, 2])
def test_wdgcn_temporal_matches_per_vertex_lstm(num_lstm_layers: int) -> None:
    torch.manual_seed(0)
    model = WDGCN(num_features=4, hidden_dim=5, out_dim=3, num_lstm_layers=num_lstm_layers)
    h = torch.randn(7, 6, 5)  # (T, N, d)
    out, (h_n, c_n) = model.temporal(h)
    ref_lstm = nn.LSTM(5, 3, num_layers=num_lstm_layers, batch_first=True)
    ref_lstm.load_state_dict(model.lstm.state_dict())
    for v in range(h.shape[1]):  # one vertex at a time, batch of 1, batch_first layout
        ref_out, (ref_h, ref_c) = ref_lstm(h[:, v].unsqueeze(0))
        assert_close(out[:, v], ref_out[0])
        assert_close(h_n[:, v], ref_h[:, 0])
        assert_close(c_n[:, v], ref_c[:, 0])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_by_steps_equals_nn_lstm_outputs_and_gradients(num_layers: int) -> None:
    """The CPU training path of the temporal stage: same outputs, final state and gradients as ``nn.LSTM``."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3, num_layers=num_layers)
    x = torch.randn(6, 5, 4, requires_grad=True)
    state = (torch.randn(num_layers, 5, 3), torch.randn(num_layers, 5, 3))
    results = []
    for fn in (lstm, lambda *a: dg.lstm_by_steps(lstm, *a)):
        lstm.zero_grad()
        x.grad = None
        out, (h_n, c_n) = fn(x, state)
        (out.square().sum() + h_n.sum() + 2 * c_n.sum()).backward()
        results.append([out, h_n, c_n, x.grad, *(p.grad for p in lstm.parameters())])
    for got, want in zip(results[1], results[0], strict=True):
        assert_close(got, want, atol=1e-6, rtol=1e-5)
    model = WDGCN(num_features=4, hidden_dim=4, out_dim=3, num_lstm_layers=num_layers)
    model.lstm.load_state_dict(lstm.state_dict())
    assert_close(model.temporal(x, state)[0], results[0][0])  # the model's training path (grad enabled)


def test_wdgcn_spatial_is_dense_gcn_stack() -> None:
    torch.manual_seed(0)
    xs, adjs = _snapshots(2, 9, 4)
    model = WDGCN(num_features=4, hidden_dim=5, out_dim=3, num_layers=2)
    l1, l2 = model.gcn.layers
    for t in range(2):
        a = adjs[t].to_dense()
        h1 = torch.relu(a @ xs[t] @ l1.lin.weight.t() + l1.bias)
        h2 = torch.relu(a @ h1 @ l2.lin.weight.t() + l2.bias)
        assert_close(model.spatial(xs[t], adjs[t]), h2)


def test_cdgcn_concatenates_features() -> None:
    xs, adjs = _snapshots(3, 9, 4)
    torch.manual_seed(0)
    wd = WDGCN(num_features=4, hidden_dim=5, out_dim=3)
    torch.manual_seed(0)
    cd = CDGCN(num_features=4, hidden_dim=5, out_dim=3)
    cd.gcn.load_state_dict(wd.gcn.state_dict())
    h = cd.spatial(xs, adjs)
    assert cd.spatial_dim == 9 and cd.lstm.input_size == 9
    assert_close(h, torch.cat([wd.spatial(xs, adjs), xs], dim=-1))


# ---------------------------------------------------------------------------------------------- TM-GCN


def test_m_matrix_structure() -> None:
    m = m_matrix(9, 3)
    assert_close(m.sum(dim=1), torch.ones(9))
    assert torch.equal(m, torch.tril(m))  # causal
    t, k = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert (m[(t - k) >= 3] == 0).all()  # banded
    assert (m[((t - k) >= 0) & ((t - k) < 3)] > 0).all()
    assert_close(m_matrix(4, 1), torch.eye(4))


def test_m_matrix_hand_case() -> None:
    expected = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [1 / 2, 1 / 2, 0.0, 0.0],
            [1 / 3, 1 / 3, 1 / 3, 0.0],
            [0.0, 1 / 3, 1 / 3, 1 / 3],
        ]
    )
    assert_close(m_matrix(4, 3), expected)
    with pytest.raises(ConfigError, match="bandwidth"):
        m_matrix(4, 0)


@pytest.mark.parametrize("bandwidth", [1, 2, 4])
def test_causal_moving_average_blocks_equal_m_product(bandwidth: int) -> None:
    h = torch.randn(9, 5, 3)
    expected = torch.einsum("tk,knd->tnd", m_matrix(9, bandwidth), h)
    full, _ = causal_moving_average(h, bandwidth)
    assert_close(full, expected)
    outs, history = [], None
    for lo, hi in [(0, 1), (1, 4), (4, 5), (5, 9)]:
        out, history = causal_moving_average(h[lo:hi], bandwidth, history)
        outs.append(out)
        assert history.shape[0] == min(hi, bandwidth - 1)
    assert_close(torch.cat(outs), expected)


def test_m_mix_adjacency_matches_dense() -> None:
    _, adjs = _snapshots(5, 7, 0)
    dense = torch.stack([a.to_dense() for a in adjs])
    expected = torch.einsum("tk,kij->tij", m_matrix(5, 2), dense)
    mixed, history = m_mix_adjacency(adjs[:3], 2)
    mixed2, _ = m_mix_adjacency(adjs[3:], 2, history)
    assert all(a.layout == torch.sparse_csr for a in mixed + mixed2)
    assert_close(torch.stack([a.to_dense() for a in mixed + mixed2]), expected)


def test_tmgcn_input_mixing_equals_definition() -> None:
    xs, adjs = _snapshots(6, 8, 4, seed=3)
    model = _make("tmgcn", 4, 0, bandwidth=3, num_layers=1, mixing="input")
    m = m_matrix(6, 3)
    a_hat = torch.einsum("tk,kij->tij", m, torch.stack([a.to_dense() for a in adjs]))
    x_hat = torch.einsum("tk,knf->tnf", m, xs)
    layer = model.gcn.layers[0]
    expected = a_hat @ x_hat @ layer.lin.weight.t() + layer.bias  # Y_t = Â_hat_t X_hat_t W (+ bias)
    assert_close(model(xs, adjs).z, expected)


def test_tmgcn_output_mixing_equals_definition_on_static_graph() -> None:
    xs, adjs = _snapshots(6, 8, 4, seed=4)
    static = [adjs[0]] * 6
    exact = _make("tmgcn", 4, 0, bandwidth=3, num_layers=1, mixing="input")
    approx = _make("tmgcn", 4, 0, bandwidth=3, num_layers=1, mixing="output")
    approx.load_state_dict(exact.state_dict())
    assert_close(approx(xs, static).z, exact(xs, static).z)
    # On a changing graph the two placements differ (documented: "output" is not the definition in general).
    assert not torch.allclose(approx(xs, adjs).z, exact(xs, adjs).z)


# ---------------------------------------------------------------------------------------------- EvolveGCN


def _leaky(x: Tensor) -> Tensor:
    """RReLU's evaluation form: slope (1/8 + 1/3) / 2 for negative inputs, written out."""
    return torch.where(x >= 0, x, x * (11.0 / 48.0))


def _gate(cell: nn.Module, g: int, x: Tensor, h: Tensor) -> Tensor:
    """Pre-activation of gate ``g`` of a matrix cell, entry by entry: W_g X + U_g H + B_g."""
    wx, wh, b = cell.weight_x[g], cell.weight_h[g], cell.bias[g]
    rows, cols = x.shape
    out = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = sum(wx[i, k] * x[k, j] + wh[i, k] * h[k, j] for k in range(rows)) + b[i, j]
    return out


def test_mat_lstm_cell_matches_elementwise_equations() -> None:
    torch.manual_seed(0)
    cell = dg.MatLSTMCell(3, 4)
    with torch.no_grad():
        cell.bias.normal_()  # per-entry biases, all different
        x, h, c = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
        i, f, o = (torch.sigmoid(_gate(cell, g, x, h)) for g in range(3))
        c_ref = f * c + i * torch.tanh(_gate(cell, 3, x, h))
        h_new, c_new = cell(x, (h, c))
    assert_close(c_new, c_ref)
    assert_close(h_new, o * torch.tanh(c_ref))
    # Initialisation: forget bias 1, candidate bias spread over entries, input/output biases 0.
    fresh = dg.MatLSTMCell(3, 4)
    assert (fresh.bias[1] == 1).all() and (fresh.bias[0] == 0).all() and (fresh.bias[2] == 0).all()
    assert fresh.bias[3].std() > 0 and fresh.bias[3].abs().max() <= 1.0


def test_mat_gru_cell_matches_elementwise_equations() -> None:
    torch.manual_seed(1)
    cell = dg.MatGRUCell(3, 4)
    assert (cell.bias == 0).all()  # the authors' initialisation
    with torch.no_grad():
        cell.bias.normal_()
        x, h = torch.randn(3, 4), torch.randn(3, 4)
        z = torch.sigmoid(_gate(cell, 0, x, h))
        r = torch.sigmoid(_gate(cell, 1, x, h))
        h_tilde = torch.tanh(_gate(cell, 2, x, r * h))  # U_H acts on R o H
        assert_close(cell(x, h), (1 - z) * h + z * h_tilde)


def test_evolvegcn_o_matches_manual_recurrence() -> None:
    xs, adjs = _snapshots(4, 9, 5, seed=5)
    model = _make("evolvegcn-o", 5, 0, num_layers=2)
    w = [p.detach().clone() for p in model.initial_weights]  # (D_in, D_out)
    c = [torch.zeros_like(p) for p in model.initial_weights]
    expected = []
    with torch.no_grad():
        for t in range(4):
            h = xs[t]
            for layer in range(2):
                cell = model.cells[layer]
                # LSTM whose input and hidden state are both W_{t-1}.
                pre = [cell.weight_x[g] @ w[layer] + cell.weight_h[g] @ w[layer] + cell.bias[g] for g in range(4)]
                c[layer] = torch.sigmoid(pre[1]) * c[layer] + torch.sigmoid(pre[0]) * torch.tanh(pre[3])
                w[layer] = torch.sigmoid(pre[2]) * torch.tanh(c[layer])
                h = _leaky(adjs[t].to_dense() @ h @ w[layer])
            expected.append(h)
        assert_close(model(xs, adjs).z, torch.stack(expected))
        weights, _ = model.weight_sequence(4)
        got = [model.gcn_with_weights(xs[t], adjs[t], weights[t]) for t in range(4)]
        assert_close(torch.stack(got), torch.stack(expected))


def test_evolvegcn_h_matches_manual_recurrence() -> None:
    num_nodes = 9
    xs, adjs = _snapshots(3, num_nodes, 5, seed=6)
    model = _make("evolvegcn-h", 5, 0, num_layers=2)
    with torch.no_grad():
        for cell in model.cells:
            cell.bias.normal_(0.0, 0.3)  # per-entry biases (zero at init) must be used entry by entry
    expected = []
    w = [p.detach().clone() for p in model.initial_weights]  # W, (D_in, D_out)
    with torch.no_grad():
        for t in range(3):
            h = xs[t]
            for layer in range(2):
                p = model.scorers[layer]
                y = (h @ p) / p.norm()
                k = w[layer].shape[1]
                order = sorted(range(num_nodes), key=lambda i, y=y: -float(y[i]))[:k]
                z = torch.stack([h[i] * torch.tanh(y[i]) for i in order]).t()  # (D_in, k)
                cell = model.cells[layer]
                wx, wh, b = cell.weight_x, cell.weight_h, cell.bias
                upd = torch.sigmoid(wx[0] @ z + wh[0] @ w[layer] + b[0])
                rst = torch.sigmoid(wx[1] @ z + wh[1] @ w[layer] + b[1])
                cand = torch.tanh(wx[2] @ z + wh[2] @ (rst * w[layer]) + b[2])
                w[layer] = (1 - upd) * w[layer] + upd * cand  # GRU update written out
                h = _leaky(adjs[t].to_dense() @ h @ w[layer])
            expected.append(h)
        assert_close(model(xs, adjs).z, torch.stack(expected))


@pytest.mark.parametrize("name", ["evolvegcn-o", "evolvegcn-h"])
def test_evolvegcn_activation_options(name: str) -> None:
    xs, adjs = _snapshots(2, 9, 5, seed=12)
    torch.manual_seed(0)
    relu = build_model(name, num_features=5, hidden_dim=8, out_dim=6, num_layers=1, activation="relu")
    torch.manual_seed(0)
    rrelu = build_model(name, num_features=5, hidden_dim=8, out_dim=6, num_layers=1, activation="rrelu")
    torch.manual_seed(0)
    leaky = build_model(name, num_features=5, hidden_dim=8, out_dim=6, num_layers=1)
    with torch.no_grad():
        z_leaky = leaky(xs, adjs).z
        assert (z_leaky < 0).any()  # one layer: the output is the activation of a signed pre-activation
        assert_close(relu(xs, adjs).z, z_leaky.clamp(min=0))  # same pre-activation, negatives cut
        rrelu.eval()  # RReLU in eval mode is the leaky ReLU with the mean slope
        assert_close(rrelu(xs, adjs).z, z_leaky)
    with pytest.raises(ConfigError, match="activation"):
        build_model(name, num_features=5, activation="tanh")


@pytest.mark.parametrize("name", ["evolvegcn-o", "evolvegcn-h"])
def test_evolvegcn_embeddings_do_not_collapse_over_20_snapshots(name: str) -> None:
    # Regression: nn.LSTMCell/GRUCell on W's columns (shared bias) drove W_t to rank one and ReLU then zeroed
    # whole rows (EvolveGCN-O: 100% zero rows by t=10); zero matrix-LSTM biases made W_t shrink to ~0.
    num_nodes = 100
    _, adjs = _snapshots(20, num_nodes, 0, seed=13)
    for seed in range(2):
        torch.manual_seed(seed)
        model = build_model(name, num_features=0, hidden_dim=16, out_dim=16, num_nodes=num_nodes)
        with torch.no_grad():
            z = model(None, adjs).z  # (20, N, 16)
        zero_rows = (z == 0).all(-1).float().mean(-1)
        assert (zero_rows < 0.5).all(), zero_rows
        # Neither vanishing nor rank one: the last snapshot keeps a sizeable, spread embedding.
        rms = z.pow(2).mean((1, 2)).sqrt()
        assert rms[-1] > 0.1 * rms[0] and torch.isfinite(z).all(), rms
        sv = torch.linalg.svdvals(z[-1])
        assert sv[1] > 0.05 * sv[0], sv
        if name == "evolvegcn-o":
            w = model.weight_sequence(20)[0][-1]
            for w_l, w_0 in zip(w, model.initial_weights, strict=True):
                assert w_l.pow(2).mean() > 0.25 * w_0.pow(2).mean()
                s = torch.linalg.svdvals(w_l)
                assert s[s.numel() // 2] > 0.1 * s[0], s  # not columns converging to one vector (rank one)


@pytest.mark.slow
def test_evolvegcn_o_learns_synthetic_links() -> None:
    import lightning as L

    from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
    from lit_efficiency.dyn_gnn.task import DynGNNTask

    L.seed_everything(0, verbose=False)
    dm = SnapshotDataModule(
        num_nodes=60,
        num_snapshots=20,
        edges_per_snapshot=200,
        num_communities=3,
        num_node_features=0,
        num_negatives=5,
        block_size=4,
    )
    task = DynGNNTask(model="evolvegcn-o", hidden_dim=16, out_dim=16, num_layers=2, head_hidden_dim=16, lr=0.02)
    trainer = quiet_trainer(
        max_epochs=8,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=100,
    )
    trainer.fit(task, dm)
    metrics = trainer.validate(task, dm, verbose=False)[0]
    assert metrics["val/auc"] > 0.6, metrics


def test_evolvegcn_h_summary_pads_small_graphs() -> None:
    model = _make("evolvegcn-h", 3, 0, num_layers=1)  # out_dim 6 > 4 nodes
    z = model.summarize(0, torch.randn(4, 3), 6)
    assert z.shape == (6, 3) and (z[4:] == 0).all()


# ---------------------------------------------------------------------------------------------- all models


@pytest.mark.parametrize(("name", "kwargs"), ALL_MODELS, ids=ALL_IDS)
@pytest.mark.parametrize("num_features", [4, 0])
def test_block_processing_equals_full_sequence(name: str, kwargs: dict, num_features: int) -> None:
    num_nodes = 10
    xs, adjs = _snapshots(7, num_nodes, num_features, seed=7)
    model = _make(name, num_features, num_nodes, **kwargs)
    full = model(xs, adjs)
    assert full.z.shape == (7, num_nodes, model.out_dim)
    outs, state = [], None
    for lo, hi in [(0, 2), (2, 3), (3, 7)]:
        block_xs = None if xs is None else xs[lo:hi]
        out = model(block_xs, adjs[lo:hi], state)
        outs.append(out.z)
        state = out.state
    assert_close(torch.cat(outs), full.z)


@pytest.mark.parametrize(("name", "kwargs"), ALL_MODELS[:4], ids=ALL_IDS[:4])
def test_spatial_then_temporal_by_vertex_blocks_equals_forward(name: str, kwargs: dict) -> None:
    # The distributed cut: spatial per snapshot, then temporal on vertex blocks independently.
    xs, adjs = _snapshots(5, 12, 4, seed=8)
    model = _make(name, 4, 0, **kwargs)
    full = model(xs, adjs).z
    if name == "tmgcn" and kwargs["mixing"] == "input":
        xs, adjs, _ = model.mix_inputs(xs, adjs)
    h = model.spatial(xs, adjs)
    assert h.shape == (5, 12, model.spatial_dim)
    z = torch.cat([model.temporal(h[:, lo:hi])[0] for lo, hi in [(0, 5), (5, 6), (6, 12)]], dim=1)
    assert_close(z, full)


@pytest.mark.parametrize(("name", "kwargs"), ALL_MODELS[:4], ids=ALL_IDS[:4])
def test_spatial_is_independent_per_snapshot(name: str, kwargs: dict) -> None:
    xs, adjs = _snapshots(5, 10, 4, seed=9)
    model = _make(name, 4, 0, **kwargs)
    perm = [3, 0, 4, 2, 1]
    h = model.spatial(xs, adjs)
    h_perm = model.spatial(xs[perm], [adjs[i] for i in perm])
    assert_close(h_perm, h[perm])
    assert_close(model.spatial(xs[2], adjs[2]), h[2])


@pytest.mark.parametrize(("name", "kwargs"), ALL_MODELS, ids=ALL_IDS)
@pytest.mark.parametrize("num_features", [4, 0])
def test_gradients_flow_to_all_parameters(name: str, kwargs: dict, num_features: int) -> None:
    num_nodes = 10
    xs, adjs = _snapshots(4, num_nodes, num_features, seed=10)
    if xs is not None:
        xs.requires_grad_(True)
    model = _make(name, num_features, num_nodes, **kwargs)
    head = LinkPredictor(model.out_dim)
    z = model(xs, adjs).z
    edges, _ = _random_graph(num_nodes, 20, seed=11)
    labels = torch.randint(0, 2, (20,)).float()
    loss = sum(nn.functional.binary_cross_entropy_with_logits(head(z[t], edges), labels) for t in range(3))
    loss.backward()
    for pname, p in list(model.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    if xs is not None:
        assert xs.grad is not None and xs.grad.abs().sum() > 0


def test_detach_state_cuts_the_graph() -> None:
    xs, adjs = _snapshots(3, 6, 4)
    for name, kwargs in ALL_MODELS:
        state = _make(name, 4, 0, **kwargs)(xs, adjs).state
        flat = []

        def collect(s, flat=flat) -> None:
            if isinstance(s, Tensor):
                flat.append(s)
            elif isinstance(s, (tuple, list)):
                for item in s:
                    collect(item)

        collect(detach_state(state))
        assert flat and all(not t.requires_grad for t in flat), name


def test_large_sparse_graph_memory_is_sane() -> None:
    # N = 10^4: the adjacency stays sparse (a dense one would be 400 MB per snapshot).
    num_nodes = 10_000
    adjs = [gcn_norm(_random_graph(num_nodes, 50_000, seed=t)[0], num_nodes) for t in range(3)]
    assert adjs[0].values().numel() < 70_000
    model = _make("wdgcn", 0, num_nodes)
    out = model(None, adjs)
    assert out.z.shape == (3, num_nodes, 6) and torch.isfinite(out.z).all()


# ---------------------------------------------------------------------------------------------- heads, factory


def test_link_predictor_linear_is_concat_times_u() -> None:
    z = torch.randn(6, 4)
    edges = torch.tensor([[0, 2, 5], [1, 2, 3]])
    head = LinkPredictor(4)
    u, b = head.mlp.weight, head.mlp.bias  # (1, 8), (1,)
    expected = torch.stack([torch.cat([z[s], z[d]]) @ u[0] + b[0] for s, d in edges.t().tolist()])
    assert_close(head(z, edges), expected)
    assert head(torch.randn(3, 6, 4), edges).shape == (3, 3)  # batched over time


def test_edge_classifier_and_node_regressor_shapes() -> None:
    z = torch.randn(6, 4)
    edges = torch.tensor([[0, 1], [2, 3]])
    clf = EdgeClassifier(4, num_classes=2, hidden_dim=8)
    assert clf(z, edges).shape == (2, 2)
    reg = NodeRegressor(4)
    assert_close(reg(z), z @ reg.mlp.weight[0] + reg.mlp.bias[0])
    assert reg(torch.randn(3, 6, 4)).shape == (3, 6)


def test_build_model_names_and_unknown_name() -> None:
    expected = {"wdgcn": WDGCN, "cdgcn": CDGCN, "tmgcn": TMGCN, "evolvegcn-o": EvolveGCNO, "evolvegcn-h": EvolveGCNH}
    for name, cls in expected.items():
        assert type(build_model(name, num_features=3)) is cls
    with pytest.raises(ConfigError) as err:
        build_model("gcn-lstm", num_features=3)
    message = str(err.value)
    assert "\n" not in message and "gcn-lstm" in message
    assert all(name in message for name in expected)


def test_feature_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="num_nodes"):
        WDGCN(num_features=0)
    _, adjs = _snapshots(2, 5, 0)
    with pytest.raises(ConfigError, match="num_features=3"):
        WDGCN(num_features=3)(None, adjs)
    with pytest.raises(ConfigError, match="mixing"):
        TMGCN(num_features=3, mixing="both")  # type: ignore[arg-type]


def test_module_imports_no_lightning_or_wandb() -> None:
    tree = ast.parse(Path(dg.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"lightning", "pytorch_lightning", "wandb"}


def test_spmm_under_cpu_bf16_autocast_matches_fp32() -> None:
    """torch.sparse.mm has no CPU bf16 kernel; spmm runs the product in the adjacency's fp32 under autocast."""
    torch.manual_seed(0)
    edge_index, _ = _random_graph(30, 120, seed=3)
    adj = gcn_norm(edge_index, 30)
    x, w = torch.randn(30, 8), torch.randn(8, 4)
    want = spmm(adj, x @ w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = spmm(adj, x @ w)
    assert got.dtype == torch.float32
    assert_close(got, want, rtol=2e-2, atol=2e-2)  # x @ w ran in bf16


@pytest.mark.parametrize("hidden", [0, 5])
def test_edge_heads_split_into_vertex_and_pair_parts(hidden):
    """``from_vertex_part(vertex_part(z))`` equals the head on ``[Z_u || Z_v]``, values and gradients."""
    torch.manual_seed(0)
    z = torch.randn(3, 7, 4, requires_grad=True)  # (T, N, d)
    edge_index = torch.tensor([[0, 6, 2, 2], [1, 3, 2, 5]])
    for head in (dg.LinkPredictor(4, hidden), dg.EdgeClassifier(4, 2, hidden)):
        assert head.vertex_width == 2 * (hidden or head.mlp.out_features)
        whole = head(z, edge_index)
        split = head.from_vertex_part(head.vertex_part(z), edge_index)
        torch.testing.assert_close(split, whole)
        grads = torch.autograd.grad(whole.square().sum(), [z, *head.parameters()])
        split_grads = torch.autograd.grad(split.square().sum(), [z, *head.parameters()])
        for got, want in zip(split_grads, grads, strict=True):
            torch.testing.assert_close(got, want)
    node = dg.NodeRegressor(4, hidden)
    assert node.vertex_part(z).shape == (3, 7, node.vertex_width)
    torch.testing.assert_close(node.from_vertex_part(node.vertex_part(z)), node(z))


@pytest.mark.parametrize(("model", "with_features"), [("wdgcn", False), ("cdgcn", True), ("cdgcn", False)])
def test_batched_spatial_equals_pyg_gcnconv_per_snapshot(model, with_features):
    """The spatial stage (per snapshot on CPU, from the shared first product) equals two PyG ``GCNConv`` calls per
    snapshot: values and gradients."""
    from torch_geometric.nn import GCNConv
    from torch_geometric.utils import coalesce, remove_self_loops

    torch.manual_seed(0)
    n, f, hidden, steps = 9, 3, 4, 5
    num_features = f if with_features else 0
    net = dg.build_model(model, num_features=num_features, hidden_dim=hidden, out_dim=hidden, num_nodes=n)
    # Simple graphs (no repeated edges or self-loops, where PyG and gcn_norm document different conventions).
    edge_indices = [coalesce(remove_self_loops(torch.randint(0, n, (2, 12)))[0]) for _ in range(steps)]
    edge_indices[2] = torch.empty(2, 0, dtype=torch.long)  # an empty snapshot
    adjs = [gcn_norm(ei, n) for ei in edge_indices]
    xs = torch.randn(steps, n, f, requires_grad=True) if with_features else None
    convs = []
    for layer in net.gcn.layers:
        conv = GCNConv(layer.in_channels, layer.out_channels)
        conv.lin.weight.data.copy_(layer.lin.weight)
        conv.bias.data.copy_(layer.bias)
        convs.append(conv)
    feats = net.features(None, n) if xs is None else None
    expected = []
    for t, ei in enumerate(edge_indices):
        x_t = feats if xs is None else xs[t]
        h = torch.relu(convs[1](torch.relu(convs[0](x_t, ei)), ei))
        expected.append(torch.cat([h, x_t], -1) if model == "cdgcn" else h)
    expected = torch.stack(expected)
    got = net.spatial(xs, adjs)
    assert_close(got, expected, rtol=1e-5, atol=1e-6)
    per_snapshot = torch.stack([net.spatial_snapshot(None if xs is None else xs[t], a) for t, a in enumerate(adjs)])
    assert_close(got, per_snapshot, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(got)
    ours = [net.features.embedding.weight] if xs is None else [xs]
    theirs = list(ours)
    for layer, conv in zip(net.gcn.layers, convs, strict=True):
        ours += [layer.lin.weight, layer.bias]
        theirs += [conv.lin.weight, conv.bias]
    got_grads = torch.autograd.grad((got * weight).sum(), ours)
    want_grads = torch.autograd.grad((expected * weight).sum(), theirs)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_cpu_per_snapshot_spatial_equals_the_stacked_block_operator():
    """On CPU ``spatial`` runs snapshot by snapshot; the stacked ``(S N, d)`` form through one ``BlockAdjacency`` of
    all snapshots (what CUDA runs, there as one block-diagonal SpMM) gives the same values and gradients."""
    torch.manual_seed(0)
    n, steps = 11, 4
    net = dg.build_model("wdgcn", num_features=0, hidden_dim=6, out_dim=6, num_nodes=n)
    adjs = [gcn_norm(torch.randint(0, n, (2, 20)), n) for _ in range(steps)]
    params = [net.features.embedding.weight, *net.gcn.parameters()]
    got = net.spatial(None, adjs)
    stacked = net.gcn(net.features(None, n), dg.BlockAdjacency(adjs), steps).view(steps, n, -1)
    assert_close(got, stacked, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(got)
    got_grads = torch.autograd.grad((got * weight).sum(), params)
    want_grads = torch.autograd.grad((stacked * weight).sum(), params)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_block_diagonal_csr_matches_torch_block_diag():
    from lit_efficiency.dyn_gnn.adjacency import block_diagonal_csr, transpose_csr

    mats = [torch.rand(4, 4) * (torch.rand(4, 4) > 0.6) for _ in range(3)]
    big = block_diagonal_csr([m.to_sparse_csr() for m in mats])
    assert_close(big.to_dense(), torch.block_diag(*mats))
    assert_close(transpose_csr(big).to_dense(), torch.block_diag(*mats).t())


@pytest.mark.gpu
def test_batched_spatial_block_diagonal_on_cuda_equals_cpu():
    """On CUDA the block runs as one block-diagonal SpMM: values and gradients equal the CPU per-snapshot products."""
    torch.manual_seed(0)
    n, steps = 50, 6
    net = dg.build_model("wdgcn", num_features=0, hidden_dim=8, out_dim=8, num_nodes=n)
    adjs = [gcn_norm(torch.randint(0, n, (2, 200)), n) for _ in range(steps)]
    out_cpu = net.spatial(None, adjs)
    grads_cpu = torch.autograd.grad(out_cpu.square().sum(), list(net.gcn.parameters()))
    net_gpu = net.cuda()
    out_gpu = net_gpu.spatial(None, [a.cuda() for a in adjs])
    grads_gpu = torch.autograd.grad(out_gpu.square().sum(), list(net_gpu.gcn.parameters()))
    assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads_gpu, grads_cpu, strict=True):
        assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
