"""Temperature softmax on TPU (Pallas): ``softmax(logits / T)`` per row, float32 out."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tops.backends import pallas_interpret
from tops.ops.temperature_softmax import kernel
from tops.spec.temperature_softmax import validate


def temperature_softmax(logits: jax.Array, temperature) -> jax.Array:
    """Per-row ``softmax(logits / temperature)`` as float32, computed by a Pallas kernel.

    Args:
      logits: ``[B, V]`` bf16, f16 or f32; any ``B >= 0`` and ``V >= 1``.
      temperature: scalar or ``[B]``, converted to float32. A Python number must be
        ``>= 0`` (ValueError otherwise); array entries that are negative or NaN give a
        NaN row.

    Returns:
      ``float32[B, V]``. The max is taken over the raw logits, so any temperature is
      stable. Special rows, identical on every backend: NaN logit or invalid
      temperature: all NaN; all ``-inf``: all zeros; temperature below the smallest
      normal float32 (zero included): one-hot at the first maximum; temperature of at
      least ``2**64``: uniform over the entries above ``-inf``; ``+inf`` logits share
      the mass evenly. Values are correctly rounded to float32 up to about 2**-29
      relative (ARCHITECTURE.md, temperature softmax).
    """
    validate(logits, temperature)
    logits = jnp.asarray(logits)
    batch, vocab = logits.shape
    if batch == 0:
        return jnp.zeros((0, vocab), jnp.float32)
    return _softmax(logits, jnp.asarray(temperature, jnp.float32), interpret=pallas_interpret())


@functools.partial(jax.jit, static_argnames="interpret")
def _softmax(logits, temperature, *, interpret):
    """The kernel launch for ``logits [B >= 1, V]`` and float32 ``temperature [] | [B]``,
    compiled once per shape, dtype and interpret mode."""
    batch, vocab = logits.shape
    temperature_col = jnp.broadcast_to(temperature, (batch,))[:, None]
    if kernel.row_width(vocab) <= kernel.SINGLE_PASS_MAX_V:
        return kernel.single_pass(logits, temperature_col, interpret=interpret)
    return kernel.two_pass(logits, temperature_col, interpret=interpret)
