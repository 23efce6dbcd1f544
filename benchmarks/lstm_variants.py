"""Is ``nn.LSTM`` slow at the temporal stage's sizes, or is it the work? Alternatives at the same math, timed.

The WD-GCN temporal stage on Bitcoin-OTC is one LSTM over ``T = 96`` steps for ``N = 5881`` vertices (the batch),
hidden 32: about 9 GFLOP forward, 28 with backward, under a second of one-thread GEMM at peak, yet
``epoch_speed.json`` measured 6.1 s for it on the busy machine. Variants, each forward + backward, interleaved:

- ``nn_lstm``: ``torch.nn.LSTM`` (on CPU a oneDNN ``mkldnn_rnn_layer`` forward and backward kernel);
- ``hand_backward``: the input projection of all steps as one GEMM before the recurrence, the recurrence doing only
  ``h @ W_hh`` and the gates, and a hand-written backward (a ``torch.autograd.Function``) that saves only the gate
  activations and cell states, with the weight gradients as one GEMM each after the reverse loop;
- ``hand_backward_compiled_gates``: the same with each step's elementwise gate functions (forward and backward)
  compiled by ``torch.compile`` (inductor's C++ kernels; the compile time is recorded apart, ``compile_s``);
- ``vertex_chunks_1024``: ``nn.LSTM`` over blocks of 1024 vertices (a working set that fits the L2 cache);
- ``lstm_cell_loop``: ``torch.lstm_cell`` step by step (what ``nn.LSTMCell``, and so the naive PyG loop, runs),
  autograd through every step;
- ``hoisted_input_autograd``: the input projection of all steps as one GEMM, then per step one ``addmm`` and the
  gates in plain torch ops, autograd through every step;
- ``sigmoid_gates_steps``: per step two ``addmm`` (autograd) and the gates as one ``torch.autograd.Function``: one
  ``sigmoid`` over all four gates, ``tanh(x) = 2 sigmoid(2x) - 1`` (the cell gate's weight rows doubled once per
  call), a hand-written backward writing the four gates' gradients into one buffer (no ``cat``). On this CPU's
  torch build ``tanh`` costs about 7x a ``sigmoid`` of the same size (``tanh_vs_sigmoid_us`` in the JSON).

Outputs and gradients of every variant are checked against ``nn.LSTM`` first (``max_rel_err``). The
profiler's split of ``nn.LSTM`` into its forward and backward kernels is recorded. Writes
``results/lstm_variants.json``::

    python benchmarks/lstm_variants.py                  # OTC sizes, 5 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.timing import compare, interleaved, machine_busy
from lit_efficiency.dyn_gnn.nn import lstm_by_steps

RESULTS = Path(__file__).resolve().parent / "results" / "lstm_variants.json"


def _cell_forward(pre: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step's gates from their pre-activations: ``(h, c, activations [i, f, g, o])``."""
    hidden = c_prev.shape[1]
    i, f = torch.sigmoid(pre[:, :hidden]), torch.sigmoid(pre[:, hidden : 2 * hidden])
    g, o = torch.tanh(pre[:, 2 * hidden : 3 * hidden]), torch.sigmoid(pre[:, 3 * hidden :])
    c = f * c_prev + i * g
    return o * torch.tanh(c), c, torch.cat([i, f, g, o], 1)


def _cell_backward(dh: Tensor, dc: Tensor, acts: Tensor, c_prev: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of one step's pre-activations and of ``c_prev``, from those of ``h`` and ``c``."""
    hidden = c.shape[1]
    i, f = acts[:, :hidden], acts[:, hidden : 2 * hidden]
    g, o = acts[:, 2 * hidden : 3 * hidden], acts[:, 3 * hidden :]
    tanh_c = torch.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    d_pre = torch.cat(
        [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], 1
    )
    return d_pre, dc * f


class _HandLSTM(torch.autograd.Function):
    """One LSTM layer over a whole sequence with a hand-written backward (gate order i, f, g, o as ``nn.LSTM``).

    ``cells`` are the per-step elementwise functions (:func:`_cell_forward`, :func:`_cell_backward`), eager or
    compiled; the products are one GEMM for the input projection of all steps, one ``h @ W_hh`` per step, and one
    GEMM per weight gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, cells: tuple) -> Tensor:  # type: ignore[override]
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        pre_x = torch.addmm(bias, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 4 * hidden)
        hs, cs, acts = [x.new_zeros(batch, hidden)], [x.new_zeros(batch, hidden)], []
        for t in range(steps):
            h, c, a = cells[0](torch.addmm(pre_x[t], hs[t], w_hh.t()), cs[t])
            hs.append(h)
            cs.append(c)
            acts.append(a)
        out = torch.stack(hs[1:])
        ctx.cells = cells
        ctx.save_for_backward(x, w_ih, w_hh, torch.stack(acts), torch.stack(hs[:-1]), torch.stack(cs))
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w_ih, w_hh, acts, h_prev, cs = ctx.saved_tensors
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        dh, dc = x.new_zeros(batch, hidden), x.new_zeros(batch, hidden)
        d_pre: list[Tensor] = []
        for t in range(steps - 1, -1, -1):
            d, dc = ctx.cells[1](grad_out[t] + dh, dc, acts[t], cs[t], cs[t + 1])
            d_pre.append(d)
            dh = d @ w_hh
        flat = torch.stack(d_pre[::-1]).view(steps * batch, 4 * hidden)
        grad_x = (flat @ w_ih).view_as(x)
        grad_w_ih = flat.t() @ x.reshape(steps * batch, -1)
        return grad_x, grad_w_ih, flat.t() @ h_prev.reshape(-1, hidden), flat.sum(0), None


class _SigmoidGates(torch.autograd.Function):
    """``(h, c)`` of one step from its gate pre-activations (cell-gate columns doubled) and ``c_prev``."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        act = torch.sigmoid(pre)
        i, f, g, o = act.chunk(4, 1)
        g.mul_(2).sub_(1)  # tanh(x) = 2 sigmoid(2x) - 1, the 2x being in the weights
        c = torch.addcmul(f * c_prev, i, g)
        tanh_c = torch.sigmoid(c * 2).mul_(2).sub_(1)
        ctx.save_for_backward(act, c_prev, tanh_c)
        return o * tanh_c, c

    @staticmethod
    def backward(ctx: Any, dh: Tensor | None, dc: Tensor | None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        act, c_prev, tanh_c = ctx.saved_tensors
        i, f, g, o = act.chunk(4, 1)
        d_pre = torch.empty_like(act)
        di, df, dg, do = d_pre.chunk(4, 1)
        dh = torch.zeros_like(tanh_c) if dh is None else dh
        torch.mul(dh, tanh_c, out=do).mul_(o).mul_(1 - o)
        d_c = dh * o * (1 - tanh_c * tanh_c)
        if dc is not None:
            d_c += dc
        torch.mul(d_c, g, out=di).mul_(i).mul_(1 - i)
        torch.mul(d_c, c_prev, out=df).mul_(f).mul_(1 - f)
        torch.mul(d_c, i, out=dg).mul_(1 - g * g).mul_(0.5)  # d tanh / d(2x) = (1 - tanh^2) / 2
        return d_pre, d_c * f


def _sigmoid_gates_steps(lstm: nn.LSTM, x: Tensor) -> Tensor:
    hidden = lstm.hidden_size
    scale = torch.ones(4 * hidden, 1, dtype=x.dtype)
    scale[2 * hidden : 3 * hidden] = 2.0
    w_ih, w_hh = (lstm.weight_ih_l0 * scale).t(), (lstm.weight_hh_l0 * scale).t()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0) * scale[:, 0]
    h = c = x.new_zeros(x.shape[1], hidden)
    out = []
    for x_t in x:
        h, c = _SigmoidGates.apply(torch.addmm(torch.addmm(bias, x_t, w_ih), h, w_hh), c)
        out.append(h)
    return torch.stack(out)


def _tanh_vs_sigmoid_us(rows: int, cols: int, repeats: int = 200) -> dict[str, float]:
    """Microseconds of one ``tanh`` and one ``sigmoid`` of a ``(rows, cols)`` tensor (interleaved medians)."""
    x = torch.randn(rows, cols)
    times = interleaved({"tanh": lambda: torch.tanh(x), "sigmoid": lambda: torch.sigmoid(x)}, repeats=repeats,
                        warmup=1, progress=False)  # fmt: skip
    return {name: round(t["median_ms"] * 1e3, 1) for name, t in times.items()}


def _variants(lstm: nn.LSTM, compiled: tuple) -> dict[str, Callable[[Tensor], Tensor]]:
    def hand(cells: tuple) -> Callable[[Tensor], Tensor]:
        weights = (lstm.weight_ih_l0, lstm.weight_hh_l0)
        return lambda x: _HandLSTM.apply(x, *weights, lstm.bias_ih_l0 + lstm.bias_hh_l0, cells)

    def chunked(x: Tensor) -> Tensor:
        return torch.cat([lstm(x[:, v : v + 1024])[0] for v in range(0, x.shape[1], 1024)], dim=1)

    def hoisted(x: Tensor) -> Tensor:
        pre = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, x.flatten(0, 1), lstm.weight_ih_l0.t()).view(
            *x.shape[:2], -1
        )
        h = c = x.new_zeros(x.shape[1], lstm.hidden_size)
        out = []
        for step in pre:
            i, f, g, o = torch.addmm(step, h, lstm.weight_hh_l0.t()).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out)

    return {
        "nn_lstm": lambda x: lstm(x)[0],
        "lstm_cell_loop": lambda x: lstm_by_steps(lstm, x)[0],  # our WD-GCN's CPU training path
        "hoisted_input_autograd": hoisted,
        "hand_backward": hand((_cell_forward, _cell_backward)),
        "hand_backward_compiled_gates": hand(compiled),
        "vertex_chunks_1024": chunked,
        "sigmoid_gates_steps": lambda x: _sigmoid_gates_steps(lstm, x),
    }


def _grads(fn: Callable[[Tensor], Tensor], lstm: nn.LSTM, x: Tensor, grad_out: Tensor) -> list[Tensor]:
    lstm.zero_grad()
    x.grad = None
    out = fn(x)
    out.backward(grad_out)
    return [out.detach(), x.grad.clone(), *(p.grad.clone() for p in lstm.parameters())]


#: A variant whose gradients differ from ``nn.LSTM``'s by more than this (relative, fp32) is refused, not timed.
MAX_REL_ERR = 1e-4


def _max_rel_err(got: list[Tensor], ref: list[Tensor]) -> float:
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, ref, strict=True))


def _profile_split(fn: Callable[[], None]) -> dict[str, float]:
    """Self CPU milliseconds of the ops that take most of one run (oneDNN forward and backward kernels)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:4]
    return {row.key: round(row.self_cpu_time_total / 1e3, 1) for row in rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=96, help="T (Bitcoin-OTC training snapshots)")
    parser.add_argument("--vertices", type=int, default=5881, help="N, the LSTM batch (Bitcoin-OTC)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = nn.LSTM(args.hidden, args.hidden)
    x = torch.randn(args.steps, args.vertices, args.hidden, requires_grad=True)
    grad_out = torch.randn(args.steps, args.vertices, args.hidden)
    start = time.perf_counter()  # compile (inductor, C++ kernels) and first run of both gate functions
    compiled = (torch.compile(_cell_forward, dynamic=False), torch.compile(_cell_backward, dynamic=False))
    gates, c = torch.randn(args.vertices, 4 * args.hidden), torch.randn(args.vertices, args.hidden)
    compiled[1](c, c, compiled[0](gates, c)[2], c, c)
    compile_s = time.perf_counter() - start
    variants = _variants(lstm, compiled)
    ref = _grads(variants["nn_lstm"], lstm, x, grad_out)
    errors = {name: _max_rel_err(_grads(fn, lstm, x, grad_out), ref) for name, fn in variants.items()}
    if wrong := {name: f"{err:.1e}" for name, err in errors.items() if err > MAX_REL_ERR}:
        sys.exit(f"lstm_variants: gradients differ from nn.LSTM by more than {MAX_REL_ERR:g}: {wrong}; nothing timed")
    runs = {name: (lambda fn=fn: _grads(fn, lstm, x, grad_out)) for name, fn in variants.items()}
    times = interleaved(runs, repeats=args.repeats, warmup=1, progress=False)
    flop = 2 * 4 * (2 * args.hidden) * args.hidden * args.vertices * args.steps * 3  # forward x 3 with backward
    load = os.getloadavg()
    result = {
        "meta": {
            "sizes": {"steps": args.steps, "vertices": args.vertices, "hidden": args.hidden},
            "gflop_forward_backward": round(flop / 1e9, 1),
            "torch": torch.__version__,
            "threads": 1,
            "loadavg": list(load),
            "machine_busy": machine_busy(1, load[0]),
            "what": "forward + backward of one LSTM layer over the whole sequence, interleaved, median/IQR",
        },
        "max_rel_err_vs_nn_lstm": errors,
        "ms": times,
        "speedup_vs_nn_lstm": {name: compare(times["nn_lstm"], times[name]) for name in list(variants)[1:]},
        "nn_lstm_profile_self_ms": _profile_split(runs["nn_lstm"]),
        "compile_s_gate_functions": round(compile_s, 1),
        "gflops_nn_lstm": round(flop / 1e9 / (times["nn_lstm"]["median_ms"] / 1e3), 2),
        "tanh_vs_sigmoid_us": _tanh_vs_sigmoid_us(args.vertices, args.hidden),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v["speedup"] for k, v in result["speedup_vs_nn_lstm"].items()}), f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
