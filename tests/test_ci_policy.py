"""The suite's own policy on failures (pyproject.toml's addopts): a test whose xdist
worker dies in native code is rerun once on a fresh worker and reported as rerun; an
ordinary failure (an assertion) is never rerun; a test that crashes twice fails."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TESTS = """
import ctypes, os

def _crash():
  ctypes.string_at(0)   # reads address 0: SIGSEGV in C, the worker dies

def test_crashes_once():
  flag = os.path.join(os.environ["POLICY_DIR"], "crashed_once")
  if not os.path.exists(flag):
    open(flag, "w").close()
    _crash()

def test_crashes_always():
  _crash()

def test_fails_an_assertion():
  count = os.path.join(os.environ["POLICY_DIR"], "runs")
  with open(count, "a") as f:
    f.write("x")
  assert 1 == 2
"""


def test_a_worker_crash_is_rerun_once_an_assertion_never(tmp_path):
  (tmp_path / "test_policy_cases.py").write_text(textwrap.dedent(TESTS))
  # The repository's pytest settings (addopts) with this directory's tests.
  env = {**os.environ, "POLICY_DIR": str(tmp_path)}
  env.pop("PYTEST_XDIST_WORKER", None)
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
       "-c", os.path.join(REPO, "pyproject.toml"), "--rootdir", str(tmp_path),
       str(tmp_path / "test_policy_cases.py")],
      capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  text = out.stdout + out.stderr
  assert out.returncode == 1, text
  assert "RERUN test_policy_cases.py::test_crashes_once" in text, text
  assert "PASSED test_policy_cases.py::test_crashes_once" in text, text
  assert "FAILED test_policy_cases.py::test_crashes_always" in text, text
  assert "FAILED test_policy_cases.py::test_fails_an_assertion" in text, text
  assert "RERUN test_policy_cases.py::test_fails_an_assertion" not in text, text
  assert (tmp_path / "runs").read_text() == "x"   # the failing assertion ran once
  assert "2 failed, 1 passed, 2 rerun" in text, text
