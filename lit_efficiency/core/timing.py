"""Wall-clock timing that is honest on both CPU and CUDA.

On CUDA, kernels are asynchronous: a timer must synchronise (or use events) or it measures launch time only.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lit_efficiency.core.progress import progress_bar

try:
    import resource
except ImportError:  # Windows: no system CPU time
    resource = None


def system_seconds() -> float | None:
    """System (kernel) CPU seconds this process has used, all threads: page faults, ``mmap``/``munmap``, zeroing
    fresh pages (``None`` where the platform does not report it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime if resource is not None else None


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Context manager measuring elapsed milliseconds in ``.ms``; synchronises CUDA before and after.

    Example::

        with Timer(device) as t:
            model(batch)
        print(t.ms)
    """

    def __init__(self, device: torch.device | str | None = None, clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self.ms = float("nan")

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = self.clock()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.ms = (self.clock() - self._start) * 1e3


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), IQR, min, max and count of a list of milliseconds."""
    if not times_ms:
        raise ValueError("summarize needs at least one timing")
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return {
        "median_ms": round(statistics.median(times_ms), 4),
        "q1_ms": round(q1, 4),
        "q3_ms": round(q3, 4),
        "iqr_ms": round(q3 - q1, 4),
        "min_ms": round(min(times_ms), 4),
        "max_ms": round(max(times_ms), 4),
        "repeats": len(times_ms),
    }


def time_once(
    fn: Callable[[], Any], device: torch.device | str | None = None, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Milliseconds of one call of ``fn``: CUDA events around it (queue drained first) on CUDA, else ``clock``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    begin = clock()
    fn()
    return (clock() - begin) * 1e3


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    device: torch.device | str | None = None,
    repeats: int = 10,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Time candidates alternately; returns :func:`summarize` of each candidate's milliseconds and, as
    ``rounds_ms``, its time in every round (round ``r`` of every candidate ran back to back: paired samples).

    After ``warmup`` untimed calls of each, every round runs each candidate once, starting from a rotating
    position, so clock boosts, thermal drift, a busy neighbour and allocator state fall evenly on all of them.
    ``progress``: a bar with ETA over (warm-up + rounds) x candidates on a terminal (see
    :func:`~lit_efficiency.core.progress.progress_bar`). ``sys_ms``: the median system CPU time of a call
    (:func:`system_seconds`, the whole process): a candidate that spends its time faulting in fresh memory shows it
    there rather than in its kernels.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    system: dict[str, list[float]] = {name: [] for name in names}
    with progress_bar((warmup + repeats) * len(names), "timing", progress, unit="call") as bar:
        for name in names:
            for _ in range(warmup):
                fns[name]()
                bar.update()
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                before = system_seconds()
                times[name].append(time_once(fns[name], device, clock))
                if before is not None:
                    system[name].append((system_seconds() - before) * 1e3)
                bar.update()
    return {
        name: {
            **summarize(values),
            "sys_ms": round(statistics.median(system[name]), 4) if system[name] else None,
            "rounds_ms": [round(v, 4) for v in values],
        }
        for name, values in times.items()
    }


def machine_busy(own_threads: int, *loads: float) -> bool:
    """Whether other jobs shared the CPU while a benchmark ran: one definition for every benchmark JSON.

    True when a load average (``loads``, e.g. the 1-minute one before and after; default: the 1-minute one now)
    exceeded the threads the benchmark itself runs (``own_threads``, all ranks together) by more than half a core.
    """
    return max(loads or (os.getloadavg()[0],)) > own_threads + 0.5


def sign_test_rounds(n: int, alpha: float = 0.05) -> int | None:
    """Fewest rounds out of ``n`` that one candidate must win for a one-sided sign test at level ``alpha``.

    Under "neither is faster" each round is a fair coin; ``k`` wins are significant when ``P(X >= k) <= alpha`` for
    ``X ~ Binomial(n, 1/2)``. None when even ``n`` wins of ``n`` are not (``n < 5`` at 5 %).
    """
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) / 2**n
        if tail > alpha:
            return k + 1 if k < n else None
    return 0


def compare(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
    """Speedup of ``candidate`` over ``baseline`` (two :func:`summarize` dicts) and whether noise could explain it.

    ``speedup`` is the ratio of medians; ``speedup_range`` the ratios at the quartiles (slowest baseline quartile
    over fastest candidate quartile and the reverse). The difference is real when the medians differ by more than
    the larger IQR or, for timings of one :func:`interleaved` call (``rounds_ms``, paired by round), when one side
    won enough rounds for a sign test at 5 % (:func:`sign_test_rounds`): a busy machine widens both IQRs, while a
    consistent speedup still wins round after round. ``within_noise`` is True when neither shows a difference: the
    speedup should not be trusted. ``rounds_won`` (paired timings only): rounds the candidate was faster, of all.
    """
    difference = abs(baseline["median_ms"] - candidate["median_ms"])
    within_noise = difference < max(baseline["iqr_ms"], candidate["iqr_ms"])
    out: dict[str, Any] = {
        "speedup": baseline["median_ms"] / candidate["median_ms"],
        "speedup_range": [baseline["q1_ms"] / candidate["q3_ms"], baseline["q3_ms"] / candidate["q1_ms"]],
    }
    rounds_b, rounds_c = baseline.get("rounds_ms"), candidate.get("rounds_ms")
    if rounds_b and rounds_c and len(rounds_b) == len(rounds_c):
        won = sum(b > c for b, c in zip(rounds_b, rounds_c, strict=True))
        lost = sum(b < c for b, c in zip(rounds_b, rounds_c, strict=True))
        needed = sign_test_rounds(len(rounds_b))
        within_noise = within_noise and (needed is None or max(won, lost) < needed)
        out["rounds_won"] = [won, len(rounds_b)]
    return {**out, "within_noise": within_noise}
