"""`config.malloc_arena_max`: glibc's arena limit, opt-in (engine/malloc.py; issue 17.6).

The limit is process-wide and glibc fixes it once a process has made its arenas, so
what it does is checked in child processes; nothing here changes this process's
allocator.
"""

import json
import logging
import os
import subprocess
import sys

import pytest

from lottery_jax.engine import config as config_lib
from lottery_jax.engine import malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_GLIBC = bool(getattr(os, "confstr", lambda n: None)("CS_GNU_LIBC_VERSION"))
glibc_only = pytest.mark.skipif(not ON_GLIBC, reason="malloc arenas are glibc's")

# JAX's CPU backend, then 20 threads allocating at once (as Orbax's save threads do):
# the arena count afterwards.
_CHILD = """
import sys, threading
from lottery_jax.engine import malloc
if int(sys.argv[1]):
  malloc.limit_arenas(int(sys.argv[1]))
import jax.numpy as jnp
x = jnp.ones((64, 64)); (x @ x).block_until_ready()
barrier = threading.Barrier(20)
def work():
  barrier.wait()
  keep = [bytearray(4096) for _ in range(200)]
threads = [threading.Thread(target=work) for _ in range(20)]
[t.start() for t in threads]; [t.join() for t in threads]
print(malloc.arena_count())
"""


def _arenas_in_child(limit: int) -> int:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("MALLOC_ARENA_MAX", None)
  out = subprocess.run([sys.executable, "-c", _CHILD, str(limit)], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  return int(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_the_arena_limit_holds_when_set_before_jax_starts():
  """Set first thing, the limit caps the arenas through JAX's threads and 20 more;
  without it glibc makes more than 2 (up to 8 per core)."""
  assert _arenas_in_child(2) <= 2
  assert _arenas_in_child(0) > 2


@glibc_only
def test_the_arena_count_reads_back():
  n = malloc.arena_count()
  assert isinstance(n, int) and n >= 1


def test_a_late_arena_limit_is_said_in_the_log(monkeypatch, caplog):
  """The loop checks the count at the start of a run: more arenas than the limit (it
  was set after JAX started its threads) is a warning naming both numbers."""
  monkeypatch.setattr(malloc, "arena_count", lambda: 16)
  with caplog.at_level(logging.WARNING, logger="lottery_jax"):
    assert malloc.check_arena_limit(2) is False
  assert "malloc_arena_max=2 has not taken effect" in caplog.text
  assert "16 malloc arenas" in caplog.text
  monkeypatch.setattr(malloc, "arena_count", lambda: 2)
  assert malloc.check_arena_limit(2) is True
  monkeypatch.setattr(malloc, "arena_count", lambda: pytest.fail("counted"))
  assert malloc.check_arena_limit(0) is True  # the default: nothing asked, nothing read


def test_an_arena_limit_that_cannot_be_had_fails_loudly(monkeypatch):
  """A bad value, or a C library without arenas (musl, macOS, Windows): ValueError
  naming the field, never a silent no-op (the value was asked for)."""
  for bad in (0, -1, True, 1.5, "2"):
    with pytest.raises(ValueError, match="malloc_arena_max"):
      malloc.limit_arenas(bad)
  monkeypatch.setattr(malloc, "_glibc", lambda: None)
  with pytest.raises(ValueError, match="not glibc"):
    malloc.limit_arenas(2)
  assert malloc.arena_count() is None


def test_malloc_arena_max_is_opt_in_validated_and_resume_neutral():
  c = config_lib.base_config()
  assert c.malloc_arena_max == 0
  assert "malloc_arena_max" in config_lib.RESUME_NEUTRAL
  saved = json.loads(config_lib.to_json(c))
  assert saved["malloc_arena_max"] == 0
  # A run resumes with the limit set, changed or dropped, and one written before the
  # field existed resumes with it set.
  c.malloc_arena_max = 2
  current = json.loads(config_lib.to_json(c))
  assert config_lib.differences(saved, current) == []
  del saved["malloc_arena_max"]
  assert config_lib.differences(saved, current) == []


@pytest.mark.parametrize("bad", [-1, True])  # 1.5: ml_collections refuses it
def test_a_bad_malloc_arena_max_is_refused_by_validation(bad):
  from test_engine import tiny_config
  c = tiny_config(malloc_arena_max=bad)
  with pytest.raises(config_lib.ConfigError, match="malloc_arena_max"):
    config_lib.validate(c)


@glibc_only
def test_main_sets_the_limit_before_jax_and_records_it(tmp_path):
  """Through `lottery_jax.main`: the run's log says the process has at most the
  limit's arenas (set before JAX started), config.json records the value; a bad
  value is one line on stderr and exit 2, before anything is written."""
  base = [sys.executable, "-m", "lottery_jax.main",
          f"--config={REPO}/tests/configs/tiny_search.py",
          "--config.search_random_weights=True", "--config.num_steps=2",
          "--config.log_every_steps=1", "--config.tensorboard=False",
          "--config.progress_bar=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("MALLOC_ARENA_MAX", None)
  out = subprocess.run(base + [f"--workdir={tmp_path / 'a'}", "--config.malloc_arena_max=2"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "config.malloc_arena_max=2: the process has" in out.stderr, out.stderr
  said = out.stderr.split("config.malloc_arena_max=2: the process has ")[1].split()[0]
  assert int(said) <= 2, out.stderr
  assert "has not taken effect" not in out.stderr
  assert json.loads((tmp_path / "a" / "config.json").read_text())["malloc_arena_max"] == 2
  out = subprocess.run(base + [f"--workdir={tmp_path / 'b'}", "--config.malloc_arena_max=-1"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "malloc_arena_max=-1" in lines[0], out.stderr
  assert not (tmp_path / "b").exists()
