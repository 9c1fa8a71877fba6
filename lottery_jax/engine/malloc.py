"""glibc's malloc arenas: an opt-in limit for long runs, and their count.

glibc gives threads their own malloc arenas, up to 8 per core (16 on a 2-core VM, all
of them made as soon as JAX starts XLA's CPU threads). Orbax runs every checkpoint
save in new threads, whose allocations land in those arenas between training steps';
what stays behind is spread over all of them, in pages `malloc_trim` cannot return.
`config.malloc_arena_max = n` (0, the default: glibc's own limit) caps the arenas at
n, as the environment variable `MALLOC_ARENA_MAX=n` does (docs/reliability.md,
"Soak", has what it changes).

glibc fixes its arena limit for good once it has made more than 8 arenas, so the
limit works only when set before JAX starts its threads: `python -m lottery_jax.main`
sets it first thing, before importing the library; code that builds a run itself
(a notebook, a test) calls `limit_arenas(n)` before its first JAX computation. The
loop checks the count at the start of a run and warns, naming the count, where the
limit came too late (`check_arena_limit`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re

log = logging.getLogger("lottery_jax")

M_ARENA_MAX = -8  # glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
  """The process's C library when it is glibc, else None (musl, macOS, Windows)."""
  try:
    if not os.confstr("CS_GNU_LIBC_VERSION"):  # "glibc 2.36"; ValueError elsewhere
      return None
    return ctypes.CDLL(None)
  except (AttributeError, OSError, ValueError, TypeError):
    return None


def limit_arenas(n: int) -> None:
  """Caps glibc's malloc arenas at `n` (mallopt M_ARENA_MAX) for the rest of the
  process. Only free-list bookkeeping changes, never results. Raises ValueError when
  `n` is not an int >= 1 or the C library is not glibc (the limit was asked for and
  cannot be had: said, not skipped)."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"config.malloc_arena_max={n!r}: expected an int >= 1 (0 in the "
                     "config leaves glibc's default)")
  libc = _glibc()
  if libc is None or not hasattr(libc, "mallopt"):
    raise ValueError(f"config.malloc_arena_max={n}: the C library is not glibc, which "
                     "alone has malloc arenas to limit; set it to 0 here")
  libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  if libc.mallopt(M_ARENA_MAX, n) != 1:
    raise ValueError(f"config.malloc_arena_max={n}: glibc's mallopt(M_ARENA_MAX) "
                     "refused it")


def arena_count() -> int | None:
  """How many malloc arenas the process has (the heaps of glibc's `malloc_info`,
  the main arena included); None where that cannot be read (not glibc)."""
  libc = _glibc()
  if libc is None or not hasattr(libc, "malloc_info") or not hasattr(libc, "open_memstream"):
    return None
  buf, size = ctypes.c_char_p(), ctypes.c_size_t()
  libc.open_memstream.restype = ctypes.c_void_p
  libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                  ctypes.POINTER(ctypes.c_size_t)]
  libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
  libc.fclose.argtypes = [ctypes.c_void_p]
  stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
  if not stream:
    return None
  try:
    libc.malloc_info(0, stream)
  finally:
    libc.fclose(stream)
  try:
    text = ctypes.string_at(buf, size.value).decode("ascii", "replace")
  finally:
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(ctypes.cast(buf, ctypes.c_void_p))
  return len(re.findall(r'<heap nr="\d+">', text))


def check_arena_limit(n: int) -> bool:
  """With `n` > 0 (config.malloc_arena_max), warns when the process already has more
  than `n` arenas, i.e. the limit was set too late or not at all. True when the
  limit holds (or none was asked for, or the count cannot be read)."""
  if not n:
    return True
  count = arena_count()
  if count is None or count <= n:
    log.info("config.malloc_arena_max=%d: the process has %s malloc arenas", n,
             "an unknown number of" if count is None else count)
    return True
  log.warning(
      "config.malloc_arena_max=%d has not taken effect: the process has %d malloc "
      "arenas. glibc fixes its arena limit once JAX has started its threads; "
      "`python -m lottery_jax.main` sets it first thing, elsewhere call "
      "lottery_jax.engine.malloc.limit_arenas(%d) before the first JAX computation "
      "(or set MALLOC_ARENA_MAX=%d in the environment)", n, count, n, n)
  return False
