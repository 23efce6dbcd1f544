"""Register PoWER-BERT with ``transformers``' Auto classes as soon as ``transformers`` is imported (never earlier).

``import lit_efficiency`` must stay light (it imports no ``transformers``), yet
``AutoModelForSequenceClassification.from_pretrained(folder)`` must return the eliminating model once the package
is imported. :func:`install` therefore registers at once when ``transformers`` is already loaded, and otherwise
adds a one-shot import hook that registers right after ``transformers`` finishes importing. The registration
itself (the config and model classes) lives in :mod:`lit_efficiency.power_bert.hf`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

#: ``model_type`` of a saved PoWER-BERT folder. It names the package, so plain ``transformers`` reports
#: "model type `lit_efficiency_power_bert` ... does not recognize this architecture" instead of loading a model
#: that does not eliminate.
MODEL_TYPE = "lit_efficiency_power_bert"


def _register() -> None:
    from lit_efficiency.power_bert.hf import register

    register()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers`` through the other finders and runs :func:`_register` after its module executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below goes to the regular finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if ``transformers`` is loaded, else when it gets imported (idempotent)."""
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
