"""Test set-up: 8 simulated CPU devices so sharding is exercised everywhere, and a
compilation cache shared by the test processes of one run.

Most end-to-end tests run several stages that compile the same train and eval steps
(same model, shapes and program); JAX's persistent compilation cache turns the
repeats into cache hits (measured: tests/test_siblings.py's end-to-end test 240 s
without, 65 s with, on the 2-core machine). The cache holds the executables XLA
compiled from the same programs, so results do not change. It lives in a fresh
directory per test run (keyed by pytest-xdist's run id, shared by the workers and
the subprocesses they start) and is never used outside the tests. Set
LOTTERY_JAX_TEST_NO_CACHE=1 to run without it.
"""

import os
import tempfile

# Must happen before JAX is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if not os.environ.get("LOTTERY_JAX_TEST_NO_CACHE"):
  _run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(tempfile.gettempdir(), f"lottery_jax_test_cache_{_run}"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
