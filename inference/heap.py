"""Keep freed tensor memory on the heap while cases run; give it back to the system when idle.

Why: glibc serves each allocation above its mmap threshold (dynamic, at most 32 MiB) with a
fresh mmap and unmaps it on free; in any thread but the main one (the node's worker) blocks over
64 MiB come from mmap whatever the threshold, unless all threads share the main arena. A 3D
U-Net allocates and frees activations of hundreds of MB per tile, so each tile gets them back
as new zero-filled pages, one page fault per 4 KiB. On the 2-core VM that was 0.8-1.8 million
faults and 3-7 s of kernel time per SCIseg-sized tile (64x160x192), a third of the tile's wall
time. With one arena, no mmap for such blocks and no trimming on free, the heap keeps the pages
between tiles (0 faults per tile, measured in a worker thread).

The heap is trimmed once no case has run for RELEASE_AFTER_S (`busy()`), not after every case:
that made the next case fault its whole peak in again (1.2 M faults, 14 s of kernel time per
SCIseg-sized case on the VM), while an idle node should not hold a case's peak either.

glibc only (musl, macOS and Windows allocators are left alone). `configure()` must run before the
process starts threads (an existing thread keeps the arena it has), so the console script calls
it first; processes started by others (Ray actors) get the same settings from `ENV` at start.
Set DICOM_NODE_HEAP=system to leave the allocator as glibc ships it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
_MMAP_ABOVE = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB stay on the heap, larger ones use mmap
_NO_TRIM = -1  # mallopt(M_TRIM_THRESHOLD, -1): never trim on free (a 2 GiB threshold still trimmed
# between the tiles of a two-tile batch: 0.4 M faults per tile, measured)
ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(_MMAP_ABOVE),
       "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}  # the environment's spelling of the same settings
OPT_OUT = "DICOM_NODE_HEAP"
RELEASE_AFTER_S = 30.0  # idle time before the heap is trimmed: longer than a node's gap between jobs

_configured = False
_lock = threading.Lock()
_active = 0
_timer: threading.Timer | None = None


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, once per process (platform.libc_ver reads the interpreter's binary)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def wanted() -> bool:
    """False when the operator chose glibc's own behaviour (DICOM_NODE_HEAP=system)."""
    return os.environ.get(OPT_OUT, "").strip().lower() != "system"


def configure() -> bool:
    """One arena, large blocks on the heap, no trimming on free. True if applied (glibc, not opted out)."""
    global _configured
    if _configured:
        return True
    libc = _libc() if wanted() else None
    if libc is None:
        return False
    done = [libc.mallopt(p, ctypes.c_int(v)) == 1
            for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _MMAP_ABOVE), (_M_TRIM_THRESHOLD, _NO_TRIM))]
    if not all(done):
        log.warning("glibc refused some heap settings (arena max, mmap threshold, trim threshold: %s); "
                    "inference runs with glibc's defaults", done)
        return False
    _configured = True
    return True


def release() -> None:
    """Return the free heap to the system (busy()'s timer calls it once idle; milliseconds). Also in
    processes that got the settings from `child_env()`; a no-op off glibc or when opted out."""
    libc = _libc() if wanted() else None
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))


def child_env() -> dict[str, str]:
    """Environment for processes the node starts that run inference (Ray actors): the same heap settings."""
    return dict(ENV) if wanted() and _libc() is not None else {}


@contextmanager
def busy() -> Iterator[None]:
    """Around one case's inference: cancels a pending trim while it runs, and schedules `release()`
    RELEASE_AFTER_S after the last running case ends (a daemon timer: never delays exit)."""
    global _active, _timer
    with _lock:
        _active += 1
        if _timer is not None:
            _timer.cancel()
            _timer = None
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _timer = threading.Timer(RELEASE_AFTER_S, release)
                _timer.daemon = True
                _timer.start()
