"""The docs: the API reference builds from the docstrings, every example in the
docstrings and the pages runs, every config has an experiment page with its command,
and every measured percentage on those pages comes from a source that states how it
was produced (a config's docstring, RESULTS.md or BENCHMARKS.md)."""

from __future__ import annotations

import ast
import doctest
import glob
import importlib
import inspect
import os
import re
import sys
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
sys.path.insert(0, DOCS)
import build_api  # noqa: E402

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# pdoc cannot resolve the string annotations of a NamedTuple's generated __init__
# (they are evaluated outside the module); the fields are documented all the same.
KNOWN_PDOC_WARNING = re.compile(r"Error parsing type annotation .* for lottery_jax\.[\w.]+\.(\w+)\.__init__")


def _pages():
  return sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def test_api_reference_builds_and_documents_every_public_name(tmp_path):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    build_api.build(str(tmp_path))
  for w in caught:
    m = KNOWN_PDOC_WARNING.search(str(w.message))
    assert m, f"pdoc: {w.message}"
  for name in build_api.MODULES:
    module = importlib.import_module(name)
    html = (tmp_path / (name.replace(".", "/") + ".html")).read_text()
    assert inspect.getdoc(module), name
    for public in getattr(module, "__all__", []):
      obj = getattr(module, public)
      if not ((inspect.isfunction(obj) or inspect.isclass(obj))
              and obj.__module__.startswith("lottery_jax")):
        continue  # constants, type aliases, submodules
      assert inspect.getdoc(obj), f"{name}.{public} has no docstring"
      assert f'id="{public}"' in html, f"{name}.{public} is not in the reference"


@pytest.mark.parametrize("name", build_api.MODULES)
def test_docstring_examples_run(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS)
  assert result.failed == 0


def test_examples_in_the_pages_run():
  with_examples = [p for p in _pages() if ">>>" in open(p).read()]
  assert with_examples  # docs/use/own_code.md at least
  for path in with_examples:
    result = doctest.testfile(path, module_relative=False, optionflags=FLAGS)
    assert result.failed == 0, path


def test_relative_links_resolve():
  for path in _pages():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(path).read()):
      if "://" in target:
        continue
      assert os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))), \
          f"{os.path.relpath(path, REPO)} links to {target}"


def _experiment_pages():
  return {p: open(p).read() for p in sorted(glob.glob(os.path.join(DOCS, "experiments", "*.md")))}


def test_every_config_has_an_experiment_page_with_its_command():
  pages = _experiment_pages()
  text = "\n".join(pages.values())
  for config in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(config)
    assert re.search(rf"python -m lottery_jax\.main --config=configs/{re.escape(name)}\b", text), \
        f"no page in docs/experiments shows the command of configs/{name}"
  for path, page in pages.items():
    assert "\n## Command" in page and "\n## Measured" in page, path
    for name in re.findall(r"--config=configs/([\w]+\.py)", page):
      assert os.path.exists(os.path.join(REPO, "configs", name)), (path, name)


def _sources() -> str:
  texts = [open(os.path.join(REPO, f)).read() for f in ("RESULTS.md", "BENCHMARKS.md")]
  for config in glob.glob(os.path.join(REPO, "configs", "*.py")):
    texts.append(ast.get_docstring(ast.parse(open(config).read())) or "")
  return "\n".join(texts)


def test_measured_percentages_come_from_a_stated_source():
  sources = _sources()
  for path, page in _experiment_pages().items():
    measured = page.split("\n## Measured", 1)[1]
    for number in re.findall(r"(\d+\.\d+)%", measured):
      assert re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", sources), (f"{os.path.relpath(path, REPO)} reports {number}, which no "
                                 "config docstring, RESULTS.md or BENCHMARKS.md states")
