"""PoWER-BERT inference engine against HF ``transformers`` with SDPA, per GLUE task, on this CPU.

For the committed retention of each task (``benchmarks/results/power_bert_<task>.json``, all-MiniLM-L6-v2, N from
the task table) it times, interleaved (:func:`lit_efficiency.core.timing.interleaved`: warm-up, rotating order,
median and IQR), on real GLUE dev text:

* ``hf_sdpa_static`` / ``hf_sdpa_dynamic``: ``transformers`` ``BertForSequenceClassification`` with SDPA,
  padded to N / to the longest sequence of the batch (batch 1: no padding at all);
* ``ours_eager_static`` / ``ours_eager_dynamic``: :class:`PowerBertForSequenceClassification` in hard mode;
* ``ours_compiled_static``: the same after ``compile_for_inference()`` (``torch.compile``, inductor, static
  shapes), for the tasks in ``--compile-tasks`` (each shape compiles for minutes on a busy 2-core machine);
* ``onnxruntime_static``: the ONNX export (:mod:`lit_efficiency.power_bert.export`) in ``onnxruntime``, for the
  tasks in ``--onnx-tasks``.

at batch 128 (one batch of dev examples) and batch 1 (``--batch1-examples`` dev examples one at a time). Speedups
are against HF SDPA at the same padding; ``pct_of_ideal`` divides each by the FLOP-ideal
(:func:`~lit_efficiency.power_bert.model.ideal_speedup`; for dynamic padding the FLOPs of the actual lengths).
The encoder weights are the pretrained MiniLM (no GLUE fine-tuning: the time does not depend on the values, only
the kept tokens do, and those follow the same attention pattern). Everything runs on ``--threads`` torch threads
(onnxruntime gets as many intra-op threads).

Usage::

    python benchmarks/power_bert_engine.py [--tasks cola mrpc rte sst2 stsb] [--repeats 5] [--machine-busy]

writes ``benchmarks/results/power_bert_engine.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lit_efficiency.core.paths import resolve_data_root, resolve_pretrained
from lit_efficiency.core.timing import compare, interleaved
from lit_efficiency.power_bert.export import INPUT_NAMES, export_onnx, onnx_session
from lit_efficiency.power_bert.glue import read_glue_split
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification, flops_per_example, ideal_speedup

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("cola", "mrpc", "rte", "sst2", "stsb")
MODEL = "minilm-l6"

Batch = dict[str, torch.Tensor]


def committed_retention(task: str) -> tuple[list[int], int]:
    """Retention and N of the committed GLUE run of ``task``."""
    report = json.loads((RESULTS / f"power_bert_{task}.json").read_text())
    return [int(n) for n in report["retention"]], int(report["max_seq_len"])


def dev_texts(task: str, count: int) -> list[tuple[str, str | None]]:
    """The first ``count`` dev examples of ``task`` (cycled when dev is smaller)."""
    cols = read_glue_split(task, "dev", resolve_data_root() / "glue")
    text_b = cols.get("text_b") or [None] * len(cols["text_a"])
    pairs = list(zip(cols["text_a"], text_b, strict=True))
    return [pairs[i % len(pairs)] for i in range(count)]


def encode(tokenizer, pairs: list[tuple[str, str | None]], max_len: int, static: bool) -> Batch:
    """Tokenise a batch, padded to ``max_len`` (static) or to its longest sequence (dynamic)."""
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs] if pairs[0][1] is not None else None
    enc = tokenizer(
        a, b, truncation=True, max_length=max_len, padding="max_length" if static else "longest", return_tensors="pt"
    )
    return {name: enc[name] for name in INPUT_NAMES}


def run_torch(model: torch.nn.Module, batches: list[Batch]) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])

    return call


def run_hf(model: torch.nn.Module, batches: list[Batch]) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)

    return call


def run_onnx(session, batches: list[Batch]) -> Callable[[], None]:
    feeds = [{name: batch[name].numpy() for name in INPUT_NAMES} for batch in batches]

    def call() -> None:
        for feed in feeds:
            session.run(["logits"], feed)

    return call


def dynamic_ideal(config, retention: list[int], batches: list[Batch]) -> float:
    """FLOP-ideal speedup over the padded lengths the dynamic batches actually run at."""
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    full = sum(rows * flops_per_example(config, None, length) for rows, length in shapes)
    pruned = sum(rows * flops_per_example(config, retention, length) for rows, length in shapes)
    return full / pruned


def time_setting(
    task: str, batch_size: int, examples: int, args: argparse.Namespace, models: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    """All candidates of one task at one batch size."""
    retention, n = committed_retention(task)
    pairs = dev_texts(task, examples)
    groups = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    static = [encode(models["tokenizer"], g, n, static=True) for g in groups]
    dynamic = [encode(models["tokenizer"], g, n, static=False) for g in groups]
    ours = PowerBertForSequenceClassification.from_pretrained(
        models["path"], num_labels=2, mode="hard", retention=retention, max_seq_len=n
    ).eval()
    fns: dict[str, Callable[[], None]] = {
        "hf_sdpa_static": run_hf(models["hf"], static),
        "hf_sdpa_dynamic": run_hf(models["hf"], dynamic),
        "ours_eager_static": run_torch(ours, static),
        "ours_eager_dynamic": run_torch(ours, dynamic),
    }
    if task in args.compile_tasks:
        fns["ours_compiled_static"] = run_torch(copy.deepcopy(ours).compile_for_inference(), static)
    if task in args.onnx_tasks:
        path = export_onnx(ours, tmp / f"{task}_b{batch_size}.onnx", batch_size, n)
        fns["onnxruntime_static"] = run_onnx(onnx_session(path, threads=args.threads), static)
    timings = interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    ideal_static = ideal_speedup(ours.config, retention, n)
    ideal_dyn = dynamic_ideal(ours.config, retention, dynamic)
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "examples": len(pairs),
        "ms": timings,
        "ms_per_example": {k: round(v["median_ms"] / len(pairs), 4) for k, v in timings.items()},
        "ideal_static": round(ideal_static, 3),
        "ideal_dynamic": round(ideal_dyn, 3),
        "mean_dynamic_length": round(sum(b["input_ids"].numel() for b in dynamic) / len(pairs), 1),
        "vs_hf": {},
    }
    for name in fns:
        if name.startswith("hf_"):
            continue
        padding = "dynamic" if name.endswith("dynamic") else "static"
        cmp = compare(timings[f"hf_sdpa_{padding}"], timings[name])
        ideal = ideal_dyn if padding == "dynamic" else ideal_static
        result["vs_hf"][name] = {
            "speedup": round(cmp["speedup"], 3),
            "speedup_range": [round(x, 3) for x in cmp["speedup_range"]],
            "within_noise": cmp["within_noise"],
            "pct_of_ideal": round(100 * cmp["speedup"] / ideal, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--batch1-examples", type=int, default=32, help="dev examples timed one by one at batch 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile-tasks", nargs="*", default=["sst2", "rte"], choices=TASKS)
    parser.add_argument("--onnx-tasks", nargs="*", default=["sst2", "rte"], choices=TASKS)
    parser.add_argument("--machine-busy", action="store_true", help="note that other jobs shared the CPU")
    parser.add_argument("--out", type=Path, default=RESULTS / "power_bert_engine.json")
    parser.add_argument("--merge", action="store_true", help="keep the other tasks already in --out")
    args = parser.parse_args()

    import transformers

    torch.set_num_threads(args.threads)
    path = resolve_pretrained(MODEL)
    hf_config = transformers.AutoConfig.from_pretrained(path, num_labels=2)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertForSequenceClassification.from_pretrained(path, config=hf_config).eval()
    models = {"path": path, "hf": hf, "tokenizer": transformers.AutoTokenizer.from_pretrained(path)}
    report: dict[str, Any] = {
        "machine_busy": bool(args.machine_busy),
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "model": MODEL,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "protocol": (
            "interleaved rounds (rotating order) after warm-up; median and IQR ms per candidate call; batch 128: one "
            f"batch of dev examples; batch 1: {args.batch1_examples} dev examples one at a time; speedups vs HF "
            "BertForSequenceClassification (SDPA) at the same padding; pct_of_ideal = speedup / FLOP-ideal"
        ),
        "tasks": json.loads(args.out.read_text())["tasks"] if args.merge and args.out.is_file() else {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            retention, n = committed_retention(task)
            entry: dict[str, Any] = {"retention": retention, "max_seq_len": n, "repeats": args.repeats}
            for batch_size in args.batch_sizes:
                examples = batch_size if batch_size > 1 else args.batch1_examples
                entry[f"batch_{batch_size}"] = time_setting(task, batch_size, examples, args, models, Path(tmp))
                print(task, batch_size, json.dumps(entry[f"batch_{batch_size}"]["vs_hf"]), flush=True)
            report["tasks"][task] = entry
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interruption
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
