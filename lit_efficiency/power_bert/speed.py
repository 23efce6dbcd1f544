"""Inference timing a reader can trust: PoWER-BERT against what users would otherwise run.

Three models with the same weights are timed side by side: ``baseline`` (our encoder without elimination, the
fine-tuned model at full retention), ``power_bert`` (the retrained model with hard Extract) and ``hf_sdpa``
(``transformers`` ``AutoModelForSequenceClassification`` with SDPA attention loaded from the baseline's folder, what
users run today); with ``--timing.compile`` also ``power_bert_compiled`` (the same model after
``compile_for_inference``, static padding only: a compiled graph fixes the input shape). Each runs the same examples
padded two ways: ``static`` (every batch padded to ``N``, the paper's setting) and ``dynamic`` (length-sorted batches
padded to their longest example). All (model, padding) candidates
of one batch size are timed in one :func:`~lit_efficiency.core.timing.interleaved` call (warm-up, rotating order),
so drift and busy neighbours fall on all of them alike; each is summarised by median and quartiles.

Every comparison of a PoWER-BERT candidate with a reference carries the measured speedup, its quartile range,
``within_noise`` (neither the medians differ by more than the spread nor a sign test over the paired rounds finds a
difference; see :func:`~lit_efficiency.core.timing.compare`) and the FLOP-ideal speedup of the same two workloads
(:func:`flop_ideal`: :func:`~lit_efficiency.power_bert.model.flops_per_example` at each batch's real padded length),
so the share of the ideal reached is visible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lit_efficiency.core.timing import compare, interleaved
from lit_efficiency.power_bert.model import flops_per_example

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PADDINGS = ("static", "dynamic")
#: Candidates compared with PoWER-BERT, in report order.
REFERENCES = ("baseline", "hf_sdpa")
#: The shipped model, eager and (with ``--timing.compile``) compiled for static shapes.
CANDIDATES = ("power_bert", "power_bert_compiled")
#: Candidates timed on static padding only (a compiled graph fixes the input shape).
STATIC_ONLY = ("power_bert_compiled",)
_MS_FIELDS = ("median_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "max_ms", "sys_ms")


@dataclass
class Workload:
    """The batches one candidate runs per timed repeat.

    Attributes:
        padding: ``static`` or ``dynamic``.
        batches: model inputs (``input_ids``, ``attention_mask``, ``token_type_ids``), each ``(B, L_b)``.
    """

    padding: str
    batches: list[dict[str, Tensor]]

    def to(self, device: torch.device) -> Workload:
        """The same workload with every tensor on ``device``."""
        return Workload(self.padding, [{k: v.to(device) for k, v in b.items()} for b in self.batches])

    def flops(self, config: Any, retention: Sequence[int] | None) -> int:
        """Encoder FLOPs of the whole workload (:func:`batches_flops`)."""
        return batches_flops(config, retention, self.batches)


def batches_flops(config: Any, retention: Sequence[int] | None, batches: Sequence[Mapping[str, Tensor]]) -> int:
    """Encoder FLOPs of running ``batches``: each batch at its own padded length (``flops_per_example``)."""
    return sum(b["input_ids"].shape[0] * flops_per_example(config, retention, b["input_ids"].shape[1])
               for b in batches)  # fmt: skip


def flop_ideal(config: Any, retention: Sequence[int], batches: Sequence[Mapping[str, Tensor]]) -> float:
    """FLOP-proportional speedup of ``retention`` over the unpruned encoder on the same ``batches``.

    The one definition of the ideal: the pipeline's timing table and ``benchmarks/power_bert_engine.py`` both use
    it (static padding: every batch at ``N``; dynamic padding: each batch at its longest example).
    """
    return batches_flops(config, None, batches) / batches_flops(config, retention, batches)


def make_workloads(
    features: Sequence[Mapping[str, Sequence[int]]], batch_size: int, pad_token_id: int, max_seq_len: int
) -> dict[str, Workload]:
    """The same tokenised examples as static batches (padded to ``N``) and length-sorted dynamic batches.

    Args:
        features: tokenised examples (``input_ids``, ``token_type_ids``); their count is a multiple of
            ``batch_size`` or the last batch is smaller.
        batch_size: examples per batch.
        pad_token_id: id of padded positions.
        max_seq_len: ``N``, the static length.
    """
    from lit_efficiency.power_bert.glue import PadCollator

    def batches(examples: Sequence[Mapping[str, Sequence[int]]], pad_to: int | None) -> list[dict[str, Tensor]]:
        collate = PadCollator(pad_token_id, pad_to=pad_to)
        chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        return [{k: v for k, v in collate(list(c)).items() if k in MODEL_INPUTS} for c in chunks]

    by_length = sorted(features, key=lambda f: len(f["input_ids"]), reverse=True)
    return {
        "static": Workload("static", batches(features, max_seq_len)),
        "dynamic": Workload("dynamic", batches(by_length, None)),
    }


def hf_sdpa_model(folder: str) -> nn.Module:
    """The baseline's saved folder as a ``transformers`` sequence classifier with SDPA attention (same weights)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa").eval()


def logits_of(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Logits of our models and of ``transformers`` models alike."""
    return model(**{k: batch[k] for k in MODEL_INPUTS}).logits


def compiled_twin(model: nn.Module, batch: Mapping[str, Tensor], backend: str = "inductor") -> tuple[nn.Module, float]:
    """A compiled copy of ``model`` for static shapes and its largest logit difference from eager on ``batch``.

    The copy goes through ``compile_for_inference`` (eval mode, ``torch.compile``, one graph per input shape) and
    is compiled here, on ``batch``, so that no timed call includes the compilation.
    """
    compiled = copy.deepcopy(model).compile_for_inference(backend=backend)
    with torch.inference_mode():
        diff = float((logits_of(compiled, batch) - logits_of(model.eval(), batch)).abs().max())
    return compiled, diff


def _runner(model: nn.Module, workload: Workload) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            for batch in workload.batches:
                model(**batch)

    return run


def _per_batch(summary: Mapping[str, Any], num_batches: int) -> dict[str, Any]:
    per_batch = {k: (v / num_batches if k in _MS_FIELDS and v is not None else v) for k, v in summary.items()}
    return {**per_batch, "rounds_ms": [v / num_batches for v in summary["rounds_ms"]]}


def time_models(
    models: Mapping[str, nn.Module],
    workloads: Mapping[str, Workload],
    device: torch.device,
    warmup: int,
    repeats: int,
    clock: Callable[[], float] | None = None,
    static_only: Collection[str] = (),
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Time every (model, workload) pair interleaved; milliseconds per batch, keyed ``"<model>/<padding>"``.

    Args:
        models: name -> model (moved to ``device``, put in eval mode).
        workloads: padding -> batches (all pairs share them).
        device: where to run.
        warmup: untimed calls of each candidate first.
        repeats: timed rounds (each runs every candidate once, in rotating order).
        clock: a replacement clock (seconds) for tests; default ``time.perf_counter``.
        static_only: models timed on the ``static`` workload only (compiled graphs: one per input shape).
        progress: show a progress bar with ETA on a terminal.
    """
    moved = {name: w.to(device) for name, w in workloads.items()}
    fns = {f"{m}/{p}": _runner(model.to(device).eval(), moved[p])
           for m, model in models.items() for p in moved if p == "static" or m not in static_only}  # fmt: skip
    extra = {"clock": clock} if clock is not None else {}
    stats = interleaved(fns, device, repeats=repeats, warmup=warmup, progress=progress, **extra)
    return {name: _per_batch(s, len(moved[name.split("/")[1]].batches)) for name, s in stats.items()}


def comparisons(
    ms: Mapping[str, Mapping[str, float]], flops: Mapping[str, int], batch_size: int
) -> list[dict[str, Any]]:
    """PoWER-BERT (eager and compiled, each padding) against every reference candidate that was timed.

    Args:
        ms: :func:`time_models` output.
        flops: the same keys -> FLOPs of the candidate's workload.
        batch_size: recorded in each row.

    Returns:
        Rows ``{"candidate", "reference", "batch_size", "speedup", "speedup_range", "within_noise", "flop_ideal",
        "percent_of_ideal"}``.
    """
    rows = []
    for candidate in (f"{c}/{p}" for c in CANDIDATES for p in PADDINGS):
        for reference in (f"{r}/{p}" for r in REFERENCES for p in PADDINGS):
            if candidate not in ms or reference not in ms:
                continue
            measured = compare(ms[reference], ms[candidate])
            ideal = flops[reference] / flops[candidate]
            rows.append({
                "candidate": candidate,
                "reference": reference,
                "batch_size": batch_size,
                **measured,
                "flop_ideal": ideal,
                "percent_of_ideal": 100.0 * measured["speedup"] / ideal,
            })  # fmt: skip
    return rows


def find_row(rows: Sequence[Mapping[str, Any]], candidate: str, reference: str, batch_size: int) -> Mapping[str, Any]:
    """The comparison row of ``candidate`` vs ``reference`` at ``batch_size`` (KeyError when it was not timed)."""
    for row in rows:
        if (row["candidate"], row["reference"], row["batch_size"]) == (candidate, reference, batch_size):
            return row
    raise KeyError(f"no timing of {candidate} vs {reference} at batch {batch_size}")


def format_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per comparison: speedup, quartile range, FLOP-ideal and share of it; flags speedups within noise."""
    lines = []
    for r in rows:
        low, high = r["speedup_range"]
        flag = "  WARNING: spread exceeds the difference" if r["within_noise"] else ""
        won = f"  faster in {r['rounds_won'][0]}/{r['rounds_won'][1]} rounds" if "rounds_won" in r else ""
        lines.append(
            f"b={r['batch_size']:<4} {r['candidate']:<26} vs {r['reference']:<17} {r['speedup']:5.2f}x "
            f"[{low:.2f}-{high:.2f}]  ideal {r['flop_ideal']:5.2f}x ({r['percent_of_ideal']:3.0f}%){won}{flag}"
        )
    return lines
