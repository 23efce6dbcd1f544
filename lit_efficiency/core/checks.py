"""One place for the value checks of user settings: learning rates, epochs, step limits and sizes.

Each check raises a one-line :class:`~lit_efficiency.core.errors.ConfigError` naming the field
(``<field>: must be ..., got <value>``); ``None`` (unset) and values that are not numbers pass (the parser checks
types). Used by the CLI (model, data and trainer values, before instantiation), the ``power-bert`` pipeline (stage
and timing options) and the GLUE data module (batch sizes and limits).
"""

from __future__ import annotations

from typing import Any

from lit_efficiency.core.errors import ConfigError


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive(field: str, value: Any) -> None:
    """``value > 0`` (learning rates, sizes)."""
    if _number(value) and not value > 0:
        raise ConfigError(f"{field}: must be > 0, got {value}")


def check_at_least(field: str, value: Any, low: float, note: str = "") -> None:
    """``value >= low``; ``note`` explains a special value (``"0: a linear head"``, ``"null: torch's default"``)."""
    if _number(value) and not value >= low:
        raise ConfigError(f"{field}: must be >= {low}{f' ({note})' if note else ''}, got {value}")


def check_limit(field: str, value: Any) -> None:
    """An epoch or step limit: ``>= 1``, or ``-1`` for no limit (``0`` would train nothing)."""
    if _number(value) and (value == 0 or value < -1):
        raise ConfigError(f"{field}: must be >= 1 (or -1: no limit), got {value}")
