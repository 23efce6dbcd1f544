"""Timer and interleaved-timing helpers with a patched clock (exact figures)."""

import mmap

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


def test_sign_test_thresholds_by_hand():
    # P(X >= k) for X ~ Binomial(n, 1/2): n=10: 9 wins -> 11/1024 = 0.011 <= 0.05, 8 wins -> 56/1024 = 0.055 > 0.05.
    assert timing.sign_test_rounds(10) == 9
    assert timing.sign_test_rounds(5) == 5  # 1/32 = 0.031
    assert timing.sign_test_rounds(8) == 7  # 9/256 = 0.035; 6 wins: 37/256 = 0.14
    assert timing.sign_test_rounds(4) is None  # even 4 of 4 (1/16 = 0.0625) is not significant


def _paired(rounds_ms):
    return {**timing.summarize(rounds_ms), "rounds_ms": rounds_ms}


def test_paired_rounds_show_a_consistent_speedup_on_a_busy_machine():
    # A neighbour slows whole rounds (both candidates alike): the IQRs overlap the difference, yet the candidate
    # wins every round.
    load = [1.0, 3.0, 1.2, 2.5, 1.1, 2.8, 1.0, 3.2, 1.3, 2.9]
    base = _paired([10.0 * x for x in load])
    fast = _paired([7.0 * x for x in load])
    unpaired = timing.compare(timing.summarize(base["rounds_ms"]), timing.summarize(fast["rounds_ms"]))
    assert unpaired["within_noise"]  # the IQR rule alone cannot tell
    paired = timing.compare(base, fast)
    assert not paired["within_noise"] and paired["rounds_won"] == [10, 10]
    assert paired["speedup"] == pytest.approx(10 / 7)
    # 8 of 10 rounds is not enough at 5 %: still within noise.
    mixed = _paired([7.0 * x for x in load[:8]] + [10.5 * x for x in load[8:]])
    assert timing.compare(base, mixed)["rounds_won"] == [8, 10] and timing.compare(base, mixed)["within_noise"]


def test_interleaved_returns_the_paired_rounds():
    now = {"t": 0.0}

    def cost(ms):
        def fn():
            now["t"] += ms * 1e-3

        return fn

    stats = timing.interleaved({"a": cost(2.0), "b": cost(1.0)}, "cpu", repeats=5, warmup=0, clock=lambda: now["t"])
    assert stats["a"]["rounds_ms"] == pytest.approx([2.0] * 5) and stats["b"]["rounds_ms"] == pytest.approx([1.0] * 5)
    row = timing.compare(stats["a"], stats["b"])
    assert row["rounds_won"] == [5, 5] and not row["within_noise"]


def test_machine_busy_compares_the_load_with_the_benchmarks_own_threads(monkeypatch):
    assert not timing.machine_busy(1, 1.4) and timing.machine_busy(1, 1.6)
    assert not timing.machine_busy(2, 2.4, 1.0) and timing.machine_busy(2, 0.3, 2.6)  # the worst load counts
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (3.0, 0.0, 0.0))  # no load given: the 1-minute one now
    assert timing.machine_busy(2) and not timing.machine_busy(3)


def test_interleaved_reports_each_candidates_system_time(monkeypatch):
    # The fake kernel clock is advanced by the candidates: "faults" spends 5 ms of system time per call, "compute" 0.
    kernel = {"s": 0.0}

    def candidate(sys_ms):
        def fn():
            kernel["s"] += sys_ms * 1e-3

        return fn

    monkeypatch.setattr(timing, "system_seconds", lambda: kernel["s"])
    stats = timing.interleaved({"faults": candidate(5.0), "compute": candidate(0.0)}, repeats=3, warmup=1)
    assert stats["faults"]["sys_ms"] == pytest.approx(5.0) and stats["compute"]["sys_ms"] == pytest.approx(0.0)
    monkeypatch.setattr(timing, "system_seconds", lambda: None)  # a platform without it
    assert timing.interleaved({"a": candidate(1.0)}, repeats=2, warmup=0)["a"]["sys_ms"] is None


def test_system_seconds_counts_the_kernels_work():
    # Fresh anonymous pages, each written to: every first touch is a fault the kernel serves (and zeroes). A calloc'd
    # buffer would not do: glibc skips touching memory it got from mmap, so no fault need happen. The kernel clock ticks
    # coarsely, so touch more until it moves, within a bound that a working clock never reaches.
    before, page = timing.system_seconds(), mmap.PAGESIZE
    for _ in range(64):
        with mmap.mmap(-1, 32 << 20) as pages:
            for offset in range(0, len(pages), page):
                pages[offset] = 1
        if timing.system_seconds() > before:
            break
    assert timing.system_seconds() > before
