"""Top-k / top-p / min-p sampling on TPU (Pallas), bit-exact to ``tops.cpu.sampling``.

Two paths, both returning exactly the reference's tokens and debug arrays:

* bounded-k (static ``max_k <= 256``): the top-k op (``tops.ops.topk`` with per-row
  ``k``) keeps each row's ``min(k, max_k)`` survivors; one Pallas kernel
  (``bounded.py``) quantises them and does the sums, min-p, top-p, the draw and the
  vocabulary-order prefix by pairwise comparisons.
* arbitrary-k (``max_k=None``): one Pallas kernel (``full.py``) over whole rows in VMEM
  (V up to 2**18) finds the top-k threshold, the top-p threshold and the token by
  bitwise binary searches.

Both start from a row-statistics kernel (maximum in the top-k order, its first index,
validity; ``kernel.py``). ``integer_weights`` runs the statistics and the quantisation
kernel alone.
"""

from __future__ import annotations

import functools
import numbers
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tops.backends import pallas_interpret
from tops.ops.sampling import bounded, full, kernel
from tops.ops.selection import topk
from tops.ops.selection.kernel import sortable_key
from tops.spec.common import require_bool
from tops.spec.sampling import validate, validate_weights

# A per-row parameter: a Python or NumPy number, or an array [B] or [] (tops.spec.sampling).
Parameter = float | int | jax.Array | np.ndarray
# What sample returns: (next_tokens, valid), and with debug=True the debug arrays too.
SampleResult = tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, OrderedDict[str, Any]]


def _row_floats(value, batch):
    return lax.bitcast_convert_type(
        jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,)), jnp.int32
    )


def _is_jax(value):
    return isinstance(value, jax.Array)


def _row_words(value, batch):
    """seed / step as int32 bit patterns of the value modulo 2**32."""
    if _is_jax(value):
        if value.dtype != jnp.int32:
            value = lax.bitcast_convert_type(value.astype(jnp.uint32), jnp.int32)
        return jnp.broadcast_to(value, (batch,))
    words = (np.asarray(value).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    return jnp.broadcast_to(jnp.asarray(words), (batch,))


def _row_k(top_k, batch, vocab, cap):
    """The effective per-row k: ``V`` when ``top_k <= 0`` or ``>= V``, then at most
    ``cap``; int32 ``[B]``. Host values are compared in int64 (no wrap)."""
    if isinstance(top_k, numbers.Integral):
        k = int(top_k)
        k = min(vocab if k <= 0 or k >= vocab else k, cap)
        return jnp.full((batch,), k, jnp.int32)
    if not _is_jax(top_k):
        k = np.asarray(top_k).astype(np.int64)
        k = np.minimum(np.where((k <= 0) | (k >= vocab), vocab, k), cap).astype(np.int32)
        return jnp.broadcast_to(jnp.asarray(k), (batch,))
    if top_k.dtype == jnp.uint32:
        disabled = (top_k == 0) | (top_k >= vocab)
    else:
        disabled = (top_k <= 0) | (top_k >= vocab)
    k = jnp.where(disabled, vocab, top_k.astype(jnp.int32))
    return jnp.broadcast_to(jnp.minimum(k, cap), (batch,))


def pack_params(
    batch: int,
    vocab: int,
    cap: int,
    temperature: Parameter,
    top_p: Parameter,
    min_p: Parameter,
    top_k: Parameter,
    seed: Parameter,
    step: Parameter,
) -> jax.Array:
    """The kernels' per-row parameters, int32 ``[B, kernel.PARAMS]``: float32 bits of
    ``temperature``, ``top_p``, ``min_p``; the effective ``k`` (at most ``cap``); ``seed``
    and ``step`` modulo 2**32."""
    columns = [None] * kernel.PARAMS
    columns[kernel.P_TEMPERATURE] = _row_floats(temperature, batch)
    columns[kernel.P_TOP_P] = _row_floats(top_p, batch)
    columns[kernel.P_MIN_P] = _row_floats(min_p, batch)
    columns[kernel.P_TOP_K] = _row_k(top_k, batch, vocab, cap)
    columns[kernel.P_SEED] = _row_words(seed, batch)
    columns[kernel.P_STEP] = _row_words(step, batch)
    zeros = jnp.zeros((batch,), jnp.int32)
    return jnp.stack([zeros if c is None else c.astype(jnp.int32) for c in columns], axis=1)


def sample(
    logits: jax.Array | np.ndarray,
    *,
    temperature: Parameter,
    seed: Parameter,
    step: Parameter,
    top_k: Parameter = 0,
    top_p: Parameter = 1.0,
    min_p: Parameter = 0.0,
    max_k: int | None = None,
    debug: bool = False,
) -> SampleResult:
    """Sample one token per row with the semantics of ``tops.cpu.sampling.sample``.

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 JAX or NumPy array, ``1 <= V <= 2**18``.
      temperature, top_p, min_p: numbers, or float32 arrays ``[B]`` or ``[]``.
      top_k, seed, step: integers, or int32, int64 or uint32 arrays ``[B]`` or ``[]``.
      max_k: static. None: the arbitrary-k path (whole rows); an int in ``[1, min(V,
        256)]``: the bounded-k path, each row keeping ``min(k, max_k)`` entries.
      debug: static; also return the debug arrays.

    Returns:
      ``(next_tokens int32 [B], valid bool [B])``, plus with ``debug`` an OrderedDict:
      ``greedy_sampled`` int32 ``[B]``, ``topk_logits_unsorted [B, V]`` (logits dtype),
      ``topk_topp_unnorm_probs_i32_unsorted`` int32 ``[B, V]``,
      ``random_unnorm_cdf_sampled`` a pair of uint32 ``[B]`` (high, low words),
      ``next_tokens``. Bit-identical to the reference for every input, with or without
      ``jax_enable_x64`` (the kernels are traced with it off). jit-able with ``max_k``
      and ``debug`` static.
    """
    validate(
        logits,
        temperature=temperature,
        seed=seed,
        step=step,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        max_k=max_k,
        api="tops.ops",
    )
    debug = require_bool("debug", debug)
    logits = jnp.asarray(logits)
    batch, vocab = logits.shape
    if batch == 0:
        return _empty(logits, debug)
    cap = vocab if max_k is None else max_k
    params = pack_params(batch, vocab, cap, temperature, top_p, min_p, top_k, seed, step)
    # The kernels are 32-bit: under jax_enable_x64 their Python ints and default dtypes
    # would trace as 64-bit, so they are traced with it off (params is int32 already).
    with jax.enable_x64(False):
        return _sample(logits, params, max_k=max_k, debug=debug, interpret=pallas_interpret())


def integer_weights(logits: jax.Array | np.ndarray, temperature: Parameter) -> jax.Array:
    """The step-3 integer weights with top-k, top-p and min-p disabled: int32 ``[B, V]``.

    Equal to ``topk_topp_unnorm_probs_i32_unsorted`` of ``sample(logits, temperature=...,
    top_k=0, top_p=1, min_p=0, debug=True)`` on every row: ``quantize(x, m, s)`` on valid
    rows with ``temperature >= 2**-126``, ``PROB_ONE`` at ``greedy_sampled`` and 0
    elsewhere on valid greedy rows, all zeros on invalid rows. Runs the statistics kernel
    and the quantisation kernel (the samplers' own ``kernel.quantize``)."""
    validate_weights(logits, temperature, api="tops.ops")
    logits = jnp.asarray(logits)
    batch, vocab = logits.shape
    if batch == 0:
        return jnp.zeros((0, vocab), jnp.int32)
    params = pack_params(batch, vocab, vocab, temperature, 1.0, 0.0, 0, 0, 0)
    with jax.enable_x64(False):  # as in sample()
        return _integer_weights(logits, params, interpret=pallas_interpret())


@functools.partial(jax.jit, static_argnames=("interpret",))
def _integer_weights(logits, params, *, interpret):
    stats = kernel.row_stats(logits, interpret=interpret)
    return kernel.integer_weights_from_stats(logits, params, stats, interpret=interpret)


def _empty(logits, debug):
    vocab = logits.shape[1]
    tokens = jnp.zeros((0,), jnp.int32)
    valid = jnp.zeros((0,), bool)
    if not debug:
        return tokens, valid
    words = jnp.zeros((0,), jnp.uint32)
    arrays = OrderedDict(
        greedy_sampled=tokens,
        topk_logits_unsorted=jnp.zeros((0, vocab), logits.dtype),
        topk_topp_unnorm_probs_i32_unsorted=jnp.zeros((0, vocab), jnp.int32),
        random_unnorm_cdf_sampled=(words, words),
        next_tokens=tokens,
    )
    return tokens, valid, arrays


def _scatter(fill, indices, values):
    """``fill`` with ``values`` at ``indices`` of each row (index -1: dropped)."""
    batch, vocab = fill.shape
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], indices.shape)
    columns = jnp.where(indices >= 0, indices, vocab)
    return fill.at[rows, columns].set(values, mode="drop", unique_indices=True)


@functools.partial(jax.jit, static_argnames=("max_k", "debug", "interpret"))
def _sample(logits, params, *, max_k, debug, interpret):
    """Both paths for ``logits [B >= 1, V]`` and ``params [B, PARAMS]``."""
    stats = kernel.row_stats(logits, interpret=interpret)
    greedy = stats[:, kernel.S_GREEDY]
    valid = stats[:, kernel.S_VALID] > 0
    if max_k is None:
        rows = full.sample_rows(logits, params, stats, interpret=interpret, debug=debug)
        token_lane, hi_lane, lo_lane = full.R_TOKEN, full.R_DRAWN_HI, full.R_DRAWN_LO
    else:
        values, indices = topk(logits, params[:, kernel.P_TOP_K], max_k=max_k)
        probs, rows = bounded.sample_survivors(
            values.astype(jnp.float32), indices, params, stats, interpret=interpret
        )
        token_lane, hi_lane, lo_lane = bounded.R_TOKEN, bounded.R_DRAWN_HI, bounded.R_DRAWN_LO
    tokens = rows[:, token_lane]
    if not debug:
        return tokens, valid
    if max_k is None:
        key = sortable_key(logits)
        index = lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        threshold = rows[:, full.R_KTH_KEY, None]
        cutoff = rows[:, full.R_CUTOFF, None]
        kept = (key > threshold) | ((key == threshold) & (index <= cutoff))
        topk_logits = jnp.where(kept, logits, jnp.array(-jnp.inf, logits.dtype))
        weights = kernel.integer_weights_from_stats(logits, params, stats, interpret=interpret)
        keep = kept & (weights >= rows[:, full.R_LEVEL, None])
        probs_full = jnp.where(keep, weights, 0)
    else:
        fill = jnp.full(logits.shape, -jnp.inf, logits.dtype)
        topk_logits = _scatter(fill, indices, values)
        probs_full = _scatter(jnp.zeros(logits.shape, jnp.int32), indices, probs)
    words = tuple(
        lax.bitcast_convert_type(rows[:, lane], jnp.uint32) for lane in (hi_lane, lo_lane)
    )
    arrays = OrderedDict(
        greedy_sampled=greedy,
        topk_logits_unsorted=topk_logits,
        topk_topp_unnorm_probs_i32_unsorted=probs_full,
        random_unnorm_cdf_sampled=words,
        next_tokens=tokens,
    )
    return tokens, valid, arrays
