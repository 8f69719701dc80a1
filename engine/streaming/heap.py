"""Give freed heap memory back to the OS between streamed blocks.

Each block allocates and frees activations of tens of MiB. glibc serves allocations below its
mmap threshold (which grows to 32 MiB as large blocks are freed) from the heap, and pages freed
there stay resident when later blocks cannot reuse them: over the 64 blocks of an 8192² step
that retention, not the tensors alive, sets much of the peak RSS (bench/streaming.py, README).
``malloc_trim(0)`` after a block releases those pages. It costs far less than mmapping every
large tensor (55% slower), but the next block faults the pages back in (10-25% slower), so
streaming trims only every ``StreamHooks.release_every`` blocks (jobs: ``low_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def _load():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load()


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS (glibc); a no-op elsewhere. True when it trimmed."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
