"""The import graph is one-way (docs/architecture.md):

    masks -> models / data (convert) -> engine -> methods -> experiments -> main

A module may import its own layer or lower ones, never a higher one. Imports inside
functions count too: a lazy import up the graph is still a dependency. The package's
own `__init__` (lazy attribute access for users) is the one exemption.
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "lottery_jax")

RANK = {
    "masks": 0,
    "models": 1, "data": 1,
    "convert": 2,           # weights in and out of the model zoo
    "engine": 3,
    "search": 4, "tickets": 4,   # the methods
    "experiments": 5, "recipes": 5,
    "api": 5,               # the public API for users' own models (on masks and search)
    "main": 6,
}


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(path: str) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "lottery_jax":
        out |= {a.name for a in node.names}
      elif node.module.startswith("lottery_jax."):
        out.add(_top(node.module))
    elif isinstance(node, ast.Import):
      out |= {_top(a.name) for a in node.names if a.name.startswith("lottery_jax.")}
  return out


def _modules():
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, PKG)
        if rel == "__init__.py":
          continue
        yield rel, rel.split(os.sep)[0].removesuffix(".py")


def test_every_module_has_a_layer():
  unknown = {top for _, top in _modules()} - set(RANK)
  assert not unknown, f"add {unknown} to RANK and to docs/architecture.md"


def test_imports_point_down_the_graph():
  bad = []
  for rel, top in _modules():
    for dep in _imports(os.path.join(PKG, rel)):
      assert dep in RANK, f"{rel} imports lottery_jax.{dep}, which has no layer"
      if RANK[dep] > RANK[top]:
        bad.append(f"{rel} ({top}) imports lottery_jax.{dep}")
  assert not bad, "imports up the graph:\n" + "\n".join(bad)
