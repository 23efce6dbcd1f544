"""Keep the console for what the user needs: no Lightning marketing tips, no warnings about library internals."""

from __future__ import annotations

import logging
import warnings

#: Prefix of Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels").
TIP_PREFIX = "💡 Tip:"

#: Warnings that libraries raise about their own internals, which nothing in a user's config can change.
INTERNAL_WARNINGS: tuple[str, ...] = (
    "Sparse CSR tensor support is in beta",  # torch, on the first sparse CSR adjacency of every run
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree helper against torch >= 2.10
    # Lightning, about the dyn-GNN block loaders: their __len__ is exact (one item per block, no worker processes)
    r"Your `IterableDataset` has `__len__` defined",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_libraries() -> None:
    """Drop Lightning's tips and the :data:`INTERNAL_WARNINGS` (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message in INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # torch's spawn context announces that it stops the other ranks after one died; our one line says which died
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
