"""The bounded-k sampler (static ``max_k <= 256``): a Pallas kernel over the survivors of
the top-k op (``tops.ops.topk`` with per-row ``k``), beside its launcher.

Grid ``(cdiv(B, 8),)``. Blocks: parameters ``(8, PARAMS)``, row statistics and per-row
results ``(8, 128)`` int32; survivors' float32 values, int32 indices and int32
probabilities ``(8, roundup(max_k, 128))``.

The survivors of a row are at most ``max_k`` entries (value, vocabulary index), in the
top-k order; entries past the row's ``k`` carry index -1 and are ignored. Everything the
sampler decides is pairwise on survivors, O(max_k**2) per row, with no sort:

* ``q_j = quantize(x_j, m, s)`` and ``S = sum q_j`` (int32 limbs);
* top-p: ``A_j = sum(q_i for q_i > q_j)``, kept iff ``q_j = PROB_ONE`` or ``A_j <=
  top_p_bound(S, p16)``; min-p: ``q_j >= min_p_threshold``;
* ``S' = sum probs``, the draw (threefry, 64 attempts in lanes);
* the token: vocabulary-order prefix ``P_j = sum(probs_i for idx_i <= idx_j)``; the
  token is the smallest ``idx_j`` with ``probs_j > 0`` and ``P_j > drawn``, which is the
  first vocabulary index whose inclusive prefix sum exceeds the draw (the prefix only
  rises at survivors).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.ops.half import rows_per_block
from tops.ops.sampling.kernel import (
    INT32_MAX,
    LANES,
    PARAMS,
    PROB_ONE,
    RowParams,
    RowStats,
    draw,
    drawn_words,
    lanes_of,
    limb_add_where,
    limb_less,
    limb_row_sum,
    limb_split,
    limb_where,
    log2_scale,
    min_p_threshold,
    quantize,
    top_p_bound,
    top_p_parameters,
)

# Lanes of the per-row output block.
R_TOKEN, R_DRAWN_HI, R_DRAWN_LO = range(3)


def _column(values, position, i):
    """Column ``i`` (traced) of ``values (R, Kp)`` as ``(R, 1)``: a masked lane sum."""
    return jnp.sum(jnp.where(position == i, values, 0), axis=1, keepdims=True)


def _bounded_kernel(params_ref, stats_ref, values_ref, index_ref, probs_ref, row_ref, *, max_k):
    """Sample one row block from its top-k survivors.

    Grid ``(cdiv(B, 8),)``. Blocks: ``params_ref`` ``(8, PARAMS)`` int32 (lane
    ``P_TOP_K`` holds the row's ``min(k, max_k)``); ``stats_ref`` ``(8, 128)`` int32
    (``row_stats``); ``values_ref`` ``(8, Kp)`` float32 and ``index_ref`` ``(8, Kp)``
    int32, the survivors (``Kp = roundup(max_k, 128)``, columns past ``max_k`` are
    partial-block garbage, never used); outputs ``probs_ref`` ``(8, Kp)`` int32, the
    integer probabilities of the survivors, and ``row_ref`` ``(8, 128)`` int32 (lanes
    ``R_TOKEN``, ``R_DRAWN_HI``, ``R_DRAWN_LO``).
    """
    rows, width = values_ref.shape
    params = RowParams(params_ref[...])
    stats = RowStats(stats_ref[...])
    position = lax.broadcasted_iota(jnp.int32, (rows, width), 1)
    index = index_ref[...]
    kept = position < params.top_k
    q = jnp.where(kept, quantize(values_ref[...], stats.m, log2_scale(params.temperature)), 0)
    total = limb_row_sum(*limb_split(q))
    top_p_on, p16 = top_p_parameters(params.top_p)
    bound = top_p_bound(total, p16)
    zeros = jnp.zeros((rows, width), jnp.int32)

    def mass_above(i, acc):
        q_i = _column(q, position, i)
        return limb_add_where(acc, q_i > q, jnp.broadcast_to(q_i, q.shape))

    above = lax.fori_loop(0, max_k, mass_above, (zeros, zeros))
    keep_top_p = ~top_p_on | (q == PROB_ONE) | ~limb_less(bound, above)
    probs = jnp.where(keep_top_p & (q >= min_p_threshold(params.min_p)), q, 0)
    one_hot = jnp.where(kept & (index == stats.greedy), PROB_ONE, 0)
    probs = jnp.where(params.greedy_row, one_hot, probs)
    probs = jnp.where(stats.valid, probs, 0)
    sampling = stats.valid & ~params.greedy_row
    sampled_total = limb_row_sum(*limb_split(probs))
    sampled_total = limb_where(
        sampling, sampled_total, (jnp.zeros_like(sampled_total[0]), jnp.ones_like(sampled_total[1]))
    )
    drawn = draw(params.seed, params.step, sampled_total)
    drawn = limb_where(sampling, drawn, (jnp.zeros_like(drawn[0]), jnp.zeros_like(drawn[1])))

    def prefix(i, acc):
        at_or_before = _column(index, position, i) <= index
        return limb_add_where(
            acc, at_or_before, jnp.broadcast_to(_column(probs, position, i), q.shape)
        )

    prefix_mass = lax.fori_loop(0, max_k, prefix, (zeros, zeros))
    passed = (probs > 0) & limb_less(drawn, prefix_mass)
    token = jnp.min(jnp.where(passed, index, INT32_MAX), axis=1, keepdims=True)
    token = jnp.where(sampling, token, stats.greedy)
    probs_ref[...] = probs
    row_ref[...] = lanes_of(rows, token, *drawn_words(drawn))


def sample_survivors(values, indices, params, stats, *, interpret):
    """Launch :func:`_bounded_kernel`: survivors ``values`` float32 and ``indices`` int32
    ``[B >= 1, max_k]`` (``tops.ops.topk``), ``params [B, PARAMS]``, ``stats [B, 128]``.
    Returns ``(probs int32 [B, max_k], rows int32 [B, 128])``.

    VMEM: per block 2 inputs of ``8 x Kp x 4`` bytes, 1 output of the same and the
    ``(8, 128)`` parameter blocks, double-buffered: under 64 KiB at ``max_k = 256``; the
    pairwise loops keep a few ``(8, Kp)`` arrays live."""
    batch, max_k = values.shape
    rows = rows_per_block(values.dtype)
    width = pl.cdiv(max_k, LANES) * LANES
    survivors = pl.BlockSpec((rows, width), lambda i: (i, 0))
    row_block = pl.BlockSpec((rows, LANES), lambda i: (i, 0))
    return pl.pallas_call(
        functools.partial(_bounded_kernel, max_k=max_k),
        grid=(pl.cdiv(batch, rows),),
        in_specs=[pl.BlockSpec((rows, PARAMS), lambda i: (i, 0)), row_block, survivors, survivors],
        out_specs=[survivors, row_block],
        out_shape=[
            jax.ShapeDtypeStruct((batch, max_k), jnp.int32),
            jax.ShapeDtypeStruct((batch, LANES), jnp.int32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(params, stats, values, indices)
