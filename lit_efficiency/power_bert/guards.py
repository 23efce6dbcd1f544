"""Guard rails of the ``power-bert`` pipeline and the accuracy-budget choice among searched candidates.

A search can collapse: a large LAMBDA drives the retention to ``4,1,1,1,1,1`` and the model to the majority class,
which still looks like a huge speedup. A shipped model can also be slower than its baseline (long inputs, little
elimination, the score's overhead). The pipeline checks both on the held-out slice and the measured times before it
writes anything, and either refuses to ship (one line, exit status 2, nothing overwritten) or warns loudly.

All metrics here are in points (0-100, the report's scale).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from lit_efficiency.core.errors import LitEfficiencyError
from lit_efficiency.power_bert.tasks_table import TASK_INFO, canonical_task

#: Accuracy budget (points) the collapse guard uses when the pipeline runs without ``--budget``.
DEFAULT_BUDGET = 1.0
#: A held-out metric within this many points of the constant predictor counts as collapsed.
COLLAPSE_MARGIN = 1.0


class ShipRefused(LitEfficiencyError):
    """The pipeline will not ship the model it trained; the message says why and how to proceed."""


def constant_predictor_metric(task: str, labels: Sequence[float]) -> float:
    """Best headline metric (points) a model that ignores its input reaches on ``labels``, by definition.

    Accuracy: the majority share. F1: predicting the positive class everywhere, ``2P / (2P + N)``. Matthews
    correlation and the STS-B correlations of a constant prediction are undefined and count as 0 (``torchmetrics``
    returns other values for this edge case on small sets, so they are not asked).
    """
    info = TASK_INFO[canonical_task(task)]
    name = info.metrics[0]
    values = list(labels)
    if name == "accuracy":
        return 100.0 * max(Counter(values).values()) / len(values)
    if name == "f1":
        positive = sum(1 for v in values if v == 1)
        return 100.0 * 2 * positive / (2 * positive + len(values) - positive)
    return 0.0


def collapse_reasons(
    metric: float, constant: float, baseline_metric: float, budget: float, masses: Sequence[float] | None
) -> list[str]:
    """Why a searched candidate looks collapsed (empty when it does not).

    Args:
        metric: the candidate's held-out metric (points).
        constant: :func:`constant_predictor_metric` of the held-out labels.
        baseline_metric: the baseline's held-out metric.
        budget: allowed metric loss (points).
        masses: the search's per-layer Soft-Extract masses.
    """
    reasons = []
    if math.isnan(metric):  # a correlation of constant predictions (STS-B)
        reasons.append("held-out metric is undefined (nan): the model predicts a constant")
    elif metric <= constant + COLLAPSE_MARGIN:
        reasons.append(f"held-out metric {metric:.1f} is at or below the constant predictor's ({constant:.1f})")
    thin = [j for j, m in enumerate(masses or [], start=1) if m < 1.0]
    if thin and baseline_metric - metric > budget:
        reasons.append(
            f"layer(s) {','.join(map(str, thin))} kept a mass < 1 and the held-out metric fell "
            f"{baseline_metric - metric:.1f} points (budget {budget:g})"
        )
    return reasons


def slowdown_reason(row: Mapping[str, Any]) -> str | None:
    """A reason when the comparison ``row`` (see :func:`~lit_efficiency.power_bert.speed.comparisons`) is no speedup."""
    if row["speedup"] > 1.0 and not row["within_noise"]:
        return None
    verdict = "slower than" if row["speedup"] < 1.0 else "not measurably faster than"
    low, high = row["speedup_range"]
    return (
        f"{row['candidate']} is {verdict} {row['reference']} at batch {row['batch_size']} "
        f"({row['speedup']:.2f}x, quartile range {low:.2f}-{high:.2f}x)"
    )


def choose_candidate(candidates: Sequence[Mapping[str, Any]], baseline_metric: float, budget: float) -> int | None:
    """Index of the fastest candidate whose held-out metric is within ``budget`` points of the baseline's.

    Candidates carry ``heldout_metric`` and ``ms`` (median milliseconds per batch); ties in time go to the higher
    metric. None when no candidate is within the budget.
    """
    within = [i for i, c in enumerate(candidates) if baseline_metric - c["heldout_metric"] <= budget]
    if not within:
        return None
    return min(within, key=lambda i: (candidates[i]["ms"], -candidates[i]["heldout_metric"]))
