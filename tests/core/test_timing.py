"""Timer and interleaved-timing helpers with a patched clock (exact figures)."""

import pytest

from lit_efficiency.core import timing


def test_timer_reports_clock_difference_in_ms():
    ticks = iter([10.0, 10.25])
    with timing.Timer("cpu", clock=lambda: next(ticks)) as t:
        pass
    assert t.ms == pytest.approx(250.0)


def test_interleaved_rotates_order_and_reports_spread():
    # A fake clock advanced by the candidates themselves: "a" takes 1 ms, "b" 3 ms, "c" 2 + round ms.
    now = {"t": 0.0}
    calls = []

    def make(name, cost):
        def fn():
            calls.append(name)
            now["t"] += cost() * 1e-3

        return fn

    c_costs = iter([0.0] + [2.0 + r for r in range(4)])  # one warm-up call, then 2, 3, 4, 5 ms
    fns = {"a": make("a", lambda: 1.0), "b": make("b", lambda: 3.0), "c": make("c", lambda: next(c_costs))}
    stats = timing.interleaved(fns, "cpu", repeats=4, warmup=1, clock=lambda: now["t"])
    assert calls[:3] == ["a", "b", "c"]  # warm-up, once each
    timed = calls[3:]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # starting position rotates
    assert stats["a"]["median_ms"] == pytest.approx(1.0) and stats["a"]["iqr_ms"] == pytest.approx(0.0)
    assert stats["c"]["median_ms"] == pytest.approx(3.5) and stats["c"]["iqr_ms"] == pytest.approx(1.5)
    assert stats["c"]["min_ms"] == pytest.approx(2.0) and stats["c"]["max_ms"] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        timing.interleaved(fns, repeats=0)


def test_compare_flags_a_difference_smaller_than_the_spread():
    base = timing.summarize([10.0, 10.0, 10.0, 10.0, 10.0])
    fast = timing.summarize([5.0, 5.0, 5.0, 5.0, 5.0])
    noisy = timing.summarize([6.0, 8.0, 9.0, 12.0, 14.0])
    clear = timing.compare(base, fast)
    assert clear["speedup"] == pytest.approx(2.0) and not clear["within_noise"]
    vague = timing.compare(base, noisy)
    assert vague["speedup"] == pytest.approx(10 / 9) and vague["within_noise"]
    assert vague["speedup_range"] == pytest.approx([10 / 12, 10 / 8])
