"""Pallas TPU kernels for temperature softmax, each beside its launcher.

The probabilities are computed in double-float32 (``tops.ops.double_float``) and rounded
once at the end, so every output is the correctly rounded float32 of a value accurate to
about 2**-29: the kernel's error is the float32 rounding floor of the contract, up to
a few parts in a thousand. Only IEEE add, multiply and compare enter a probability
(the hardware divide only seeds a corrected quotient), so interpret mode should compute
what a TPU computes, up to the rounding of values within 2**-29 of a float32 midpoint
(not yet checked on TPU hardware).

Layout: ``rows_per_block`` rows per block (8 sublanes for float32 logits, 16 for the
packed 16-bit dtypes), the vocabulary walked in 128-lane slices. Each lane keeps its own
running maximum, first arg-maximum and double-float sum of ``exp((x - max) / T)``;
lanes are combined once per row at the end (the sum by a ``pltpu.roll`` butterfly of
error-free additions). Columns at or past ``V`` and rows past ``B`` are partial blocks:
the kernels mask the columns and never mix rows, so nothing is padded in HBM.

Two variants:

* single pass (``V <= SINGLE_PASS_MAX_V``): one block holds whole rows; reads the logits
  once and writes the probabilities once.
* two pass: a statistics kernel walks vocabulary blocks (reduction axis last) and
  leaves per-row max, arg-max, NaN flag and sum; a normalise kernel then writes the
  probabilities. Reads the logits twice, writes once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.ops.double_float import add_dd, div_dd_to_f32, exp_dd, mul_dd, two_prod, two_sum
from tops.ops.half import kernel_operand, to_float32
from tops.spec.temperature_softmax import SMALLEST_NORMAL_F32, UNIFORM_TEMPERATURE

LANES = 128
# Whole rows stay in VMEM up to this many (128-padded) columns: with float32 logits,
# 8 rows x 32768 columns is 1 MiB per buffer, 4 MiB for the double-buffered input and
# output, well inside the 16 MiB default scoped VMEM of v5e. Chosen from the VMEM
# budget; no TPU was available to measure the crossover (see ARCHITECTURE.md).
SINGLE_PASS_MAX_V = 32768
# Vocabulary block of the two-pass kernels.
TWO_PASS_BLOCK_V = 8192
_INT_MAX = jnp.iinfo(jnp.int32).max
_BUTTERFLY_SHIFTS = (64, 32, 16, 8, 4, 2, 1)
_LIFT_LOG2 = 8
_UNLIFT = 2.0**-_LIFT_LOG2


def row_width(vocab: int) -> int:
    """Columns of a whole-row block: ``V`` rounded up to the 128 lanes."""
    return pl.cdiv(vocab, LANES) * LANES


def rows_per_block(dtype) -> int:
    """Sublane rows per block: 8 for 32-bit logits, 16 for packed 16-bit logits."""
    return 8 if jnp.dtype(dtype).itemsize == 4 else 16


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


def _combine_lanes(lane_max, lane_arg, lane_nan, acc_hi, acc_lo, row):
    """Reduce the per-lane state to per-row values, each broadcast over ``(R, 128)``.

    Returns ``(row_max, row_arg, row_nan, sum_hi, sum_lo)``: every lane's sum is
    rescaled to the row maximum, then an all-reduce butterfly of double-float additions
    over ``pltpu.roll`` leaves the exact-to-2**-44 total in every lane.
    """
    row_max = jnp.max(lane_max, axis=1, keepdims=True)
    factor_hi, factor_lo = exp_dd(*_scaled_gap(lane_max, row_max, row))
    sum_hi, sum_lo = mul_dd(acc_hi, acc_lo, factor_hi, factor_lo)
    for shift in _BUTTERFLY_SHIFTS:
        sum_hi, sum_lo = add_dd(
            sum_hi, sum_lo, pltpu.roll(sum_hi, shift, 1), pltpu.roll(sum_lo, shift, 1)
        )
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


def two_pass(logits, temperature_col, *, interpret, block_v=TWO_PASS_BLOCK_V):
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


def tpu_configs() -> list[tuple[str, object, tuple]]:
    """Every shipped kernel configuration as ``(name, fn, shape_structs)`` for the TPU
    compile check: each logits dtype, through the public wrapper, at vocabularies that
    pick the narrowest, a partial and the widest single-pass block and the two-pass path
    with a partial last block, per-row temperatures; ``B = 13`` leaves a partial row
    block. One scalar-temperature configuration per path."""
    configs = []
    for dtype in ("bfloat16", "float16", "float32"):
        for vocab in (1, 50257 % SINGLE_PASS_MAX_V, SINGLE_PASS_MAX_V, 50257, 262144):
            configs.append(_config(13, vocab, dtype, per_row=True))
    configs += [_config(13, vocab, "bfloat16", per_row=False) for vocab in (1000, 50257)]
    return configs


def tpu_production_configs() -> list[tuple[str, object, tuple]]:
    """The production shapes: ``B`` in {1, 32, 256} x ``V`` in {128256, 151936, 201088,
    262144}, bf16 and f32 logits, per-row and scalar temperature."""
    return [
        _config(batch, vocab, dtype, per_row=per_row)
        for batch in (1, 32, 256)
        for vocab in (128256, 151936, 201088, 262144)
        for dtype in ("bfloat16", "float32")
        for per_row in (True, False)
    ]


def _config(batch, vocab, dtype, *, per_row):
    from tops.ops.temperature_softmax import temperature_softmax

    path = "single" if row_width(vocab) <= SINGLE_PASS_MAX_V else "two_pass"
    temperature = "per_row" if per_row else "scalar"
    shapes = (
        jax.ShapeDtypeStruct((batch, vocab), jnp.dtype(dtype)),
        jax.ShapeDtypeStruct((batch,) if per_row else (), jnp.float32),
    )
    return f"{path}_{dtype}_B{batch}_V{vocab}_{temperature}", temperature_softmax, shapes
