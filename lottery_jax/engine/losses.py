"""Losses and metrics shared by the engine and the methods."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy in float32 (integer labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)
