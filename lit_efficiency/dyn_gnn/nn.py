r"""Discrete-time dynamic GNNs in plain PyTorch, split into a spatial and a temporal stage.

A dynamic graph is a sequence of ``T`` snapshots :math:`G_t = (\hat{A}_t, X_t)` over one vertex set of size ``N``.
Every model here is written as

1. a **spatial** stage, :meth:`DynamicGNN.spatial`: per snapshot, needs the whole snapshot and nothing from other
   time steps (a stack of GCN layers), and
2. a **temporal** stage, :meth:`DynamicGNN.temporal`: per vertex, needs the vertex's whole time series and nothing
   from other vertices (an LSTM, or a causal moving average over time).

The distributed trainer (SC'21, "Efficient Scaling of Dynamic Graph Neural Networks", arXiv 2109.07893) cuts
exactly there: rank ``p`` runs ``spatial`` on its block of snapshots, one all-to-all regroups ``(T, N, d)`` by
vertex blocks, and ``temporal`` then runs on ``(T, N_block, d)``. ``temporal`` takes and returns a state, so that a
sequence processed in consecutive blocks of snapshots gives the same result as the whole sequence at once.

Models (paper links in each class): :class:`WDGCN`, :class:`CDGCN` (Manessi et al.), :class:`TMGCN` (Malik et al.),
:class:`EvolveGCNO`, :class:`EvolveGCNH` (Pareja et al.); heads :class:`LinkPredictor`, :class:`EdgeClassifier`,
:class:`NodeRegressor`; :func:`build_model` picks a model by name.

Graphs are given as normalised sparse adjacencies (:func:`~lit_efficiency.dyn_gnn.adjacency.gcn_norm`,
``torch.sparse_csr``), oriented ``adj[target, source]`` so that ``adj @ X`` aggregates messages into targets like
PyG's ``GCNConv``. Graph products use ``torch.sparse.mm`` (:func:`spmm`); the normalisation is
:mod:`~lit_efficiency.dyn_gnn.adjacency`'s.

Node features: a model built with ``num_features=0`` takes ``x=None`` and uses a learnable ``nn.Embedding(num_nodes,
embedding_dim)`` as the (time-constant) feature matrix; this needs ``num_nodes``. With ``num_features > 0`` the
features must be given. Every line here is written for this project; PyG / PyG-Temporal / IBM TM-GCN / IBM EvolveGCN
were read for their designs only.
"""

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.dyn_gnn.adjacency import block_diagonal_csr, transpose_csr

__all__ = [
    "CDGCN",
    "DynGNNOutput",
    "DynamicGNN",
    "EdgeClassifier",
    "EvolveActivation",
    "EvolveGCNH",
    "EvolveGCNO",
    "GCNLayer",
    "LinkPredictor",
    "MatGRUCell",
    "MatLSTMCell",
    "MODEL_NAMES",
    "NodeRegressor",
    "TMGCN",
    "TMGCNState",
    "WDGCN",
    "BlockAdjacency",
    "bounded_forward",
    "build_model",
    "spmm",
    "causal_moving_average",
    "detach_state",
    "m_matrix",
    "m_mix_adjacency",
    "model_class",
]

Features = Tensor | Sequence[Tensor | None] | None
"""Node features of a block of snapshots: ``(S, N, F)``, a list of ``S`` ``(N, F)`` tensors, or ``None``."""


# --------------------------------------------------------------------------------------------------------------------
# Graph operators
# --------------------------------------------------------------------------------------------------------------------


def spmm(adj: Tensor, x: Tensor) -> Tensor:
    """``adj @ x`` for a sparse (CSR or COO) or dense ``(N, N)`` adjacency and a dense ``(N, d)`` matrix.

    Mixed precision: under autocast the dense operand arrives in fp16/bf16 while the adjacency stays fp32, a pair
    cuSPARSE has no SpMM kernel for (and CPU has no bf16 one): the product then runs in the adjacency's dtype (fp32
    accumulation) and returns that dtype; the dense layers around it still run in low precision. Measured on an H200
    (``benchmarks/results/gpu/``): ``16-mixed`` and ``bf16-mixed`` training steps crashed before this.

    Shapes:
        adj ``(N, N)``, x ``(N, d)`` -> ``(N, d)``.
    """
    if adj.layout == torch.strided:
        return adj @ x
    if x.dtype == adj.dtype and not torch.is_autocast_enabled(x.device.type):
        return torch.sparse.mm(adj, x)
    with torch.autocast(device_type=x.device.type, enabled=False):  # CPU autocast would cast the adjacency itself
        return torch.sparse.mm(adj, x.to(adj.dtype))


class BlockAdjacency:
    r"""The adjacencies of a block of ``S`` snapshots as one linear operator on stacked ``(S N, d)`` features.

    :math:`\mathrm{blockdiag}(\hat{A}_1, \dots, \hat{A}_S)\, X`. On CUDA it is one block-diagonal CSR SpMM (one kernel
    for the block instead of ``S``); on CPU, where one large CSR product measured 2-4x slower than the ``S`` small
    ones (Bitcoin-OTC, torch 2.13), it is ``S`` products over views of the stacked features. Either way the transposes
    used by backward are built once per block and shared by every layer (autograd would transpose the CSR matrix again
    at each layer). The adjacencies are data: no gradient flows into them.

    Args:
        adjs: ``S`` sparse CSR ``(N, N)`` matrices.
        grad: build the transposes for backward (``False`` under ``no_grad``).
    """

    def __init__(self, adjs: Sequence[Tensor], grad: bool = True) -> None:
        self.num_steps, self.num_nodes = len(adjs), adjs[0].shape[0]
        if adjs[0].device.type == "cuda":
            self.mats: list[Tensor] = [block_diagonal_csr(list(adjs))]
        else:
            self.mats = list(adjs)
        self.mats_t = [transpose_csr(a) for a in self.mats] if grad else None

    def mm(self, x: Tensor) -> Tensor:
        """``(S N, d)`` -> ``(S N, d)``: every snapshot's rows multiplied by its adjacency."""
        if x.dtype != self.mats[0].dtype or torch.is_autocast_enabled(x.device.type):  # spmm's mixed-precision path
            parts = x.view(len(self.mats), -1, x.shape[-1]).unbind(0) if len(self.mats) > 1 else [x]
            return torch.cat([spmm(a, part) for a, part in zip(self.mats, parts, strict=True)])
        return _BlockSpMM.apply(x, self)


def _block_products(mats: list[Tensor], x: Tensor) -> list[Tensor]:
    if len(mats) == 1:
        return [torch.sparse.mm(mats[0], x)]
    return [
        torch.sparse.mm(a, part) for a, part in zip(mats, x.view(len(mats), -1, x.shape[-1]).unbind(0), strict=True)
    ]


class _BlockSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, op: BlockAdjacency) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return _stacked(_block_products(op.mats, x))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        assert ctx.op.mats_t is not None, "BlockAdjacency built with grad=False"
        return _stacked(_block_products(ctx.op.mats_t, grad.contiguous())), None


def _stacked(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def m_matrix(
    num_steps: int, bandwidth: int, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> Tensor:
    r"""The TM-GCN transform ``M``: a causal moving average over the last ``bandwidth`` time steps.

    .. math::
        M_{tk} = \begin{cases} 1 / \min(t + 1, b) & t - b < k \le t \\ 0 & \text{otherwise} \end{cases}

    Lower triangular, banded (``b`` non-zeros per row at most), each row sums to 1.

    Args:
        num_steps: ``T``.
        bandwidth: ``b >= 1`` (``b = 1`` gives the identity).
        dtype: default dtype when ``None``.
        device: CPU when ``None``.

    Returns:
        ``(T, T)`` dense matrix.
    """
    if bandwidth < 1:
        raise ConfigError(f"bandwidth must be >= 1, got {bandwidth}")
    t = torch.arange(num_steps, device=device)
    lag = t.view(-1, 1) - t.view(1, -1)  # t - k
    band = (lag >= 0) & (lag < bandwidth)
    count = torch.clamp(t + 1, max=bandwidth).to(dtype or torch.get_default_dtype())
    return band.to(count.dtype) / count.view(-1, 1)


def causal_moving_average(h: Tensor, bandwidth: int, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Apply ``M`` (:func:`m_matrix`) along time, ``H_hat = H x_1 M``, block by block.

    .. math::
        \hat{H}_t = \frac{1}{\min(t + 1, b)} \sum_{k = \max(0, t - b + 1)}^{t} H_k

    ``history`` holds the inputs of the ``min(t0, b - 1)`` steps before this block (``t0`` = global index of the
    block's first step), so that calling this on consecutive blocks, passing the returned history on, equals one call
    on the whole sequence. Nothing mixes across vertices: any slice of the non-time dimensions can be processed alone.

    Args:
        h: ``(T, ...)`` block of inputs, time first.
        bandwidth: ``b >= 1``.
        history: ``(H, ...)`` with ``H <= b - 1`` preceding inputs, or ``None`` at the start of the sequence.

    Returns:
        ``(mixed (T, ...), new_history (min(H + T, b - 1), ...))``.
    """
    if bandwidth < 1:
        raise ConfigError(f"bandwidth must be >= 1, got {bandwidth}")
    past = h.new_zeros((0, *h.shape[1:])) if history is None else history
    if past.shape[0] > bandwidth - 1:
        raise ValueError(f"history has {past.shape[0]} steps, more than bandwidth - 1 = {bandwidth - 1}")
    seq = torch.cat([past, h], dim=0)
    num_past, num_steps = past.shape[0], h.shape[0]
    # Zero-pad the front to b - 1 steps of history; the divisor below counts only the real steps.
    pad = h.new_zeros((bandwidth - 1 - num_past, *h.shape[1:]))
    padded = torch.cat([pad, seq], dim=0)
    total = sum(padded[bandwidth - 1 - lag : bandwidth - 1 - lag + num_steps] for lag in range(bandwidth))
    count = torch.clamp(torch.arange(num_steps, device=h.device) + num_past + 1, max=bandwidth).to(h.dtype)
    mixed = total / count.view(-1, *([1] * (h.dim() - 1)))
    keep = min(seq.shape[0], bandwidth - 1)
    return mixed, seq[seq.shape[0] - keep :]


def m_mix_adjacency(
    adjs: Sequence[Tensor], bandwidth: int, history: Sequence[Tensor] = ()
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    r"""Mix sparse adjacencies over time with ``M``: :math:`\hat{A}_t = \sum_k M_{tk} \hat{A}_k` (TM-GCN).

    The result's sparsity is the union of the last ``b`` snapshots'. ``history`` works as in
    :func:`causal_moving_average` (the last ``min(t0, b - 1)`` adjacencies before the block).

    Args:
        adjs: ``T`` sparse ``(N, N)`` adjacencies.
        bandwidth: ``b >= 1``.
        history: preceding adjacencies, at most ``b - 1``.

    Returns:
        ``(T mixed (N, N) sparse CSR adjacencies, new history)``.
    """
    if bandwidth < 1:
        raise ConfigError(f"bandwidth must be >= 1, got {bandwidth}")
    seq = list(history) + list(adjs)
    num_past = len(history)
    mixed = []
    for i in range(len(adjs)):
        window = seq[max(0, num_past + i - bandwidth + 1) : num_past + i + 1]
        coo = [a.to_sparse_coo().coalesce() for a in window]
        indices = torch.cat([a.indices() for a in coo], dim=1)
        values = torch.cat([a.values() for a in coo]) / len(window)
        size = tuple(window[0].shape)
        mixed.append(torch.sparse_coo_tensor(indices, values, size).coalesce().to_sparse_csr())
    keep = min(len(seq), bandwidth - 1)
    return mixed, tuple(seq[len(seq) - keep :])


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested tuple / list / NamedTuple) state, for truncated back-propagation in time."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state


# --------------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------------


class GCNLayer(nn.Module):
    r"""Graph convolution (Kipf & Welling, https://arxiv.org/abs/1609.02907) on a pre-normalised adjacency.

    .. math::
        H' = \hat{A} H W + b

    Equal to PyG's ``GCNConv(in_channels, out_channels)`` with the same ``lin.weight`` and ``bias`` when
    ``adj = gcn_norm(edge_index, N, edge_weight)`` (:mod:`~lit_efficiency.dyn_gnn.adjacency`). The activation is left
    to the caller.

    Args:
        in_channels: input feature size ``F``.
        out_channels: output feature size ``D``.
        bias: add a learnable bias.

    Shapes:
        x ``(N, F)``, adj ``(N, N)`` sparse or dense -> ``(N, D)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot weight, zero bias (as PyG)."""
        nn.init.xavier_uniform_(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor | BlockAdjacency, repeat: int = 1) -> Tensor:
        """Apply the layer to one snapshot, or to a block of snapshots.

        Args:
            x: ``(N, F)`` features, or ``(S N, F)`` stacked features of a block.
            adj: ``(N, N)`` adjacency, or a :class:`BlockAdjacency` of the block.
            repeat: ``x`` is shared by the ``repeat`` snapshots of the block (``(N, F)`` features, e.g. a learnable
                embedding): the linear map runs once and its output is repeated.
        """
        out = self.lin(x)
        if repeat > 1:
            out = out.repeat(repeat, 1)
        return self.propagate(out, adj)

    def propagate(self, xw: Tensor, adj: Tensor | BlockAdjacency) -> Tensor:
        """The layer after its linear map: ``adj @ xw + bias`` (``xw = lin(x)``, computed once when shared)."""
        out = adj.mm(xw) if isinstance(adj, BlockAdjacency) else spmm(adj, xw)
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


class GCNStack(nn.Module):
    """GCN layers with ReLU between them (and after the last one when ``activate_last``).

    Args:
        dims: feature sizes ``[F, D_1, ..., D_L]`` (``L`` layers).
        activate_last: apply ReLU after the last layer too.

    Shapes:
        x ``(N, F)``, adj ``(N, N)`` -> ``(N, D_L)``.
    """

    def __init__(self, dims: Sequence[int], activate_last: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GCNLayer(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activate_last = activate_last

    def forward(self, x: Tensor, adj: Tensor | BlockAdjacency, repeat: int = 1) -> Tensor:
        """Apply all layers to one snapshot, or to a block (arguments as :meth:`GCNLayer.forward`)."""
        for i, layer in enumerate(self.layers):
            x = self._activate(i, layer(x, adj, repeat if i == 0 else 1))
        return x

    def from_projected(self, xw: Tensor, adj: Tensor | BlockAdjacency) -> Tensor:
        """:meth:`forward` given the first layer's linear map of the features, ``xw = layers[0].lin(x)``."""
        x = self._activate(0, self.layers[0].propagate(xw, adj))
        for i, layer in enumerate(self.layers[1:], start=1):
            x = self._activate(i, layer(x, adj))
        return x

    def _activate(self, i: int, x: Tensor) -> Tensor:
        return torch.relu(x) if self.activate_last or i < len(self.layers) - 1 else x


class NodeFeatures(nn.Module):
    """Given node features, or a learnable embedding when the data has none.

    Args:
        num_features: ``F`` of the given features; ``0`` means "no features: use ``nn.Embedding(num_nodes,
            embedding_dim)``".
        num_nodes: ``N``, needed only when ``num_features == 0``.
        embedding_dim: embedding size when ``num_features == 0``.
    """

    def __init__(self, num_features: int, num_nodes: int, embedding_dim: int) -> None:
        super().__init__()
        if num_features < 0:
            raise ConfigError(f"num_features must be >= 0, got {num_features}")
        self.num_features = num_features
        self.embedding: nn.Embedding | None = None
        if num_features == 0:
            if num_nodes <= 0:
                raise ConfigError("num_nodes must be > 0 when num_features=0 (a learnable node embedding is used)")
            self.embedding = nn.Embedding(num_nodes, embedding_dim)
        self.out_dim = num_features if num_features > 0 else embedding_dim

    def forward(self, x: Tensor | None, num_nodes: int) -> Tensor:
        """Return ``(N, out_dim)`` features for one snapshot."""
        if self.embedding is None:
            if x is None:
                raise ConfigError(f"x is None but the model was built with num_features={self.num_features}")
            return x
        if x is not None:
            raise ConfigError("node features were given but the model was built with num_features=0")
        if num_nodes != self.embedding.num_embeddings:
            raise ConfigError(f"snapshot has {num_nodes} nodes but num_nodes={self.embedding.num_embeddings}")
        return self.embedding.weight


def _as_list(xs: Features, num_steps: int) -> list[Tensor | None]:
    """Split ``(S, N, F)`` / list / ``None`` features into ``S`` per-snapshot entries."""
    if xs is None:
        return [None] * num_steps
    items = list(xs.unbind(0)) if isinstance(xs, Tensor) else list(xs)
    if len(items) != num_steps:
        raise ValueError(f"got features for {len(items)} snapshots but {num_steps} adjacencies")
    return items


class DynGNNOutput(NamedTuple):
    """Output of a dynamic GNN over a block of snapshots."""

    z: Tensor
    """``(T, N, out_dim)`` node embeddings per time step."""
    state: Any
    """State to pass to the call on the next block of snapshots (keeps the autograd graph; see
    :func:`detach_state`)."""


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


class DynamicGNN(nn.Module):
    """Base class: ``forward = temporal(spatial(...))`` with a carried temporal state.

    Subclasses set ``spatial_dim`` (size ``d`` of the spatial output, i.e. what the all-to-all redistributes) and
    ``out_dim`` and implement :meth:`spatial_snapshot` and :meth:`temporal`. Every model takes the same core
    arguments (``num_features``, ``hidden_dim``, ``out_dim``, ``num_layers``, ``num_nodes``); its own extra ones are
    listed in :attr:`options`. What snapshot partitioning (SC'21) needs to know is a property of the class:
    :attr:`partitionable` and :meth:`temporal_halo_for`.

    Shapes (every model):
        xs ``(T, N, F)`` or ``None``, ``T`` adjacencies ``(N, N)`` -> z ``(T, N, out_dim)``.
    """

    spatial_dim: int
    out_dim: int

    #: Whether the spatial/temporal cut exists, so snapshots can be partitioned over ranks (the spatial stage runs
    #: per snapshot, the temporal stage per vertex). False for models sequential in time.
    partitionable: ClassVar[bool] = True
    #: Constructor arguments besides the core ones (``num_features``, ``hidden_dim``, ``out_dim``, ``num_layers``,
    #: ``num_nodes``), filled from the task's arguments of the same names.
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_features: int, hidden_dim: int, out_dim: int, num_layers: int, num_nodes: int) -> None:
        """The core arguments every model shares; builds the node-feature front end.

        Args:
            num_features: node feature size ``F``; ``0`` for a learnable node embedding (then ``num_nodes`` is needed).
            hidden_dim: size of the hidden GCN layers (and embedding size when ``num_features == 0``).
            out_dim: output embedding size (the LSTM's hidden size for WD-/CD-GCN, the last GCN layer's otherwise).
            num_layers: number of GCN layers.
            num_nodes: ``N``, only needed when ``num_features == 0``.
        """
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        self.features = NodeFeatures(num_features, num_nodes, hidden_dim)
        self.out_dim = out_dim

    def layer_dims(self, hidden_dim: int, num_layers: int, last_dim: int) -> list[int]:
        """Widths of a GCN stack: the node features, ``num_layers - 1`` hidden layers, then ``last_dim``."""
        return [self.features.out_dim] + [hidden_dim] * (num_layers - 1) + [last_dim]

    @classmethod
    def temporal_halo_for(cls, **options: Any) -> int:
        """Snapshots before its block a rank must also hold when snapshots are partitioned (0: none)."""
        return 0

    @property
    def temporal_is_identity(self) -> bool:
        """The temporal stage returns its input (no vertex redistribution needed)."""
        return False

    def prepare_partitioned_block(self, xs: Features, adjs: Sequence[Tensor]) -> tuple[Features, list[Tensor]]:
        """A rank's snapshots (its temporal halo first) as its spatial stage reads them; the identity here."""
        return xs, list(adjs)

    def spatial_snapshot(self, x: Tensor | None, adj: Tensor) -> Tensor:
        """Spatial stage of one snapshot: ``(N, F)`` or ``None``, ``(N, N)`` -> ``(N, spatial_dim)``."""
        raise NotImplementedError

    def spatial(self, x: Features, adj: Tensor | Sequence[Tensor]) -> Tensor:
        """Spatial stage of one snapshot, or of a block of snapshots (each processed on its own).

        Args:
            x: one snapshot's ``(N, F)`` features, or a block's ``(S, N, F)`` / list; ``None`` without features.
            adj: one ``(N, N)`` sparse adjacency, or a sequence of ``S``.

        Returns:
            ``(N, spatial_dim)`` for one snapshot, ``(S, N, spatial_dim)`` for a block.
        """
        if isinstance(adj, Tensor):
            return self.spatial_snapshot(x, adj)  # type: ignore[arg-type]
        return torch.stack([self.spatial_snapshot(xt, at) for xt, at in zip(_as_list(x, len(adj)), adj, strict=True)])

    def temporal(self, h: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Temporal stage: ``(T, N, spatial_dim)`` -> ``((T, N, out_dim), new_state)``, per vertex."""
        raise NotImplementedError

    def forward(self, xs: Features, adjs: Sequence[Tensor], state: Any = None) -> DynGNNOutput:
        """Run a block of ``T`` snapshots.

        Args:
            xs: ``(T, N, F)`` / list of ``T`` ``(N, F)`` features, or ``None``.
            adjs: ``T`` normalised ``(N, N)`` sparse adjacencies (:func:`~lit_efficiency.dyn_gnn.adjacency.gcn_norm`).
            state: the state returned for the previous block, ``None`` at the start of the sequence.

        Returns:
            :class:`DynGNNOutput` with ``z`` ``(T, N, out_dim)``.
        """
        z, state = self.temporal(self.spatial(xs, adjs), state)
        return DynGNNOutput(z, state)


class StackedGCN(DynamicGNN):
    """A dynamic GNN whose spatial stage is one GCN stack, weights shared over time, run on every snapshot.

    Args:
        last_dim: width of the stack's last layer.
        activate_last: ReLU after the last layer too; the other arguments are :class:`DynamicGNN`'s.
    """

    def __init__(
        self, num_features: int, hidden_dim: int, out_dim: int, num_layers: int, num_nodes: int, last_dim: int,
        activate_last: bool,
    ) -> None:  # fmt: skip
        super().__init__(num_features, hidden_dim, out_dim, num_layers, num_nodes)
        self.gcn = GCNStack(self.layer_dims(hidden_dim, num_layers, last_dim), activate_last=activate_last)

    def spatial_snapshot(self, x: Tensor | None, adj: Tensor) -> Tensor:
        return self.gcn(self.features(x, adj.shape[0]), adj)

    def spatial(self, x: Features, adj: Tensor | Sequence[Tensor]) -> Tensor:
        """As :meth:`DynamicGNN.spatial`; a block of CSR snapshots runs **batched** through a :class:`BlockAdjacency`.

        The features are stacked to ``(S N, F)`` or, when shared by all snapshots (the learnable embedding), multiplied
        by the first weight once and repeated; every dense operation then runs once for the block, and the graph
        products go through the block operator. On CPU the block runs snapshot by snapshot instead, each through its
        own one-matrix operator (one CSR transpose shared by the layers' backward) and, for shared features, from the
        first weight's product computed once: the ``(S N, d)`` intermediates of a batched block leave the cache, and
        measured 1.7x slower than this loop (Bitcoin-OTC, 96 x 5881 x 32, 1 thread; ``benchmarks/dyngnn_quality.py``
        ``--speed``). Equal to the per-snapshot loop.
        """
        if isinstance(adj, Tensor) or not adj or any(a.layout != torch.sparse_csr for a in adj):
            return super().spatial(x, adj)
        num_steps, n = len(adj), adj[0].shape[0]
        grad = torch.is_grad_enabled()
        if adj[0].device.type == "cpu":
            return self._spatial_per_snapshot(x, adj, grad)
        block = BlockAdjacency(adj, grad=grad)
        if x is None:
            feats, repeat = self.features(None, n), num_steps
        else:
            items = _as_list(x, num_steps)
            feats, repeat = torch.cat([self.features(xt, n) for xt in items]), 1
        h = self.gcn(feats, block, repeat).view(num_steps, n, -1)
        return self._with_features(h, feats, repeat)

    def _spatial_per_snapshot(self, x: Features, adjs: Sequence[Tensor], grad: bool) -> Tensor:
        """The CPU form of :meth:`spatial`: one snapshot at a time, the shared features' first product once."""
        if x is not None:
            return super().spatial(x, adjs)
        num_steps, n = len(adjs), adjs[0].shape[0]
        feats = self.features(None, n)
        xw = self.gcn.layers[0].lin(feats)
        h = torch.stack([self.gcn.from_projected(xw, BlockAdjacency([a], grad=grad)) for a in adjs])
        return self._with_features(h, feats, num_steps)

    def _with_features(self, h: Tensor, feats: Tensor, repeat: int) -> Tensor:
        """What the batched spatial stage returns besides the GCN output (nothing here; CD-GCN adds the features)."""
        return h


def lstm_by_steps(
    lstm: nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``lstm(x, state)`` as a loop of ``torch.lstm_cell`` steps (what ``nn.LSTMCell`` runs), layer by layer.

    For a unidirectional, sequence-first ``nn.LSTM`` with biases, no projection and no dropout between layers (in
    training); anything else goes to ``lstm`` itself.

    Shapes:
        - x: ``(T, N, input_size)``; state: ``(h_0, c_0)``, each ``(num_layers, N, hidden_size)``
        - output: ``(T, N, hidden_size)`` and ``(h_n, c_n)``
    """
    plain = lstm.bias and not lstm.bidirectional and not lstm.batch_first and lstm.proj_size == 0
    if not plain or (lstm.dropout and lstm.training and lstm.num_layers > 1):
        return lstm(x, state)
    if state is None:
        zeros = x.new_zeros(lstm.num_layers, x.shape[1], lstm.hidden_size)
        state = (zeros, zeros)
    out, last_h, last_c = x, [], []
    for layer in range(lstm.num_layers):
        weights = [getattr(lstm, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c = state[0][layer], state[1][layer]
        steps = []
        for x_t in out:
            h, c = torch.lstm_cell(x_t, (h, c), *weights)
            steps.append(h)
        out = torch.stack(steps)
        last_h.append(h)
        last_c.append(c)
    return out, (torch.stack(last_h), torch.stack(last_c))


class WDGCN(StackedGCN):
    r"""Waterfall dynamic GCN (Manessi, Rozza, Manzo, https://arxiv.org/abs/1704.06199).

    .. math::
        H_t = \mathrm{ReLU}\big(\hat{A}_t \cdots \mathrm{ReLU}(\hat{A}_t X_t W_1) \cdots W_L\big), \qquad
        Z_{t,v} = \mathrm{LSTM}(H_{1,v}, \dots, H_{t,v})

    GCN weights are shared over time (the "waterfall"); one LSTM, shared by all vertices, runs over each vertex's time
    series (vertices are the LSTM batch). Spatial = GCN stack, temporal = LSTM, state = ``(h_n, c_n)``, each
    ``(num_lstm_layers, N, out_dim)``.

    Args:
        num_lstm_layers: number of stacked LSTM layers; the other arguments are :class:`DynamicGNN`'s.
    """

    def __init__(
        self,
        num_features: int,
        hidden_dim: int = 32,
        out_dim: int = 32,
        num_layers: int = 2,
        num_lstm_layers: int = 1,
        num_nodes: int = 0,
    ) -> None:
        super().__init__(num_features, hidden_dim, out_dim, num_layers, num_nodes, hidden_dim, activate_last=True)
        self.spatial_dim = self._spatial_dim(hidden_dim)
        self.lstm = nn.LSTM(self.spatial_dim, out_dim, num_layers=num_lstm_layers)

    def _spatial_dim(self, hidden_dim: int) -> int:
        return hidden_dim

    def temporal(self, h: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """LSTM over time for every vertex: ``(T, N, spatial_dim)`` -> ``(T, N, out_dim)``, state ``(h_n, c_n)``.

        When training on CPU the recurrence runs step by step (:func:`lstm_by_steps`, same parameters, same result):
        at these shapes (hidden 32, thousands of vertices) oneDNN's fused LSTM backward costs twice its forward and
        the step loop's forward + backward is 1.3-1.4x faster (two runs of ``benchmarks/lstm_variants.py``). Inference
        on CPU and everything on CUDA (cuDNN) keep ``nn.LSTM``, which is faster there.
        """
        if not h.is_cuda and torch.is_grad_enabled() and (h.requires_grad or self.lstm.weight_hh_l0.requires_grad):
            return lstm_by_steps(self.lstm, h, state)
        out, new_state = self.lstm(h, state)
        return out, new_state


class CDGCN(WDGCN):
    r"""Concatenate dynamic GCN (Manessi et al., https://arxiv.org/abs/1704.06199).

    As :class:`WDGCN`, but the LSTM reads :math:`[H_t \,\|\, X_t]`: the GCN output concatenated with the snapshot's
    node features (the learnable embedding when ``num_features == 0``). The concatenation belongs to the spatial stage,
    so ``spatial_dim = hidden_dim + F``. Arguments as :class:`WDGCN`.
    """

    def _spatial_dim(self, hidden_dim: int) -> int:
        return hidden_dim + self.features.out_dim

    def spatial_snapshot(self, x: Tensor | None, adj: Tensor) -> Tensor:
        feats = self.features(x, adj.shape[0])
        return torch.cat([self.gcn(feats, adj), feats], dim=-1)

    def _with_features(self, h: Tensor, feats: Tensor, repeat: int) -> Tensor:
        num_steps, n = h.shape[0], h.shape[1]
        stacked = feats.expand(num_steps, n, -1) if repeat > 1 else feats.view(num_steps, n, -1)
        return torch.cat([h, stacked], dim=-1)


class TMGCNState(NamedTuple):
    """Carried state of :class:`TMGCN`: the last ``b - 1`` inputs of the M-mixing."""

    x_history: Tensor | None = None
    """``(<= b-1, N, F)`` raw features (``mixing="input"`` with given features)."""
    adj_history: tuple[Tensor, ...] = ()
    """``<= b-1`` raw adjacencies (``mixing="input"``)."""
    h_history: Tensor | None = None
    """``(<= b-1, N, out_dim)`` spatial outputs (``mixing="output"``)."""


class TMGCN(StackedGCN):
    r"""Tensor M-product GCN (Malik, Ubaru, Horesh, Kilmer, Avron, https://arxiv.org/abs/1910.07643).

    With ``M`` = :func:`m_matrix` (causal moving average of bandwidth ``b``), the definition is

    .. math::
        \hat{A}_t = \sum_k M_{tk} \hat{A}_k, \qquad \hat{X} = X \times_3 M, \qquad
        Y_t = \hat{A}_t \hat{X}_t W

    (for ``L`` layers, ReLU between layers, none after the last: layer ``l + 1`` reads layer ``l``'s output, already in
    the transformed domain, with the same :math:`\hat{A}_t`).

    Two ways to place the M-mixing, chosen by ``mixing``:

    * ``"input"`` (default, **equals the definition exactly**): :meth:`mix_inputs` mixes the raw adjacencies
      (:func:`m_mix_adjacency`) and features (:func:`causal_moving_average`) over time, then the spatial stage is
      a plain per-snapshot GCN stack on :math:`(\hat{A}_t, \hat{X}_t)` and the temporal stage is the identity. The
      state is the last ``b - 1`` raw snapshots; in a snapshot-partitioned run this is the "temporal halo" that
      rank ``p`` needs from rank ``p - 1``. :meth:`spatial` expects already-mixed inputs.
    * ``"output"`` (fits the spatial/temporal cut with no halo): the spatial stage is the GCN stack on the raw
      :math:`(\hat{A}_t, X_t)`, the temporal stage mixes its outputs per vertex,
      :math:`Y_t = \sum_k M_{tk}\, \mathrm{GCN}(\hat{A}_k, X_k)`, state = last ``b - 1`` spatial outputs. This is
      **not** the definition in general: for one layer it is :math:`\sum_k M_{tk} \hat{A}_k X_k W` instead of
      :math:`(\sum_k M_{tk}\hat{A}_k)(\sum_j M_{tj} X_j) W`; the two agree when the adjacency is constant over each
      window (or the features are, e.g. a node embedding) and the model has one layer.

    Args:
        bandwidth: ``b``, number of time steps averaged by ``M``.
        mixing: ``"input"`` (exact) or ``"output"`` (mix per vertex after the GCN), see above; the other arguments
            are :class:`DynamicGNN`'s.
    """

    def __init__(
        self,
        num_features: int,
        hidden_dim: int = 32,
        out_dim: int = 32,
        num_layers: int = 1,
        bandwidth: int = 3,
        mixing: Literal["input", "output"] = "input",
        num_nodes: int = 0,
    ) -> None:
        super().__init__(num_features, hidden_dim, out_dim, num_layers, num_nodes, out_dim, activate_last=False)
        if bandwidth < 1:
            raise ConfigError(f"bandwidth must be >= 1, got {bandwidth}")
        if mixing not in ("input", "output"):
            raise ConfigError(f"mixing must be 'input' or 'output', got {mixing!r}")
        self.bandwidth = bandwidth
        self.mixing = mixing
        self.spatial_dim = out_dim

    options: ClassVar[tuple[str, ...]] = ("bandwidth", "mixing")

    @classmethod
    def temporal_halo_for(cls, bandwidth: int = 3, mixing: str = "input", **options: Any) -> int:
        """``bandwidth - 1`` raw snapshots with ``mixing="input"`` (the M-mixing reads them), else 0."""
        return int(bandwidth) - 1 if mixing == "input" else 0

    @property
    def temporal_is_identity(self) -> bool:
        """``mixing="input"`` mixes before the spatial stage, so the temporal stage is the identity."""
        return self.mixing == "input"

    def prepare_partitioned_block(self, xs: Features, adjs: Sequence[Tensor]) -> tuple[Features, list[Tensor]]:
        """``mixing="input"``: M-mix the block; its halo of ``bandwidth - 1`` snapshots replaces the carried state."""
        if self.mixing != "input":
            return xs, list(adjs)
        xs, mixed, _ = self.mix_inputs(xs, adjs, None)
        return xs, mixed

    def mix_inputs(
        self, xs: Features, adjs: Sequence[Tensor], state: TMGCNState | None = None
    ) -> tuple[Features, list[Tensor], TMGCNState]:
        """M-mix raw features and adjacencies of a block over time (``mixing="input"``).

        Returns:
            ``(mixed features (T, N, F) or None, T mixed sparse CSR adjacencies, new state)``.
        """
        state = state or TMGCNState()
        adjs_hat, adj_history = m_mix_adjacency(adjs, self.bandwidth, state.adj_history)
        if xs is None:  # a time-constant embedding is unchanged by M (its rows sum to 1)
            return None, adjs_hat, TMGCNState(None, adj_history, None)
        x = xs if isinstance(xs, Tensor) else torch.stack(list(xs))  # type: ignore[arg-type]
        x_hat, x_history = causal_moving_average(x, self.bandwidth, state.x_history)
        return x_hat, adjs_hat, TMGCNState(x_history, adj_history, None)

    def temporal(self, h: Tensor, state: TMGCNState | None = None) -> tuple[Tensor, TMGCNState]:
        """``"output"``: causal moving average per vertex; ``"input"``: identity (the mixing happened upstream)."""
        state = state or TMGCNState()
        if self.mixing == "input":
            return h, state
        out, h_history = causal_moving_average(h, self.bandwidth, state.h_history)
        return out, TMGCNState(None, (), h_history)

    def forward(self, xs: Features, adjs: Sequence[Tensor], state: TMGCNState | None = None) -> DynGNNOutput:
        if self.mixing == "input":
            xs, adjs, state = self.mix_inputs(xs, adjs, state)
        return super().forward(xs, adjs, state)


class MatGRUCell(nn.Module):
    r"""GRU over a weight matrix (EvolveGCN's appendix, https://arxiv.org/abs/1902.10191): the ``cols`` columns are
    the batch, the biases are per entry.

    .. math::
        Z &= \sigma(W_Z X + U_Z H + B_Z), \quad R = \sigma(W_R X + U_R H + B_R), \\
        \tilde{H} &= \tanh(W_H X + U_H (R \circ H) + B_H), \quad H' = (1 - Z) \circ H + Z \circ \tilde{H}

    with :math:`W_\cdot, U_\cdot \in \mathbb{R}^{r \times r}` and :math:`B_\cdot \in \mathbb{R}^{r \times c}`. A
    bias per entry (not one per row shared by all columns, as ``nn.GRUCell`` on the columns would have) matters: a
    shared bias pulls every column towards the same fixed point, so the evolved ``W`` drifts to rank one.
    Initialisation as the authors' code: :math:`W, U \sim U(\pm 1/\sqrt{r})`, :math:`B = 0`.

    Args:
        rows: ``r`` (the GCN layer's input size).
        cols: ``c`` (the GCN layer's output size).

    Shapes:
        x ``(r, c)``, h ``(r, c)`` -> ``(r, c)``.
    """

    num_gates = 3

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.weight_x = nn.Parameter(torch.empty(self.num_gates, rows, rows))
        self.weight_h = nn.Parameter(torch.empty(self.num_gates, rows, rows))
        self.bias = nn.Parameter(torch.empty(self.num_gates, rows, cols))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(±1/sqrt(rows))`` matrices, zero biases."""
        bound = 1.0 / math.sqrt(self.rows)
        nn.init.uniform_(self.weight_x, -bound, bound)
        nn.init.uniform_(self.weight_h, -bound, bound)
        nn.init.zeros_(self.bias)

    def _mix(self, weight: Tensor, m: Tensor) -> Tensor:
        """``weight[g] @ m`` for every gate ``g`` at once: ``(G, r, r)``, ``(r, c)`` -> ``(G, r, c)``."""
        return (weight.reshape(-1, self.rows) @ m).view(-1, self.rows, m.shape[1])

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """One step: input ``x`` and previous hidden ``h`` -> new hidden."""
        gx = self._mix(self.weight_x, x) + self.bias
        gh = self._mix(self.weight_h[:2], h)
        z = torch.sigmoid(gx[0] + gh[0])
        r = torch.sigmoid(gx[1] + gh[1])
        h_new = torch.tanh(gx[2] + self.weight_h[2] @ (r * h))
        return (1 - z) * h + z * h_new

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}"


class MatLSTMCell(MatGRUCell):
    r"""LSTM over a weight matrix, built like :class:`MatGRUCell` (per-entry biases, columns as the batch).

    .. math::
        I &= \sigma(W_I X + U_I H + B_I), \quad F = \sigma(W_F X + U_F H + B_F), \quad
        O = \sigma(W_O X + U_O H + B_O), \\
        C' &= F \circ C + I \circ \tanh(W_C X + U_C H + B_C), \quad H' = O \circ \tanh(C')

    Args:
        rows: ``r``.
        cols: ``c``.

    Shapes:
        x ``(r, c)``, state ``(h, c)`` each ``(r, c)`` -> ``(h', c')``.
    """

    num_gates = 4

    def reset_parameters(self) -> None:
        r"""As :class:`MatGRUCell`, but forget bias ``1`` and candidate bias :math:`B_C \sim U(\pm 2/\sqrt{c})`.

        With zero biases and the LSTM fed its own output (EvolveGCN-O) the map contracts to ``W = 0`` (about
        ``0.6x`` per step at init: ``W_t`` was ``1e-4`` of ``W_0`` after 16 snapshots, the embeddings vanished and
        gradients to ``W_0`` with them). With these biases the fixed point at init is roughly :math:`B_C` itself, a
        random full-rank matrix of Glorot-like size, so ``W_t`` keeps its scale over long sequences. The paper does
        not fix an initialisation; the authors' code uses zero biases (with a GRU).
        """
        super().reset_parameters()
        with torch.no_grad():
            self.bias[1].fill_(1.0)
            bound = 2.0 / math.sqrt(self.cols)
            self.bias[3].uniform_(-bound, bound)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """One step: input ``x`` and previous ``(hidden, cell)`` -> new ``(hidden, cell)``."""
        h, c = state
        g = self._mix(self.weight_x, x) + self._mix(self.weight_h, h) + self.bias
        i, f, o = torch.sigmoid(g[0]), torch.sigmoid(g[1]), torch.sigmoid(g[2])
        c_new = f * c + i * torch.tanh(g[3])
        return o * torch.tanh(c_new), c_new


EvolveActivation = Literal["leaky_relu", "rrelu", "relu"]
"""Activation of EvolveGCN's GCN layers (every layer, the last included)."""

_RRELU_LOWER, _RRELU_UPPER = 1.0 / 8.0, 1.0 / 3.0  # nn.RReLU's defaults, used by the EvolveGCN authors' code


class _EvolveGCN(DynamicGNN):
    r"""Shared parts of EvolveGCN-O/-H: a GCN stack whose weights ``W_t`` evolve through a matrix recurrent cell.

    The recurrence runs over the weights (``D_in x D_out`` per layer), not over vertices, and is sequential in time
    (-H even reads the snapshot), so these models have no useful spatial/temporal cut: they are the single-process
    baseline. :meth:`gcn_with_weights` is the per-snapshot GCN given explicit ``W_t``, :meth:`temporal`
    is the identity, and :meth:`forward` steps through time, carrying the weight state across blocks.

    Every GCN layer, the last one included, is followed by the activation :math:`\sigma`, as in the authors' code
    (IBM/EvolveGCN, which uses ``nn.RReLU``). ``activation="leaky_relu"`` (default) is RReLU's evaluation-mode form,
    a leaky ReLU of slope ``(1/8 + 1/3) / 2 = 11/48``, in training too: deterministic, so that a sequence cut into
    blocks gives exactly the whole sequence's values. ``"rrelu"`` samples the slope in ``[1/8, 1/3]`` in training as
    the authors do; ``"relu"`` was this project's first choice and lets whole rows die (see :class:`EvolveGCNO`).
    """

    partitionable: ClassVar[bool] = False  # sequential in time: no spatial/temporal cut

    def __init__(
        self,
        num_features: int,
        hidden_dim: int = 32,
        out_dim: int = 32,
        num_layers: int = 2,
        num_nodes: int = 0,
        activation: EvolveActivation = "leaky_relu",
    ) -> None:
        super().__init__(num_features, hidden_dim, out_dim, num_layers, num_nodes)
        if activation not in ("leaky_relu", "rrelu", "relu"):
            raise ConfigError(f"activation must be 'leaky_relu', 'rrelu' or 'relu', got {activation!r}")
        self.activation = activation
        self.dims = self.layer_dims(hidden_dim, num_layers, out_dim)
        self.initial_weights = nn.ParameterList(
            nn.Parameter(torch.empty(d_in, d_out)) for d_in, d_out in zip(self.dims[:-1], self.dims[1:], strict=True)
        )
        self.spatial_dim = out_dim
        self.build_cells([(d_in, d_out) for d_in, d_out in zip(self.dims[:-1], self.dims[1:], strict=True)])
        self.reset_parameters()

    def build_cells(self, shapes: list[tuple[int, int]]) -> None:
        """Create the per-layer recurrent cells (and whatever else the variant evolves) for ``(D_in, D_out)`` shapes."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initial weights ``W_0 ~ U(±1/sqrt(D_out))`` (the authors' code); the cells initialise themselves."""
        for w in self.initial_weights:
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def act(self, x: Tensor) -> Tensor:
        """The layer activation :math:`\\sigma` (see the class docstring)."""
        if self.activation == "relu":
            return torch.relu(x)
        if self.activation == "rrelu":
            return nn.functional.rrelu(x, _RRELU_LOWER, _RRELU_UPPER, training=self.training)
        return nn.functional.leaky_relu(x, (_RRELU_LOWER + _RRELU_UPPER) / 2)

    def spatial_snapshot(self, x: Tensor | None, adj: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no spatial/temporal cut (its weights evolve step by step): call the model, "
            "or gcn_with_weights() with explicit W_t"
        )

    def gcn_with_weights(self, x: Tensor | None, adj: Tensor, weights: Sequence[Tensor]) -> Tensor:
        r"""GCN on one snapshot with the given weights: :math:`H^{l+1} = \sigma(\hat{A} H^l W^l)`.

        Args:
            x: ``(N, F)`` features or ``None``.
            adj: ``(N, N)`` normalised adjacency.
            weights: one ``(D_in, D_out)`` matrix per layer (``W_t``).
        """
        if len(weights) != len(self.initial_weights):
            raise ValueError(f"expected {len(self.initial_weights)} weight matrices, got {len(weights)}")
        h = self.features(x, adj.shape[0])
        for w in weights:
            h = self.act(spmm(adj, h @ w))
        return h

    def temporal(self, h: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Identity: EvolveGCN's recurrence is over weights, inside :meth:`step`."""
        return h, state

    def evolve(self, layer: int, h: Tensor, state: Any, adj: Tensor | None = None) -> tuple[Tensor, Any]:
        """Advance layer ``layer``'s weight state by one step given its input ``h`` ``(N, D_in)`` and the snapshot's
        normalised adjacency ``adj``; return ``W_t``."""
        raise NotImplementedError

    def initial_state(self) -> list[Any]:
        """Per-layer weight state at the start of a sequence."""
        raise NotImplementedError

    def step(self, x: Tensor | None, adj: Tensor, state: list[Any] | None = None) -> tuple[Tensor, list[Any]]:
        """One time step: evolve each layer's weights, then apply it. Returns ``((N, out_dim), new state)``."""
        state = self.initial_state() if state is None else state
        h = self.features(x, adj.shape[0])
        new_state = []
        for layer, layer_state in enumerate(state):
            w_t, layer_state = self.evolve(layer, h, layer_state, adj)
            new_state.append(layer_state)
            h = self.act(spmm(adj, h @ w_t))
        return h, new_state

    def forward(self, xs: Features, adjs: Sequence[Tensor], state: list[Any] | None = None) -> DynGNNOutput:
        outs = []
        for x, adj in zip(_as_list(xs, len(adjs)), adjs, strict=True):
            z, state = self.step(x, adj, state)
            outs.append(z)
        return DynGNNOutput(torch.stack(outs), state)


class EvolveGCNO(_EvolveGCN):
    r"""EvolveGCN-O (Pareja et al., https://arxiv.org/abs/1902.10191): GCN weights are the output of an LSTM.

    .. math::
        W^l_t = \mathrm{LSTM}(W^l_{t-1}), \qquad H^{l+1}_t = \sigma(\hat{A}_t H^l_t W^l_t)

    The matrix LSTM (:class:`MatLSTMCell`, per-entry biases) takes its own previous output (the weights) as input and
    hidden state; :math:`W_0` is learnable, the initial cell state zero. The weights do not depend on the data, so
    :meth:`weight_sequence` can produce all ``W_t`` first and :meth:`gcn_with_weights` then runs every snapshot
    independently.
    State: per layer ``(W_t, C_t)``, each ``(D_in, D_out)``.

    Why not ``nn.LSTMCell`` on the columns of ``W`` (this class's first version): its bias is shared by all
    columns, and with ``W`` as both input and hidden state the recurrence contracts, so every column converged to
    the same vector (relative column spread ``0.7 -> 0.002`` in 16 steps): ``W_t`` became rank one, every output
    channel the same, and ReLU then zeroed whole rows (up to all of them). Per-entry biases (the paper's appendix)
    keep the columns apart, a leaky activation keeps rows alive, and :class:`MatLSTMCell`'s initial biases stop
    ``W_t`` shrinking to zero over long sequences.

    Deviations: the authors' code (IBM/EvolveGCN ``egcn_o.py``) evolves -O's weights with the GRU of -H fed ``W``
    as input; this class follows the paper's LSTM. See :class:`_EvolveGCN` for the activation.

    Args:
        activation: ``"leaky_relu"`` (slope 11/48), ``"rrelu"`` or ``"relu"``, after every layer; the other
            arguments are :class:`DynamicGNN`'s.
    """

    def build_cells(self, shapes: list[tuple[int, int]]) -> None:
        self.cells = nn.ModuleList(MatLSTMCell(d_in, d_out) for d_in, d_out in shapes)

    def initial_state(self) -> list[tuple[Tensor, Tensor]]:
        return [(w, torch.zeros_like(w)) for w in self.initial_weights]

    def evolve(
        self, layer: int, h: Tensor, state: tuple[Tensor, Tensor], adj: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        w_prev, c_prev = state
        w_t, c_t = self.cells[layer](w_prev, (w_prev, c_prev))
        return w_t, (w_t, c_t)

    def weight_sequence(
        self, num_steps: int, state: list[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[list[list[Tensor]], list[tuple[Tensor, Tensor]]]:
        """The next ``num_steps`` weights: ``([W_t per layer] per step, new state)``, ``W_t`` ``(D_in, D_out)``."""
        state = self.initial_state() if state is None else state
        weights = []
        for _ in range(num_steps):
            step = []
            new_state = []
            for layer, layer_state in enumerate(state):
                w_t, layer_state = self.evolve(layer, None, layer_state)  # type: ignore[arg-type]
                step.append(w_t)
                new_state.append(layer_state)
            weights.append(step)
            state = new_state
        return weights, state


class EvolveGCNH(_EvolveGCN):
    r"""EvolveGCN-H (Pareja et al., https://arxiv.org/abs/1902.10191): GCN weights are the hidden state of a GRU.

    .. math::
        y = H^l_t p / \|p\|, \quad i = \mathrm{top}_k(y), \quad Z_t = [H^l_t \circ \tanh(y)]_{i}, \quad
        W^l_t = \mathrm{GRU}(Z_t^\top, W^l_{t-1}), \quad H^{l+1}_t = \sigma(\hat{A}_t H^l_t W^l_t)

    with ``k = D_out`` (the number of columns of :math:`W`; zero rows pad the summary when fewer than ``k`` nodes are
    active), only the nodes with an edge in snapshot ``t`` in the top-``k`` (:func:`active_nodes`), a learnable
    scoring vector :math:`p` per layer, and the matrix GRU :class:`MatGRUCell` (per-entry biases, as the paper's
    appendix and the authors' code). The summary reads the snapshot, so layers and time steps are strictly
    sequential. State: per layer ``W_t`` ``(D_in, D_out)``. Arguments as :class:`EvolveGCNO`. Deviation from the
    authors' code: a graph with fewer than ``k`` nodes is padded with zero rows (they repeat the last index).
    """

    def build_cells(self, shapes: list[tuple[int, int]]) -> None:
        self.cells = nn.ModuleList(MatGRUCell(d_in, d_out) for d_in, d_out in shapes)
        self.scorers = nn.ParameterList(nn.Parameter(torch.empty(d_in)) for d_in, _ in shapes)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for p in self.scorers:
            nn.init.uniform_(p, -1.0 / math.sqrt(p.numel()), 1.0 / math.sqrt(p.numel()))

    def initial_state(self) -> list[Tensor]:
        return list(self.initial_weights)

    def summarize(self, layer: int, h: Tensor, k: int, active: Tensor | None = None) -> Tensor:
        """Top-``k`` node summary of ``h`` ``(N, D_in)`` -> ``(k, D_in)``, ordered by decreasing score.

        Only ``active`` nodes (``(N,)`` bool, default all) compete, as in the authors' code, which masks the nodes
        absent from the snapshot; rows beyond the active count are zero. With learned embeddings ``h`` is the same
        at every step, so the mask is what makes the summary follow the snapshots.
        """
        p = self.scorers[layer]
        y = h @ p / p.norm()
        if active is not None:
            y = y.masked_fill(~active, float("-inf"))
        top = torch.topk(y, min(k, h.shape[0])).indices
        keep = torch.isfinite(y[top]).unsqueeze(-1)
        z = torch.where(keep, h[top] * torch.tanh(y[top]).unsqueeze(-1), 0.0)
        if z.shape[0] < k:
            z = torch.cat([z, z.new_zeros(k - z.shape[0], z.shape[1])])
        return z

    def evolve(self, layer: int, h: Tensor, state: Tensor, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        active = None if adj is None else active_nodes(adj)
        w_t = self.cells[layer](self.summarize(layer, h, state.shape[1], active).t(), state)
        return w_t, w_t


def active_nodes(adj: Tensor) -> Tensor:
    """``(N,)`` bool: the nodes with an edge besides their self-loop in a GCN-normalised adjacency (which holds
    exactly one self-loop per node, so a row or column with more than one entry has a neighbour)."""
    csr = adj if adj.layout == torch.sparse_csr else adj.to_sparse_csr()
    rows = csr.crow_indices().diff()
    cols = torch.bincount(csr.col_indices(), minlength=csr.shape[0])
    return (rows > 1) | (cols > 1)


# --------------------------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------------------------


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    if hidden_dim <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def _first_linear(mlp: nn.Module) -> nn.Linear:
    return mlp if isinstance(mlp, nn.Linear) else mlp[0]  # type: ignore[index,return-value]


def _after_first_linear(mlp: nn.Module, x: Tensor) -> Tensor:
    """The layers of an :func:`_mlp` after its first ``Linear`` applied to ``x`` (the identity for a linear map)."""
    if isinstance(mlp, nn.Linear):
        return x
    for layer in list(mlp)[1:]:  # type: ignore[call-overload]
        x = layer(x)
    return x


class _EdgeHead(nn.Module):
    r"""A head on :math:`[Z_u \,\|\, Z_v]` that also runs in two halves (:meth:`vertex_part`, :meth:`from_vertex_part`).

    The first layer of the MLP is linear in the concatenation, :math:`[Z_u \,\|\, Z_v] W^\top + b = Z_u A^\top +
    Z_v B^\top + b` with :math:`W = [A \,|\, B]`, so it splits into a per-vertex projection :math:`P = [Z A^\top \,\|\,
    Z B^\top]` (``vertex_width = 2k`` values per vertex, ``k`` the first layer's width) and a per-edge remainder
    :math:`g(P_u[:k] + P_v[k:] + b)`. The distributed task computes :math:`P` where the embeddings are (vertex layout)
    and ships it instead of :math:`Z` when ``2k < d``. A single process uses the same split whenever the candidates
    outnumber the vertices (the first layer then runs on ``N`` rows instead of ``E``); the values are equal.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.mlp = _mlp(2 * in_dim, hidden_dim, num_outputs)

    @property
    def vertex_width(self) -> int:
        """Values per vertex of :meth:`vertex_part`: twice the first layer's width."""
        return 2 * _first_linear(self.mlp).out_features

    def _scores(self, z: Tensor, edge_index: Tensor) -> Tensor:
        if edge_index.shape[-1] > z.shape[-2]:  # more candidates than vertices: the first layer per vertex is cheaper
            return self._pair_scores(self.vertex_part(z), edge_index)
        return self.mlp(torch.cat([z[..., edge_index[0], :], z[..., edge_index[1], :]], dim=-1))

    def vertex_part(self, z: Tensor) -> Tensor:
        """Per-vertex projections ``[Z A^T || Z B^T]``: ``(..., N, d)`` -> ``(..., N, vertex_width)``."""
        first = _first_linear(self.mlp)
        weight = torch.cat([first.weight[:, : self.in_dim], first.weight[:, self.in_dim :]], dim=0)
        return z @ weight.t()

    def _pair_scores(self, p: Tensor, edge_index: Tensor) -> Tensor:
        first = _first_linear(self.mlp)
        k = first.out_features
        x = p[..., edge_index[0], :k] + p[..., edge_index[1], k:]
        if first.bias is not None:
            x = x + first.bias
        return _after_first_linear(self.mlp, x)


class LinkPredictor(_EdgeHead):
    r"""Link-prediction head: one logit per candidate edge, :math:`s_{uv} = [Z_u \,\|\, Z_v]\, U`.

    ``U`` is a linear map (``hidden_dim=0``) or a one-hidden-layer ReLU MLP. Use with ``BCEWithLogitsLoss`` (its
    ``pos_weight`` plays the role of the TM-GCN code's class weights) and rank by the logit for MAP/MRR/AUC.

    Args:
        in_dim: embedding size ``d``.
        hidden_dim: MLP hidden size; ``0`` for a linear ``U``.

    Shapes:
        z ``(N, d)`` (or ``(..., N, d)``), edge_index ``(2, E)`` -> ``(E,)`` (or ``(..., E)``) logits.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 0) -> None:
        super().__init__(in_dim, hidden_dim, 1)

    def forward(self, z: Tensor, edge_index: Tensor) -> Tensor:
        """Score the edges ``edge_index`` with embeddings ``z`` (e.g. ``Z_t`` for the edges of ``t + 1``)."""
        return self._scores(z, edge_index).squeeze(-1)

    def from_vertex_part(self, p: Tensor, edge_index: Tensor) -> Tensor:
        """:meth:`forward` from :meth:`vertex_part`'s projections ``p`` instead of the embeddings."""
        return self._pair_scores(p, edge_index).squeeze(-1)


class EdgeClassifier(_EdgeHead):
    r"""Edge classification head (e.g. edge sign): :math:`\mathrm{logits}_{uv} = [Z_u \,\|\, Z_v]\, U`.

    Args:
        in_dim: embedding size ``d``.
        num_classes: number of classes (2 for the sign).
        hidden_dim: MLP hidden size; ``0`` for a linear ``U``.

    Shapes:
        z ``(N, d)`` (or ``(..., N, d)``), edge_index ``(2, E)`` -> ``(E, num_classes)`` logits.
    """

    def __init__(self, in_dim: int, num_classes: int = 2, hidden_dim: int = 0) -> None:
        super().__init__(in_dim, hidden_dim, num_classes)

    def forward(self, z: Tensor, edge_index: Tensor) -> Tensor:
        """Classify the edges ``edge_index``."""
        return self._scores(z, edge_index)

    def from_vertex_part(self, p: Tensor, edge_index: Tensor) -> Tensor:
        """:meth:`forward` from :meth:`vertex_part`'s projections ``p`` instead of the embeddings."""
        return self._pair_scores(p, edge_index)


class NodeRegressor(nn.Module):
    """Node regression head: one real value per node, ``MLP(Z_v)``.

    Args:
        in_dim: embedding size ``d``.
        hidden_dim: MLP hidden size; ``0`` for a linear map.

    Shapes:
        z ``(..., N, d)`` -> ``(..., N)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 0) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, 1)

    #: Values per vertex of :meth:`vertex_part`: the whole head runs per vertex.
    vertex_width: ClassVar[int] = 1

    def forward(self, z: Tensor) -> Tensor:
        """Predict one value per node."""
        return self.mlp(z).squeeze(-1)

    def vertex_part(self, z: Tensor) -> Tensor:
        """The whole head, per vertex: ``(..., N, d)`` -> ``(..., N, 1)``."""
        return self.mlp(z)

    def from_vertex_part(self, p: Tensor) -> Tensor:
        """:meth:`forward` from :meth:`vertex_part`'s output."""
        return p.squeeze(-1)


# --------------------------------------------------------------------------------------------------------------------
# Bounded-memory forward
# --------------------------------------------------------------------------------------------------------------------


def _spatial_block(net: DynamicGNN, xs: list[Tensor | None], adjs: list[Tensor]) -> Tensor:
    return net.spatial(xs, adjs)


def _temporal_chunk(net: DynamicGNN, h: Tensor, h0: Tensor | None, c0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    out, (hn, cn) = net.temporal(h, None if h0 is None else (h0, c0))
    return out, hn, cn


def bounded_forward(
    net: DynamicGNN,
    xs: Features,
    adjs: list[Tensor],
    state: Any = None,
    spatial_block_size: int | None = None,
    checkpoint_spatial: bool = False,
    temporal_chunk_size: int | None = None,
    checkpoint_temporal: bool = False,
) -> DynGNNOutput:
    r"""``net(xs, adjs, state)`` computed block-wise with bounded activation memory; same values and gradients.

    The spatial stage runs ``spatial_block_size`` snapshots at a time; with ``checkpoint_spatial`` each block is an
    activation checkpoint (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant): only its output
    :math:`H_{b} \in \mathbb{R}^{B \times N \times d}` is kept and the GCN layers are recomputed in backward, so the
    GCN intermediates alive at once are those of one block. The temporal stage (an LSTM over each vertex's series, so
    vertices are independent) runs on ``temporal_chunk_size`` vertices at a time, each chunk optionally checkpointed,
    so the LSTM's gate activations alive at once are those of one chunk:

    .. math::
        Z_{:, V_c} = \mathrm{LSTM}(H_{:, V_c};\ h_0[V_c], c_0[V_c]), \qquad V = V_1 \cup \dots \cup V_C

    What still scales with ``S * N``: the block's spatial output ``H`` and the embeddings ``Z`` the head reads.

    Shapes:
        - xs: ``(S, N, F)``, a list of ``S`` ``(N, F)`` or ``None``; adjs: ``S`` sparse ``(N, N)``
        - output: ``z`` ``(S, N, out_dim)``, state as ``net``'s

    Args:
        net: Any :class:`DynamicGNN` using the base ``forward`` (``spatial`` then ``temporal``); vertex chunking needs
            an LSTM temporal stage (WD-GCN, CD-GCN).
        xs: Node features of the block.
        adjs: Normalised adjacencies of the block.
        state: Temporal state from the previous block.
        spatial_block_size: Snapshots per spatial block (``None``: the whole block at once).
        checkpoint_spatial: Checkpoint each spatial block.
        temporal_chunk_size: Vertices per temporal chunk (``None``: all at once).
        checkpoint_temporal: Checkpoint each temporal chunk.

    Returns:
        :class:`DynGNNOutput` equal (up to float summation order) to ``net(xs, adjs, state)``.

    Raises:
        ConfigError: Chunking/checkpointing asked for a model whose forward is not ``temporal(spatial(...))`` or
            vertex chunking for a non-LSTM temporal stage; non-positive sizes.
    """
    for name, value in (("spatial_block_size", spatial_block_size), ("temporal_chunk_size", temporal_chunk_size)):
        if value is not None and value < 1:
            raise ConfigError(f"model.{name} must be >= 1 or null, got {value}")
    plain = spatial_block_size is None and temporal_chunk_size is None
    if plain and not checkpoint_spatial and not checkpoint_temporal:
        return net(xs, adjs, state)
    if type(net).forward is not DynamicGNN.forward:
        raise ConfigError(
            f"model: block-wise/checkpointed processing needs a spatial-then-temporal model (wdgcn, cdgcn), "
            f"got {type(net).__name__}"
        )
    num_steps = len(adjs)
    x_list = _as_list(xs, num_steps)
    block = spatial_block_size or max(num_steps, 1)
    grad = torch.is_grad_enabled()
    hs = []
    for b0 in range(0, num_steps, block):
        bx, ba = x_list[b0 : b0 + block], list(adjs[b0 : b0 + block])
        if checkpoint_spatial and grad:
            hs.append(checkpoint(_spatial_block, net, bx, ba, use_reentrant=False))
        else:
            hs.append(_spatial_block(net, bx, ba))
    h = torch.cat(hs) if len(hs) > 1 else hs[0]
    if temporal_chunk_size is None and not checkpoint_temporal:
        z, state = net.temporal(h, state)
        return DynGNNOutput(z, state)
    if not isinstance(net, WDGCN):
        raise ConfigError(
            f"model.temporal_chunk_size needs an LSTM temporal stage (wdgcn, cdgcn), got {type(net).__name__}"
        )
    n = h.shape[1]
    chunk = temporal_chunk_size or n
    outs, hns, cns = [], [], []
    for v0 in range(0, n, chunk):
        h0 = None if state is None else state[0][:, v0 : v0 + chunk]
        c0 = None if state is None else state[1][:, v0 : v0 + chunk]
        args = (net, h[:, v0 : v0 + chunk], h0, c0)
        out, hn, cn = (
            checkpoint(_temporal_chunk, *args, use_reentrant=False)
            if checkpoint_temporal and grad
            else (_temporal_chunk(*args))
        )
        outs.append(out)
        hns.append(hn)
        cns.append(cn)
    return DynGNNOutput(torch.cat(outs, 1), (torch.cat(hns, 1), torch.cat(cns, 1)))


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------

_MODELS: dict[str, type[DynamicGNN]] = {
    "wdgcn": WDGCN,
    "cdgcn": CDGCN,
    "tmgcn": TMGCN,
    "evolvegcn-o": EvolveGCNO,
    "evolvegcn-h": EvolveGCNH,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
"""Names accepted by :func:`build_model`."""


def model_class(name: str) -> type[DynamicGNN]:
    """The class of model ``name`` (one of :data:`MODEL_NAMES`, case-insensitive).

    Raises:
        ConfigError: unknown name (the one-line message lists the valid names).
    """
    key = name.lower()
    if key not in _MODELS:
        raise ConfigError(f"model name: unknown dynamic GNN {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return _MODELS[key]


def build_model(name: str, **kwargs: Any) -> DynamicGNN:
    """Build a dynamic GNN by name.

    Args:
        name: one of :data:`MODEL_NAMES` (case-insensitive).
        **kwargs: the model's constructor arguments.

    Raises:
        ConfigError: unknown name (the one-line message lists the valid names).
    """
    return model_class(name)(**kwargs)
