"""glibc malloc settings for processes that allocate and free the same tensors every step.

torch's CPU allocator has no cache: every activation, gradient and temporary of a step is a
malloc and a free. With glibc's defaults, blocks above the (adaptive) mmap threshold are mapped
and unmapped each time, freed memory is trimmed back to the kernel, and a thread's arena deletes
whole heaps once they are empty, so the next step page-faults the same memory in again, zeroed.
A Ray Train worker of the default model took 4,000–7,000 page faults per step (151–167 ms of CPU
per step on one worker); 40–45 with the settings below, and 120–129 ms of CPU with the two
thresholds alone (jobs/README.md).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def hold_freed_memory() -> bool:
    """Serve blocks below 32 MiB from the heap, keep up to 1 GiB of freed heap in the process and
    grow heaps 64 MiB at a time (the pad also keeps a thread arena's emptied heaps from being deleted).

    Larger blocks (evaluation's score blocks, whole tables) are still mapped and returned at once,
    so what is held is bounded by a step's working set. Returns False (and changes nothing) where
    the C library is not glibc, e.g. on macOS or musl."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
