"""Deprecated alias of :mod:`lit_efficiency.dyn_gnn.metrics` (removed in 0.3)."""

from lit_efficiency.core.deprecation import moved

moved(__name__, "lit_efficiency.dyn_gnn.metrics")
