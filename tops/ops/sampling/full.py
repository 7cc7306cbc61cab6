"""The arbitrary-k sampler (``max_k=None``): one Pallas kernel over whole rows, beside
its launcher.

Grid ``(cdiv(B, R),)``, ``R = half.rows_per_block``. Blocks: parameters ``(R, PARAMS)``
and row statistics ``(R, 128)`` int32, logits ``(R, Vp)`` whole rows (``Vp = roundup(V,
chunk)``), per-row results ``(R, 128)`` int32; scratch: the weights ``(R, Vp)`` int32.
Every step is a walk over the row in chunks of ``8192 / R`` columns. Every threshold is
found by a bitwise binary search whose predicate is a count or an int32-limb sum over the
row, so nothing is sorted and no step depends on float order:

1. top-k (rows with ``k < V``): the k-th largest key ``t*`` in the top-k order, the
   largest int32 ``t`` with ``count(key >= t) >= k`` (32 steps over the unsigned-offset
   bits of the key of ``tops.ops.selection.kernel.sortable_key``), then the index cutoff
   ``c`` among the ties, the smallest ``c`` with ``count(key == t*, index <= c) >= k -
   count(key > t*)`` (``ceil(log2 Vp)`` steps). Kept: ``key > t*`` or ``key == t*`` and
   ``index <= c``: exactly the first ``k`` entries of the ``(key, -index)`` order.
2. ``q = quantize(x, m, s)`` on the kept entries, stored in a VMEM scratch; ``S = sum
   q`` in int32 limbs.
3. top-p (rows with ``top_p < 1``): ``A(v) = sum(q_j for q_j > v)`` does not increase
   with ``v``, so "kept iff ``A(q) <= top_p_bound(S, p16)``" is "kept iff ``q >= v*``",
   ``v*`` the smallest ``v`` passing (31 steps over ``[0, 2**30]``). With min-p, an entry
   is kept iff ``q >= L = max(min(v*, PROB_ONE), min_p_threshold)``.
4. ``S' = sum(q for q >= L)``; the draw (threefry, 64 attempts in lanes).
5. The token: the smallest index ``c`` whose inclusive prefix ``sum(q_i for i <= c, q_i
   >= L)`` exceeds the draw (``ceil(log2 Vp)`` steps).

Blocks whose rows are all greedy or invalid skip steps 1-5 (the top-k threshold is still
found with ``debug`` for the debug array), and steps 1 and 3 run only where some row of
the block needs them. The per-row results (token, draw, ``t*``, ``c``, ``L``) leave the
kernel in one ``(R, 128)`` block; the debug arrays are rebuilt from them in the wrapper
(``integer_weights`` masked by ``kept`` and ``q >= L``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.ops.half import kernel_operand, rows_per_block, to_float32
from tops.ops.sampling.kernel import (
    BLOCKS,
    LANES,
    PARAMS,
    PROB_ONE,
    RowParams,
    RowStats,
    chunk_keys,
    chunk_width,
    draw,
    drawn_words,
    lanes_of,
    limb_add_where,
    limb_less,
    limb_row_sum,
    limb_where,
    log2_scale,
    min_p_threshold,
    quantize,
    top_p_bound,
    top_p_parameters,
)
from tops.ops.selection.kernel import EMPTY_KEY

# Lanes of the per-row output block.
R_TOKEN, R_DRAWN_HI, R_DRAWN_LO, R_KTH_KEY, R_CUTOFF, R_LEVEL = range(6)
_INT32_MIN = -(2**31)


def _lane_sum(a):
    """Row sums ``(R, 1)`` of an int32 ``(R, W)`` (slices folded to 128 lanes first)."""
    acc = a[:, :LANES]
    for j in range(1, a.shape[1] // LANES):
        acc = acc + a[:, j * LANES : (j + 1) * LANES]
    return jnp.sum(acc, axis=1, keepdims=True)


def _any(flags):
    """Scalar: whether any entry of an ``(R, 1)`` bool is true."""
    return jnp.max(flags.astype(jnp.int32)) > 0


def _full_kernel(params_ref, stats_ref, x_ref, row_ref, q_ref, *, batch, vocab, chunk, debug):
    """Sample one block of whole rows.

    Grid ``(cdiv(B, R),)``. Blocks: ``params_ref`` ``(R, PARAMS)`` int32; ``stats_ref``
    ``(R, 128)`` int32 (``row_stats``); ``x_ref`` ``(R, Vp)`` logits (columns past ``V``
    masked, rows past ``B`` of a partial block ignored); ``row_ref`` ``(R, 128)`` int32,
    lanes ``R_TOKEN``, ``R_DRAWN_HI``, ``R_DRAWN_LO``, ``R_KTH_KEY``, ``R_CUTOFF``,
    ``R_LEVEL``. Scratch: ``q_ref`` ``(R, Vp)`` int32, the kept weights.
    """
    rows, width = x_ref.shape
    n_chunks = width // chunk
    index_bits = max(1, (width - 1).bit_length())
    params = RowParams(params_ref[...])
    stats = RowStats(stats_ref[...])
    row = pl.program_id(0) * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    real = row < batch
    sampling = stats.valid & ~params.greedy_row & real
    k = params.top_k
    column = lax.broadcasted_iota(jnp.int32, (rows, chunk), 1)
    zero_col = jnp.zeros((rows, 1), jnp.int32)
    zero_chunk = jnp.zeros((rows, chunk), jnp.int32)

    def count(predicate):
        """``(R, 1)``: entries of the row where ``predicate(key, index)`` holds."""

        def body(c, acc):
            key, index, _ = chunk_keys(x_ref, chunk, pl.multiple_of(c * chunk, chunk), vocab)
            return acc + predicate(key, index).astype(jnp.int32)

        return _lane_sum(lax.fori_loop(0, n_chunks, body, zero_chunk))

    def weight_sum(predicate):
        """``(R, 1)`` limbs: the sum of the stored ``q`` where ``predicate(q, index)``."""

        def body(c, acc):
            col0 = pl.multiple_of(c * chunk, chunk)
            q = q_ref[:, pl.ds(col0, chunk)]
            return limb_add_where(acc, predicate(q, col0 + column), q)

        return limb_row_sum(*lax.fori_loop(0, n_chunks, body, (zero_chunk, zero_chunk)))

    # 1. The top-k threshold.
    search_k = real & (k < vocab) & (sampling if not debug else True)

    def topk_search():
        def key_bit(i, t):
            candidate = t ^ (jnp.int32(1) << (31 - i))  # sets bit 31 - i of key + 2**31
            return jnp.where(count(lambda key, index: key >= candidate) >= k, candidate, t)

        kth = lax.fori_loop(0, 32, key_bit, jnp.full((rows, 1), _INT32_MIN, jnp.int32))
        need = k - count(lambda key, index: key > kth)

        def index_bit(i, acc):
            candidate = acc + (jnp.int32(1) << (index_bits - 1 - i))
            ties = count(lambda key, index: (key == kth) & (index < candidate))
            return jnp.where(ties < need, candidate, acc)

        cutoff = lax.fori_loop(0, index_bits, index_bit, zero_col)
        return jnp.where(search_k, kth, EMPTY_KEY), jnp.where(search_k, cutoff, -1)

    def keep_all():
        return jnp.full((rows, 1), EMPTY_KEY, jnp.int32), jnp.full((rows, 1), -1, jnp.int32)

    kth, cutoff = lax.cond(_any(search_k), topk_search, keep_all)

    def sample_block():
        # 2. Weights of the kept entries and their sum.
        s = log2_scale(params.temperature)

        def weigh(c, acc):
            col0 = pl.multiple_of(c * chunk, chunk)
            key, index, x = chunk_keys(x_ref, chunk, col0, vocab)
            kept = ((key > kth) | ((key == kth) & (index <= cutoff))) & (index < vocab)
            q = jnp.where(kept, quantize(to_float32(x), stats.m, s), 0)
            q_ref[:, pl.ds(col0, chunk)] = q
            return limb_add_where(acc, True, q)

        total = limb_row_sum(*lax.fori_loop(0, n_chunks, weigh, (zero_chunk, zero_chunk)))

        # 3. The top-p level v* and the combined level L.
        top_p_on, p16 = top_p_parameters(params.top_p)
        bound = top_p_bound(total, p16)
        search_p = sampling & top_p_on & (p16 > 0)

        def topp_search():
            def level_bit(i, acc):
                candidate = acc + (jnp.int32(1) << (30 - i))
                mass = weight_sum(lambda q, index: q >= candidate)
                return jnp.where(limb_less(bound, mass), candidate, acc)

            return lax.fori_loop(0, 31, level_bit, zero_col)

        v_star = lax.cond(_any(search_p), topp_search, lambda: zero_col)
        level_p = jnp.where(
            top_p_on, jnp.where(p16 > 0, jnp.minimum(v_star, PROB_ONE), PROB_ONE), 0
        )
        level = jnp.maximum(level_p, min_p_threshold(params.min_p))

        # 4. The draw.
        sampled_total = weight_sum(lambda q, index: q >= level)
        one = (zero_col, zero_col + 1)
        drawn = draw(params.seed, params.step, limb_where(sampling, sampled_total, one))
        drawn = limb_where(sampling, drawn, (zero_col, zero_col))

        # 5. The first index whose inclusive prefix sum exceeds the draw.
        def token_bit(i, acc):
            candidate = acc + (jnp.int32(1) << (index_bits - 1 - i))
            mass = weight_sum(lambda q, index: (q >= level) & (index < candidate))
            return jnp.where(limb_less(drawn, mass), acc, candidate)

        token = lax.fori_loop(0, index_bits, token_bit, zero_col)
        token = jnp.where(sampling, token, stats.greedy)
        return (token, *drawn_words(drawn), jnp.where(sampling, level, 0))

    def greedy_block():
        return stats.greedy, zero_col, zero_col, zero_col

    token, drawn_hi, drawn_lo, level = lax.cond(_any(sampling), sample_block, greedy_block)
    row_ref[...] = lanes_of(rows, token, drawn_hi, drawn_lo, kth, cutoff, level)


def sample_rows(logits, params, stats, *, interpret, debug=True):
    """Launch :func:`_full_kernel` on ``logits [B >= 1, V]``, ``params [B, PARAMS]``,
    ``stats [B, 128]``: int32 ``[B, 128]`` per-row results. ``debug`` finds the top-k
    threshold of greedy and invalid rows too (for the debug array)."""
    batch, vocab = logits.shape
    rows = rows_per_block(logits.dtype)
    chunk = chunk_width(vocab, rows)
    width = pl.cdiv(vocab, chunk) * chunk
    row_block = pl.BlockSpec((rows, LANES), lambda i: (i, 0))
    # The rows double-buffered and the int32 weights: at V = 2**18, 24 MiB for float32
    # (R = 8), 32 MiB for 16-bit logits (R = 16), inside v5p's 64 MiB, the smallest VMEM
    # of tops.compile_only.TPU_CHIPS.
    vmem = 2 * rows * width * logits.dtype.itemsize + rows * width * 4 + BLOCKS.vmem_headroom_bytes
    return pl.pallas_call(
        functools.partial(_full_kernel, batch=batch, vocab=vocab, chunk=chunk, debug=debug),
        grid=(pl.cdiv(batch, rows),),
        in_specs=[
            pl.BlockSpec((rows, PARAMS), lambda i: (i, 0)),
            row_block,
            pl.BlockSpec((rows, width), lambda i: (i, 0)),
        ],
        out_specs=row_block,
        out_shape=jax.ShapeDtypeStruct((batch, LANES), jnp.int32),
        scratch_shapes=[pltpu.VMEM((rows, width), jnp.int32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=vmem
        ),
        interpret=interpret,
    )(params, stats, kernel_operand(logits))
