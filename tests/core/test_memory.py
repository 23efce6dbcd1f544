"""keep_freed_memory: glibc keeps the pages of freed buffers, so a repeated workload stops faulting them in."""

import os
import platform
import subprocess
import sys

import pytest

from lit_efficiency.core import memory

# A workload like a compiled forward's: 8 buffers of 12 MiB written and freed, 8 times; minor page faults per round.
PROBE = """
import resource, sys, torch
from lit_efficiency.core.memory import keep_freed_memory, kept_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else {}
assert kept_freed_memory() == applied
counts = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(3 << 20) for _ in range(8)]
    del held
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied.get("mmap_threshold"), *counts)
"""
PAGES_PER_ROUND = 8 * (12 << 20) // 4096


def _faults(setting: str) -> tuple[str, list[int]]:
    # Both processes start with glibc's initial mmap threshold fixed (128 KiB, not adapted): blocks that large are
    # unmapped when freed, whatever the process's history (with the adaptive default that depends on the heap's
    # layout). keep_freed_memory() must override it from inside the process.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, "-c", PROBE, setting]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    threshold, *counts = out.split()
    return threshold, [int(c) for c in counts]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_freed_memory_stops_the_repeated_page_faults():
    threshold, default = _faults("default")
    assert threshold == "None"
    assert min(default[1:]) > PAGES_PER_ROUND // 2  # glibc gives the pages back: each round faults them in again
    threshold, kept = _faults("kept")
    assert int(threshold) == memory.MMAP_THRESHOLD
    assert max(kept[-3:]) < PAGES_PER_ROUND // 20  # once the heap has grown, its pages are reused


def test_keep_freed_memory_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert memory.keep_freed_memory() == {}
