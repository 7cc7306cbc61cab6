"""Pallas TPU kernels for temperature softmax and its backward, each beside its launcher.

Row blocks of ``R`` rows (``half.rows_per_block``: 8 for float32, 16 for 16-bit logits;
8 for the float32 backward), the vocabulary walked in 128-lane slices, each lane keeping
its own running max, first arg-max and double-float sum (``tops.ops.double_float``),
combined per row at the end. Columns past ``V`` and rows past ``B`` are partial blocks.

* ``single_pass`` (``Vp <= BLOCKS.single_pass_max_v``): grid ``(cdiv(B, R),)``; blocks
  ``t`` ``(R, 1)``, logits and probabilities ``(R, Vp)``, ``Vp = roundup(V, 128)``.
* ``two_pass``: grid ``(cdiv(B, R), cdiv(V, BV))``; a statistics kernel (logits
  ``(R, BV)`` in, five ``(R, 128)`` row statistics out) then a normalise kernel
  (``(R, BV)`` probabilities out).
* ``grad_single_pass`` / ``grad_two_pass``: the same two shapes for
  ``dx = p * (g - s) / T``, ``s = sum(p * g) / sum(p)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.compile_only import PallasConfig
from tops.ops.double_float import add_dd, div_dd_to_f32, exp_dd, mul_dd, two_prod, two_sum
from tops.ops.half import kernel_operand, rows_per_block, to_float32
from tops.spec.temperature_softmax import SMALLEST_NORMAL_F32, UNIFORM_TEMPERATURE

LANES = 128


@dataclasses.dataclass(frozen=True)
class SoftmaxBlocks:
    """Launch constants of the softmax kernels."""

    # Whole rows stay in VMEM up to this many (128-padded) columns: 8 float32 rows of
    # 32768 columns is 1 MiB per buffer, 4 MiB double-buffered in and out, inside v5e's
    # 16 MiB default scoped VMEM (chosen from the budget, not a measured crossover).
    single_pass_max_v: int = 32768
    # Vocabulary block of the two-pass kernels.
    two_pass_block_v: int = 8192


BLOCKS = SoftmaxBlocks()
_INT_MAX = jnp.iinfo(jnp.int32).max
_BUTTERFLY_SHIFTS = (64, 32, 16, 8, 4, 2, 1)
_LIFT_LOG2 = 8
_UNLIFT = 2.0**-_LIFT_LOG2


def row_width(vocab: int) -> int:
    """Columns of a whole-row block: ``V`` rounded up to the 128 lanes."""
    return pl.cdiv(vocab, LANES) * LANES


# ---------------------------------------------------------------------------------------
# Per-row and per-slice arithmetic shared by the kernels.


class _RowParams:
    """Per-row temperature decoded into the cases of the contract, shape ``(R, 1)``."""

    def __init__(self, t):
        self.invalid = jnp.isnan(t) | (t < 0.0)
        self.greedy = t < SMALLEST_NORMAL_F32
        self.uniform = t >= UNIFORM_TEMPERATURE
        self.t_safe = jnp.where(self.invalid | self.greedy | self.uniform, 1.0, t)
        self.inv_t = 1.0 / self.t_safe


def _scaled_gap(x, m, row: _RowParams):
    """``(x - m) / T`` as a double-float, with the special values masked *before* exp.

    ``x`` has no NaN; ``m >= x``. The gap is ``-inf`` where ``x`` is ``-inf`` or where
    ``m`` is ``+inf`` and ``x`` is not, and ``0`` where ``x == m`` or the temperature
    counts as infinite; elsewhere both operands are finite and the difference and the
    quotient are carried to about 2**-44 (TwoSum, then the division residual through
    TwoProduct).
    """
    dropped = (x == -jnp.inf) | ((m == jnp.inf) & (x != m))
    at_max = (x == m) & ~dropped
    finite = ~(dropped | at_max)
    d_hi, d_lo = two_sum(jnp.where(finite, x, 0.0), -jnp.where(finite, m, 0.0))
    y_hi = d_hi * row.inv_t
    p, p_err = two_prod(y_hi, row.t_safe)
    y_lo = (((d_hi - p) - p_err) + d_lo) * row.inv_t
    y_hi = jnp.where(dropped, -jnp.inf, jnp.where(at_max | row.uniform, 0.0, y_hi))
    return y_hi, jnp.where(finite & ~row.uniform, y_lo, 0.0)


def _load_slice(x_ref, index, col0, vocab):
    """Slice ``index`` (128 lanes) of the block as float32 with its global column numbers.

    Columns at or past ``vocab`` read as ``-inf``. Returns ``(x, is_nan, cols)`` where
    ``x`` has NaN replaced by ``-inf``.
    """
    start = pl.multiple_of(index * LANES, LANES)
    x = to_float32(x_ref[:, pl.ds(start, LANES)])
    cols = col0 + start + lax.broadcasted_iota(jnp.int32, x.shape, 1)
    x = jnp.where(cols < vocab, x, -jnp.inf)
    is_nan = jnp.isnan(x)
    return jnp.where(is_nan, -jnp.inf, x), is_nan, cols


def _block_max(x_ref, n_slices, col0, vocab, lane_max, lane_arg, lane_nan):
    """Fold a block into the per-lane max, first arg-max and NaN flag, all ``(R, 128)``.

    The NaN flag is int32 (0 or 1): Mosaic cannot carry a boolean vector through a loop.
    """

    def body(index, carry):
        lane_max, lane_arg, lane_nan = carry
        x, is_nan, cols = _load_slice(x_ref, index, col0, vocab)
        better = x > lane_max  # strict: the earlier (lower) column keeps a tie
        return (
            jnp.where(better, x, lane_max),
            jnp.where(better, cols, lane_arg),
            lane_nan | is_nan.astype(jnp.int32),
        )

    return lax.fori_loop(0, n_slices, body, (lane_max, lane_arg, lane_nan))


def _block_sum(x_ref, n_slices, col0, vocab, lane_max, row, acc_hi, acc_lo):
    """Add ``exp((x - lane_max) / T)`` of a block to the per-lane double-float sums."""

    def body(index, carry):
        x, _, _ = _load_slice(x_ref, index, col0, vocab)
        e_hi, e_lo = exp_dd(*_scaled_gap(x, lane_max, row))
        return add_dd(*carry, e_hi, e_lo)

    return lax.fori_loop(0, n_slices, body, (acc_hi, acc_lo))


def _lane_total_dd(hi, lo):
    """The double-float total of each row of ``(R, 128)`` lanes, in every lane: an
    all-reduce butterfly of error-free additions over ``pltpu.roll``."""
    for shift in _BUTTERFLY_SHIFTS:
        hi, lo = add_dd(hi, lo, pltpu.roll(hi, shift, 1), pltpu.roll(lo, shift, 1))
    return hi, lo


def _combine_lanes(lane_max, lane_arg, lane_nan, acc_hi, acc_lo, row):
    """Reduce the per-lane state to per-row values, each broadcast over ``(R, 128)``.

    Returns ``(row_max, row_arg, row_nan, sum_hi, sum_lo)``: every lane's sum is
    rescaled to the row maximum, then an all-reduce butterfly of double-float additions
    over ``pltpu.roll`` leaves the exact-to-2**-44 total in every lane.
    """
    row_max = jnp.max(lane_max, axis=1, keepdims=True)
    factor_hi, factor_lo = exp_dd(*_scaled_gap(lane_max, row_max, row))
    sum_hi, sum_lo = _lane_total_dd(*mul_dd(acc_hi, acc_lo, factor_hi, factor_lo))
    row_arg = jnp.min(jnp.where(lane_max == row_max, lane_arg, _INT_MAX), axis=1, keepdims=True)
    row_nan = jnp.max(lane_nan, axis=1, keepdims=True) > 0
    shape = lane_max.shape
    return (
        jnp.broadcast_to(row_max, shape),
        jnp.broadcast_to(row_arg, shape),
        jnp.broadcast_to(row_nan, shape),
        sum_hi,
        sum_lo,
    )


def _write_probabilities(x_ref, o_ref, n_slices, col0, vocab, row, stats):
    """Write one block of probabilities given the per-row ``stats`` of ``_combine_lanes``.

    Special rows, in order of precedence: NaN temperature, negative temperature or a
    NaN logit: NaN; maximum ``-inf``: zeros; greedy temperature: one-hot at the first
    arg-max; otherwise ``exp((x - max) / T) / sum`` rounded once.
    """
    row_max, row_arg, row_nan, sum_hi, sum_lo = stats
    nan_row = row_nan | row.invalid
    empty_row = row_max == -jnp.inf
    inv_sum = 1.0 / jnp.where(empty_row, 1.0, sum_hi)

    def body(index, carry):
        x, _, cols = _load_slice(x_ref, index, col0, vocab)
        # p <= exp(y): computing exp(y) * 2**LIFT keeps every p above the float32 normal
        # range exact before the exact scaling back.
        e_hi, e_lo = exp_dd(*_scaled_gap(x, row_max, row), scale_log2=_LIFT_LOG2)
        # Rounded once from a double-float quotient: only IEEE add, multiply and compare
        # enter p (the hardware divide only seeds a corrected quotient), so interpret mode
        # computes what a TPU computes.
        p = div_dd_to_f32(e_hi, e_lo, sum_hi, sum_lo, inv_sum) * _UNLIFT
        p = jnp.where(row.greedy, (cols == row_arg).astype(jnp.float32), p)
        p = jnp.where(empty_row, 0.0, p)
        p = jnp.where(nan_row, jnp.nan, p)
        start = pl.multiple_of(index * LANES, LANES)
        o_ref[:, pl.ds(start, LANES)] = p
        return carry

    lax.fori_loop(0, n_slices, body, 0)


def _initial_lane_state(rows):
    shape = (rows, LANES)
    return (
        jnp.full(shape, -jnp.inf, jnp.float32),
        jnp.zeros(shape, jnp.int32),
        jnp.zeros(shape, jnp.int32),
    )


def _rescale(acc_hi, acc_lo, old_max, new_max, row):
    """Rescale per-lane sums taken relative to ``old_max`` to be relative to ``new_max``."""
    factor_hi, factor_lo = exp_dd(*_scaled_gap(old_max, new_max, row))
    return mul_dd(acc_hi, acc_lo, factor_hi, factor_lo)


# ---------------------------------------------------------------------------------------
# Single pass.


def _single_pass_kernel(t_ref, x_ref, o_ref, *, vocab):
    """Softmax of ``R`` whole rows.

    Grid ``(cdiv(B, R),)``. Blocks: ``t_ref`` ``(R, 1)`` float32 temperatures;
    ``x_ref`` ``(R, Vp)`` logits, ``Vp = roundup(V, 128)``; ``o_ref`` ``(R, Vp)``
    float32 probabilities.
    """
    rows, width = x_ref.shape
    n_slices = width // LANES
    row = _RowParams(t_ref[...])
    lane_max, lane_arg, lane_nan = _block_max(x_ref, n_slices, 0, vocab, *_initial_lane_state(rows))
    zeros = jnp.zeros((rows, LANES), jnp.float32)
    acc = _block_sum(x_ref, n_slices, 0, vocab, lane_max, row, zeros, zeros)
    stats = _combine_lanes(lane_max, lane_arg, lane_nan, *acc, row)
    _write_probabilities(x_ref, o_ref, n_slices, 0, vocab, row, stats)


def single_pass(logits, temperature_col, *, interpret):
    """Launch the single-pass kernel: ``logits [B, V]``, ``temperature_col f32[B, 1]``;
    ``interpret`` is ``pl.pallas_call``'s (``tops.backends.pallas_interpret()``)."""
    batch, vocab = logits.shape
    rows = rows_per_block(logits.dtype)
    width = row_width(vocab)
    return pl.pallas_call(
        functools.partial(_single_pass_kernel, vocab=vocab),
        grid=(pl.cdiv(batch, rows),),
        in_specs=[
            pl.BlockSpec((rows, 1), lambda i: (i, 0)),
            pl.BlockSpec((rows, width), lambda i: (i, 0)),
        ],
        out_specs=pl.BlockSpec((rows, width), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, vocab), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(temperature_col, kernel_operand(logits))


# ---------------------------------------------------------------------------------------
# Two pass.


def _stats_kernel(
    t_ref,
    x_ref,
    max_ref,
    arg_ref,
    nan_ref,
    sum_hi_ref,
    sum_lo_ref,
    lane_max_ref,
    lane_arg_ref,
    lane_nan_ref,
    acc_hi_ref,
    acc_lo_ref,
    *,
    vocab,
):
    """Per-row max, first arg-max, NaN flag and double-float sum over vocabulary blocks.

    Grid ``(cdiv(B, R), cdiv(V, BV))``, the vocabulary axis last and sequential.
    Blocks: ``t_ref`` ``(R, 1)`` float32; ``x_ref`` ``(R, BV)`` logits; outputs
    ``max_ref``, ``sum_hi_ref``, ``sum_lo_ref`` float32 and ``arg_ref``, ``nan_ref``
    int32, each ``(R, 128)`` with the row's value in every lane, written at the last
    vocabulary block. Scratch: the per-lane state, ``(R, 128)`` each.
    """
    j = pl.program_id(1)
    rows, block_v = x_ref.shape
    row = _RowParams(t_ref[...])

    @pl.when(j == 0)
    def _init():
        lane_max, lane_arg, lane_nan = _initial_lane_state(rows)
        lane_max_ref[...] = lane_max
        lane_arg_ref[...] = lane_arg
        lane_nan_ref[...] = lane_nan
        acc_hi_ref[...] = jnp.zeros((rows, LANES), jnp.float32)
        acc_lo_ref[...] = jnp.zeros((rows, LANES), jnp.float32)

    old_max = lane_max_ref[...]
    lane_max, lane_arg, lane_nan = _block_max(
        x_ref,
        block_v // LANES,
        j * block_v,
        vocab,
        old_max,
        lane_arg_ref[...],
        lane_nan_ref[...],
    )
    acc = _rescale(acc_hi_ref[...], acc_lo_ref[...], old_max, lane_max, row)
    acc_hi, acc_lo = _block_sum(x_ref, block_v // LANES, j * block_v, vocab, lane_max, row, *acc)
    lane_max_ref[...] = lane_max
    lane_arg_ref[...] = lane_arg
    lane_nan_ref[...] = lane_nan
    acc_hi_ref[...] = acc_hi
    acc_lo_ref[...] = acc_lo

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        row_max, row_arg, row_nan, sum_hi, sum_lo = _combine_lanes(
            lane_max, lane_arg, lane_nan, acc_hi, acc_lo, row
        )
        max_ref[...] = row_max
        arg_ref[...] = row_arg
        nan_ref[...] = row_nan.astype(jnp.int32)
        sum_hi_ref[...] = sum_hi
        sum_lo_ref[...] = sum_lo


def _normalize_kernel(
    t_ref, max_ref, arg_ref, nan_ref, sum_hi_ref, sum_lo_ref, x_ref, o_ref, *, vocab
):
    """Probabilities of one ``(R, BV)`` block from the statistics of ``_stats_kernel``.

    Grid ``(cdiv(B, R), cdiv(V, BV))``, both axes parallel. Blocks: ``t_ref`` ``(R, 1)``
    float32; the five statistics ``(R, 128)``; ``x_ref`` ``(R, BV)`` logits; ``o_ref``
    ``(R, BV)`` float32 probabilities.
    """
    block_v = x_ref.shape[1]
    stats = (
        max_ref[...],
        arg_ref[...],
        nan_ref[...] > 0,
        sum_hi_ref[...],
        sum_lo_ref[...],
    )
    col0 = pl.program_id(1) * block_v
    row = _RowParams(t_ref[...])
    _write_probabilities(x_ref, o_ref, block_v // LANES, col0, vocab, row, stats)


def two_pass(logits, temperature_col, *, interpret, block_v=BLOCKS.two_pass_block_v):
    """Launch the statistics then the normalise kernel: ``logits [B, V]``, ``f32[B, 1]``;
    ``interpret`` as for :func:`single_pass`, ``block_v`` a multiple of 128."""
    batch, vocab = logits.shape
    rows = rows_per_block(logits.dtype)
    grid = (pl.cdiv(batch, rows), pl.cdiv(vocab, block_v))
    t_spec = pl.BlockSpec((rows, 1), lambda i, j: (i, 0))
    x_spec = pl.BlockSpec((rows, block_v), lambda i, j: (i, j))
    stat_spec = pl.BlockSpec((rows, LANES), lambda i, j: (i, 0))
    stat_shapes = [
        jax.ShapeDtypeStruct((batch, LANES), dtype)
        for dtype in (jnp.float32, jnp.int32, jnp.int32, jnp.float32, jnp.float32)
    ]
    stats = pl.pallas_call(
        functools.partial(_stats_kernel, vocab=vocab),
        grid=grid,
        in_specs=[t_spec, x_spec],
        out_specs=[stat_spec] * 5,
        out_shape=stat_shapes,
        scratch_shapes=[
            pltpu.VMEM((rows, LANES), jnp.float32),
            pltpu.VMEM((rows, LANES), jnp.int32),
            pltpu.VMEM((rows, LANES), jnp.int32),
            pltpu.VMEM((rows, LANES), jnp.float32),
            pltpu.VMEM((rows, LANES), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(temperature_col, kernel_operand(logits))
    return pl.pallas_call(
        functools.partial(_normalize_kernel, vocab=vocab),
        grid=grid,
        in_specs=[t_spec, *([stat_spec] * 5), x_spec],
        out_specs=x_spec,
        out_shape=jax.ShapeDtypeStruct((batch, vocab), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(temperature_col, *stats, kernel_operand(logits))


# ---------------------------------------------------------------------------------------
# Backward: ``dx = p * (g - s) / T`` per row, ``s = sum(p * g) / sum(p)``.


class _GradRowParams:
    """Per-row cases of the backward from the temperature, shape ``(R, 1)``: NaN rows
    (NaN or negative ``T``, which the launcher also sets for the forward's NaN rows),
    zero rows (greedy and uniform temperatures, where the forward is constant in the
    logits) and ``1 / T`` for the others."""

    def __init__(self, t):
        self.nan = jnp.isnan(t) | (t < 0.0)
        self.zero = (t < SMALLEST_NORMAL_F32) | (t >= UNIFORM_TEMPERATURE)
        self.inv_t = 1.0 / jnp.where(self.nan | self.zero, 1.0, t)


def _unfused(product):
    """``product`` rounded on its own: the clamp to ``[-2**100, 2**100]`` is the identity
    on the products here (``two_prod`` needs them that small anyway) and stands between
    the multiply and the add that follows, which XLA:CPU would otherwise contract into an
    FMA, breaking TwoSum's exactness in interpret mode only."""
    limit = jnp.float32(2.0**100)
    return jnp.minimum(jnp.maximum(product, -limit), limit)


def _load_grad_slice(p_ref, g_ref, index, col0, vocab):
    """Slice ``index`` (128 lanes) of ``p`` and ``g``, zero at columns past ``vocab``."""
    start = pl.multiple_of(index * LANES, LANES)
    p = p_ref[:, pl.ds(start, LANES)]
    g = g_ref[:, pl.ds(start, LANES)]
    valid = col0 + start + lax.broadcasted_iota(jnp.int32, p.shape, 1) < vocab
    return jnp.where(valid, p, 0.0), jnp.where(valid, g, 0.0)


def _block_sums(p_ref, g_ref, n_slices, col0, vocab, sums):
    """Add a block's exact products ``p * g`` and its ``p`` to the per-lane double-float
    sums ``sums = (pg_hi, pg_lo, p_hi, p_lo)``, ``(R, 128)`` each."""

    def body(index, carry):
        pg_hi, pg_lo, p_hi, p_lo = carry
        p, g = _load_grad_slice(p_ref, g_ref, index, col0, vocab)
        prod, err = two_prod(p, g)
        return (*add_dd(pg_hi, pg_lo, _unfused(prod), err), *add_dd(p_hi, p_lo, p, 0.0))

    return lax.fori_loop(0, n_slices, body, sums)


def _row_mean(pg_hi, pg_lo, p_hi, p_lo):
    """``s = sum(p * g) / sum(p)`` per row as a double-float ``(s_hi, s_lo)`` from the
    lane totals. Dividing by ``sum(p)`` (1 up to the probabilities' rounding) is exact
    calculus for the normalised ``p`` and removes ``g_k (1 - sum(p))`` from ``g_k - s``,
    which would dominate where one ``p_k`` is near 1 (there ``g_k - s`` is only
    ``sum_{j != k} p_j (g_k - g_j)``). Rows with ``sum(p) = 0`` get ``s = 0``."""
    total = jnp.where(p_hi > 0.0, p_hi, 1.0)
    inv = 1.0 / total
    q = pg_hi * inv
    prod, err = two_prod(q, total)
    residual = ((pg_hi - prod) - err) + (pg_lo - _unfused(q * p_lo))
    return q, residual * inv


def _write_grad(p_ref, g_ref, dx_ref, n_slices, col0, vocab, row, s_hi, s_lo):
    """Write one block of ``dx`` given ``s = s_hi + s_lo`` of :func:`_row_mean`.

    ``g - s`` is formed against both parts (``g - s_hi`` is exact where they are close),
    so it keeps float32 accuracy under cancellation; then two products, as on the GPU.
    """

    def body(index, carry):
        p, g = _load_grad_slice(p_ref, g_ref, index, col0, vocab)
        dx = (p * ((g - s_hi) - s_lo)) * row.inv_t
        dx = jnp.where(row.zero, 0.0, dx)
        dx = jnp.where(row.nan, jnp.nan, dx)
        dx_ref[:, pl.ds(pl.multiple_of(index * LANES, LANES), LANES)] = dx
        return carry

    lax.fori_loop(0, n_slices, body, 0)


def _grad_single_pass_kernel(t_ref, p_ref, g_ref, dx_ref, *, vocab):
    """``dx`` of ``R = 8`` whole rows.

    Grid ``(cdiv(B, 8),)``. Blocks: ``t_ref`` ``(8, 1)`` float32 temperatures;
    ``p_ref`` (the forward's probabilities), ``g_ref`` (their cotangent) and ``dx_ref``
    ``(8, Vp)`` float32, ``Vp = roundup(V, 128)``.
    """
    rows, width = p_ref.shape
    n_slices = width // LANES
    zeros = (jnp.zeros((rows, LANES), jnp.float32),) * 4
    pg_hi, pg_lo, p_hi, p_lo = _block_sums(p_ref, g_ref, n_slices, 0, vocab, zeros)
    mean = _row_mean(*_lane_total_dd(pg_hi, pg_lo), *_lane_total_dd(p_hi, p_lo))
    _write_grad(p_ref, g_ref, dx_ref, n_slices, 0, vocab, _GradRowParams(t_ref[...]), *mean)


def grad_single_pass(probs, cotangent, temperature_col, *, interpret):
    """Launch the single-pass backward: ``probs``, ``cotangent`` ``f32[B, V]``,
    ``temperature_col f32[B, 1]``; returns ``dx f32[B, V]``."""
    batch, vocab = probs.shape
    rows = rows_per_block(probs.dtype)
    row_spec = pl.BlockSpec((rows, row_width(vocab)), lambda i: (i, 0))
    return pl.pallas_call(
        functools.partial(_grad_single_pass_kernel, vocab=vocab),
        grid=(pl.cdiv(batch, rows),),
        in_specs=[pl.BlockSpec((rows, 1), lambda i: (i, 0)), row_spec, row_spec],
        out_specs=row_spec,
        out_shape=jax.ShapeDtypeStruct((batch, vocab), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(temperature_col, probs, cotangent)


def _grad_sum_kernel(p_ref, g_ref, s_hi_ref, s_lo_ref, sums_ref, *, vocab):
    """Per-row double-float ``s = sum(p * g) / sum(p)`` over vocabulary blocks.

    Grid ``(cdiv(B, 8), cdiv(V, BV))``, the vocabulary axis last and sequential.
    Blocks: ``p_ref``, ``g_ref`` ``(8, BV)`` float32; outputs ``s_hi_ref``, ``s_lo_ref``
    ``(8, 128)`` float32 with the row's ``s`` in every lane, written at the last block.
    Scratch: ``sums_ref`` ``(4, 8, 128)``, the per-lane sums of ``p * g`` and ``p``.
    """
    j = pl.program_id(1)
    block_v = p_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        sums_ref[...] = jnp.zeros(sums_ref.shape, jnp.float32)

    sums = _block_sums(
        p_ref, g_ref, block_v // LANES, j * block_v, vocab, tuple(sums_ref[i] for i in range(4))
    )
    for i, value in enumerate(sums):
        sums_ref[i] = value

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        pg_hi, pg_lo, p_hi, p_lo = sums
        mean = _row_mean(*_lane_total_dd(pg_hi, pg_lo), *_lane_total_dd(p_hi, p_lo))
        s_hi_ref[...], s_lo_ref[...] = mean


def _grad_write_kernel(t_ref, s_hi_ref, s_lo_ref, p_ref, g_ref, dx_ref, *, vocab):
    """``dx`` of one ``(8, BV)`` block given ``s`` from ``_grad_sum_kernel``.

    Grid ``(cdiv(B, 8), cdiv(V, BV))``, both axes parallel. Blocks: ``t_ref`` ``(8, 1)``;
    ``s_hi_ref``, ``s_lo_ref`` ``(8, 128)``; ``p_ref``, ``g_ref``, ``dx_ref`` ``(8, BV)``,
    all float32.
    """
    block_v = p_ref.shape[1]
    col0 = pl.program_id(1) * block_v
    row = _GradRowParams(t_ref[...])
    _write_grad(
        p_ref, g_ref, dx_ref, block_v // LANES, col0, vocab, row, s_hi_ref[...], s_lo_ref[...]
    )


def grad_two_pass(probs, cotangent, temperature_col, *, interpret, block_v=BLOCKS.two_pass_block_v):
    """Launch the sum then the write kernel; arguments as for :func:`grad_single_pass`,
    ``block_v`` a multiple of 128."""
    batch, vocab = probs.shape
    rows = rows_per_block(probs.dtype)
    grid = (pl.cdiv(batch, rows), pl.cdiv(vocab, block_v))
    block_spec = pl.BlockSpec((rows, block_v), lambda i, j: (i, j))
    sum_spec = pl.BlockSpec((rows, LANES), lambda i, j: (i, 0))
    sums = pl.pallas_call(
        functools.partial(_grad_sum_kernel, vocab=vocab),
        grid=grid,
        in_specs=[block_spec, block_spec],
        out_specs=[sum_spec, sum_spec],
        out_shape=[jax.ShapeDtypeStruct((batch, LANES), jnp.float32)] * 2,
        scratch_shapes=[pltpu.VMEM((4, rows, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(probs, cotangent)
    return pl.pallas_call(
        functools.partial(_grad_write_kernel, vocab=vocab),
        grid=grid,
        in_specs=[
            pl.BlockSpec((rows, 1), lambda i, j: (i, 0)),
            sum_spec,
            sum_spec,
            *[block_spec] * 2,
        ],
        out_specs=block_spec,
        out_shape=jax.ShapeDtypeStruct((batch, vocab), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(temperature_col, *sums, probs, cotangent)


def shipped_configs() -> list[PallasConfig]:
    """Every shipped kernel configuration for the TPU compile check: each logits dtype,
    through the public wrapper, at vocabularies that pick the narrowest, a partial and the
    widest single-pass block and the two-pass path with a partial last block, per-row
    temperatures; ``B = 13`` leaves a partial row block. One scalar-temperature
    configuration per path, and the forward with its backward (``_grad``) per path for bf16
    and f32 logits."""
    configs = []
    for dtype in ("bfloat16", "float16", "float32"):
        for vocab in (1, 50257 % BLOCKS.single_pass_max_v, BLOCKS.single_pass_max_v, 50257, 262144):
            configs.append(_config(13, vocab, dtype, per_row=True))
    configs += [_config(13, vocab, "bfloat16", per_row=False) for vocab in (1000, 50257)]
    configs += [
        _grad_config(13, vocab, dtype)
        for vocab in (1000, 50257)
        for dtype in ("bfloat16", "float32")
    ]
    return configs


def production_configs() -> list[PallasConfig]:
    """The production shapes: ``B`` in {1, 32, 256} x ``V`` in {128256, 151936, 201088,
    262144}, bf16 and f32 logits, per-row and scalar temperature."""
    return [
        _config(batch, vocab, dtype, per_row=per_row)
        for batch in (1, 32, 256)
        for vocab in (128256, 151936, 201088, 262144)
        for dtype in ("bfloat16", "float32")
        for per_row in (True, False)
    ]


def _config(batch: int, vocab: int, dtype: str, *, per_row: bool) -> PallasConfig:
    from tops.ops.softmax import temperature_softmax

    path = "single" if row_width(vocab) <= BLOCKS.single_pass_max_v else "two_pass"
    temperature = "per_row" if per_row else "scalar"
    shapes = (
        jax.ShapeDtypeStruct((batch, vocab), jnp.dtype(dtype)),
        jax.ShapeDtypeStruct((batch,) if per_row else (), jnp.float32),
    )
    return PallasConfig(
        f"{path}_{dtype}_B{batch}_V{vocab}_{temperature}", temperature_softmax, shapes
    )


def _grad_config(batch: int, vocab: int, dtype: str) -> PallasConfig:
    """The forward and its custom VJP (``jax.vjp`` of the public wrapper)."""
    from tops.ops.softmax import temperature_softmax

    def grad(logits, temperature, cotangent):
        _, vjp = jax.vjp(lambda x: temperature_softmax(x, temperature), logits)
        return vjp(cotangent)[0]

    forward = _config(batch, vocab, dtype, per_row=True)
    cotangent = jax.ShapeDtypeStruct((batch, vocab), jnp.float32)
    return PallasConfig(f"{forward.name}_grad", grad, (*forward.shapes, cotangent))
