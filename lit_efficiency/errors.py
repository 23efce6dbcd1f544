"""Deprecated alias of :mod:`lit_efficiency.core.errors` (removed in 0.3)."""

from lit_efficiency.core.deprecation import moved

moved(__name__, "lit_efficiency.core.errors")
