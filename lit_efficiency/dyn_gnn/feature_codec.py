r"""Per-snapshot node features shipped as the rows that changed: pure functions, plain PyTorch.

The node-feature counterpart of the adjacency encoding in :mod:`lit_efficiency.dyn_gnn.codec` (``docs/dynamic_gnn.md``
section 3). Snapshot ``t``'s features ``X_t`` (``N x F``) are shipped either whole (:class:`FeatureFull`) or as the
rows that differ bit-wise from ``X_{t-1}`` (:class:`FeatureRows`: their indices and new values), whichever has fewer
bytes (a tie ships whole: the rule of the edge weights). The first held snapshot of every contiguous run is whole, so
a snapshot-partitioned rank never needs a snapshot it does not hold. Decoding copies the previous features and
scatters the changed rows on the device (``index_copy_``: no host synchronisation), so the result is bit-identical
to the features the resident storage ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_efficiency.core.errors import DataError
from lit_efficiency.dyn_gnn.codec import _bits, _nbytes, position_dtype

__all__ = ["FeatureFull", "FeatureItem", "FeatureRows", "decode_features", "encode_features"]


@dataclass(frozen=True, eq=False)
class FeatureFull:
    """Features of snapshot ``t`` shipped whole: ``x`` is ``(N, F)``."""

    t: int
    x: Tensor

    @property
    def nbytes(self) -> int:
        """Bytes shipped: the matrix plus :data:`~lit_efficiency.dyn_gnn.codec.HEADER_BYTES`."""
        return _nbytes(self.x)

    def pin_memory(self) -> FeatureFull:
        """A copy in pinned host memory (same object without CUDA)."""
        return FeatureFull(self.t, self.x.pin_memory()) if torch.cuda.is_available() else self


@dataclass(frozen=True, eq=False)
class FeatureRows:
    """Features of snapshot ``t`` as the rows that changed since ``t - 1``.

    Attributes:
        t: Snapshot index.
        num_nodes: ``N`` (rows of the rebuilt matrix).
        rows: ``(R,)`` strictly increasing row indices (:func:`~lit_efficiency.dyn_gnn.codec.position_dtype`).
        values: ``(R, F)`` their new values.
    """

    t: int
    num_nodes: int
    rows: Tensor
    values: Tensor

    @property
    def nbytes(self) -> int:
        """Bytes shipped: indices and values plus the header."""
        return _nbytes(self.rows, self.values)

    def pin_memory(self) -> FeatureRows:
        """A copy in pinned host memory (same object without CUDA)."""
        if not torch.cuda.is_available():
            return self
        return FeatureRows(self.t, self.num_nodes, self.rows.pin_memory(), self.values.pin_memory())


FeatureItem = FeatureFull | FeatureRows


def encode_features(x: Tensor, held: Sequence[bool], rows: bool = True) -> list[FeatureItem | None]:
    """Host items of per-snapshot features ``x`` ``(T, N, F)``; ``None`` where ``held[t]`` is false.

    Args:
        x: Per-snapshot node features.
        held: Per snapshot, whether this rank holds it.
        rows: Ship changed rows where smaller (``False``: every held snapshot whole, as ``transfer="full"``).

    Returns:
        ``T`` items: :class:`FeatureRows` where that ships fewer bytes than :class:`FeatureFull`, else full.
    """
    x = x.detach().cpu().contiguous()
    out: list[FeatureItem | None] = []
    for t, mine in enumerate(held):
        if not mine:
            out.append(None)
            continue
        full = FeatureFull(t, x[t].clone())
        if not rows or t == 0 or out[t - 1] is None:
            out.append(full)
            continue
        changed = torch.nonzero((_bits(x[t]) != _bits(x[t - 1])).any(-1)).flatten()
        diff = FeatureRows(t, x.shape[1], changed.to(position_dtype(x.shape[1])), x[t, changed].clone())
        out.append(diff if diff.nbytes < full.nbytes else full)
    return out


def _check(item: FeatureItem, prev: Tensor | None) -> None:
    """Shape checks of one item (metadata only: no synchronisation)."""
    if isinstance(item, FeatureFull):
        if item.x.dim() != 2:
            raise DataError(f"snapshot {item.t}: node features must be (N, F), got {tuple(item.x.shape)}")
        return
    if prev is None:
        raise DataError(f"snapshot {item.t}: changed feature rows need the previous snapshot's features, got None")
    if item.num_nodes != prev.shape[0] or item.values.shape != (item.rows.numel(), prev.shape[1]):
        raise DataError(
            f"snapshot {item.t}: truncated feature rows: {item.rows.numel()} rows, values "
            f"{tuple(item.values.shape)}, previous features {tuple(prev.shape)}"
        )


def decode_features(prev: Tensor | None, items: Sequence[FeatureItem], device: torch.device) -> list[Tensor]:
    """Rebuild consecutive snapshots' features on ``device`` without a host synchronisation.

    Shapes:
        prev ``(N, F)`` or ``None`` (allowed when ``items[0]`` is full) -> ``S`` tensors ``(N, F)``.

    Args:
        prev: Features of the snapshot before ``items[0]``, on ``device``.
        items: Consecutive items.
        device: Target device.

    Returns:
        Each snapshot's features on ``device``.

    Raises:
        DataError: An item whose shapes do not fit its predecessor (one line naming the snapshot).
    """
    out: list[Tensor] = []
    for item in items:
        _check(item, prev)
        if isinstance(item, FeatureFull):
            cur = item.x.to(device, non_blocking=True)
        else:
            assert prev is not None
            rows = item.rows.to(device, non_blocking=True).to(torch.int64).clamp(0, item.num_nodes - 1)
            cur = prev.clone().index_copy_(0, rows, item.values.to(device, non_blocking=True))
        out.append(cur)
        prev = cur
    return out
