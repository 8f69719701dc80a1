"""Give freed heap memory back to the OS between streamed blocks.

Each block allocates and frees activations of tens of MiB. glibc serves allocations below its
mmap threshold (which grows to 32 MiB as large blocks are freed) from the heap, and pages freed
in the middle of the heap stay resident: over the 64 blocks of an 8192² step that retention,
not the tensors alive, set the peak RSS (2114 MiB, against 973 MiB with a fixed 1 MiB mmap
threshold, measured with bench/streaming.py). ``malloc_trim(0)`` once a block releases those
pages; it costs far less than mmapping every large tensor (which made the step 1.6x slower).
Trimming after every block cost about 25% of an 8192² step, though (the next block faults the
pages back in), so :class:`StreamingModule` trims every ``release_every`` blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load():
    if not sys.platform.startswith("linux"):
        return None, None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        return None, None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    info = getattr(libc, "mallinfo2", None)
    if info is not None:
        info.argtypes = []
        info.restype = _MallInfo2
    return trim, info


_malloc_trim, _mallinfo2 = _load()


def free_heap_bytes() -> int | None:
    """Bytes glibc holds free in its heaps (all arenas), or None where unknown."""
    return int(_mallinfo2().fordblks) if _mallinfo2 is not None else None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS (glibc); a no-op elsewhere. True when it trimmed."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
