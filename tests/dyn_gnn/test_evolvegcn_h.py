"""EvolveGCN-H's top-k summary: only the nodes present in the snapshot compete (hand-checked), so with learned
embeddings the evolved weights follow the snapshots instead of being the same at every step."""

from __future__ import annotations

import torch

from lit_efficiency.dyn_gnn.adjacency import gcn_norm
from lit_efficiency.dyn_gnn.nn import EvolveGCNH, active_nodes


def test_active_nodes_and_masked_summary_by_hand():
    adj = gcn_norm(torch.tensor([[0, 3], [3, 0]]), 5, None)  # nodes 0 and 3 linked, 1, 2, 4 isolated (self-loops)
    assert active_nodes(adj).tolist() == [True, False, False, True, False]
    model = EvolveGCNH(num_features=2, hidden_dim=3, out_dim=3, num_layers=1)
    with torch.no_grad():
        model.scorers[0].copy_(torch.tensor([1.0, 0.0]))
    h = torch.tensor([[1.0, 0.0], [9.0, 0.0], [8.0, 0.0], [2.0, 1.0], [7.0, 0.0]])
    z = model.summarize(0, h, 3, active_nodes(adj))
    # scores y = h[:, 0]; the active nodes 3 (y=2) then 0 (y=1); a zero row pads to k = 3
    expected = torch.stack([h[3] * torch.tanh(torch.tensor(2.0)), h[0] * torch.tanh(torch.tensor(1.0)), torch.zeros(2)])
    torch.testing.assert_close(z, expected)
    unmasked = model.summarize(0, h, 3)  # without the mask the isolated high scorers 1, 2, 4 win
    torch.testing.assert_close(unmasked[0], h[1] * torch.tanh(torch.tensor(9.0)))


def test_weights_follow_the_snapshots_with_learned_embeddings():
    torch.manual_seed(0)
    model = EvolveGCNH(num_features=0, hidden_dim=4, out_dim=4, num_layers=1, num_nodes=12)
    a = gcn_norm(torch.tensor([[0, 1, 2], [1, 2, 0]]), 12, None)
    b = gcn_norm(torch.tensor([[7, 8, 9], [8, 9, 10]]), 12, None)
    state = model.initial_state()
    w_a, _ = model.evolve(0, model.features(None, 12), state[0], a)
    w_b, _ = model.evolve(0, model.features(None, 12), state[0], b)
    assert not torch.allclose(w_a, w_b)  # same embeddings, same state: different snapshots give different W_t
