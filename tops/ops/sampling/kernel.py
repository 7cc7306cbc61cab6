"""The exact arithmetic shared by the Pallas sampling kernels, the row-statistics kernel
and the integer-weights kernel, each kernel beside its launcher.

Every value that decides a token is int32 arithmetic or the float32 sequence of
``tops/cpu/sampling.py``, written here once (:func:`log2_scale`, :func:`quantize`,
:func:`threefry2x32`, the int32-limb helpers). Both kernels run the grid ``(cdiv(B, R),
cdiv(V, BV))``, ``R = half.rows_per_block``, ``BV`` from ``BLOCKS``: ``_stats_kernel``
reads logits ``(R, BV)`` and writes ``(R, 128)`` int32 row statistics at the last
vocabulary block; ``_weights_kernel`` reads parameters ``(R, PARAMS)``, statistics
``(R, 128)`` and logits ``(R, BV)`` and writes ``(R, BV)`` int32 weights. The samplers
are in ``bounded.py`` (survivors of the top-k op) and ``full.py`` (whole rows).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.compile_only import PallasConfig
from tops.ops.half import kernel_operand, rows_per_block, to_float32
from tops.ops.selection.kernel import EMPTY_KEY, sortable_key
from tops.spec.sampling import (
    EXP_COEFFICIENTS,
    LN2,
    LOG2E,
    MAX_ATTEMPTS,
    NEWTON_A,
    NEWTON_B,
    NEWTON_STEPS,
    PROB_BITS,
    PROB_ONE,
    RECIPROCAL_LIMIT,
    THREEFRY_PARITY,
    THREEFRY_ROTATIONS,
    THREEFRY_ROUNDS,
    TINY,
    TOP_P_BITS,
)

LANES = 128
INT32_MAX = np.iinfo(np.int32).max
_EXPONENT_MASK = 0x7F800000
_MAGNITUDE_BITS = 0x7FFFFFFF
LIMB_BITS = 24
LIMB_MASK = (1 << LIMB_BITS) - 1
# Per-row parameters, packed as int32 bit patterns into one [B, PARAMS] array.
PARAMS = 8
P_TEMPERATURE, P_TOP_P, P_MIN_P, P_TOP_K, P_SEED, P_STEP = range(6)
# Per-row statistics [B, 128] int32 (lanes): the maximum key, its first index, validity.
S_MAX_KEY, S_GREEDY, S_VALID = range(3)


@dataclasses.dataclass(frozen=True)
class SamplingBlocks:
    """Launch constants of the sampling kernels."""

    # Elements per loop step of the vocabulary walks: 8 vregs of 32-bit values.
    chunk_elements: int = 8 * 1024
    # Vocabulary block of the statistics and integer-weights kernels, in chunks.
    block_chunks: int = 16
    # VMEM headroom of the whole-row sampler above its rows and weights.
    vmem_headroom_bytes: int = 8 * 2**20


BLOCKS = SamplingBlocks()


def chunk_width(vocab: int, rows: int) -> int:
    """Columns per loop step: ``BLOCKS.chunk_elements / rows`` (1024 or 512), or the
    128-padded row when narrower."""
    return min(BLOCKS.chunk_elements // rows, pl.cdiv(vocab, LANES) * LANES)


# ---------------------------------------------------------------------------------------
# Float32 arithmetic of the reference (tops/cpu/sampling.py), written once.


def _f32(bits):
    return lax.bitcast_convert_type(bits, jnp.float32)


def _i32(value):
    return lax.bitcast_convert_type(value, jnp.int32)


def _unfused_product(a, b):
    """``a * b`` rounded on its own, for ``|a * b| <= 2**64`` (here at most 2): the clamp
    to ``[-2**64, 2**64]`` is the identity on such products, and it stands between the
    multiply and the add that follows, so no compiler can contract the two into a fused
    multiply-add. The reference (NumPy) never contracts; XLA:CPU, which runs interpret
    mode, does contract a bare ``c + a * b``
    (``test_tpu_a_contracted_multiply_add_is_caught``). Every product that feeds an add
    (Newton steps, Horner steps) goes through here; the others feed no add."""
    limit = jnp.float32(2.0**64)
    return jnp.maximum(jnp.minimum(a * b, limit), -limit)


def flush_subnormal(a):
    """float32 ``a`` with zeros and subnormals replaced by ``+0.0`` (exponent-field test),
    as the reference flushes ``x``, ``m``, ``d`` and ``w``: TPUs flush subnormals, XLA:CPU
    may not, and the result must not depend on the platform's denormal mode."""
    return jnp.where((_i32(a) & _EXPONENT_MASK) == 0, jnp.float32(0), a)


def key_value(key):
    """The float32 whose ``sortable_key`` is ``key`` (the map is an involution on the
    non-NaN keys)."""
    return _f32(key ^ ((key >> 31) & _MAGNITUDE_BITS))


def log2_scale(temperature):
    """``s = reciprocal(T) * LOG2E`` in float32 (reference ``reciprocal``): 0 unless
    ``TINY <= T < RECIPROCAL_LIMIT``; otherwise ``T = M 2**E``, ``y = A - B M`` and
    ``NEWTON_STEPS`` steps ``y = y (2 - M y)``, scaled exactly by ``2**-E``."""
    t = temperature
    in_range = (t >= jnp.float32(TINY)) & (t < jnp.float32(RECIPROCAL_LIMIT))
    bits = _i32(jnp.where(in_range, t, jnp.float32(1)))
    biased_exponent = (bits >> 23) & 0xFF
    mantissa = _f32((bits & 0x7FFFFF) | 0x3F800000)
    y = jnp.float32(NEWTON_A) - _unfused_product(mantissa, jnp.float32(NEWTON_B))
    for _ in range(NEWTON_STEPS):
        y = y * (jnp.float32(2) - _unfused_product(mantissa, y))
    inverse_scale = _f32((254 - biased_exponent) << 23)
    return jnp.where(in_range, y * inverse_scale, jnp.float32(0)) * jnp.float32(LOG2E)


def quantize(x, m, s):
    """int32 weights in ``[0, PROB_ONE]`` (reference ``quantize``): ``d = m - x`` (0 where
    ``x == m``), ``w = d s`` with ``x``, ``m``, ``d``, ``w`` flushed; ``w >= 31`` or NaN
    gives 0; else ``n = floor(w)``, ``t = (w - n) LN2``, ``r`` = Horner of the Taylor
    polynomial of ``exp(-t)`` and ``q = floor(r 2**(30 - n))``. float32 ``x``, ``m``,
    ``s`` (broadcast)."""
    x = flush_subnormal(x)
    m = flush_subnormal(m)
    d = flush_subnormal(jnp.where(x == m, jnp.float32(0), m - x))
    w = flush_subnormal(d * s)
    in_range = w < jnp.float32(PROB_BITS + 1)
    w = jnp.where(in_range, w, jnp.float32(0))
    n = jnp.floor(w)
    t = (w - n) * jnp.float32(LN2)
    r = jnp.float32(EXP_COEFFICIENTS[-1])
    for coefficient in EXP_COEFFICIENTS[-2::-1]:
        r = jnp.float32(coefficient) + _unfused_product(t, r)
    scale = _f32((127 + PROB_BITS - n.astype(jnp.int32)) << 23)
    q = jnp.floor(r * scale).astype(jnp.int32)
    return jnp.where(in_range, q, 0)


def min_p_threshold(min_p):
    """int32 ``ceil(min(min_p, 1) PROB_ONE)``, 0 when ``min_p <= 2**-31`` or NaN."""
    enabled = min_p > jnp.float32(2.0**-31)
    clipped = jnp.minimum(jnp.where(enabled, min_p, jnp.float32(0)), jnp.float32(1))
    return jnp.ceil(clipped * jnp.float32(PROB_ONE)).astype(jnp.int32)


def top_p_parameters(top_p):
    """``(enabled, p16)``: top-p is on iff ``top_p < 1``; ``p16 = floor(max(top_p, 0)
    2**16)`` as int32 in ``[0, 2**16)`` when on."""
    enabled = top_p < jnp.float32(1)
    p = jnp.maximum(jnp.where(enabled, top_p, jnp.float32(1)), jnp.float32(0))
    return enabled, jnp.floor(p * jnp.float32(2**TOP_P_BITS)).astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# Integers below 2**48 (sums of up to 2**18 weights of at most 2**30) as two int32 limbs
# (hi, lo): value hi * 2**24 + lo, 0 <= lo < 2**24, renormalised after each addition, so
# JAX's x64 mode is never needed.


def limb_split(q):
    """Canonical limbs of a non-negative int32."""
    return q >> LIMB_BITS, q & LIMB_MASK


def limb_norm(hi, lo):
    """Carry ``lo``'s bits past 24 into ``hi`` (``lo >= 0``)."""
    return hi + (lo >> LIMB_BITS), lo & LIMB_MASK


def limb_add_where(acc, mask, q):
    """``acc + where(mask, q, 0)`` for canonical ``acc`` and int32 ``0 <= q < 2**31``."""
    hi, lo = limb_split(q)
    return limb_norm(acc[0] + jnp.where(mask, hi, 0), acc[1] + jnp.where(mask, lo, 0))


def limb_less(a, b):
    """``a < b`` for canonical limbs (``hi`` may be negative: -1 encodes a value below 0)."""
    return (a[0] < b[0]) | ((a[0] == b[0]) & (a[1] < b[1]))


def limb_sub(a, b):
    """``a - b`` for canonical limbs with ``a >= b``."""
    lo = a[1] - b[1]
    borrow = (lo < 0).astype(jnp.int32)
    return a[0] - b[0] - borrow, lo + (borrow << LIMB_BITS)


def limb_where(mask, a, b):
    return jnp.where(mask, a[0], b[0]), jnp.where(mask, a[1], b[1])


def limb_row_sum(hi, lo):
    """Row sums ``(R, 1)`` of canonical limbs ``(R, W)``, ``W`` a multiple of 128: the
    128-lane slices are added (renormalised every 64), then the lanes."""
    width = lo.shape[1]
    acc_hi, acc_lo = hi[:, :LANES], lo[:, :LANES]
    for j in range(1, width // LANES):
        acc_hi = acc_hi + hi[:, j * LANES : (j + 1) * LANES]
        acc_lo = acc_lo + lo[:, j * LANES : (j + 1) * LANES]
        if j % 64 == 63:
            acc_hi, acc_lo = limb_norm(acc_hi, acc_lo)
    acc_hi, acc_lo = limb_norm(acc_hi, acc_lo)
    return limb_norm(jnp.sum(acc_hi, axis=1, keepdims=True), jnp.sum(acc_lo, axis=1, keepdims=True))


def top_p_bound(total, p16):
    """``floor((p16 * S - 1) / 2**16)`` as canonical limbs, for ``S = total`` (canonical,
    below 2**48) and ``0 <= p16 < 2**16``: an entry passes top-p iff the mass strictly
    above it is at most this (``A * 2**16 < p16 * S``). When ``p16 * S = 0`` nothing
    passes: the bound is ``(-1, 0)``, below every mass. The product is formed in 12-bit
    limbs (each partial product below 2**28)."""
    hi, lo = total
    parts = (lo & 0xFFF, lo >> 12, hi & 0xFFF, hi >> 12)
    digits, carry = [], 0
    for i in range(6):
        value = (p16 * parts[i] if i < 4 else 0) + carry
        digits.append(value & 0xFFF)
        carry = value >> 12
    borrow = 1
    for i in range(6):
        value = digits[i] - borrow
        borrow = (value < 0).astype(jnp.int32)
        digits[i] = value + (borrow << 12)
    shifted = [(digits[j + 1] >> 4) | ((digits[j + 2] & 0xF) << 8) for j in range(4)]
    bound = (shifted[2] | (shifted[3] << 12), shifted[0] | (shifted[1] << 12))
    positive = (p16 > 0) & ((hi > 0) | (lo > 0))
    return limb_where(positive, bound, (jnp.full_like(hi, -1), jnp.zeros_like(lo)))


# ---------------------------------------------------------------------------------------
# threefry2x32 and the draw. pltpu.prng_random_bits returns zeros in interpret mode, so
# threefry2x32 is written out with int32 add, xor and shifts: the same bits everywhere.


def _rotate_left(x, r):
    return (x << r) | lax.shift_right_logical(x, jnp.full_like(x, 32 - r))


def threefry2x32(key0, key1, x0, x1):
    """threefry2x32 with 20 rounds on int32 bit patterns (broadcast): the two words.
    int32 addition wraps, so the bits are those of the uint32 reference."""
    key0, key1, x0, x1 = jnp.broadcast_arrays(key0, key1, x0, x1)
    keys = (key0, key1, key0 ^ key1 ^ THREEFRY_PARITY)
    x0 = x0 + keys[0]
    x1 = x1 + keys[1]
    for round_index in range(THREEFRY_ROUNDS):
        x0 = x0 + x1
        x1 = _rotate_left(x1, THREEFRY_ROTATIONS[round_index % 8])
        x1 = x1 ^ x0
        if round_index % 4 == 3:
            injection = (round_index + 1) // 4
            x0 = x0 + keys[injection % 3]
            x1 = x1 + keys[(injection + 1) % 3] + injection
    return x0, x1


def _bit_length_24(value):
    """``int(v).bit_length()`` for int32 ``0 <= v < 2**24``."""
    length = jnp.zeros_like(value)
    for j in range(LIMB_BITS):
        length = length + (value >= (1 << j)).astype(jnp.int32)
    return length


def draw(seed, step, total):
    """Rejection sampling of a uniform integer in ``[0, total)`` (reference
    ``tops.cpu.sampling.draw``), rows ``(R, 1)``: ``seed``, ``step`` int32 bit patterns,
    ``total >= 1`` canonical limbs; returns canonical limbs. Attempt ``a`` is lane ``a`` of
    one threefry call."""
    rows = seed.shape[0]
    lane = lax.broadcasted_iota(jnp.int32, (rows, LANES), 1)
    hi, lo = threefry2x32(seed, step, lane, jnp.zeros_like(lane))
    below = limb_sub(total, (jnp.zeros_like(total[0]), jnp.ones_like(total[1])))
    bits = jnp.where(below[0] > 0, LIMB_BITS + _bit_length_24(below[0]), _bit_length_24(below[1]))
    low_mask = jnp.where(bits >= 32, -1, (1 << jnp.minimum(bits, 31)) - 1)
    high_mask = (1 << jnp.maximum(bits - 32, 0)) - 1
    hi = hi & high_mask
    lo = lo & low_mask
    value = (lax.shift_right_logical(lo, jnp.full_like(lo, LIMB_BITS)) | (hi << 8), lo & LIMB_MASK)
    accept = (lane < MAX_ATTEMPTS) & limb_less(value, total)
    first = jnp.min(jnp.where(accept, lane, LANES), axis=1, keepdims=True)
    accepted = first < MAX_ATTEMPTS
    pick = lane == jnp.where(accepted, first, MAX_ATTEMPTS - 1)
    chosen = tuple(jnp.sum(jnp.where(pick, v, 0), axis=1, keepdims=True) for v in value)
    return limb_where(accepted, chosen, limb_sub(chosen, total))


def drawn_words(drawn):
    """``(drawn >> 32, drawn & 0xFFFFFFFF)`` as int32 bit patterns of canonical limbs."""
    hi, lo = drawn
    return hi >> 8, lo | (hi << LIMB_BITS)


# ---------------------------------------------------------------------------------------
# Per-row parameters.


class RowParams:
    """The per-row parameters of a ``(R, PARAMS)`` int32 block, each ``(R, 1)``."""

    def __init__(self, params):
        self.temperature = _f32(params[:, P_TEMPERATURE : P_TEMPERATURE + 1])
        self.top_p = _f32(params[:, P_TOP_P : P_TOP_P + 1])
        self.min_p = _f32(params[:, P_MIN_P : P_MIN_P + 1])
        self.top_k = params[:, P_TOP_K : P_TOP_K + 1]
        self.seed = params[:, P_SEED : P_SEED + 1]
        self.step = params[:, P_STEP : P_STEP + 1]
        self.greedy_row = ~(self.temperature >= jnp.float32(TINY))


class RowStats:
    """The per-row statistics of a ``(R, 128)`` int32 block, each ``(R, 1)``."""

    def __init__(self, stats):
        self.max_key = stats[:, S_MAX_KEY : S_MAX_KEY + 1]
        self.greedy = stats[:, S_GREEDY : S_GREEDY + 1]
        self.valid = stats[:, S_VALID : S_VALID + 1] > 0
        self.m = key_value(self.max_key)


def lanes_of(rows, *values):
    """An ``(R, 128)`` int32 block holding ``values[j]`` (each ``(R, 1)``) in lane ``j``."""
    lane = lax.broadcasted_iota(jnp.int32, (rows, LANES), 1)
    out = jnp.zeros((rows, LANES), jnp.int32)
    for j, value in enumerate(values):
        out = jnp.where(lane == j, value.astype(jnp.int32), out)
    return out


def chunk_keys(x_ref, chunk, col0, vocab):
    """Keys and column indices ``(R, chunk)`` of one chunk; columns past ``V`` get
    ``EMPTY_KEY``."""
    rows = x_ref.shape[0]
    index = col0 + lax.broadcasted_iota(jnp.int32, (rows, chunk), 1)
    x = x_ref[:, pl.ds(col0, chunk)]
    return jnp.where(index < vocab, sortable_key(x), EMPTY_KEY), index, x


# ---------------------------------------------------------------------------------------
# Row statistics kernel.


def _better(key, index, best_key, best_index):
    """``(key, index)`` ranks above ``(best_key, best_index)``: larger key, then lower index."""
    return (key > best_key) | ((key == best_key) & (index < best_index))


def _stats_kernel(x_ref, out_ref, key_acc, index_acc, flag_acc, *, vocab, chunk):
    """Per row: the maximum key (top-k order), its first index, and ``valid`` (no NaN and
    some finite logit).

    Grid ``(cdiv(B, R), cdiv(V, BV))``, the vocabulary axis last and sequential. Blocks:
    ``x_ref`` ``(R, BV)`` logits (``BV`` a multiple of ``chunk``; columns past ``V``
    masked); ``out_ref`` ``(R, 128)`` int32, lanes ``S_MAX_KEY``, ``S_GREEDY``, ``S_VALID``,
    written at the last block. Scratch ``(R, chunk)`` int32: each lane position's best key
    and its index, and flags (bit 0: a NaN seen, bit 1: a finite value seen).
    """
    j = pl.program_id(1)
    rows, block = x_ref.shape

    @pl.when(j == 0)
    def _init():
        key_acc[...] = jnp.full((rows, chunk), EMPTY_KEY, jnp.int32)
        index_acc[...] = jnp.full((rows, chunk), INT32_MAX, jnp.int32)
        flag_acc[...] = jnp.zeros((rows, chunk), jnp.int32)

    def body(c, carry):
        best_key, best_index, flags = carry
        col0 = pl.multiple_of(c * chunk, chunk)
        key, index, x = chunk_keys(x_ref, chunk, col0, vocab - j * block)
        x = to_float32(x)
        real = index < vocab - j * block
        better = key > best_key  # lanes see increasing indices: strict keeps the first
        flags = (
            flags | jnp.where(real & jnp.isnan(x), 1, 0) | jnp.where(real & jnp.isfinite(x), 2, 0)
        )
        return (
            jnp.where(better, key, best_key),
            jnp.where(better, index + j * block, best_index),
            flags,
        )

    best_key, best_index, flags = lax.fori_loop(
        0, block // chunk, body, (key_acc[...], index_acc[...], flag_acc[...])
    )
    key_acc[...] = best_key
    index_acc[...] = best_index
    flag_acc[...] = flags

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        key, index, flag = best_key[:, :LANES], best_index[:, :LANES], flags[:, :LANES]
        for s in range(1, chunk // LANES):
            other_key = best_key[:, s * LANES : (s + 1) * LANES]
            other_index = best_index[:, s * LANES : (s + 1) * LANES]
            take = _better(other_key, other_index, key, index)
            key = jnp.where(take, other_key, key)
            index = jnp.where(take, other_index, index)
            flag = flag | flags[:, s * LANES : (s + 1) * LANES]
        max_key = jnp.max(key, axis=1, keepdims=True)
        first = jnp.min(jnp.where(key == max_key, index, INT32_MAX), axis=1, keepdims=True)
        any_nan = jnp.max(flag & 1, axis=1, keepdims=True) > 0
        any_finite = jnp.max(flag & 2, axis=1, keepdims=True) > 0
        out_ref[...] = lanes_of(rows, max_key, first, ~any_nan & any_finite)


def _vocab_blocks(logits: jax.Array) -> tuple[int, int, int, tuple[int, int]]:
    """``(R, chunk, BV, grid)`` of the kernels that walk ``logits [B, V]`` in vocabulary
    blocks of ``BLOCKS.block_chunks`` chunks, grid ``(cdiv(B, R), cdiv(V, BV))``."""
    batch, vocab = logits.shape
    rows = rows_per_block(logits.dtype)
    chunk = chunk_width(vocab, rows)
    block = min(pl.cdiv(vocab, chunk), BLOCKS.block_chunks) * chunk
    return rows, chunk, block, (pl.cdiv(batch, rows), pl.cdiv(vocab, block))


def row_stats(logits, *, interpret):
    """Launch :func:`_stats_kernel` on ``logits [B >= 1, V]``: int32 ``[B, 128]``.

    ``BV = BLOCKS.block_chunks`` chunks of ``8192 / R`` columns (16384 for float32, 8192
    for the 16-bit dtypes): 512 KiB or 256 KiB per input buffer, 96 KiB of scratch."""
    batch, vocab = logits.shape
    rows, chunk, block, grid = _vocab_blocks(logits)
    return pl.pallas_call(
        functools.partial(_stats_kernel, vocab=vocab, chunk=chunk),
        grid=grid,
        in_specs=[pl.BlockSpec((rows, block), lambda i, j: (i, j))],
        out_specs=pl.BlockSpec((rows, LANES), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, LANES), jnp.int32),
        scratch_shapes=[pltpu.VMEM((rows, chunk), jnp.int32)] * 3,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(kernel_operand(logits))


# ---------------------------------------------------------------------------------------
# Integer weights kernel.


def _weights_kernel(params_ref, stats_ref, x_ref, out_ref, *, vocab, chunk):
    """Step-3 integer weights with top-k, top-p and min-p off: ``quantize(x, m, s)`` on
    valid sampling rows, ``PROB_ONE`` at the greedy index on greedy rows, 0 on invalid
    rows and past ``V``.

    Grid ``(cdiv(B, R), cdiv(V, BV))``, both parallel. Blocks: ``params_ref`` ``(R,
    PARAMS)`` int32; ``stats_ref`` ``(R, 128)`` int32 (:func:`_stats_kernel`); ``x_ref``
    ``(R, BV)`` logits; ``out_ref`` ``(R, BV)`` int32.
    """
    rows, block = x_ref.shape
    params = RowParams(params_ref[...])
    stats = RowStats(stats_ref[...])
    s = log2_scale(params.temperature)
    col_base = pl.program_id(1) * block

    def body(c, carry):
        col0 = pl.multiple_of(c * chunk, chunk)
        index = col_base + col0 + lax.broadcasted_iota(jnp.int32, (rows, chunk), 1)
        x = to_float32(x_ref[:, pl.ds(col0, chunk)])
        q = quantize(x, stats.m, s)
        one_hot = jnp.where(index == stats.greedy, PROB_ONE, 0)
        q = jnp.where(params.greedy_row, one_hot, q)
        out_ref[:, pl.ds(col0, chunk)] = jnp.where(stats.valid & (index < vocab), q, 0)
        return carry

    lax.fori_loop(0, block // chunk, body, 0)


def integer_weights_from_stats(logits, params, stats, *, interpret):
    """Launch :func:`_weights_kernel`: ``logits [B >= 1, V]``, ``params [B, PARAMS]``,
    ``stats [B, 128]`` (``row_stats``); int32 ``[B, V]``. Blocks as in :func:`row_stats`;
    the int32 output block is 512 KiB, about 2 MiB of VMEM double-buffered in all."""
    batch, vocab = logits.shape
    rows, chunk, block, grid = _vocab_blocks(logits)
    return pl.pallas_call(
        functools.partial(_weights_kernel, vocab=vocab, chunk=chunk),
        grid=grid,
        in_specs=[
            pl.BlockSpec((rows, PARAMS), lambda i, j: (i, 0)),
            pl.BlockSpec((rows, LANES), lambda i, j: (i, 0)),
            pl.BlockSpec((rows, block), lambda i, j: (i, j)),
        ],
        out_specs=pl.BlockSpec((rows, block), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((batch, vocab), jnp.int32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(params, stats, kernel_operand(logits))


# ---------------------------------------------------------------------------------------
# Shipped configurations.


def shipped_configs() -> list[PallasConfig]:
    """Every shipped Pallas configuration for the TPU compile check, through the public
    wrappers, for each logits dtype: the arbitrary-k path at ``V = 1`` (one chunk), 1000 (a
    partial chunk), 128256 and ``2**18`` (the widest rows, the largest VMEM footprint), with and
    without ``debug``; the bounded-k path at ``max_k = 1, 64, 256`` (``V = 50257``, ``1000`` and
    ``2**18``); and ``integer_weights`` at ``V = 1000`` and ``2**18`` (several vocabulary
    blocks). ``B = 13`` leaves a partial row block; every parameter is a per-row array."""
    from tops.ops.sampling import integer_weights

    configs = []
    for dtype in ("bfloat16", "float16", "float32"):
        for vocab, max_k, debug in (
            (1, None, True),
            (1000, None, True),
            (128256, None, False),
            (2**18, None, True),
            (1, 1, True),
            (50257, 1, False),
            (50257, 64, True),
            (1000, 256, True),
            (2**18, 256, False),
        ):
            configs.append(_sample_config(13, vocab, dtype, max_k, debug))
        for vocab in (1000, 2**18):
            x = jax.ShapeDtypeStruct((13, vocab), jnp.dtype(dtype))
            f32 = jax.ShapeDtypeStruct((13,), jnp.float32)
            configs.append(
                PallasConfig(f"integer_weights_{dtype}_V{vocab}", integer_weights, (x, f32))
            )
    return configs


def production_configs() -> list[PallasConfig]:
    """The production shapes, both paths (arbitrary-k, bounded ``max_k = 64``) without
    ``debug``: ``B`` in {16, 128} x ``V`` in {128256, 151936, 201088, 262144}, bf16 and
    f32."""
    return [
        _sample_config(batch, vocab, dtype, max_k, False)
        for batch in (16, 128)
        for vocab in (128256, 151936, 201088, 262144)
        for dtype in ("bfloat16", "float32")
        for max_k in (None, 64)
    ]


def _sample_config(
    batch: int, vocab: int, dtype: str, max_k: int | None, debug: bool
) -> PallasConfig:
    from tops.ops.sampling import sample

    names = ("temperature", "top_k", "top_p", "min_p", "seed", "step")

    def fn(x, *parameters):
        return sample(x, **dict(zip(names, parameters, strict=True)), max_k=max_k, debug=debug)

    f32 = jax.ShapeDtypeStruct((batch,), jnp.float32)
    i32 = jax.ShapeDtypeStruct((batch,), jnp.int32)
    u32 = jax.ShapeDtypeStruct((batch,), jnp.uint32)
    x = jax.ShapeDtypeStruct((batch, vocab), jnp.dtype(dtype))
    path = "full" if max_k is None else f"bounded{max_k}"
    name = f"sample_{path}_{dtype}_B{batch}_V{vocab}" + ("_debug" if debug else "")
    return PallasConfig(name, fn, (x, f32, i32, f32, f32, u32, i32))
