"""Siblings against the number of shared epochs k in {0, 1, 2, 5} (seed 001's sweep),
on scikit-learn digits, S=4 siblings in one vmapped program each, 80% and 90%
sparsity; one sub-experiment per k in <workdir>/k<k>/ (each a list of resumable
stages, skipped when finished). No download.

  python -m lottery_jax.main --config=configs/siblings_sweep.py --workdir=runs/siblings_sweep
  python -m lottery_jax.main --config=configs/siblings_sweep.py:mnist1d --workdir=runs/siblings_sweep_m1d

The argument `mnist1d` swaps in MNIST-1D (generated offline) and its 1-D CNN (batch
128, 30 epochs).

`summary.json` holds `sweep`: one siblings summary per k (overlap against chance,
union / intersection / one-shot accuracies per sparsity in `by_sparsity`).
"""

from lottery_jax import recipes


def get_config(arg: str = "digits"):
  c = recipes.digits_siblings()
  c.siblings.shared_epochs_sweep = (0.0, 1.0, 2.0, 5.0)
  c.siblings.sparsities = (0.8, 0.9)
  return recipes.embedded_data(c, arg, mnist1d_epochs=30.0)
