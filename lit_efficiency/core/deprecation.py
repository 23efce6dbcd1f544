"""Old import paths, kept for one release after the move to ``core/``, ``power_bert/`` and ``dyn_gnn/``.

Each module at an old path (``lit_efficiency/tasks/power_bert.py``, ...) is one call to :func:`moved`, which puts the
new module in its place in ``sys.modules``: classes keep their identity, so YAML ``class_path``\\ s and saved
``config.yaml`` files that name the old path still load, with a :class:`LitEfficiencyDeprecationWarning`.
"""

from __future__ import annotations

import importlib
import sys
import warnings

#: Release in which the old paths are removed.
REMOVED_IN = "0.3"


class LitEfficiencyDeprecationWarning(DeprecationWarning):
    """A deprecated import path or option of lit_efficiency (shown by the CLI, unlike plain DeprecationWarnings)."""


def moved(old: str, new: str) -> None:
    """Make module ``old`` an alias of module ``new`` and warn once per import.

    Args:
        old: the deprecated dotted module path (the caller's ``__name__``).
        new: where the code lives now.
    """
    warnings.warn(
        f"{old} moved to {new}; the old path is removed in lit_efficiency {REMOVED_IN}",
        LitEfficiencyDeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
