"""Process-wide CPU allocator setting for training and sampling processes.

glibc gives large blocks back to the kernel when they are freed (mmap threshold, heap trim). A
denoiser step frees and reallocates the same tens-of-megabyte activations every step, so each step
then pays page faults for fresh zeroed pages (README, Benchmarks). Keeping freed memory in the
process removes that cost; the process's resident memory then stays at its peak. Called by the `vlgen` command and the
benchmarks; never on import.
"""
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from (and return to) the heap


def keep_freed_memory():
    """Ask glibc to serve large allocations from the heap and not trim it. Returns True when
    applied, False where the C library is not glibc (other platforms keep their defaults)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
