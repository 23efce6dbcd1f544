"""Inference linears on CPU through oneDNN, with each weight packed once.

``torch.nn.Linear`` on CPU calls the BLAS the wheel was built with (MKL on x86). An eliminating encoder multiplies few
rows per layer (at batch 1, a few dozen tokens), where oneDNN's matmul on a weight reordered ahead of time into its
own blocked layout does better: on this project's 2-core AMD EPYC, one thread, 8-25% less time than ``F.linear`` per
product of 16-48 rows with MiniLM's weights ((384, 384), (384, 1536), (1536, 384)), and 11-15% at 8,192 rows.
:class:`PackedLinear` takes that path only where it is safe: eval mode, no autograd, fp32 CPU tensors, eager
execution. Training, CUDA, autocast and traced code (``torch.compile``, ``torch.export``, ONNX: Inductor and the
exporters pick their own kernels) run ``F.linear`` as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN and its packed-linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state-dict keys and results up to fp32 rounding) whose eager no-grad CPU fp32
    forward runs oneDNN on a packed copy of the weight. The copy is made on first use and again whenever the weight
    changes (an optimiser step, ``load_state_dict``, a move); it is not saved, copied or pickled."""

    _packed: tuple[tuple[int, int], Tensor] | None = None  # ((weight version, data pointer), packed weight)

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_onednn(x):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")

    def _use_onednn(self, x: Tensor) -> bool:
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False  # first: the tracers may not see the checks below
        return (
            _ONEDNN
            and not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and not self.weight.is_inference()  # no version counter: an in-place change would go unseen
            and not torch.is_autocast_enabled("cpu")
        )

    def _packed_weight(self) -> Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None))
        return self._packed[1]

    def __getstate__(self) -> dict:
        # oneDNN's packed tensors have no storage to copy; the next forward packs again
        return {**self.__dict__, "_packed": None}


_ONEDNN = onednn_linear_available()


def use_packed_linears(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` inside ``module`` into a :class:`PackedLinear` in place (the same object, its
    class changed: parameters, hooks and state-dict keys stay); returns how many changed."""
    changed = 0
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = PackedLinear
            changed += 1
    return changed
