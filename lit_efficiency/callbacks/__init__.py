"""Deprecated package: the code moved to ``lit_efficiency.core``, ``.power_bert`` and ``.dyn_gnn`` (removed in 0.3)."""
