"""glibc's allocator told to keep freed memory for reuse: no page faults in the steady state of a CPU training step.

A CPU training step allocates and frees the same large buffers every time: activations, gradients and, under bf16
autocast, the bf16 copies of every weight (autocast drops its cast cache when its context exits). glibc serves a
block above its mmap threshold (128 KiB at start, raised only as far as freed blocks have been) with a fresh
``mmap`` and returns it with ``munmap`` on free, so the next step touches new pages again: on the 800-800 MNIST MLP
at batch 128 that is 1200-1500 minor page faults per step under bf16 autocast (5-6 MB zeroed by the kernel, every
step). Raising the mmap and trim thresholds keeps freed blocks in the heap, where the next step finds them: the
count falls to about 0 (``tests/test_allocator.py``). It is what the PyTorch CPU tuning guides get from preloading
jemalloc or tcmalloc, with nothing to install.

:func:`keep_freed_memory` is process-wide and call-once; the ``respkd`` command calls it first thing. The cost is
that memory freed after a peak stays with the process rather than going back to the system. ``RESPKD_MALLOC=system``
leaves glibc's own settings alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["FALLBACK_MMAP_THRESHOLD", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 256 << 20  # blocks up to this size come from the heap
FALLBACK_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its dynamic threshold, which some versions also impose here
TRIM_THRESHOLD = 1 << 30  # the heap's free top is handed back to the system only beyond this
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    False (nothing changed) off Linux, with another C library (musl has no ``mallopt``), or when the environment
    says ``RESPKD_MALLOC=system``.
    """
    if os.environ.get("RESPKD_MALLOC", "") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)
    return bool(mmap_set) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
