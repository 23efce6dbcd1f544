"""PoWER-BERT inference engine against HF ``transformers`` with SDPA, per GLUE task, on this CPU.

For the committed retention of each task (``benchmarks/results/power_bert_<task>.json``, all-MiniLM-L6-v2, N from
the task table) it times, interleaved (:func:`lit_efficiency.core.timing.interleaved`: warm-up, rotating order,
median and IQR), on real GLUE dev text:

* ``hf_sdpa_static`` / ``hf_sdpa_dynamic``: ``transformers`` ``BertForSequenceClassification`` with SDPA,
  padded to N / to the longest sequence of the batch (batch 1: no padding at all);
* ``ours_eager_static`` / ``ours_eager_dynamic``: :class:`PowerBertForSequenceClassification` in hard mode (its
  linears run oneDNN on packed weights in eager CPU inference: :mod:`lit_efficiency.power_bert.cpu_linear`);
* ``hf_packed_static`` / ``hf_packed_dynamic``: HF SDPA with the same packed linears
  (:func:`~lit_efficiency.power_bert.cpu_linear.use_packed_linears`), so ``vs_hf_packed`` compares eager with
  eager on the same matmul kernels: the share of the speedup that elimination alone buys;
* ``ours_compiled_static`` / ``ours_compiled_dynamic``: the same after ``compile_for_inference()``
  (``torch.compile``, inductor, static shapes), for the tasks in ``--compile-tasks``, beside ``hf_compiled_static``
  / ``hf_compiled_dynamic`` (HF compiled the same way: ``vs_hf_compiled`` compares compiled with compiled); dynamic
  padding only at batch > 1 (at batch 1 every example has its own length, so every example would compile its own graph);
* ``ours_compiled_bucketed`` / ``onnxruntime_bucketed`` (batch 1 only): every example padded to its length rounded
  up to a multiple of ``--bucket`` (one compiled graph or ONNX export per bucket), compared with HF at the exact
  length (``hf_sdpa_dynamic``), the extra padding counting against us, and with ``hf_compiled_bucketed`` (HF
  compiled the same way, at the same bucketed lengths) as the fair compiled reference;
* ``onnxruntime_static``: the static-shape ONNX export (:mod:`lit_efficiency.power_bert.export`) in
  ``onnxruntime``, for the tasks in ``--onnx-tasks`` (one export per shape, so static padding only).

at batch 128 (one batch of dev examples) and batch 1 (``--batch1-examples`` dev examples one at a time). Speedups
are against HF SDPA at the same padding; ``pct_of_ideal`` divides each by the FLOP-ideal
(:func:`~lit_efficiency.power_bert.speed.flop_ideal`, the same function as the pipeline's timing table: each batch
at the length it runs at).
The encoder weights are the pretrained MiniLM (no GLUE fine-tuning: the time does not depend on the values, only
the kept tokens do, and those follow the same attention pattern). Every setting runs once per ``--threads`` value (torch
threads, 0 meaning all cores; onnxruntime gets as many intra-op threads). The 1-minute load average is recorded
before and after each setting and ``machine_busy`` is set when other jobs shared the CPU.

Usage::

    python benchmarks/power_bert_engine.py [--tasks cola mrpc rte sst2 stsb] [--threads 1 0] [--repeats 5]
        [--retention mrpc=63,45,34,15,4,1] [--quick] [--fresh] [--list]

writes ``benchmarks/results/power_bert_engine.json`` (``--quick``: ``power_bert_engine_quick.json``, batch 16 and 1,
4 examples at batch 1, 2 repeats: a check that every row runs, not a measurement). The file is built **one cell at a
time**: a cell is one task at one thread count and batch size (``tasks.<task>.threads_<T>_batch_<B>``), and every
run merges the cells it measured into the file, replacing only those and keeping the others (``--fresh`` starts
over), so ``--tasks mrpc --threads 1 --batch-sizes 128`` fits a short window on a shared machine. Each cell records
its own date (when it finished), wall time (``wall_s``), repeats, load average before and after and
``machine_busy``; ``--list`` prints them. A task's cells measured at another retention are dropped when it is
remeasured. The retention is the task's fair-protocol result (``benchmarks/power_bert_glue.py``) where its report
is one, else the older committed run's (``retention_source`` says which; ``--retention`` overrides).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lit_efficiency.core.memory import keep_freed_memory, kept_freed_memory
from lit_efficiency.core.paths import atomic_write_text, resolve_data_root, resolve_pretrained
from lit_efficiency.core.timing import compare, interleaved, machine_busy
from lit_efficiency.power_bert.cpu_linear import use_packed_linears
from lit_efficiency.power_bert.export import INPUT_NAMES, export_onnx, onnx_session
from lit_efficiency.power_bert.glue import read_glue_split
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from lit_efficiency.power_bert.speed import batches_flops, flop_ideal

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("cola", "mrpc", "rte", "sst2", "stsb")
MODEL = "minilm-l6"

Batch = dict[str, torch.Tensor]


#: How a task's retention was chosen, recorded with its cells (``retention_source``).
FAIR = "fair protocol (benchmarks/power_bert_glue.py)"
OLDER = "older committed run (before the fair protocol; pass --retention TASK=... for a newer one)"
OVERRIDE = "--retention"


def committed_retention(task: str, overrides: dict[str, list[int]]) -> tuple[list[int], int, str]:
    """Retention, N and the retention's source for ``task``: ``overrides`` first, else its committed GLUE report.

    A report of the fair protocol (``benchmarks/power_bert_glue.py``: ``summary`` and ``seed1_report``) gives the
    chosen retention; an older report (flat ``retention``) is used as it is and labelled :data:`OLDER`.
    """
    report = json.loads((RESULTS / f"power_bert_{task}.json").read_text())
    if "summary" in report:
        retention, n, source = report["summary"]["retention"], report["seed1_report"]["max_seq_len"], FAIR
    else:
        retention, n, source = report["retention"], report["max_seq_len"], OLDER
    if task in overrides:
        retention, source = overrides[task], OVERRIDE
    return [int(k) for k in retention], int(n), source


def parse_retention(text: str) -> tuple[str, list[int]]:
    """``TASK=l1,l2,...`` -> ``(task, [l1, l2, ...])`` (``--retention``)."""
    task, _, counts = text.partition("=")
    if task not in TASKS or not counts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=l1,l2,... with TASK one of {', '.join(TASKS)}")
    try:
        return task, [int(n) for n in counts.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: token counts must be integers") from None


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


def allocator_settings() -> dict[str, Any]:
    """The allocator settings in force: glibc's ``MALLOC_*`` variables and a preloaded allocator the process started
    with, and ``mallopt``'s if :func:`~lit_efficiency.core.memory.keep_freed_memory` ran. Whether freed memory goes
    back to the OS changes how many pages every call faults in (``sys_ms``)."""
    settings: dict[str, Any] = {
        k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k == "LD_PRELOAD"
    }
    if mallopt := kept_freed_memory():
        settings["mallopt"] = mallopt
    return settings


def memory_kept(cell: dict[str, Any]) -> bool:
    """Whether the cell ran with glibc keeping freed memory (``mallopt`` or the environment) or a preloaded
    allocator (cells from before allocator records: no)."""
    allocator = cell.get("allocator") or {}
    return bool({"mallopt", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD"} & set(allocator))


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


def bucket_batches(tokenizer, groups: list[list[tuple[str, str | None]]], max_len: int, bucket: int) -> list[Batch]:
    """Each group padded to its longest sequence rounded up to a multiple of ``bucket`` (at most ``max_len``).

    A static-shape model (compiled graph, ONNX export) then needs one shape per bucket instead of one per length.
    """
    out = []
    for group in groups:
        longest = encode(tokenizer, group, max_len, static=False)["input_ids"].shape[1]
        out.append(encode(tokenizer, group, min(max_len, -(-longest // bucket) * bucket), static=True))
    return out


def run_onnx_by_length(sessions: dict[int, Any], batches: list[Batch]) -> Callable[[], None]:
    """Each batch in the ``onnxruntime`` session exported for its length."""
    feeds = [(sessions[b["input_ids"].shape[1]], {name: b[name].numpy() for name in INPUT_NAMES}) for b in batches]

    def call() -> None:
        for session, feed in feeds:
            session.run(["logits"], feed)

    return call


def run_onnx(session, batches: list[Batch]) -> Callable[[], None]:
    feeds = [{name: batch[name].numpy() for name in INPUT_NAMES} for batch in batches]

    def call() -> None:
        for feed in feeds:
            session.run(["logits"], feed)

    return call


def time_setting(
    task: str,
    batch_size: int,
    examples: int,
    threads: int,
    args: argparse.Namespace,
    models: dict[str, Any],
    tmp: Path,
) -> dict[str, Any]:
    """All candidates of one task at one batch size on ``threads`` threads."""
    load_before, started = os.getloadavg()[0], time.perf_counter()
    retention, n, _ = committed_retention(task, args.retention)
    pairs = dev_texts(task, examples)
    groups = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    static = [encode(models["tokenizer"], g, n, static=True) for g in groups]
    dynamic = [encode(models["tokenizer"], g, n, static=False) for g in groups]
    ours = PowerBertForSequenceClassification.from_pretrained(
        models["path"], num_labels=2, mode="hard", retention=retention, max_seq_len=n
    ).eval()
    hf_packed = copy.deepcopy(models["hf"])
    use_packed_linears(hf_packed)
    fns: dict[str, Callable[[], None]] = {
        "hf_sdpa_static": run_hf(models["hf"], static),
        "hf_sdpa_dynamic": run_hf(models["hf"], dynamic),
        "hf_packed_static": run_hf(hf_packed, static),
        "hf_packed_dynamic": run_hf(hf_packed, dynamic),
        "ours_eager_static": run_torch(ours, static),
        "ours_eager_dynamic": run_torch(ours, dynamic),
    }
    if task in args.compile_tasks:
        compiled = copy.deepcopy(ours).compile_for_inference(keep_freed_memory=args.allocator == "kept")
        hf_compiled = torch.compile(copy.deepcopy(models["hf"]), dynamic=False)  # the fair compiled reference
        for padding, batches in (("static", static), ("dynamic", dynamic)):
            if padding == "dynamic" and batch_size == 1:  # every example has its own length: one compilation each
                continue
            fns[f"ours_compiled_{padding}"] = run_torch(compiled, batches)
            fns[f"hf_compiled_{padding}"] = run_hf(hf_compiled, batches)
    if task in args.onnx_tasks:
        path = export_onnx(ours, tmp / f"{task}_b{batch_size}_t{threads}.onnx", batch_size, n)
        fns["onnxruntime_static"] = run_onnx(onnx_session(path, threads=threads), static)
    bucketed = bucket_batches(models["tokenizer"], groups, n, args.bucket) if batch_size == 1 and args.bucket else []
    if bucketed and task in args.compile_tasks:
        fns["ours_compiled_bucketed"] = run_torch(compiled, bucketed)
        fns["hf_compiled_bucketed"] = run_hf(hf_compiled, bucketed)
    if bucketed and task in args.onnx_tasks:
        lengths = sorted({b["input_ids"].shape[1] for b in bucketed})
        paths = {k: export_onnx(ours, tmp / f"{task}_b1_l{k}_t{threads}.onnx", 1, k) for k in lengths}
        fns["onnxruntime_bucketed"] = run_onnx_by_length(
            {k: onnx_session(v, threads) for k, v in paths.items()}, bucketed
        )
    timings = interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    ideal_static = flop_ideal(ours.config, retention, static)
    ideal_dyn = flop_ideal(ours.config, retention, dynamic)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "batch_size": batch_size,
        "threads": threads,
        "load_average_1min_before_after": load,
        "machine_busy": machine_busy(threads, *load),
        "allocator": allocator_settings(),
        "examples": len(pairs),
        "ms": timings,
        "ms_per_example": {k: round(v["median_ms"] / len(pairs), 4) for k, v in timings.items()},
        "ideal_static": round(ideal_static, 3),
        "ideal_dynamic": round(ideal_dyn, 3),
        "mean_dynamic_length": round(sum(b["input_ids"].numel() for b in dynamic) / len(pairs), 1),
        "vs_hf": {},
    }
    ideals = {"static": ideal_static, "dynamic": ideal_dyn}
    if bucketed:  # against HF at exact lengths: the bucket's extra padding counts against us
        ideals["bucketed"] = batches_flops(ours.config, None, dynamic) / batches_flops(ours.config, retention, bucketed)
        result["ideal_bucketed_vs_hf_dynamic"] = round(ideals["bucketed"], 3)
    for name in fns:
        if name.startswith("hf_"):
            continue
        padding = "static" if name.endswith("static") else "dynamic"
        result["vs_hf"][name] = _versus(timings[f"hf_sdpa_{padding}"], timings[name], ideals[name.rsplit("_", 1)[1]])
    same_lengths = {"static": ideal_static, "dynamic": ideal_dyn}
    if bucketed:
        same_lengths["bucketed"] = flop_ideal(ours.config, retention, bucketed)
    result["vs_hf_compiled"] = {  # compiled against compiled, both at the same lengths
        name: _versus(timings[f"hf_compiled_{padding}"], timings[name], same_lengths[padding])
        for padding in same_lengths
        for name in (f"ours_compiled_{padding}", f"onnxruntime_{padding}")
        if name in timings and f"hf_compiled_{padding}" in timings
    }
    result["vs_hf_packed"] = {  # eager against eager, both on oneDNN's packed linears
        f"ours_eager_{padding}": _versus(timings[f"hf_packed_{padding}"], timings[f"ours_eager_{padding}"], ideal)
        for padding, ideal in (("static", ideal_static), ("dynamic", ideal_dyn))
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _versus(reference: dict[str, float], candidate: dict[str, float], ideal: float) -> dict[str, Any]:
    """Speedup of ``candidate`` over ``reference`` (median, quartile range, noise flag) and its share of ``ideal``."""
    cmp = compare(reference, candidate)
    return {
        "speedup": round(cmp["speedup"], 3),
        "speedup_range": [round(x, 3) for x in cmp["speedup_range"]],
        "within_noise": cmp["within_noise"],
        "pct_of_ideal": round(100 * cmp["speedup"] / ideal, 1),
    }


def merge_cell(report: dict[str, Any], task: str, retention: list[int], n: int, source: str, key: str, cell: dict):
    """Put one measured cell into ``report``, keeping every other cell.

    A cell is one ``threads_<T>_batch_<B>`` record of one task. The task's cells measured at another retention or N
    are stale and dropped (their speedups compare a different model); ``machine_busy`` is recomputed over all cells.
    """
    entry = report["tasks"].setdefault(task, {})
    if (entry.get("retention"), entry.get("max_seq_len")) != (retention, n):
        stale = [k for k in entry if k.startswith("threads_")]
        if stale:
            print(f"{task}: dropping {', '.join(stale)} (measured at retention {entry.get('retention')})", flush=True)
        entry.clear()
    entry.update({"retention": retention, "max_seq_len": n, "retention_source": source, key: cell})
    report["machine_busy"] = any(c.get("machine_busy", True) for _, _, c in measured_cells(report))


def measured_cells(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(task, cell key, record)`` of every cell in ``report``, in task order."""
    return [(task, key, cell) for task, entry in report.get("tasks", {}).items()
            for key, cell in entry.items() if key.startswith("threads_")]  # fmt: skip


def describe_cells(report: dict[str, Any]) -> list[str]:
    """One line per measured cell: when, at which load, how long it took (cells from before per-cell records: '?')."""
    lines = []
    for task, key, cell in measured_cells(report):
        load = cell.get("load_average_1min_before_after", "?")
        lines.append(f"{task:5s} {key:22s} {cell.get('date', '?'):26s} load {load}  wall {cell.get('wall_s', '?')} s")
    return lines


#: ``--table`` columns: (header, comparison, row name in the cell's comparison); a cell without it shows "-".
TABLE_COLUMNS = (
    ("eager static", "vs_hf", "ours_eager_static"),
    ("eager dynamic", "vs_hf", "ours_eager_dynamic"),
    ("compiled static", "vs_hf", "ours_compiled_static"),
    ("compiled dynamic", "vs_hf", "ours_compiled_dynamic"),
    ("compiled, 16-token buckets", "vs_hf", "ours_compiled_bucketed"),
    ("onnxruntime static", "vs_hf", "onnxruntime_static"),
    ("onnxruntime, 16-token buckets", "vs_hf", "onnxruntime_bucketed"),
    ("eager static vs HF packed", "vs_hf_packed", "ours_eager_static"),
    ("eager dynamic vs HF packed", "vs_hf_packed", "ours_eager_dynamic"),
)


def table(report: dict[str, Any]) -> str:
    """The README's engine table: one row per cell, speedup over HF SDPA (share of the FLOP-ideal) per candidate.

    "~" marks a speedup within noise (:func:`lit_efficiency.core.timing.compare`); buckets compare with HF at the
    exact lengths; "memory kept": glibc kept freed memory for every candidate (:func:`memory_kept`).
    """

    def figure(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        return f"{'~' if row['within_noise'] else ''}{row['speedup']:.2f}x ({row['pct_of_ideal']:.0f}%)"

    lines = [
        "| task (N), retention | threads, batch | date, load before / after | "
        + " | ".join(h for h, _, _ in TABLE_COLUMNS) + " |",
        "|---" * (3 + len(TABLE_COLUMNS)) + "|",
    ]  # fmt: skip
    order = sorted(measured_cells(report), key=lambda c: (TASKS.index(c[0]), c[2]["threads"], -c[2]["batch_size"]))
    for task, _, cell in order:
        entry = report["tasks"][task]
        retention = ",".join(map(str, entry["retention"]))
        if entry.get("retention_source") != FAIR:
            retention += " (older run)"
        load = " / ".join(f"{x:.1f}" for x in cell["load_average_1min_before_after"])
        date = cell["date"][:10] if "date" in cell else "undated"
        load += ", memory kept" if memory_kept(cell) else ""
        figures = " | ".join(figure(cell.get(versus, {}).get(name)) for _, versus, name in TABLE_COLUMNS)
        lines.append(
            f"| {task} ({entry['max_seq_len']}), {retention} | {cell['threads']}, {cell['batch_size']} | "
            f"{date}, {load} | {figures} |"
        )
    return "\n".join(lines)


def load_models() -> dict[str, Any]:
    """The pretrained MiniLM's path, HF ``BertForSequenceClassification`` with SDPA, and its tokenizer."""
    import transformers

    path = resolve_pretrained(MODEL)
    hf_config = transformers.AutoConfig.from_pretrained(path, num_labels=2)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertForSequenceClassification.from_pretrained(path, config=hf_config).eval()
    return {"path": path, "hf": hf, "tokenizer": transformers.AutoTokenizer.from_pretrained(path)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1])
    parser.add_argument("--batch1-examples", type=int, default=32, help="dev examples timed one by one at batch 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 0], help="torch threads; 0: all cores")
    parser.add_argument("--compile-tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--onnx-tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--bucket", type=int, default=16, help="batch 1: pad to a multiple of this (0: no bucketed rows)"
    )
    parser.add_argument(
        "--retention", nargs="*", type=parse_retention, default=[], help="TASK=l1,...: instead of the committed one"
    )
    parser.add_argument(
        "--quick", action="store_true", help="check the script: batch 16 and 1, 4 examples at batch 1, 2 repeats"
    )
    parser.add_argument(
        "--allocator",
        choices=("kept", "default"),
        default="kept",
        help="kept: glibc keeps freed memory from the start, for every candidate (as compile_for_inference sets it); "
        "default: as the process started (MALLOC_* variables still apply)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: results/power_bert_engine[_quick].json")
    parser.add_argument("--fresh", action="store_true", help="start a new --out instead of merging into it")
    parser.add_argument("--list", action="store_true", help="print the cells already in --out and exit")
    parser.add_argument("--table", action="store_true", help="print the README table of --out's cells and exit")
    args = parser.parse_args(argv)
    args.retention = dict(args.retention)
    if args.retention and args.out is None and not args.quick:  # merging would drop the task's committed cells
        parser.error("--retention measures another model than the committed one: give it an --out file of its own")
    if args.quick:
        args.batch_sizes, args.batch1_examples, args.repeats = [16, 1], 4, 2
    args.out = args.out or RESULTS / ("power_bert_engine_quick.json" if args.quick else "power_bert_engine.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    old = {} if args.fresh or not args.out.is_file() else json.loads(args.out.read_text())
    if args.list:
        print("\n".join(describe_cells(old)) or f"{args.out}: no cells")
        return
    if args.table:
        print(table(old))
        return
    models = load_models()
    import transformers

    report: dict[str, Any] = {
        **old,
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": MODEL,
        "protocol": (
            "one cell = one task at one thread count and batch size, merged into this file by each run (other cells "
            "kept; a task's cells at another retention dropped); interleaved rounds (rotating order) after "
            "warm-up; median and IQR ms per candidate call, sys_ms its median system CPU time (page faults); "
            "batch 128: one batch of dev examples; batch 1: dev "
            "examples one at a time; speedups vs HF BertForSequenceClassification (SDPA) at the same padding; "
            "pct_of_ideal = speedup / FLOP-ideal; per cell: date, wall_s, repeats, load average before and after, "
            "machine_busy (the 1-minute load exceeded the cell's threads by more than 0.5: other jobs shared the CPU), "
            "allocator (the MALLOC_* variables and LD_PRELOAD the run started with, and mallopt's settings where "
            "--allocator kept made glibc keep freed memory for every candidate, as compile_for_inference does)"
        ),
        "tasks": old.get("tasks", {}),
    }
    for stale in ("repeats", "warmup", "wall_s"):  # per cell now
        report.pop(stale, None)
    if args.allocator == "kept":  # before any candidate runs: all of them see the same allocator
        keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            retention, n, source = committed_retention(task, args.retention)
            if source == OLDER:
                print(f"{task}: retention {retention} is from an {OLDER}", flush=True)
            for threads in args.threads:
                threads = threads or os.cpu_count() or 1
                torch.set_num_threads(threads)
                for batch_size in args.batch_sizes:
                    examples = batch_size if batch_size > 1 else args.batch1_examples
                    key = f"threads_{threads}_batch_{batch_size}"
                    cell = time_setting(task, batch_size, examples, threads, args, models, Path(tmp))
                    cell.update({"repeats": args.repeats, "warmup": args.warmup})
                    merge_cell(report, task, retention, n, source, key, cell)
                    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")  # every finished cell survives
                    print(task, key, f"{cell['wall_s']} s", json.dumps(cell["vs_hf"]), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
