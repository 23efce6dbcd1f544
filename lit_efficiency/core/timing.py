"""Wall-clock timing that is honest on both CPU and CUDA.

On CUDA, kernels are asynchronous: a timer must synchronise (or use events) or it measures launch time only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class TimingResult:
    """Summary of repeated timings (milliseconds)."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("median_ms", "mean_ms", "min_ms", "max_ms", "repeats")}


def benchmark(fn: Callable[[], object], device: torch.device | str | None = None, warmup: int = 3, repeats: int = 10):
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; returns a :class:`TimingResult`."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            with Timer(device) as timer:
                fn()
            times.append(timer.ms)
    return TimingResult(statistics.median(times), statistics.fmean(times), min(times), max(times), repeats)
