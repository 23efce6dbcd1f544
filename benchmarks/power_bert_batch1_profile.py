"""Where the time of one SST-2 sentence goes: PoWER-BERT against HF SDPA at batch 1, 1 thread, exact length.

Three measurements, all on real SST-2 dev text with all-MiniLM-L6-v2 and the task's retention (as in
``benchmarks/power_bert_engine.py``):

1. **Length scaling.** One long dev sentence truncated to several lengths; HF ``BertForSequenceClassification``
   (SDPA) and our hard model timed interleaved (:func:`lit_efficiency.core.timing.interleaved`) at each length. A
   least-squares line ``t(L) = fixed + per_token * L`` splits each forward into a part that does not depend on the
   token count (every weight matrix streamed through the core once, per-op dispatch) and a part that does. Token
   elimination can only shrink the second part, so at the mean dev length ``L`` the speedup over HF is bounded by
   ``t_hf(L) / (fixed_hf + (t_hf(L) - fixed_hf) / ideal)`` with ``ideal`` the FLOP-ideal of the dev examples.
2. **Op profile** (``torch.profiler``) of one forward at the dev sentence closest to the mean length: operator calls
   and self time per forward, split into linear layers, attention, and the elimination itself (significance score,
   token selection and gathers, labelled with ``record_function``).
3. **The score's thread switch**: the cost of one enter/exit of the single-intra-op-thread context the eager score
   runs in (:func:`lit_efficiency.power_bert.model._one_intra_op_thread`, two ``torch.set_num_threads`` calls) with
   2 threads set.

Usage::

    python benchmarks/power_bert_batch1_profile.py [--repeats 30] [--examples 64]

writes ``benchmarks/results/power_bert_batch1_profile.json`` with the 1-minute load average before and after and
``machine_busy`` (:func:`lit_efficiency.core.timing.machine_busy`: other jobs shared the CPU, the figures are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from power_bert_engine import MODEL, RESULTS, committed_retention, dev_texts, encode
from torch.profiler import profile, record_function

import lit_efficiency.power_bert.model as pb
from lit_efficiency.core.paths import atomic_write_text, resolve_pretrained
from lit_efficiency.core.timing import interleaved, machine_busy
from lit_efficiency.power_bert.speed import flop_ideal

TASK = "sst2"
LENGTHS = (4, 8, 16, 24, 32, 48, 64)
#: Operators of the linear layers and of attention in the profile (the rest is elimination or small glue ops).
LINEAR_OPS = ("aten::addmm", "aten::mm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def fit_line(lengths: list[int], ms: list[float]) -> tuple[float, float]:
    """Least-squares ``ms = fixed + per_token * length``: returns ``(fixed, per_token)``."""
    mean_l, mean_t = statistics.fmean(lengths), statistics.fmean(ms)
    slope = sum((x - mean_l) * (y - mean_t) for x, y in zip(lengths, ms, strict=True)) / sum(
        (x - mean_l) ** 2 for x in lengths
    )
    return mean_t - slope * mean_l, slope


def forward_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    def call() -> None:
        with torch.inference_mode():
            model(**batch)

    return call


def length_scaling(models: dict[str, torch.nn.Module], tokenizer, text: str, repeats: int) -> dict[str, Any]:
    """Both models at ``text`` truncated to each length of :data:`LENGTHS` below its own and at its own (one
    interleaved call; never padded: a padded token is not a real one to either model), and the fitted lines."""
    own = len(tokenizer(text, truncation=True, max_length=max(LENGTHS))["input_ids"])
    lengths = [n for n in LENGTHS if n < own] + [own]
    batches = {n: encode(tokenizer, [(text, None)], n, static=True) for n in lengths}
    fns = {f"{name}/{n}": forward_fn(m, b) for name, m in models.items() for n, b in batches.items()}
    ms = interleaved(fns, repeats=repeats, warmup=2, progress=False)
    out: dict[str, Any] = {"lengths": lengths}
    for name in models:
        medians = [ms[f"{name}/{n}"]["median_ms"] for n in lengths]
        fixed, per_token = fit_line(lengths, medians)
        out[name] = {"median_ms": medians, "fixed_ms": round(fixed, 3), "per_token_ms": round(per_token, 4)}
    return out


def op_profile(models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], calls: int) -> dict[str, Any]:
    """Operator calls and self time per forward, by kind, with the elimination steps labelled."""
    originals = {name: getattr(pb, name) for name in ("significance_score_qk", "extract")}

    def labelled(name: str):
        def run(*args, **kwargs):
            with record_function(f"power_bert::{name}"):
                return originals[name](*args, **kwargs)

        return run

    out = {}
    try:
        for name in originals:
            setattr(pb, name, labelled(name))
        for name, model in models.items():
            call = forward_fn(model, batch)
            call()
            with profile() as prof:
                for _ in range(calls):
                    call()
            events = prof.key_averages()
            ops = [e for e in events if e.key.startswith("aten::")]
            per_call = lambda us: round(us / calls / 1e3, 3)  # noqa: E731 - microseconds in total -> ms per forward
            out[name] = {
                "aten_calls_per_forward": round(sum(e.count for e in ops) / calls, 1),
                "self_ms_per_forward": per_call(sum(e.self_cpu_time_total for e in ops)),
                "linear_ms": per_call(sum(e.self_cpu_time_total for e in ops if e.key in LINEAR_OPS)),
                "attention_ms": per_call(sum(e.self_cpu_time_total for e in ops if e.key in ATTENTION_OPS)),
                **{
                    f"{label}_ms": per_call(sum(e.cpu_time_total for e in events if e.key == f"power_bert::{label}"))
                    for label in originals
                },
            }
    finally:
        for name, fn in originals.items():
            setattr(pb, name, fn)
    return out


def thread_switch_us(calls: int = 2000) -> float:
    """Median microseconds of one enter/exit of the score's one-thread context at 2 threads."""
    torch.set_num_threads(2)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        with pb._one_intra_op_thread():
            pass
        times.append((time.perf_counter() - start) * 1e6)
    torch.set_num_threads(1)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--examples", type=int, default=64, help="dev examples for the mean length and FLOP-ideal")
    parser.add_argument("--out", type=Path, default=RESULTS / "power_bert_batch1_profile.json")
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    path = resolve_pretrained(MODEL)
    retention, n, _ = committed_retention(TASK, {})
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        path, num_labels=2, attn_implementation="sdpa"
    ).eval()
    ours = pb.PowerBertForSequenceClassification.from_pretrained(
        path, num_labels=2, mode="hard", retention=retention, max_seq_len=n
    )
    models = {"hf_sdpa": hf, "ours_eager": ours}
    pairs = dev_texts(TASK, args.examples)
    dev = [encode(tokenizer, [p], n, static=False) for p in pairs]
    mean_len = statistics.fmean(b["input_ids"].shape[1] for b in dev)
    ideal = flop_ideal(ours.config, retention, dev)
    longest = max(pairs, key=lambda p: len(tokenizer(p[0])["input_ids"]))[0]
    scaling = length_scaling(models, tokenizer, longest, args.repeats)
    hf_line = scaling["hf_sdpa"]
    t_hf = hf_line["fixed_ms"] + hf_line["per_token_ms"] * mean_len
    bound = t_hf / (hf_line["fixed_ms"] + (t_hf - hf_line["fixed_ms"]) / ideal)
    typical = min(dev, key=lambda b: abs(b["input_ids"].shape[1] - mean_len))
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": TASK,
        "model": MODEL,
        "retention": retention,
        "threads": 1,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "repeats": args.repeats,
        "dev_examples": len(dev),
        "mean_dev_length": round(mean_len, 1),
        "flop_ideal": round(ideal, 3),
        "length_scaling": scaling,
        "hf_fixed_share_at_mean_length": round(hf_line["fixed_ms"] / t_hf, 3),
        "speedup_bound_from_fixed_cost": round(bound, 3),
        "op_profile_length": typical["input_ids"].shape[1],
        "op_profile": op_profile(models, typical, calls=max(10, args.repeats)),
        "thread_switch_us_at_2_threads": thread_switch_us(),
        "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    report["machine_busy"] = machine_busy(1, *report["load_average_1min_before_after"])
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "length_scaling"}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
