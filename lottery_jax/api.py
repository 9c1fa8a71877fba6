"""Lottery jackpots in your own JAX code: your model, your loss, your training loop.

Nothing here knows about Flax, configs or workdirs. Parameters are any pytree of
arrays: Flax linen ``variables["params"]``, Flax NNX ``nnx.state(model, nnx.Param)``,
an Equinox model filtered with ``eqx.filter(model, eqx.is_array)``, or a plain dict.

Two ways of use:

* **Search a jackpot inside your own loop** (ALGORITHMS.md section 1): weights stay
  frozen, one score per weight trains through the straight-through estimator, masks
  start from magnitude (scores 1.0 kept, 0.99 pruned) and change by the reference's
  swap rule after every optimiser step, with the short restriction (a swap-rate
  schedule and a cap). :func:`jackpot` returns a :class:`JackpotSearch`; its state
  (:class:`SearchState`: scores, masks, step) is a pytree, so it jits, shards and
  checkpoints like any other.
* **Apply masks as an optax transform**, as jaxpruner users do:
  :func:`mask_updates` / :func:`masked` zero the updates of pruned weights (the masks
  live in the optimiser state), so pruned weights stay exactly zero while the rest
  fine-tune (the jackpot paper's "+T" stage, or pruning and fine-tuning).

A search in a few lines, on a plain function of a params dict:

>>> import jax, jax.numpy as jnp, optax
>>> from lottery_jax import api
>>> k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
>>> params = {"w1": jax.random.normal(k1, (16, 32)) / 4, "b1": jnp.zeros(32),
...           "w2": jax.random.normal(k2, (32, 4)) / 6}
>>> x = jax.random.normal(k3, (64, 16))
>>> y = jnp.argmax(x[:, :4], axis=-1)               # a learnable toy target
>>> def loss(p):
...   logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
...   return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
>>> search = api.jackpot(params, sparsity=0.8)      # magnitude-initialised
>>> state = search.init()
>>> tx = api.score_optimizer(learning_rate=0.1, total_steps=50)
>>> opt_state = tx.init(state.scores)
>>> @jax.jit
... def step(state, opt_state):
...   value, grads = jax.value_and_grad(
...       lambda s: loss(search.weights(params, s, state.masks)))(state.scores)
...   updates, opt_state = tx.update(grads, opt_state, state.scores)
...   state, swaps = search.update(state, optax.apply_updates(state.scores, updates))
...   return state, opt_state, value
>>> before = loss(search.weights(params, state.scores, state.masks))
>>> for _ in range(50):
...   state, opt_state, _ = step(state, opt_state)
>>> after = loss(search.weights(params, state.scores, state.masks))
>>> bool(after < before), search.sparsity(state)     # same exact sparsity
(True, 0.8)

The found sub-network is ``masks.apply(params, state.masks)``; fine-tune it with
:func:`masked` (below) to keep its pruned weights at zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery_jax import masks as mask_algebra
from lottery_jax.search import schedules
from lottery_jax.search.jackpot import initial_masks_and_scores, search_layout
from lottery_jax.search.swap import update_masks

__all__ = ["JackpotSearch", "MaskState", "SearchState", "jackpot", "mask_updates", "masked",
           "score_optimizer"]

PyTree = Any


class SearchState(NamedTuple):
  """Everything a search changes, as one pytree (jit, shard and checkpoint it).

  Attributes:
    scores: float32 scores like the params on searched leaves; a scalar 0 elsewhere.
    masks: bool masks like the params, ``True`` = kept; all-``True`` on leaves that
      are not searched.
    step: int32 scalar, the number of :meth:`JackpotSearch.update` calls (it drives
      the swap-rate schedule).
  """

  scores: PyTree
  masks: PyTree
  step: jax.Array


@dataclasses.dataclass(frozen=True)
class JackpotSearch:
  """A jackpot search over fixed weights; built by :func:`jackpot`.

  The static facts (which leaves are searched, each leaf's exact prune count, the
  swap-rate schedule) live here; everything that changes lives in
  :class:`SearchState`. Use it inside ``jax.jit`` by closing over it.

  Attributes:
    searched: pytree of Python bools like the params: leaves that carry scores.
    prune_counts: pytree of Python ints: exact number of pruned entries per leaf.
    rate: ``step -> rate`` in (0, 1], the fraction of a layer's revive candidates
      swapped per update (1 = the reference, i.e. no restriction).
    max_swaps: ``None`` or a cap on swaps per leaf per update (the short restriction's
      absolute knob).
    initial: the :class:`SearchState` the search starts from.
  """

  searched: PyTree
  prune_counts: PyTree
  rate: Callable[[Any], jax.Array]
  max_swaps: int | None
  initial: SearchState

  def init(self) -> SearchState:
    """The starting state: magnitude masks, scores 1.0 (kept) / 0.99 (pruned)."""
    return self.initial

  def weights(self, params: PyTree, scores: PyTree, masks: PyTree) -> PyTree:
    """``W * M`` on searched leaves, differentiable in ``scores`` through the
    straight-through estimator (``dL/dS = dL/dW_eff * W``); other leaves as given.

    Call it inside the loss you differentiate with respect to ``scores``.
    """
    def leaf(w, s, m, searched):
      if not searched:
        return w
      return w * mask_algebra.straight_through(s, m).astype(w.dtype)

    return jax.tree.map(leaf, params, scores, masks, self.searched)

  def update(self, state: SearchState, scores: PyTree) -> tuple[SearchState, PyTree]:
    """The swap rule after an optimiser step: ``(new_state, swaps)``.

    Args:
      state: the state the step started from (its masks and step count).
      scores: the scores after the optimiser's update.

    Returns:
      The new state (scores, masks updated per leaf with exact sparsity, step + 1)
      and a pytree of int32 swaps per leaf (0 on leaves that are not searched).
    """
    treedef = jax.tree.structure(self.prune_counts)
    flags = treedef.flatten_up_to(self.searched)
    counts = treedef.flatten_up_to(self.prune_counts)
    s_leaves, m_leaves = treedef.flatten_up_to(scores), treedef.flatten_up_to(state.masks)
    idx = [i for i, f in enumerate(flags) if f]
    swaps = [jnp.zeros((), jnp.int32)] * len(flags)
    if idx:
      new, n = update_masks([s_leaves[i] for i in idx], [m_leaves[i] for i in idx],
                            [counts[i] for i in idx], self.rate(state.step),
                            max_swaps=self.max_swaps)
      for j, i in enumerate(idx):
        m_leaves[i], swaps[i] = new[j], n[j]
    return (SearchState(scores, treedef.unflatten(m_leaves), state.step + 1),
            treedef.unflatten(swaps))

  def sparsity(self, state: SearchState) -> float:
    """Fraction of the searched leaves' weights that are pruned (exact, host-side)."""
    flags = jax.tree.leaves(self.searched)
    ms = jax.tree.structure(self.searched).flatten_up_to(state.masks)
    pruned = sum(int(np.size(m) - np.sum(np.asarray(m))) for m, f in zip(ms, flags) if f)
    total = sum(int(np.size(m)) for m, f in zip(ms, flags) if f)
    return round(pruned / max(total, 1), 6)


def jackpot(params: PyTree, sparsity: float, *,
            where: Callable[[Any, Any], bool] = mask_algebra.prunable,
            allocation: str = "global_magnitude", score_init: str = "magnitude",
            rate: float | Callable[[Any], Any] = 1.0, max_swaps: int | None = None,
            key: jax.Array | None = None) -> JackpotSearch:
  """A jackpot search of ``params`` at ``sparsity`` (ALGORITHMS.md section 1).

  Args:
    params: the (pretrained) weights, any pytree of arrays; they are not trained.
    sparsity: target fraction pruned over the selected leaves, in [0, 1).
    where: ``(path, leaf) -> bool`` selecting the searched leaves; by default the
      kernels (ndim >= 2) that are not biases or normalisation parameters. To keep
      a classifier dense: ``masks.prunable_except("head")``.
    allocation: ``"global_magnitude"`` (one |w| threshold, the reference's default),
      ``"uniform"`` or ``"erk"``.
    score_init: ``"magnitude"`` (the paper's), ``"abs"`` (scores = |W|) or
      ``"random"`` (Kaiming-normal, edge-popup; needs ``key``).
    rate: a constant in (0, 1] or a schedule ``step -> rate`` (e.g.
      ``lottery_jax.search.decaying_rate(total_steps, power=4)``): the short
      restriction's fraction of revive candidates swapped per update.
    max_swaps: ``None`` or a cap on swaps per leaf per update.
    key: PRNG key for ``score_init="random"``.

  Returns:
    A :class:`JackpotSearch`.

  >>> import jax.numpy as jnp
  >>> from lottery_jax import api
  >>> params = {"dense": {"kernel": jnp.arange(10.0).reshape(2, 5) - 4.5,
  ...                     "bias": jnp.zeros(5)}}
  >>> s = api.jackpot(params, sparsity=0.6)
  >>> s.prune_counts                      # biases are not searched
  {'dense': {'bias': 0, 'kernel': 6}}
  >>> s.init().masks["dense"]["kernel"].astype(int)   # the 4 largest |w| kept
  Array([[1, 1, 0, 0, 0],
         [0, 0, 0, 1, 1]], dtype=int32)
  """
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
  layout = search_layout(params, float(sparsity), allocation, where)
  if score_init == "random" and key is None:
    raise ValueError("score_init='random' needs a PRNG key: jackpot(..., key=...)")
  key = key if key is not None else jax.random.PRNGKey(0)
  masks, scores = initial_masks_and_scores(key, params, layout, score_init)
  rate_fn = rate if callable(rate) else schedules.constant_rate(float(rate))
  if max_swaps is not None and (isinstance(max_swaps, bool) or int(max_swaps) < 1):
    raise ValueError(f"max_swaps must be None or an int >= 1, got {max_swaps!r}")
  initial = SearchState(scores=scores, masks=masks, step=jnp.zeros((), jnp.int32))
  return JackpotSearch(searched=layout.masked, prune_counts=layout.prune_counts,
                       rate=rate_fn, max_swaps=None if max_swaps is None else int(max_swaps),
                       initial=initial)


def score_optimizer(learning_rate: float = 0.1, total_steps: int = 0, *,
                    momentum: float = 0.9, weight_decay: float = 5e-4
                    ) -> optax.GradientTransformation:
  """The reference's score optimiser: SGD with momentum, weight decay coupled as in
  PyTorch (added to the gradient before momentum), cosine decay over
  ``total_steps`` (constant when 0)."""
  lr = (optax.cosine_decay_schedule(learning_rate, total_steps) if total_steps > 0
        else learning_rate)
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr, momentum=momentum))


class MaskState(NamedTuple):
  """The state of :func:`mask_updates`: the masks themselves (so a checkpoint of the
  optimiser state carries them)."""

  masks: PyTree


def mask_updates(masks: PyTree) -> optax.GradientTransformation:
  """An optax transform that zeroes the updates of pruned weights.

  Chain it after your optimiser (:func:`masked` does): weights that start at zero
  where ``masks`` is ``False`` stay exactly zero, whatever the optimiser (momentum,
  Adam, weight decay) would have done to them. ``masks`` is a bool pytree like the
  params (all-``True`` on leaves that are not pruned).

  >>> import jax.numpy as jnp, optax
  >>> from lottery_jax import api, masks
  >>> params = {"w": jnp.array([[0.5, -2.0], [3.0, 0.1]])}
  >>> kept = masks.magnitude(params, 0.5)       # prunes 0.1 and 0.5
  >>> params = masks.apply(params, kept)
  >>> tx = api.masked(optax.sgd(0.5, momentum=0.9), kept)
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  >>> optax.apply_updates(params, updates)["w"]
  Array([[ 0. , -2.5],
         [ 2.5,  0. ]], dtype=float32)
  """
  def init(params):
    del params
    return MaskState(jax.tree.map(lambda m: jnp.asarray(m, bool), masks))

  def update(updates, state, params=None):
    del params
    return mask_algebra.apply(updates, state.masks), state

  return optax.GradientTransformation(init, update)


def masked(tx: optax.GradientTransformation, masks: PyTree) -> optax.GradientTransformation:
  """``tx`` followed by :func:`mask_updates`: fine-tune a sparse network (the
  "+T" stage of a jackpot, or pruning and fine-tuning) with pruned weights held at
  exactly zero."""
  return optax.chain(tx, mask_updates(masks))
