"""Builds the API reference (HTML) from the docstrings with pdoc.

  python docs/build_api.py OUTPUT_DIR

tests/test_docs.py builds it the same way in CI.
"""

from __future__ import annotations

import sys

# The modules a user imports; their public names (`__all__`) are the reference.
MODULES = ("lottery_jax.api", "lottery_jax.masks", "lottery_jax.search.swap",
           "lottery_jax.search.schedules", "lottery_jax.convert", "lottery_jax.data")


def build(output_directory: str) -> None:
  import pdoc
  import pdoc.render
  pdoc.render.configure(docformat="google", show_source=False,
                        footer_text="lottery_jax API reference")
  from pathlib import Path
  pdoc.pdoc(*MODULES, output_directory=Path(output_directory))


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  build(sys.argv[1])
