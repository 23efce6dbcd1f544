"""Wall-clock timing that is honest on both CPU and CUDA.

On CUDA, kernels are asynchronous: a timer must synchronise (or use events) or it measures launch time only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lit_efficiency.core.progress import progress_bar


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
    """Time candidates alternately; returns :func:`summarize` of each candidate's milliseconds.

    After ``warmup`` untimed calls of each, every round runs each candidate once, starting from a rotating
    position, so clock boosts, thermal drift, a busy neighbour and allocator state fall evenly on all of them.
    ``progress``: a bar with ETA over (warm-up + rounds) x candidates on a terminal (see
    :func:`~lit_efficiency.core.progress.progress_bar`).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    with progress_bar((warmup + repeats) * len(names), "timing", progress, unit="call") as bar:
        for name in names:
            for _ in range(warmup):
                fns[name]()
                bar.update()
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(time_once(fns[name], device, clock))
                bar.update()
    return {name: summarize(values) for name, values in times.items()}


def compare(baseline: Mapping[str, float], candidate: Mapping[str, float]) -> dict[str, Any]:
    """Speedup of ``candidate`` over ``baseline`` (two :func:`summarize` dicts) and whether noise could explain it.

    ``speedup`` is the ratio of medians; ``speedup_range`` the ratios at the quartiles (slowest baseline quartile
    over fastest candidate quartile and the reverse). ``within_noise`` is True when the medians differ by less than
    the larger IQR: the spread exceeds the difference, and the speedup should not be trusted.
    """
    difference = abs(baseline["median_ms"] - candidate["median_ms"])
    return {
        "speedup": baseline["median_ms"] / candidate["median_ms"],
        "speedup_range": [baseline["q1_ms"] / candidate["q3_ms"], baseline["q3_ms"] / candidate["q1_ms"]],
        "within_noise": difference < max(baseline["iqr_ms"], candidate["iqr_ms"]),
    }
