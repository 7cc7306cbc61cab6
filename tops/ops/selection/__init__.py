"""Exact top-k on TPU (Pallas): the ``k`` largest entries of each row and their indices."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tops.backends import pallas_interpret
from tops.ops.selection import kernel
from tops.spec.topk import FILL_INDEX, validate


def topk(
    x: jax.Array | np.ndarray, k: int | jax.Array | np.ndarray, *, max_k: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Top-k of each row of ``x``: ``(values [B, w] in x.dtype, indices [B, w] int32)``.

    Args:
      x: ``[B, V]`` bf16, f16 or f32 JAX or NumPy array; any ``B >= 0`` and
        ``1 <= V <= tops.spec.topk.MAX_VOCAB``.
      k: a Python int with ``1 <= k <= V`` (then ``w = k``), or an int32/int64 array
        ``[B]`` of per-row counts, or ``[]`` for every row (then ``w = max_k``).
      max_k: with an array ``k``, the static output width, ``1 <= max_k <= V``.

    Returns:
      Values descending in IEEE total order except that NaN (either sign) ranks below
      ``-inf``; ``+0.0`` above ``-0.0``; equal values (and NaNs) by lower index. Values are
      the input elements bit for bit; on NaN-free rows the result equals
      ``jax.lax.top_k``. With per-row ``k``, row ``b`` keeps its first
      ``clip(k[b], 0, max_k)`` entries and the rest hold ``-inf`` and ``FILL_INDEX``.
      ``k <= 256`` over rows up to ``2**19`` columns runs the binned Pallas kernel
      (``tops.ops.selection.kernel``); wider ``k`` or rows run an XLA sort on the same keys.
      The same results with ``jax_enable_x64`` on: the kernels are traced with it off.
    """
    width, per_row = validate(x, k, max_k, api="tops.ops")
    x = jnp.asarray(x)
    batch = x.shape[0]
    if batch == 0:
        return jnp.zeros((0, width), x.dtype), jnp.zeros((0, width), jnp.int32)
    interpret = pallas_interpret()
    row_k = _row_counts(k, batch, width) if per_row else None
    # The kernels are 32-bit: under jax_enable_x64 their Python ints and default dtypes
    # would trace as 64-bit, so they are traced with it off (every input is 32-bit here).
    with jax.enable_x64(False):
        if per_row:
            return _topk_per_row(x, row_k, width=width, interpret=interpret)
        return _topk(x, width=width, interpret=interpret)


def _row_counts(k, batch, width):
    """Per-row counts ``clip(k, 0, width)`` as int32 ``[B]``, clipped before the cast so
    that an int64 count past 2**31 cannot wrap."""
    if isinstance(k, jax.Array):
        return jnp.broadcast_to(jnp.clip(k, 0, width).astype(jnp.int32), (batch,))
    return jnp.asarray(np.broadcast_to(np.clip(k, 0, width).astype(np.int32), (batch,)))


@functools.partial(jax.jit, static_argnames=("width", "interpret"))
def _topk(x, *, width, interpret):
    """Values and indices of the top ``width`` of ``x [B >= 1, V]``, compiled once per
    shape, dtype, width and interpret mode."""
    if kernel.uses_fast_path(x.shape[1], width):
        indices = kernel.fast_topk_indices(x, width, interpret=interpret)
    else:
        indices = kernel.sort_topk_indices(x, width)
    return jnp.take_along_axis(x, indices, axis=1), indices


@functools.partial(jax.jit, static_argnames=("width", "interpret"))
def _topk_per_row(x, row_k, *, width, interpret):
    """``_topk`` with row ``b`` cut after ``row_k[b]`` (int32 in ``[0, width]``) entries."""
    values, indices = _topk(x, width=width, interpret=interpret)
    kept = row_k[:, None]
    past = jnp.arange(width, dtype=jnp.int32)[None, :] >= kept
    values = jnp.where(past, jnp.array(-jnp.inf, x.dtype), values)
    return values, jnp.where(past, FILL_INDEX, indices)
