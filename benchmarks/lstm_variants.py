"""Is ``nn.LSTM`` slow at the temporal stage's sizes, or is it the work? Alternatives at the same math, timed.

The WD-GCN temporal stage on Bitcoin-OTC is one LSTM over ``T = 96`` steps for ``N = 5881`` vertices (the batch),
hidden 32: about 9 GFLOP forward, 28 with backward, under a second of one-thread GEMM at peak, yet
``epoch_speed.json`` measured 6.1 s for it on the busy machine. Variants, each forward + backward, interleaved:

- ``nn_lstm``: ``torch.nn.LSTM`` (on CPU a oneDNN ``mkldnn_rnn_layer`` forward and backward kernel);
- ``hand_backward``: the input projection of all steps as one GEMM before the recurrence, the recurrence doing only
  ``h @ W_hh`` and the gates in place, and a hand-written backward (a ``torch.autograd.Function``) that saves only the
  gate activations and cell states, with the weight gradients as one GEMM each after the reverse loop;
- ``vertex_chunks_1024``: ``nn.LSTM`` over blocks of 1024 vertices (a working set that fits the L2 cache).

Outputs and gradients of every variant are checked against ``nn.LSTM`` first (``max_rel_err``). The
profiler's split of ``nn.LSTM`` into its forward and backward kernels is recorded. Writes
``results/lstm_variants.json``::

    python benchmarks/lstm_variants.py                  # OTC sizes, 5 repeats
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from lit_efficiency.core.timing import compare, interleaved

RESULTS = Path(__file__).resolve().parent / "results" / "lstm_variants.json"


class _HandLSTM(torch.autograd.Function):
    """One LSTM layer over a whole sequence with a hand-written backward (gate order i, f, g, o as ``nn.LSTM``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        gates = torch.addmm(bias, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 4 * hidden)
        hs = x.new_zeros(steps + 1, batch, hidden)
        cs = x.new_zeros(steps + 1, batch, hidden)
        for t in range(steps):
            g = gates[t].addmm_(hs[t], w_hh.t())
            g[:, : 2 * hidden].sigmoid_()
            g[:, 2 * hidden : 3 * hidden].tanh_()
            g[:, 3 * hidden :].sigmoid_()
            i, f, c_in, o = g.chunk(4, 1)
            torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, c_in)
            torch.mul(o, torch.tanh(cs[t + 1]), out=hs[t + 1])
        ctx.save_for_backward(x, w_ih, w_hh, gates, hs, cs)
        return hs[1:].clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        x, w_ih, w_hh, gates, hs, cs = ctx.saved_tensors
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        d_gates = torch.empty_like(gates)
        dh = x.new_zeros(batch, hidden)
        dc = x.new_zeros(batch, hidden)
        for t in range(steps - 1, -1, -1):
            dh += grad_out[t]
            i, f, c_in, o = gates[t].chunk(4, 1)
            di, df, dc_in, do = d_gates[t].chunk(4, 1)
            tanh_c = torch.tanh(cs[t + 1])
            dc.addcmul_(dh * o, 1 - tanh_c * tanh_c)
            torch.mul(dh, tanh_c, out=do).mul_(o * (1 - o))
            torch.mul(dc, c_in, out=di).mul_(i * (1 - i))
            torch.mul(dc, cs[t], out=df).mul_(f * (1 - f))
            torch.mul(dc, i, out=dc_in).mul_(1 - c_in * c_in)
            dc.mul_(f)
            dh = d_gates[t] @ w_hh
        flat = d_gates.view(steps * batch, 4 * hidden)
        grad_x = (flat @ w_ih).view_as(x)
        return grad_x, flat.t() @ x.reshape(steps * batch, -1), flat.t() @ hs[:steps].reshape(-1, hidden), flat.sum(0)


def _variants(lstm: nn.LSTM) -> dict[str, Callable[[Tensor], Tensor]]:
    def hand(x: Tensor) -> Tensor:
        return _HandLSTM.apply(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)

    def chunked(x: Tensor) -> Tensor:
        return torch.cat([lstm(x[:, v : v + 1024])[0] for v in range(0, x.shape[1], 1024)], dim=1)

    return {"nn_lstm": lambda x: lstm(x)[0], "hand_backward": hand, "vertex_chunks_1024": chunked}


def _grads(fn: Callable[[Tensor], Tensor], lstm: nn.LSTM, x: Tensor, grad_out: Tensor) -> list[Tensor]:
    lstm.zero_grad()
    x.grad = None
    out = fn(x)
    out.backward(grad_out)
    return [out.detach(), x.grad.clone(), *(p.grad.clone() for p in lstm.parameters())]


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
    variants = _variants(lstm)
    ref = _grads(variants["nn_lstm"], lstm, x, grad_out)
    errors = {name: _max_rel_err(_grads(fn, lstm, x, grad_out), ref) for name, fn in variants.items()}
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
            "machine_busy": load[0] > (os.cpu_count() or 1) - 1,
            "what": "forward + backward of one LSTM layer over the whole sequence, interleaved, median/IQR",
        },
        "max_rel_err_vs_nn_lstm": errors,
        "ms": times,
        "speedup_vs_nn_lstm": {name: compare(times["nn_lstm"], times[name]) for name in list(variants)[1:]},
        "nn_lstm_profile_self_ms": _profile_split(runs["nn_lstm"]),
        "gflops_nn_lstm": round(flop / 1e9 / (times["nn_lstm"]["median_ms"] / 1e3), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v["speedup"] for k, v in result["speedup_vs_nn_lstm"].items()}), f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
