"""Temperature softmax on TPU (Pallas): ``softmax(logits / T)`` per row, float32 out,
differentiable w.r.t. the logits (``jax.custom_vjp``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tops.backends import pallas_interpret
from tops.ops.softmax import kernel
from tops.spec.common import python_number, require_array
from tops.spec.temperature_softmax import validate


def temperature_softmax(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
    """Per-row ``softmax(logits / temperature)`` as float32, computed by a Pallas kernel.

    Args:
      logits: ``[B, V]`` JAX or NumPy array of bf16, f16 or f32; any ``B >= 0`` and
        ``V >= 1``.
      temperature: Python or NumPy number, or JAX/NumPy array of shape ``[]`` or ``[B]``;
        converted to float32. A number must be ``>= 0`` (ValueError otherwise); array
        entries that are negative or NaN give a NaN row.

    Returns:
      ``float32[B, V]``. The max is taken over the raw logits, so any temperature is
      stable. Special rows, identical on every backend: NaN logit or invalid
      temperature: all NaN; all ``-inf``: all zeros; temperature below the smallest
      normal float32 (zero included): one-hot at the first maximum; temperature of at
      least ``2**64``: uniform over the entries above ``-inf``; ``+inf`` logits share
      the mass evenly. Values are correctly rounded to float32 up to about 2**-29
      relative (``kernel.py``).

    Gradient (``jax.grad``, ``jax.vjp``): w.r.t. ``logits`` in their dtype, per row
    ``p * (g - sum(p * g)) / T`` for the cotangent ``g``, with the special rows of
    ``tops.spec.temperature_softmax`` (NaN rows NaN, greedy and uniform rows zero); the
    temperature gets a zero cotangent.
    """
    require_array("logits", logits, "tops.ops")
    if python_number(temperature) is None:
        require_array("temperature", temperature, "tops.ops")
    validate(logits, temperature)
    logits = jnp.asarray(logits)
    temperature = jnp.asarray(temperature, jnp.float32)
    batch, vocab = logits.shape
    if batch == 0:
        return jnp.zeros((0, vocab), jnp.float32)
    return _softmax(logits, temperature, interpret=pallas_interpret())


@functools.partial(jax.jit, static_argnames="interpret")
def _softmax(logits, temperature, *, interpret):
    """The differentiable kernel launch for ``logits [B >= 1, V]`` and float32
    ``temperature [] | [B]``, compiled once per shape, dtype and interpret mode."""
    return _differentiable(logits, temperature, logits.dtype, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _differentiable(logits, temperature, logits_dtype, interpret):
    """The kernel launch; ``logits_dtype`` (static, the dtype of ``logits``) is the
    dtype their cotangent must have."""
    batch, vocab = logits.shape
    temperature_col = jnp.broadcast_to(temperature, (batch,))[:, None]
    if kernel.row_width(vocab) <= kernel.BLOCKS.single_pass_max_v:
        return kernel.single_pass(logits, temperature_col, interpret=interpret)
    return kernel.two_pass(logits, temperature_col, interpret=interpret)


def _differentiable_fwd(logits, temperature, logits_dtype, interpret):
    """The forward, saving the probabilities and the temperature (not the logits)."""
    probs = _differentiable(logits, temperature, logits_dtype, interpret)
    return probs, (probs, temperature)


def _differentiable_bwd(logits_dtype, interpret, residuals, cotangent):
    probs, temperature = residuals
    vocab = probs.shape[1]
    # The forward's NaN rows (a NaN logit) enter the kernel as a NaN temperature.
    t = jnp.where(jnp.isnan(probs[:, 0]), np.float32(np.nan), temperature)[:, None]
    launch = kernel.grad_single_pass
    if kernel.row_width(vocab) > kernel.BLOCKS.single_pass_max_v:
        launch = kernel.grad_two_pass
    dx = launch(probs, cotangent.astype(jnp.float32), t, interpret=interpret)
    return dx.astype(logits_dtype), jnp.zeros_like(temperature)


_differentiable.defvjp(_differentiable_fwd, _differentiable_bwd)
