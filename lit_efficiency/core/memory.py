"""Host allocator settings for inference processes.

glibc's ``malloc`` hands large blocks back to the operating system when they are freed: blocks above its (adaptive)
``mmap`` threshold are unmapped, and free memory at the top of the heap beyond the trim threshold is released. A
forward pass that allocates and frees the same large buffers on every call (a compiled graph's intermediates) then
faults every page in again on the next call: at RTE's shapes (batch 128, N = 256) the compiled PoWER-BERT forward
spent 1.5 of its 3.4 s per call in the kernel doing so. :func:`keep_freed_memory` tells glibc to keep such memory
for reuse, as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment or a preloaded jemalloc /
tcmalloc would, but from inside the process.
"""

from __future__ import annotations

import ctypes
import platform

#: ``mallopt`` parameters (glibc's ``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

#: Blocks below this come from the heap, which is reused, instead of fresh ``mmap`` pages (glibc's largest allowed
#: value on 64-bit: 32 MiB).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept for reuse before any is given back to the OS: 2 GiB, less the byte that
#: ``mallopt``'s ``int`` cannot hold.
TRIM_THRESHOLD = (2 << 30) - 1

_applied: dict[str, int] = {}


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> dict[str, int]:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (process-wide; idempotent).

    Fixing the ``mmap`` threshold also stops glibc from adapting it. The process may then hold up to
    ``trim_threshold`` bytes of freed memory. Returns the settings in force, ``{}`` where the C library is not glibc
    (other allocators: nothing to do here; preload jemalloc or tcmalloc instead).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for name, option, value in (
        ("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold),
        ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold),
    ):
        if mallopt(option, value) != 1:
            raise ValueError(f"glibc refused mallopt {name}={value}")
        _applied[name] = value
    return dict(_applied)


def kept_freed_memory() -> dict[str, int]:
    """The settings :func:`keep_freed_memory` put in force in this process (``{}`` if it was not called)."""
    return dict(_applied)
