"""Process-level malloc tuning for per-frame work (glibc).

Every frame allocates and frees dozens of frame-sized temporaries (NumPy, OpenCV, torch: ~1.2 MB each at
480×640 float32). With glibc's defaults those either come from ``mmap`` or from heap memory that ``free``
hands back to the kernel as soon as the heap top holds a few MB, so the next frame page-faults all of it in
again: HHA measured 42 ms per frame instead of 28 ms here (``benchmarks/depth.py`` prints both). Raising the
mmap and trim thresholds keeps those buffers in the heap, so a steady frame loop stops page-faulting. The
price: up to ``trim_threshold`` bytes of freed memory stay mapped to the process.

This changes the whole process, so only entry points call it (the node, the CLI, training, benchmarks);
library functions never do. The same settings can be given without code through the environment,
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456``.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: buffers up to 32 MB (a 1080p float32 RGB image) stay in the heap
TRIM_THRESHOLD = 256 << 20


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); both together, since setting either disables the
    dynamic mmap threshold. Returns False (and changes nothing) where the C library is not glibc or refuses.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    )
