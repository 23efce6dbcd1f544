"""One prepared GPU check: GPU tests, PoWER-BERT timing, diff transfer, peak memory, NCCL smoke, sparse precision.

Run on a machine with one CUDA GPU, from the repository root, with nothing installed beyond torch, lightning,
transformers, torch-geometric and pytest (no jsonargparse, wandb or datasets are imported)::

    make gpu-check                                  # = PYTHONPATH=. python3 benchmarks/gpu_check.py
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry   # CPU, tiny sizes, < 1 minute

Sections (each isolated: a failure is recorded as ``{"status": "failed", "error": ...}`` and the others still run;
each has a time budget, enforced with ``SIGALRM`` in-process and a timeout for subprocesses):

* ``pytest_gpu``: ``pytest -m gpu`` on the test files that hold GPU tests (subprocess), pass/fail counts.
* ``power_bert``: BERT-base shapes, fp16, batch 128 and 8 at L=128: our encoder (``mode="none"`` and ``"hard"``
  with two retention lists) eager, replayed as a CUDA graph and (batch 128, one list) ``torch.compile``
  ``reduce-overhead``, against ``transformers.BertModel`` with SDPA attention; interleaved CUDA-event timing.
* ``diff_transfer``: 32M-edge int64-key snapshots of a 4M-node graph, 5% churn: full vs diff host-to-device
  transfer, device rebuild, overlap on a side stream, and the transfer's share of a WD-GCN-like epoch.
* ``peak_memory``: ``torch.cuda.max_memory_allocated`` of WD-GCN training, resident vs streamed vs
  streamed+checkpointed at equal block size.
* ``nccl_smoke``: Lightning DDP (``process_group_backend="nccl"``), world size 1, through the distributed task.
* ``sparse_precision``: which dtypes ``torch.sparse.mm`` on a CSR adjacency accepts (autocast fp16/bf16,
  explicit casts), forward and backward, with the error against fp32.

Writes ``<out>/<section>.json`` (every record labelled with device, torch, CUDA, date) and ``<out>/summary.json``,
and prints a summary table. Exit status: 0 all sections ok or skipped, 1 a section failed, 2 refused (no CUDA
without ``--dry-run``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_efficiency.core.paths import atomic_write_text  # noqa: E402
from lit_efficiency.core.timing import interleaved, synchronize  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}
#: Per-layer kept tokens at L = 128 (12 layers): an aggressive and a moderate configuration (docs/gpu_anchors.md).
RETENTIONS = {
    "r80": [80, 60, 45, 35, 28, 22, 18, 14, 11, 9, 7, 5],
    "r110": [110, 90, 75, 64, 55, 48, 42, 37, 33, 29, 25, 22],
}
STATUSES = ("ok", "failed", "skipped")
#: A line that marks a test (or a whole module) as a GPU test.
GPU_MARK = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*pytest\.mark\.gpu\b)", re.MULTILINE)


# ----------------------------------------------------------------------------------------------------------------
# Project API: every lit_efficiency import of this script is in these three functions (adjust here after renames).
# ----------------------------------------------------------------------------------------------------------------
def power_bert_api() -> SimpleNamespace:
    """PoWER-BERT classes and the FLOP model."""
    from lit_efficiency.power_bert.model import PowerBertEncoder, PowerBertForSequenceClassification, ideal_speedup

    return SimpleNamespace(
        PowerBertEncoder=PowerBertEncoder,
        PowerBertForSequenceClassification=PowerBertForSequenceClassification,
        ideal_speedup=ideal_speedup,
    )


def dyn_gnn_api() -> SimpleNamespace:
    """Codec, adjacency, streaming, data modules and the single-process task."""
    from lit_efficiency.dyn_gnn.adjacency import key_dtype, split_key
    from lit_efficiency.dyn_gnn.codec import (
        HEADER_BYTES,
        EncodedGraph,
        FullSnapshot,
        SnapshotDiff,
        decode_block,
        decode_snapshot,
        encode_snapshots,
        iter_decode,
        position_dtype,
        snapshot_checksum,
    )
    from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
    from lit_efficiency.dyn_gnn.streaming import StreamingSnapshotDataModule, rebuild_adjacency, ship, ship_item
    from lit_efficiency.dyn_gnn.task import DynGNNTask

    return SimpleNamespace(
        key_dtype=key_dtype,
        split_key=split_key,
        HEADER_BYTES=HEADER_BYTES,
        EncodedGraph=EncodedGraph,
        FullSnapshot=FullSnapshot,
        SnapshotDiff=SnapshotDiff,
        decode_block=decode_block,
        decode_snapshot=decode_snapshot,
        encode_snapshots=encode_snapshots,
        iter_decode=iter_decode,
        position_dtype=position_dtype,
        snapshot_checksum=snapshot_checksum,
        SnapshotDataModule=SnapshotDataModule,
        StreamingSnapshotDataModule=StreamingSnapshotDataModule,
        rebuild_adjacency=rebuild_adjacency,
        ship=ship,
        ship_item=ship_item,
        DynGNNTask=DynGNNTask,
    )


def distributed_api() -> SimpleNamespace:
    """The snapshot-partitioned data module and the distributed task."""
    from lit_efficiency.dyn_gnn.partitioned import PartitionedSnapshotDataModule
    from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask

    return SimpleNamespace(
        PartitionedSnapshotDataModule=PartitionedSnapshotDataModule, DistributedDynGNNTask=DistributedDynGNNTask
    )


# ----------------------------------------------------------------------------------------------------------------
# Run context, sizes, budgets
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (GPU or dry run)."""

    bert: dict[str, int]
    bert_batches: tuple[int, ...]
    bert_seq_len: int
    bert_repeats: int
    bert_warmup: int
    transfer_nodes: int
    transfer_edges: int
    transfer_snapshots: int
    transfer_hidden: int
    transfer_repeats: int
    memory_nodes: int
    memory_edges: int
    memory_snapshots: int
    memory_block: int
    memory_hidden: int
    sparse_nodes: int
    sparse_edges: int


GPU_SIZES = Sizes(
    bert=dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    bert_batches=(128, 8),
    bert_seq_len=128,
    bert_repeats=20,
    bert_warmup=3,
    transfer_nodes=4_000_000,
    transfer_edges=32_000_000,
    transfer_snapshots=6,
    transfer_hidden=32,
    transfer_repeats=5,
    memory_nodes=100_000,
    memory_edges=250_000,
    memory_snapshots=8,
    memory_block=4,
    memory_hidden=64,
    sparse_nodes=200_000,
    sparse_edges=2_000_000,
)
DRY_SIZES = Sizes(
    bert=dict(num_hidden_layers=12, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=1000),
    bert_batches=(2, 1),
    bert_seq_len=128,
    bert_repeats=3,
    bert_warmup=1,
    transfer_nodes=20_000,
    transfer_edges=100_000,
    transfer_snapshots=4,
    transfer_hidden=8,
    transfer_repeats=2,
    memory_nodes=300,
    memory_edges=1_500,
    memory_snapshots=6,
    memory_block=3,
    memory_hidden=8,
    sparse_nodes=2_000,
    sparse_edges=10_000,
)

#: Seconds per section on the GPU (in-process: SIGALRM; subprocess: its timeout). Typical total ~3 min; the
#: budgets sum to more than TOTAL_BUDGET_S, which caps the run (a section that would start after it is skipped).
GPU_BUDGETS = {
    "pytest_gpu": 130,
    "power_bert": 170,
    "diff_transfer": 50,
    "peak_memory": 50,
    "nccl_smoke": 60,
    "sparse_precision": 15,
}
DRY_BUDGETS = {name: 90 for name in GPU_BUDGETS}  # slow, shared CI cores: generous, still capped by the total
#: Hard cap of the whole run: a section that would start after it is skipped.
TOTAL_BUDGET_S = 420


@dataclass
class Context:
    """What every section gets: device, sizes, budgets, the run's label and its start time."""

    dry_run: bool
    device: torch.device
    sizes: Sizes
    budgets: dict[str, int]
    label: dict[str, Any]
    compile: bool
    total_budget_s: float
    started: float = field(default_factory=time.perf_counter)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class SectionTimeout(Exception):
    """A section ran past its time budget."""


class Skip(Exception):
    """A section (or a part of one) cannot run here; the message says why."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (no-op where SIGALRM is unavailable)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """``$LIT_EFFICIENCY_COMMIT`` when set (a copied tree whose .git is stale), else HEAD, ``+modified`` if dirty."""
    if os.environ.get("LIT_EFFICIENCY_COMMIT"):
        return os.environ["LIT_EFFICIENCY_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+modified" if dirty.returncode else "")) or None


def run_label(device: torch.device, dry_run: bool) -> dict[str, Any]:
    """Device name, torch / CUDA / library versions, date: attached to every record."""
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "device_type": device.type,
        "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(device)) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": _version("transformers"),
        "lightning": _version("lightning"),
        "torch_geometric": _version("torch_geometric"),
        "triton": _version("triton"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "dry_run": dry_run,
    }


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: offline flags, the working tree first on PYTHONPATH."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ----------------------------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------------------------
def cuda_graph(fn: Callable[[], Any], warmup: int = 3) -> tuple[Callable[[], None], Any]:
    """Capture ``fn`` (static shapes, static input tensors) as a CUDA graph; returns ``(replay, captured output)``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------------------------------------------
# a. pytest -m gpu
# ----------------------------------------------------------------------------------------------------------------
def gpu_test_files() -> list[str]:
    """Test files that hold GPU tests (a ``@pytest.mark.gpu`` decorator or ``pytestmark``), relative to the root."""
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if GPU_MARK.search(path.read_text(encoding="utf-8", errors="replace")):
            files.append(str(path.relative_to(ROOT)))
    return files


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and per-test outcomes of a pytest JUnit XML report."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or "").strip().splitlines()[0][:300] if child.get("message") else ""
                break
        tests.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "time_s": round(float(case.get("time") or 0.0), 2),
                **({"message": message} if message else {}),
            }
        )
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def section_pytest_gpu(ctx: Context) -> dict[str, Any]:
    files = gpu_test_files()
    if not files:
        return {"status": "failed", "error": "no test file with pytest.mark.gpu found under tests/"}
    budget = ctx.budgets["pytest_gpu"]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider",
            f"--junitxml={junit}", f"--timeout={max(30, budget - 20)}",
        ]  # fmt: skip
        print(f"  $ {' '.join(cmd[2:5])} ... ({len(files)} files)", flush=True)
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=budget - 5
            )
        except subprocess.TimeoutExpired as err:
            tail = (err.stdout or b"")[-2000:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            return {"status": "failed", "error": f"pytest ran past {budget - 5} s", "files": files, "output": tail}
        report = parse_junit(junit) if junit.is_file() else {"counts": {}, "tests": []}
    counts = report["counts"]
    rec: dict[str, Any] = {
        "command": " ".join(["python", *cmd[1:]]).replace(str(junit), "<tmp>/junit.xml"),
        "files": files,
        "returncode": proc.returncode,
        **report,
        "output_tail": proc.stdout[-1500:],
    }
    if proc.returncode not in (0, 1) or not report["tests"]:
        rec.update(status="failed", error=f"pytest exited {proc.returncode}: {proc.stdout.strip()[-300:]}")
    elif counts.get("failed") or counts.get("error"):
        bad = [t["test"] for t in report["tests"] if t["outcome"] in ("failed", "error")]
        rec.update(status="failed", error=f"{len(bad)} GPU test(s) failed: {', '.join(bad)[:500]}")
    elif not counts.get("passed"):
        if ctx.cuda:
            rec.update(status="failed", error="every GPU test was skipped although CUDA is available")
        else:
            rec.update(status="skipped", reason="no CUDA device: tests/conftest.py skips every gpu test")
    else:
        rec["status"] = "ok"
    return rec


# ----------------------------------------------------------------------------------------------------------------
# b. PoWER-BERT timing
# ----------------------------------------------------------------------------------------------------------------
def bert_config(sizes: Sizes) -> Any:
    """Random-weight BERT config with the run's shapes and SDPA attention for the HF reference."""
    import transformers

    return transformers.BertConfig(
        **sizes.bert,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


def bert_inputs(batch: int, seq_len: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """[CLS] + random word ids, no padding (every row is seq_len long), segment 0."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(200, vocab, (batch, seq_len), generator=gen)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    return ids.to(device), mask.to(device), torch.zeros_like(ids).to(device)


def section_power_bert(ctx: Context) -> dict[str, Any]:
    import transformers

    api = power_bert_api()
    sizes, device = ctx.sizes, ctx.device
    dtype = torch.float16 if ctx.cuda else torch.float32
    started = time.perf_counter()
    config = bert_config(sizes)
    torch.manual_seed(0)
    hf = transformers.BertModel(config).eval()
    if hf.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers chose attention {hf.config._attn_implementation!r}, not sdpa")
    ours = {"none": api.PowerBertEncoder(config, mode="none").eval()}
    for tag, retention in RETENTIONS.items():
        ours[tag] = api.PowerBertEncoder(config, mode="hard", retention=retention).eval()
    for model in ours.values():
        model.load_hf_state_dict(hf.state_dict(), source="hf reference")
    hf.to(device=device, dtype=dtype)
    for model in ours.values():
        model.to(device=device, dtype=dtype)

    ideal = {tag: api.ideal_speedup(config, r, sizes.bert_seq_len) for tag, r in RETENTIONS.items()}
    skipped: dict[str, str] = {}
    if not ctx.cuda:
        skipped["cuda_graph"] = "needs CUDA"
    if not ctx.cuda or not ctx.compile:
        skipped["compile"] = "needs CUDA" if not ctx.cuda else "disabled with --no-compile"
    results: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    with torch.no_grad():
        for batch in sizes.bert_batches:
            inputs = bert_inputs(batch, sizes.bert_seq_len, config.vocab_size, device)
            fns = bert_candidates(ctx, hf, ours, inputs, checks, started, skipped)
            timings = interleaved(fns, device, sizes.bert_repeats, sizes.bert_warmup)
            base = timings["hf_sdpa"]["median_ms"]
            for name, t in timings.items():
                tag = name.split("_")[0]
                speedup = base / t["median_ms"]
                row: dict[str, Any] = {"batch": batch, "candidate": name, **t, "speedup_vs_hf_sdpa": round(speedup, 3)}
                if tag in ideal:
                    row["ideal_speedup"] = round(ideal[tag], 3)
                    row["pct_of_ideal"] = round(100.0 * speedup / ideal[tag], 1)
                results.append(row)
            shown = ", ".join(f"{r['candidate']} {r['median_ms']:.2f} ms" for r in results if r["batch"] == batch)
            print(f"  batch {batch}: {shown}", flush=True)
            if batch == max(sizes.bert_batches):
                profiles = profile_calls({k: fns[k] for k in ("hf_sdpa", "none_eager", "r80_eager")}, device)
    return {
        "status": "ok",
        "config": {**sizes.bert, "seq_len": sizes.bert_seq_len, "dtype": str(dtype).replace("torch.", ""),
                   "batches": list(sizes.bert_batches), "retentions": RETENTIONS, "padding": "none"},
        "ideal_speedup": {k: round(v, 3) for k, v in ideal.items()},
        "results": results,
        "checks": checks,
        "skipped": skipped,
        "profile_largest_batch": profiles,
        "note": "speedup = median(hf_sdpa) / median(candidate); pct_of_ideal = speedup / FLOP-ideal speedup. "
        "profile_largest_batch: torch.profiler over 3 calls per candidate (after the timing): host wall and device "
        "(kernel) time per call, and the ops with the most self host / self device time, to tell launch-bound "
        "from kernel-bound. "
        "Candidates are timed interleaved (rotating order), queue drained before each call, CUDA events.",
    }  # fmt: skip


def profile_calls(fns: dict[str, Callable[[], Any]], device: torch.device, calls: int = 3) -> dict[str, Any]:
    """Per candidate: host wall ms and device kernel ms per call, and the top ops by self host and device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        synchronize(device)
        with profile(activities=activities) as prof:
            begin = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            wall_ms = (time.perf_counter() - begin) * 1e3 / calls
        events = list(prof.key_averages())
        kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]  # not the aten ops too
        out[name] = {
            "host_wall_ms_per_call": round(wall_ms, 3),
            "device_kernel_ms_per_call": round(sum(_device_us(e) for e in kernels) / 1e3 / calls, 3),
            "kernels_per_forward": sum(e.count for e in kernels) / calls,
            "ops_per_forward": sum(e.count for e in events) / calls,
            "top_self_host": _top_ops(events, lambda e: e.self_cpu_time_total, calls),
            "top_self_device": _top_ops(events, _device_us, calls),
        }
    return out


def _device_us(event: Any) -> float:
    """Self device time of a profiler event (``self_device_time_total``; ``self_cuda_time_total`` before torch 2.4)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def _top_ops(events: list[Any], key: Callable[[Any], float], calls: int, count: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "op": e.key[:80],
            "calls_per_forward": e.count / calls,
            "self_host_ms": round(e.self_cpu_time_total / 1e3 / calls, 3),
            "self_device_ms": round(_device_us(e) / 1e3 / calls, 3),
        }
        for e in sorted(events, key=key, reverse=True)[:count]
    ]


def bert_candidates(
    ctx: Context,
    hf: torch.nn.Module,
    ours: dict[str, torch.nn.Module],
    inputs: tuple[torch.Tensor, ...],
    checks: dict[str, Any],
    started: float,
    skipped: dict[str, str],
) -> dict[str, Callable[[], Any]]:
    """Callables to time for one batch: HF SDPA, ours eager, ours as CUDA graphs, ours compiled; checks recorded."""
    ids, mask, tt = inputs
    batch = ids.shape[0]
    fns: dict[str, Callable[[], Any]] = {"hf_sdpa": lambda: hf(input_ids=ids, attention_mask=mask)}
    for tag, model in ours.items():
        fns[f"{tag}_eager"] = lambda m=model: m(ids, mask, tt)
    ref = {name: fn() for name, fn in fns.items()}
    checks[f"b{batch}_none_vs_hf_max_abs"] = max_abs_diff(
        ref["none_eager"].last_hidden_state, ref["hf_sdpa"].last_hidden_state
    )
    if not ctx.cuda:
        return fns
    for tag, model in ours.items():
        try:
            replay, out = cuda_graph(lambda m=model: m(ids, mask, tt))
            replay()
        except Exception as err:  # a capture failure is a result; eager timings still run
            checks[f"b{batch}_{tag}_graph_error"] = _first_line(err)[:400]
            continue
        want = ref[f"{tag}_eager"]
        checks[f"b{batch}_{tag}_graph_max_abs"] = max_abs_diff(out.last_hidden_state, want.last_hidden_state)
        checks[f"b{batch}_{tag}_graph_same_positions"] = bool(torch.equal(out.kept_positions, want.kept_positions))
        fns[f"{tag}_graph"] = replay
    if ctx.cuda and ctx.compile and batch == max(ctx.sizes.bert_batches):
        remaining = ctx.budgets["power_bert"] - (time.perf_counter() - started)
        if remaining > 45:
            fns.update(compiled_candidate(ours["r80"], inputs, ref["r80_eager"], checks))
        else:
            skipped["compile"] = f"only {remaining:.0f} s of the section budget left (needs 45 s)"
    return fns


def compiled_candidate(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], want: Any, checks: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """``torch.compile(mode="reduce-overhead")`` of a hard-mode encoder; records compile time and the error."""
    begin = time.perf_counter()
    try:
        compiled = torch.compile(model, mode="reduce-overhead")
        for _ in range(3):  # compile, then the CUDA-graph recording runs
            out = compiled(*inputs)
        torch.cuda.synchronize()
    except Exception as err:  # a compiler failure is a result here, not a section failure
        checks["r80_compile_error"] = _first_line(err)[:400]
        return {}
    checks["r80_compile_s"] = round(time.perf_counter() - begin, 1)
    checks["r80_compile_max_abs"] = max_abs_diff(out.last_hidden_state, want.last_hidden_state)
    checks["r80_compile_same_positions"] = bool(torch.equal(out.kept_positions, want.kept_positions))
    # random weights: near-uniform attention, so scores tie closely and another summation order can swap tokens
    same_rows = (out.kept_positions == want.kept_positions).all(dim=1)
    checks["r80_compile_rows_same_positions"] = round(float(same_rows.float().mean()), 4)
    return {"r80_compile": lambda: compiled(*inputs)}


# ----------------------------------------------------------------------------------------------------------------
# c. Diff transfer
# ----------------------------------------------------------------------------------------------------------------
def fresh_keys(count: int, num_nodes: int, forbidden: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``count`` distinct sorted int64 keys drawn uniformly from ``[0, N*N)``, none in the sorted ``forbidden``."""
    from lit_efficiency.dyn_gnn.adjacency import match_sorted

    device = forbidden.device
    keys = torch.empty(0, dtype=torch.int64, device=device)
    while keys.numel() < count:
        draw = torch.randint(0, num_nodes * num_nodes, (count - keys.numel() + 1024,), generator=gen, device=device)
        keys = torch.unique(torch.cat([keys, draw]))
        keys = keys[~match_sorted(forbidden, keys)[1]]
    if keys.numel() > count:
        pick = torch.randperm(keys.numel(), generator=gen, device=device)[:count]
        keys = torch.sort(keys[pick]).values
    return keys


def churn_sequence(
    num_nodes: int, num_edges: int, num_snapshots: int, churn: float, device: torch.device, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """Sorted int64 keys per snapshot with exactly ``round(churn * E)`` deletions (as positions) and additions.

    Yields ``(keys, deleted_positions, added_keys)``; the first snapshot has no diff (``None, None``).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    keys = fresh_keys(num_edges, num_nodes, torch.empty(0, dtype=torch.int64, device=device), gen)
    yield keys, None, None
    k = round(churn * num_edges)
    for _ in range(1, num_snapshots):
        deleted = torch.sort(torch.randperm(keys.numel(), generator=gen, device=device)[:k]).values
        keep = torch.ones(keys.numel(), dtype=torch.bool, device=device)
        keep[deleted] = False
        added = fresh_keys(k, num_nodes, keys, gen)
        keys = torch.sort(torch.cat([keys[keep], added])).values
        yield keys, deleted, added


def to_host(x: torch.Tensor, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """Host copy of ``x`` as ``dtype``, in pinned memory when ``pin``."""
    out = torch.empty(x.shape, dtype=dtype, pin_memory=pin)
    out.copy_(x.to(dtype))
    return out


def build_encoded(api: SimpleNamespace, num_nodes: int, sequence: Iterator, pin: bool) -> tuple[Any, list]:
    """Codec items built directly from a churn sequence (known diffs), plus every snapshot's full host keys."""
    kd = api.key_dtype(num_nodes)
    items, full_keys, full_nbytes, diff_entries = [], [], [], []
    prev_edges = 0
    for t, (keys, deleted, added) in enumerate(sequence):
        checksum = int(api.snapshot_checksum(keys))
        host = to_host(keys, kd, pin)
        full_keys.append(host)
        full_nbytes.append(api.HEADER_BYTES + host.numel() * host.element_size())
        if deleted is None:
            items.append(api.FullSnapshot(t, num_nodes, keys.numel(), host, None, checksum))
            diff_entries.append(keys.numel())
        else:
            pos = to_host(deleted, api.position_dtype(prev_edges), pin)
            diff = api.SnapshotDiff(
                t, num_nodes, keys.numel(), prev_edges, pos, to_host(added, kd, pin), None, None, None, checksum
            )
            items.append(diff)
            diff_entries.append(deleted.numel() + added.numel())
        prev_edges = keys.numel()
    encoded = api.EncodedGraph(num_nodes, tuple(items), tuple(full_nbytes), tuple(diff_entries), False)
    return encoded, full_keys


def encoder_agrees(api: SimpleNamespace) -> bool:
    """At a small size, ``codec.encode_snapshots`` produces exactly the items :func:`build_encoded` builds."""
    n = 3000
    seq = list(churn_sequence(n, 20_000, 3, 0.05, torch.device("cpu"), seed=1))
    mine, _ = build_encoded(api, n, iter(seq), pin=False)
    edge_indices = [torch.stack(api.split_key(keys, n)) for keys, _, _ in seq]
    theirs = api.encode_snapshots(edge_indices, n)
    for a, b in zip(mine.items, theirs.items, strict=True):
        if a.kind != b.kind or a.checksum != b.checksum or a.num_edges != b.num_edges:
            return False
        names = ("keys",) if a.kind == "full" else ("deleted_pos", "added_keys")
        if not all(torch.equal(getattr(a, f), getattr(b, f)) for f in names):
            return False
    return True


def section_diff_transfer(ctx: Context) -> dict[str, Any]:
    api = dyn_gnn_api()
    sizes, device = ctx.sizes, ctx.device
    n, e, steps, hidden = sizes.transfer_nodes, sizes.transfer_edges, sizes.transfer_snapshots, sizes.transfer_hidden
    begin = time.perf_counter()
    encoded, full_keys = build_encoded(api, n, churn_sequence(n, e, steps, 0.05, device), pin=ctx.cuda)
    items = list(encoded.items)
    build_s = time.perf_counter() - begin
    exact = all(torch.equal(dec.keys.cpu(), full_keys[dec.t]) for dec in api.iter_decode(encoded, device, verify=True))
    print(f"  built {steps} snapshots of {e:,} edges in {build_s:.1f} s; decode exact={exact}", flush=True)

    def full_h2d() -> list[torch.Tensor]:
        return [api.ship(k, device) for k in full_keys]

    def diff_h2d() -> list[Any]:
        return [api.ship_item(item, device) for item in items]

    def diff_rebuild() -> torch.Tensor:
        keys = None
        for item in items:  # host (pinned) item: structural checks on the host, non_blocking copies in the rebuild
            keys, _ = api.decode_snapshot(keys, None, item, device, verify=False)
        return keys

    def block_path(first: int, prev: torch.Tensor | None, verify: bool) -> Callable[[], torch.Tensor]:
        """What StreamingSnapshotDataModule does per block: ship the items, decode_block on the device, one check."""

        def run() -> torch.Tensor:
            decoded, check = api.decode_block(prev, None, [api.ship_item(i, device) for i in items[first:]],
                                              device, verify=verify)  # fmt: skip
            check.raise_if_failed()
            return decoded[-1][0]

        return run

    device_keys = [k.to(device) for k in full_keys]  # copied once: steady-state start, one-snapshot parts, epochs
    first_keys, last_keys = device_keys[0], device_keys[-1]
    torch.manual_seed(0)
    x = torch.randn(n, hidden, device=device, requires_grad=True)
    w = torch.randn(hidden, hidden, device=device) / hidden**0.5

    def spmm_step(adj: torch.Tensor) -> None:
        torch.sparse.mm(adj, x @ w).sum().backward()

    adj_last = api.rebuild_adjacency(last_keys, None, n)
    with torch.no_grad():
        parts = interleaved(
            {
                "full_h2d": full_h2d,
                "diff_h2d": diff_h2d,
                "diff_h2d_rebuild": diff_rebuild,
                "diff_block": block_path(0, None, verify=False),
                "diff_block_verified": block_path(0, None, verify=True),
                "full_h2d_steady": lambda: [api.ship(k, device) for k in full_keys[1:]],
                "diff_block_steady": block_path(1, first_keys, verify=False),
                "diff_block_steady_verified": block_path(1, first_keys, verify=True),
                "norm_one": lambda: api.rebuild_adjacency(last_keys, None, n),
                "spmm_fwd_one": lambda: torch.sparse.mm(adj_last, x @ w),
            },
            device,
            sizes.transfer_repeats,
            warmup=1,
        )
    parts["spmm_fwd_bwd_one"] = interleaved({"f": lambda: spmm_step(adj_last)}, device, sizes.transfer_repeats, 1)["f"]
    print("  parts: " + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in parts.items()), flush=True)

    pipelines = epoch_pipelines(api, ctx, items, full_keys, device_keys, n, spmm_step)
    print("  epochs: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in pipelines.items()), flush=True)
    med = {k: v["median_ms"] for k, v in {**parts, **pipelines}.items()}
    derived = {
        "diff_h2d_vs_full": round(med["full_h2d"] / med["diff_h2d"], 2),
        "diff_rebuild_vs_full": round(med["full_h2d"] / med["diff_h2d_rebuild"], 2),
        "diff_block_vs_full": round(med["full_h2d"] / med["diff_block"], 2),
        "diff_block_verified_vs_full": round(med["full_h2d"] / med["diff_block_verified"], 2),
        "steady_diff_block_vs_full": round(med["full_h2d_steady"] / med["diff_block_steady"], 2),
        "steady_diff_block_verified_vs_full": round(med["full_h2d_steady"] / med["diff_block_steady_verified"], 2),
        "steady_diff_block_per_snapshot_ms": round(med["diff_block_steady"] / (steps - 1), 3),
        "full_h2d_gb_per_s": round(sum(k.numel() * k.element_size() for k in full_keys) / med["full_h2d"] / 1e6, 1),
        "full_h2d_per_snapshot_ms": round(med["full_h2d"] / steps, 3),
        "transfer_share_full_serial": round(1.0 - med["epoch_resident"] / med["epoch_full_serial"], 3),
        "transfer_share_diff_serial": round(1.0 - med["epoch_resident"] / med["epoch_diff_serial"], 3),
    }
    for kind in ("full", "diff"):
        if f"epoch_{kind}_overlap" in med:
            derived[f"transfer_share_{kind}_overlap"] = round(
                1.0 - med["epoch_resident"] / med[f"epoch_{kind}_overlap"], 3
            )
        for how in ("serial", "overlap"):  # against keys resident (the normalisation paid in both)
            if f"epoch_{kind}_{how}" in med:
                derived[f"streaming_share_{kind}_{how}"] = round(
                    1.0 - med["epoch_keys_resident"] / med[f"epoch_{kind}_{how}"], 3
                )
    stats = encoded.stats()
    return {
        "status": "ok" if exact else "failed",
        **({} if exact else {"error": "a decoded snapshot differs from the generated keys"}),
        "config": {"num_nodes": n, "edges_per_snapshot": e, "snapshots": steps, "churn": 0.05, "hidden": hidden,
                   "key_dtype": str(api.key_dtype(n)), "pinned": ctx.cuda},
        "generator": "keys drawn uniformly from [0, N*N) on the device, deletions as random positions, additions as "
        "fresh keys; codec items (FullSnapshot/SnapshotDiff + snapshot_checksum) built directly from these known "
        "diffs instead of running the host encoder on 32M edges (too slow for the budget); "
        "encoder_agrees checks codec.encode_snapshots builds the same items at a small size",
        "encoder_agrees": encoder_agrees(api),
        "build_s": round(build_s, 2),
        "exact": exact,
        "bytes": {"full": stats.full_bytes, "encoded": stats.encoded_bytes, "ratio": round(stats.bytes_ratio, 2)},
        "parts": parts,
        "epochs": pipelines,
        "derived": derived,
        "note": "times are for all snapshots of the sequence (item 0 is full in both paths) unless '_one'. "
        "epoch_*: per snapshot transfer (+ diff rebuild) + GCN normalisation + one SpMM forward+backward; "
        "epoch_resident: normalised adjacencies already on the device, SpMM forward+backward only; "
        "transfer_share = 1 - resident / epoch. epoch_keys_resident: every snapshot's keys already on the device, "
        "normalisation + SpMM per snapshot; streaming_share = 1 - keys_resident / epoch: what shipping the keys "
        "(and rebuilding them from diffs) adds. Overlap: the next snapshot's copy on a side stream. "
        "diff_h2d_rebuild: decode_snapshot on each host (pinned) item, one synchronisation per item and the "
        "value checks on the host; diff_block[_verified]: the library's streaming path (ship_item, decode_block on "
        "the device, one BlockCheck synchronisation; _verified adds the checksums); *_steady: the diffs only "
        "(snapshot 0 resident), against full copies of the same snapshots. "
        "decode_snapshot's checks of device-resident items and the normalisation's bincount/boolean indexing "
        "synchronise with the host, which limits overlap.",
    }  # fmt: skip


def epoch_pipelines(
    api: SimpleNamespace,
    ctx: Context,
    items: list,
    full_keys: list,
    device_keys: list,
    n: int,
    spmm_step: Callable,
) -> dict[str, dict[str, float]]:
    """Time a WD-GCN-like epoch (normalisation + SpMM fwd/bwd per snapshot) resident, full, diff, +/- overlap.

    ``full_keys`` are the pinned host keys the transfer epochs ship; ``device_keys`` the same already on the device.
    """
    device = ctx.device
    resident = [api.rebuild_adjacency(k, None, n) for k in device_keys]

    def epoch_resident() -> None:
        for adj in resident:
            spmm_step(adj)

    def epoch_keys_resident() -> None:
        for keys in device_keys:
            spmm_step(api.rebuild_adjacency(keys, None, n))

    def epoch(kind: str, overlap: bool) -> Callable[[], None]:
        side = torch.cuda.Stream(device) if overlap else None

        def ship(t: int) -> Any:
            if side is None:  # serial: a full snapshot is copied now, a diff item inside decode_snapshot
                return api.ship(full_keys[t], device) if kind == "full" else items[t]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                out = api.ship(full_keys[t], device) if kind == "full" else api.ship_item(items[t], device)
            return out

        def arrived(shipped: Any) -> Any:
            if side is None:
                return shipped
            current = torch.cuda.current_stream(device)
            current.wait_stream(side)
            tensors = (
                [shipped]
                if isinstance(shipped, torch.Tensor)
                else [v for v in vars(shipped).values() if isinstance(v, torch.Tensor)]
            )
            for tensor in tensors:
                tensor.record_stream(current)
            return shipped

        def run() -> None:
            keys = None
            pending = ship(0)
            for t in range(len(items)):
                current = arrived(pending)
                if t + 1 < len(items):
                    pending = ship(t + 1)
                if kind == "full":
                    keys = current
                else:
                    keys, _ = api.decode_snapshot(keys, None, current, device, verify=False)
                spmm_step(api.rebuild_adjacency(keys, None, n))

        return run

    fns = {"epoch_resident": epoch_resident, "epoch_keys_resident": epoch_keys_resident,
           "epoch_full_serial": epoch("full", False),
           "epoch_diff_serial": epoch("diff", False)}  # fmt: skip
    if ctx.cuda:
        fns.update(epoch_full_overlap=epoch("full", True), epoch_diff_overlap=epoch("diff", True))
    return interleaved(fns, device, max(2, ctx.sizes.transfer_repeats - 2), warmup=1)


# ----------------------------------------------------------------------------------------------------------------
# d. Peak device memory
# ----------------------------------------------------------------------------------------------------------------
def train_epoch(task: Any, batches: Iterator, move: Callable[[Any], Any]) -> list[float]:
    """One epoch of ``training_step`` + Adam on ``task`` (state carried across blocks by the task)."""
    optimizer = torch.optim.Adam(task.parameters(), lr=0.01)
    losses = []
    for i, batch in enumerate(batches):
        loss = task.training_step(move(batch), i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        del loss
    return losses


def resident_blocks(dm: Any, device: torch.device) -> tuple[list[Any], int]:
    """Every training block moved to ``device`` up front, and the bytes of their adjacencies there."""
    blocks = [dm.transfer_batch_to_device(b, device, 0) for b in dm.train_dataloader()]
    nbytes = sum(
        t.numel() * t.element_size()
        for b in blocks
        for a in b.adjs
        for t in (a.crow_indices(), a.col_indices(), a.values())
    )
    return blocks, nbytes


def streamed_mover(dm: Any, device: torch.device) -> Callable[[Any], Any]:
    """The data module's own device transfer (rebuild of the block's adjacencies on ``device``)."""
    return lambda batch: dm.transfer_batch_to_device(batch, device, 0)


def section_peak_memory(ctx: Context) -> dict[str, Any]:
    api = dyn_gnn_api()
    sizes, device = ctx.sizes, ctx.device
    data = dict(
        dataset="synthetic_churn", num_nodes=sizes.memory_nodes, num_snapshots=sizes.memory_snapshots,
        edges_per_snapshot=sizes.memory_edges, churn=0.05, num_node_features=0, num_negatives=1, train_frac=1.0,
        val_frac=0.0, test_frac=0.0, block_size=sizes.memory_block, seed=0,
    )  # fmt: skip
    begin = time.perf_counter()
    resident_dm = api.SnapshotDataModule(**data)
    resident_dm.setup("fit")
    streamed_dm = api.StreamingSnapshotDataModule(**data, transfer="diff")
    streamed_dm.setup("fit")
    print(f"  data modules ready in {time.perf_counter() - begin:.1f} s", flush=True)
    ckpt = dict(
        spatial_block_size=1, checkpoint_spatial=True,
        temporal_chunk_size=max(1, sizes.memory_nodes // 4), checkpoint_temporal=True,
    )  # fmt: skip
    records = []
    for config in ("resident", "streamed", "streamed+ckpt"):
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        dm = resident_dm if config == "resident" else streamed_dm
        task = api.DynGNNTask(
            hidden_dim=sizes.memory_hidden, out_dim=sizes.memory_hidden, num_layers=2, head_hidden_dim=0,
            num_nodes=dm.num_nodes, num_features=dm.num_features, task=dm.task,
            **(ckpt if config == "streamed+ckpt" else {}),
        ).to(device)  # fmt: skip
        blocks, graph_bytes = resident_blocks(dm, device) if config == "resident" else (None, 0)
        if ctx.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a Trainer warns on every step
            if blocks is not None:
                losses = train_epoch(task, iter(blocks), lambda b: b)
            else:
                losses = train_epoch(task, iter(dm.train_dataloader()), streamed_mover(dm, device))
        rec: dict[str, Any] = {
            "config": config,
            "steps": len(losses),
            "losses_finite": all(v == v and abs(v) != float("inf") for v in losses),
            "epoch_s": round(time.perf_counter() - start, 3),
        }
        if ctx.cuda:
            rec["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            rec["baseline_mib"] = round(base / 2**20, 1)
            rec["peak_over_baseline_mib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
            rec["resident_graph_mib"] = round(graph_bytes / 2**20, 1)
        records.append(rec)
        print(f"  {config}: {rec}", flush=True)
        del task, blocks
    out: dict[str, Any] = {
        "config": {**{k: v for k, v in data.items() if k != "dataset"}, "dataset": data["dataset"],
                   "hidden": sizes.memory_hidden, "model": "wdgcn", "checkpointing": ckpt},
        "records": records,
        "note": "equal block size for all three. resident: every block's normalised adjacencies on the device "
        "before training (baseline includes them); streamed: StreamingSnapshotDataModule rebuilds each block on "
        "the device; streamed+ckpt: plus per-snapshot GCN checkpoints and a vertex-chunked checkpointed LSTM. "
        "peak_allocated = torch.cuda.max_memory_allocated over the epoch (reset before each config).",
    }  # fmt: skip
    if not all(r["losses_finite"] for r in records):
        out.update(status="failed", error="non-finite training loss")
    elif not ctx.cuda:
        out.update(status="skipped", reason="torch.cuda.max_memory_allocated needs CUDA (the three training loops "
                   "ran on CPU to check the code path)")  # fmt: skip
    else:
        out["status"] = "ok"
    return out


# ----------------------------------------------------------------------------------------------------------------
# e. NCCL smoke (child process)
# ----------------------------------------------------------------------------------------------------------------
def nccl_child(out: Path, backend: str, accelerator: str) -> int:
    """Fit the distributed task for one epoch at world size 1 with ``backend``; write what happened to ``out``."""
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    from lit_efficiency.core.trainer import quiet_trainer

    api = distributed_api()
    seen: dict[str, Any] = {"losses": []}

    class Probe(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["backend"] = dist.get_backend() if dist.is_initialized() else None
            seen["world_size"] = dist.get_world_size() if dist.is_initialized() else None
            seen["param_device"] = str(next(pl_module.parameters()).device)
            probe = torch.ones(4, device=pl_module.device)
            dist.all_reduce(probe)
            seen["all_reduce_ok"] = bool(torch.equal(probe.cpu(), torch.ones(4)))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen["losses"].append(float(outputs["loss"]))

    torch.manual_seed(0)
    task = api.DistributedDynGNNTask(
        redistribution_timeout_s=60, model="wdgcn", hidden_dim=8, out_dim=8, num_layers=2, head_hidden_dim=8,
        num_nodes=36, num_features=8, task="link_prediction",
    )  # fmt: skip
    data = api.PartitionedSnapshotDataModule(
        dataset="synthetic", num_nodes=36, num_snapshots=8, edges_per_snapshot=100, num_negatives=3, block_size=3,
        train_frac=0.6, val_frac=0.2, test_frac=0.2, seed=3,
    )  # fmt: skip
    trainer = quiet_trainer(
        accelerator=accelerator,
        strategy=DDPStrategy(process_group_backend=backend, timeout=datetime.timedelta(seconds=60)),
        max_epochs=1, num_sanity_val_steps=0, callbacks=[Probe()],
    )  # fmt: skip
    trainer.fit(task, data)
    seen["val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if dist.is_initialized():
        dist.destroy_process_group()
    out.write_text(json.dumps(seen))
    return 0


def section_nccl_smoke(ctx: Context) -> dict[str, Any]:
    backend, accelerator = ("nccl", "gpu") if ctx.cuda else ("gloo", "cpu")
    budget = ctx.budgets["nccl_smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "child.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--nccl-child", str(result), "--backend", backend,
               "--accelerator", accelerator]  # fmt: skip
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                                  timeout=budget - 5)  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"the {backend} child ran past {budget - 5} s", "backend": backend}
        seen = json.loads(result.read_text()) if result.is_file() else None
    rec: dict[str, Any] = {"backend": backend, "accelerator": accelerator, "returncode": proc.returncode}
    if proc.returncode != 0 or seen is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        rec.update(status="failed", error=f"child exited {proc.returncode}: {' | '.join(tail)[-800:]}")
        return rec
    rec.update(seen)
    problems = []
    if seen.get("backend") != backend:
        problems.append(f"process group backend {seen.get('backend')!r}, expected {backend!r}")
    if seen.get("world_size") != 1 or not seen.get("all_reduce_ok"):
        problems.append("world size or all_reduce result wrong")
    if not seen["losses"] or not all(v == v and abs(v) != float("inf") for v in seen["losses"]):
        problems.append("no finite training loss")
    if problems:
        rec.update(status="failed", error="; ".join(problems))
    elif not ctx.cuda:
        rec.update(status="skipped", reason="NCCL needs CUDA; the same child ran with gloo on CPU (code path checked)")
    else:
        rec["status"] = "ok"
    return rec


# ----------------------------------------------------------------------------------------------------------------
# f. Sparse precision probe
# ----------------------------------------------------------------------------------------------------------------
def section_sparse_precision(ctx: Context) -> dict[str, Any]:
    """Which low-precision paths ``torch.sparse.mm(csr, dense)`` supports here, and their error against fp32."""
    from lit_efficiency.dyn_gnn.adjacency import gcn_norm

    sizes, device = ctx.sizes, ctx.device
    gen = torch.Generator().manual_seed(0)
    n = sizes.sparse_nodes
    edge_index = torch.randint(0, n, (2, sizes.sparse_edges), generator=gen)
    adj = gcn_norm(edge_index, n).to(device)
    x = torch.randn(n, 32, generator=gen).to(device)
    weight = torch.randn(32, 32, generator=gen).to(device) / 32**0.5

    def run(cast: str) -> tuple[torch.Tensor, torch.Tensor]:
        xr = x.clone().requires_grad_(True)
        if cast.startswith("autocast"):
            dtype = torch.float16 if cast.endswith("fp16") else torch.bfloat16
            with torch.autocast(device.type, dtype=dtype):
                y = torch.sparse.mm(adj, xr @ weight)
        elif cast == "fp32":
            y = torch.sparse.mm(adj, xr @ weight)
        else:
            dtype = torch.float16 if cast.endswith("fp16") else torch.bfloat16
            y = torch.sparse.mm(adj.to(dtype), (xr @ weight).to(dtype))
        y.float().square().sum().backward()
        return y.detach().float(), xr.grad.float()

    want_y, want_g = run("fp32")
    results = {}
    for cast in ("autocast_fp16", "autocast_bf16", "explicit_fp16", "explicit_bf16"):
        try:
            y, g = run(cast)
        except Exception as err:  # an unsupported dtype is the finding, not a failure of the section
            results[cast] = {"ok": False, "error": _first_line(err)[:300]}
            continue
        results[cast] = {
            "ok": True,
            "fwd_rel_err": float((y - want_y).norm() / want_y.norm()),
            "grad_rel_err": float((g - want_g).norm() / want_g.norm()),
        }
    return {
        "status": "ok",
        "graph": {"num_nodes": n, "num_edges": sizes.sparse_edges, "layout": "sparse_csr (gcn_norm)", "hidden": 32},
        "results": results,
        "note": "forward y = sparse.mm(A, X W) and backward d(sum y^2)/dX; rel_err = ||low - fp32|| / ||fp32||. "
        "Under autocast the CSR operand is cast too (so CPU fails on Half/BFloat16: no MKL kernel).",
    }


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------
SECTIONS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "pytest_gpu": ("a", section_pytest_gpu),
    "power_bert": ("b", section_power_bert),
    "diff_transfer": ("c", section_diff_transfer),
    "peak_memory": ("d", section_peak_memory),
    "nccl_smoke": ("e", section_nccl_smoke),
    "sparse_precision": ("f", section_sparse_precision),
}


def run_section(name: str, ctx: Context, out_dir: Path) -> dict[str, Any]:
    """Run one section under its budget; always returns (and writes) a record with a status."""
    letter, fn = SECTIONS[name]
    budget = ctx.budgets[name]
    print(f"[{letter}] {name} (budget {budget} s)", flush=True)
    begin = time.perf_counter()
    left = ctx.total_budget_s - ctx.elapsed()
    try:
        if left < min(budget, 20):
            raise Skip(f"the run's {ctx.total_budget_s:.0f} s budget is spent ({left:.0f} s left)")
        with deadline(min(budget, left)):
            rec = fn(ctx)
    except Skip as err:
        rec = {"status": "skipped", "reason": str(err)}
    except (Exception, SectionTimeout) as err:
        rec = {"status": "failed", "error": _first_line(err)[:1000], "traceback": traceback.format_exc()[-3000:]}
    finally:
        gc.collect()
        if ctx.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    if rec.get("status") not in STATUSES:
        rec = {"status": "failed", "error": f"section returned status {rec.get('status')!r}", "record": rec}
    rec = {"section": name, "status": rec.pop("status"), "wall_s": round(time.perf_counter() - begin, 1),
           "label": ctx.label, **rec}  # fmt: skip
    atomic_write_text((out_dir / f"{name}.json"), json.dumps(rec, indent=2, default=str) + "\n")
    detail = rec.get("error") or rec.get("reason") or ""
    print(f"[{letter}] {name}: {rec['status']} in {rec['wall_s']} s {detail[:200]}", flush=True)
    return rec


def headline(rec: dict[str, Any]) -> str:
    """One line per section for the summary table."""
    name = rec["section"]
    if rec["status"] == "failed" and "results" not in rec and "records" not in rec:
        return rec.get("error", "")[:110]
    if name == "pytest_gpu":
        c = rec.get("counts", {})
        return f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('error', 0)} errors, " \
            f"{c.get('skipped', 0)} skipped"  # fmt: skip
    if name == "power_bert":
        big = max(r["batch"] for r in rec["results"])
        row = {r["candidate"]: r for r in rec["results"] if r["batch"] == big}
        best = max((r for c, r in row.items() if c.startswith("r80_")), key=lambda r: r["speedup_vs_hf_sdpa"])
        return f"b{big} r80: eager {row['r80_eager']['speedup_vs_hf_sdpa']}x, best {best['candidate']} " \
            f"{best['speedup_vs_hf_sdpa']}x vs HF SDPA (ideal {rec['ideal_speedup']['r80']}x)"  # fmt: skip
    if name == "diff_transfer":
        d, p = rec["derived"], rec["parts"]
        overlap, diffs = d.get("streaming_share_diff_overlap"), rec["config"]["snapshots"] - 1
        return f"{diffs} diffs: full {p['full_h2d_steady']['median_ms']:.1f} ms, diff+rebuild " \
            f"{p['diff_block_steady']['median_ms']:.1f} ms ({d['steady_diff_block_vs_full']}x; verified " \
            f"{d['steady_diff_block_verified_vs_full']}x); streaming share " \
            f"{'-' if overlap is None else format(overlap, '.0%')} overlapped"  # fmt: skip
    if name == "peak_memory":
        key = "peak_allocated_mib"
        return ", ".join(f"{r['config']} {r[key]:.0f} MiB" if key in r else f"{r['config']} {r['steps']} steps"
                         for r in rec["records"])  # fmt: skip
    if name == "nccl_smoke":
        return f"backend {rec.get('backend')}, {len(rec.get('losses', []))} steps, " \
            f"all_reduce {'ok' if rec.get('all_reduce_ok') else 'NOT ok'}"  # fmt: skip
    if name == "sparse_precision":
        return ", ".join(f"{k} {'ok' if v['ok'] else 'unsupported'}" for k, v in rec["results"].items())
    return ""


def summary_table(records: list[dict[str, Any]]) -> str:
    """The printed summary: one row per section, then the PoWER-BERT candidates."""
    lines = [f"{'section':18s} {'status':8s} {'wall s':>7s}  result", "-" * 100]
    for rec in records:
        try:
            text = headline(rec)
        except (KeyError, ValueError, TypeError) as err:
            text = f"(no headline: {_first_line(err)})"
        if rec["status"] == "skipped" and rec.get("reason"):
            text = f"{text} [skipped: {rec['reason'][:70]}]" if text else rec["reason"]
        lines.append(f"{rec['section']:18s} {rec['status']:8s} {rec['wall_s']:7.1f}  {text}")
    bert = next((r for r in records if r["section"] == "power_bert" and "results" in r), None)
    if bert is not None:
        lines += [
            "",
            f"{'batch':>5s} {'candidate':15s} {'median ms':>10s} {'IQR ms':>8s} {'vs HF':>7s} {'% ideal':>8s}",
        ]
        for r in bert["results"]:
            pct = f"{r['pct_of_ideal']:.0f}" if "pct_of_ideal" in r else "-"
            lines.append(f"{r['batch']:5d} {r['candidate']:15s} {r['median_ms']:10.3f} {r['iqr_ms']:8.3f} "
                         f"{r['speedup_vs_hf_sdpa']:7.2f} {pct:>8s}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; GPU-only parts reported as skipped")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON records")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections to run")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile in the power_bert section")
    p.add_argument("--total-budget-s", type=float, default=TOTAL_BUDGET_S, help="hard cap of the whole run")
    p.add_argument("--nccl-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="nccl", help=argparse.SUPPRESS)
    p.add_argument("--accelerator", default="gpu", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    if args.nccl_child is not None:
        return nccl_child(args.nccl_child, args.backend, args.accelerator)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    names = [s for s in args.only.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print(f"gpu_check: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    ctx = Context(
        dry_run=args.dry_run,
        device=device,
        sizes=DRY_SIZES if args.dry_run else GPU_SIZES,
        budgets=DRY_BUDGETS if args.dry_run else GPU_BUDGETS,
        label=run_label(device, args.dry_run),
        compile=not args.no_compile,
        total_budget_s=args.total_budget_s,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {ctx.label['device']} (torch {ctx.label['torch']}, CUDA {ctx.label['cuda']}), "
          f"dry_run={args.dry_run}, out={args.out}", flush=True)  # fmt: skip
    records = [run_section(name, ctx, args.out) for name in names]
    table = summary_table(records)
    summary = {
        "label": ctx.label,
        "total_s": round(ctx.elapsed(), 1),
        "sections": {r["section"]: {"status": r["status"], **({k: r[k] for k in ("error", "reason") if k in r})}
                     for r in records},
        "table": table.splitlines(),
    }  # fmt: skip
    atomic_write_text((args.out / "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\n{table}\n\ntotal {summary['total_s']} s; records in {args.out}", flush=True)
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
