"""Checkpoint selection on a held-out slice of the training set, never on the split that is reported.

:class:`HeldOutGLUEDataModule` is a :class:`~lit_efficiency.power_bert.glue.GLUEDataModule` whose splits are
re-assigned for a fair protocol:

* ``train_dataloader``: the training split minus a seeded held-out slice (``heldout_fraction`` of it);
* ``val_dataloader``: that held-out slice. Checkpoint selection, early stopping, the accuracy budget and the
  guard rails all read it;
* ``test_dataloader``: the reported split: GLUE dev (test labels are not public), or IMDB's labelled test split.

For IMDB the parent already holds out a seeded 10 % of the official train split as its dev split; it is used as the
held-out slice as it is. ``train_limit`` subsets the training split before the slice is taken.
"""

from __future__ import annotations

import random
from typing import Any

from torch.utils.data import DataLoader

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.power_bert.glue import Columns, GLUEDataModule, Split, _take

#: Name of the reported split in ``datasets``.
REPORT = "report"


class HeldOutGLUEDataModule(GLUEDataModule):
    """GLUE/IMDB with validation on a held-out slice of train and testing on the reported split.

    Args:
        heldout_fraction: share of the (limited) training split held out for selection, in (0, 0.5].
        **kwargs: see :class:`~lit_efficiency.power_bert.glue.GLUEDataModule`; ``eval_limit`` limits the reported
            split.
    """

    def __init__(self, heldout_fraction: float = 0.1, **kwargs: Any) -> None:
        if not 0.0 < heldout_fraction <= 0.5:
            raise ConfigError(f"heldout_fraction: must be in (0, 0.5], got {heldout_fraction}")
        super().__init__(**kwargs)
        self.heldout_fraction = heldout_fraction
        self._train_parts: dict[str, Columns] = {}

    def _split_train(self) -> dict[str, Columns]:
        if not self._train_parts:
            full = super()._read_raw("train")  # train_limit applied
            n = len(full["text_a"])
            held = set(random.Random(self.seed + 1).sample(range(n), max(1, round(self.heldout_fraction * n))))
            self._train_parts = {
                "train": _take(full, [i for i in range(n) if i not in held]),
                "dev": _take(full, sorted(held)),
            }
        return self._train_parts

    def _read_raw(self, split: Split) -> Columns:
        if self.task == "imdb":  # the parent's dev split is already a held-out slice of train
            return super()._read_raw(split)
        if split in ("train", "dev"):
            return self._split_train()[split]
        return super()._read_raw(split)

    def reported_split(self) -> Columns:
        """Raw columns of the reported split (GLUE dev, IMDB test), ``eval_limit`` applied."""
        return super()._read_raw("test" if self.task == "imdb" else "dev")

    def setup(self, stage: str | None = None) -> None:
        """As the parent; ``test`` loads the reported split."""
        if stage != "test":
            super().setup(stage)
            return
        if self.tokenizer is None:  # the reported split alone: no need to read and tokenise the training split
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer_name))
        if REPORT not in self.datasets:
            self.datasets[REPORT] = self._tokenise(self.reported_split(), "dev")

    def test_dataloader(self) -> DataLoader:
        """Batches of the reported split (GLUE dev, IMDB test)."""
        return self._loader(REPORT, "test_dataloader")
