"""Timer and benchmark helpers with a patched clock (exact figures)."""

import itertools

import pytest

from lit_efficiency.core import timing


def test_timer_reports_clock_difference_in_ms():
    ticks = iter([10.0, 10.25])
    with timing.Timer("cpu", clock=lambda: next(ticks)) as t:
        pass
    assert t.ms == pytest.approx(250.0)


def test_benchmark_median_over_repeats(monkeypatch):
    # Each timed call advances the clock by 1, 2, 3, ... ms: warm-up calls do not touch the clock.
    counter = itertools.count()
    now = {"t": 0.0}

    def fn():
        now["t"] += (next(counter) + 1) * 1e-3

    clock_values = []

    def clock():
        clock_values.append(now["t"])
        return now["t"]

    monkeypatch.setattr(timing.time, "perf_counter", clock)
    monkeypatch.setattr(timing.Timer.__init__, "__defaults__", (None, clock))
    result = timing.benchmark(fn, warmup=2, repeats=5)
    # warm-up used increments 1 and 2 ms; timed calls took 3, 4, 5, 6, 7 ms.
    assert result.repeats == 5
    assert result.median_ms == pytest.approx(5.0)
    assert result.min_ms == pytest.approx(3.0) and result.max_ms == pytest.approx(7.0)
    with pytest.raises(ValueError):
        timing.benchmark(fn, repeats=0)
