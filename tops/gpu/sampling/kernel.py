"""Triton kernels for top-k / top-p / min-p sampling, bit-identical to ``tops.cpu.sampling``.

Every token-deciding step is the reference's sequence of float32 add, subtract, multiply,
compare, floor/ceil and exponent-field bit manipulation, or exact integer arithmetic
(int64 sums, uint64 for the top-p comparison, threefry on 32-bit words). No exp, exp2 or division
touches a decision, and every kernel that does float32 arithmetic is launched with
``enable_fp_fusion=False`` so that ptxas never contracts a multiply and an add into an
FMA (the interpreter computes in NumPy, which never does). Zeros and subnormals are
flushed by testing the exponent field, exactly where the reference flushes, so the
result does not depend on the hardware's denormal mode.

Shared ``@triton.jit`` helpers: :func:`quantize` (the step-3 integer weight),
:func:`log2_scale` (the Newton reciprocal times ``LOG2E``), :func:`min_p_threshold`,
:func:`top_p_p16`, :func:`threefry2x32` and :func:`draw` (the rejection-sampled uniform
integer). Order keys and entries are those of ``tops.gpu.selection.kernel``
(``order_key`` of ``tops.gpu.exact.upcast``, through :func:`_load_row`).

Kernels (each with its grid and block shapes in its docstring):

* :func:`_row_stats_kernel`: per row, the first maximum in the top-k order (the greedy
  token) and the validity flag.
* :func:`_integer_weights_kernel`: the step-3 weights with top-k/top-p/min-p disabled
  (for :func:`tops.gpu.sampling.integer_weights`).
* :func:`_bounded_kernel`: the bounded-k path over the ``[B, max_k]`` survivors of
  ``tops.gpu.topk``: weights, sums, min-p, top-p by pairwise comparison, the draw and the
  vocabulary-order CDF.
* :func:`_full_kernel`: the arbitrary-k path over the whole row: greedy and validity, the
  top-k threshold by a multi-probe search on the order key plus the index cutoff among
  ties, weights, top-p threshold by a multi-probe search on the weight, the draw and the
  CDF walk.

Reductions and scans use ``tl.reduce`` / ``tl.associative_scan`` with Triton's own
combine functions (what ``tl.sum``/``tl.max``/``tl.cumsum`` expand to natively): the
interpreter runs those as single NumPy calls, while a call of the ``@triton.jit``
wrappers costs about 0.3 ms each.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.standard import _elementwise_max, _elementwise_min, _sum_combine

from tops.backends import triton_interprets
from tops.gpu.exact import upcast
from tops.gpu.selection.kernel import (
    INT32_MAX,
    NAN_KEY,
    PAD_ENTRY,
    entry_index,
    order_entry,
    order_key,
)
from tops.spec.sampling import (
    EXP_COEFFICIENTS,
    LN2,
    LOG2E,
    MAX_ATTEMPTS,
    NEWTON_A,
    NEWTON_B,
    PROB_BITS,
    PROB_ONE,
    RECIPROCAL_LIMIT,
    THREEFRY_PARITY,
    THREEFRY_ROTATIONS,
    THREEFRY_ROUNDS,
    TINY,
    TOP_P_BITS,
)


def _f32(value: float) -> float:
    """``value`` rounded to float32 (so that Triton's constant is that exact value)."""
    return float(np.float32(value))


assert len(EXP_COEFFICIENTS) == 10 and THREEFRY_ROUNDS == 20 and NEWTON_A == 24.0 / 17.0
_C = [tl.constexpr(_f32(c)) for c in EXP_COEFFICIENTS]
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = _C
_LN2 = tl.constexpr(_f32(LN2))
_LOG2E = tl.constexpr(_f32(LOG2E))
_NEWTON_A = tl.constexpr(_f32(NEWTON_A))
_NEWTON_B = tl.constexpr(_f32(NEWTON_B))
_TINY = tl.constexpr(TINY)
_RECIPROCAL_LIMIT = tl.constexpr(RECIPROCAL_LIMIT)
_PROB_ONE = tl.constexpr(PROB_ONE)
_PROB_ONE_F = tl.constexpr(float(PROB_ONE))
_W_LIMIT = tl.constexpr(float(PROB_BITS + 1))
_SCALE_BIAS = tl.constexpr(127 + PROB_BITS)
_MIN_P_FLOOR = tl.constexpr(2.0**-31)
_TOP_P_BITS = tl.constexpr(TOP_P_BITS)
_TOP_P_ONE = tl.constexpr(float(2**TOP_P_BITS))
_PARITY = tl.constexpr(THREEFRY_PARITY)
_R0, _R1, _R2, _R3, _R4, _R5, _R6, _R7 = (tl.constexpr(r) for r in THREEFRY_ROTATIONS)
_MASK32 = tl.constexpr(0xFFFFFFFF)
_ATTEMPTS = tl.constexpr(MAX_ATTEMPTS)
_NAN_KEY = tl.constexpr(NAN_KEY)
_INT32_MAX = tl.constexpr(INT32_MAX)
# Order keys of -inf and +inf (tops.gpu.selection.kernel: negative bits b map to b ^ INT32_MAX).
NEG_INF_KEY = int(np.int32(np.uint32(0xFF800000).view(np.int32) ^ np.int32(INT32_MAX)))
POS_INF_KEY = 0x7F800000
_NEG_INF_KEY = tl.constexpr(NEG_INF_KEY)
_POS_INF_KEY = tl.constexpr(POS_INF_KEY)
_PAD_ENTRY = tl.constexpr(PAD_ENTRY)
_BIG_INDEX = tl.constexpr(INT32_MAX)

# Columns per tile of the one-dimensional row passes on a GPU: 16 a thread at 8 warps.
BLOCK_V = 4096
ROW_WARPS = 8
# Thresholds tested per pass of the two searches of the arbitrary-k path (so about
# log2(2**32) / log2(PROBES + 1) = 8 passes each), over [SEARCH_BLOCK, PROBES] blocks:
# on a GPU 512 x 16, 32 elements a thread at 8 warps.
PROBES = 16
SEARCH_BLOCK = 512
# The interpreter's cost is per operation rather than per element (about 4x faster at
# V = 128256 with 16384-column tiles than with the GPU's), so interpreted launches take
# tiles of min(INTERPRET_BLOCK, next_pow2(V)) columns for both block shapes. Every result
# is exact integer arithmetic, independent of the tiling; the tests also run small tiles.
INTERPRET_BLOCK = 16384


def row_blocks(vocab: int) -> tuple[int, int]:
    """``(BLOCK, SEARCH_BLOCK)`` of the row kernels for rows of ``vocab`` columns."""
    if not triton_interprets():
        return BLOCK_V, SEARCH_BLOCK
    block = min(INTERPRET_BLOCK, max(16, triton.next_power_of_2(vocab)))
    return block, block


# Bounded-k survivors per program (a power of two >= max_k) and the column chunk of the
# pairwise [KB, CHUNK] comparison blocks (32 a thread at 8 warps for KB = 256).
BOUNDED_SIZES = (64, 256)
PAIR_CHUNK = 32
BOUNDED_WARPS = 8
# Tile of the integer-weights kernel: 16 elements a thread at 8 warps.
WEIGHTS_BLOCK = 4096
WEIGHTS_WARPS = 8
# Launch option of every kernel with float32 arithmetic: no FMA contraction.
FP_OPTIONS = {"enable_fp_fusion": False}


def bounded_size(max_k: int) -> int:
    """Survivor slots per program of the bounded-k kernel for a static ``max_k``."""
    return next(size for size in BOUNDED_SIZES if max_k <= size)


# ---------------------------------------------------------------------------------------
# Shared arithmetic helpers (the reference's float32 op sequence).
# ---------------------------------------------------------------------------------------


@triton.jit
def log2_scale(temperature):
    """``reciprocal(T) * LOG2E`` in float32 (``tops.cpu.sampling.reciprocal``): 0 unless
    ``TINY <= T < RECIPROCAL_LIMIT``; else ``T = M * 2**E``, ``y = A - B*M`` and three
    Newton steps ``y = y * (2 - M*y)``, scaled by ``2**-E`` through the exponent field."""
    in_range = (temperature >= _TINY) & (temperature < _RECIPROCAL_LIMIT)
    safe = tl.where(in_range, temperature, 1.0).to(tl.int32, bitcast=True)
    biased_exponent = (safe >> 23) & 0xFF
    mantissa = ((safe & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    y = mantissa * -_NEWTON_B + _NEWTON_A  # A - B*M (negating the product is exact)
    y = y * (2.0 - mantissa * y)
    y = y * (2.0 - mantissa * y)
    y = y * (2.0 - mantissa * y)
    inverse_scale = ((254 - biased_exponent) << 23).to(tl.float32, bitcast=True)
    return tl.where(in_range, y * inverse_scale, 0.0) * _LOG2E


@triton.jit
def quantize(x, m, s):
    """int32 weights ``q`` in ``[0, PROB_ONE]`` (``tops.cpu.sampling.quantize``).

    ``x`` float32 logits, ``m`` the row maximum (float32), ``s`` :func:`log2_scale`.
    ``d = m - x`` (0 where ``x == m``), ``w = d * s`` with zeros and subnormals of ``x``,
    ``m``, ``d``, ``w`` flushed; ``w >= 31`` or NaN gives 0; else ``n = floor(w)``,
    ``t = (w - n) * LN2``, ``r`` the Horner evaluation of the Taylor coefficients and
    ``q = floor(r * 2**(30 - n))``."""
    # Flushes written out (a helper call costs the interpreter about a millisecond).
    x = tl.where((x.to(tl.int32, bitcast=True) & 0x7F800000) == 0, 0.0, x)
    m = tl.where((m.to(tl.int32, bitcast=True) & 0x7F800000) == 0, 0.0, m)
    d = tl.where(x == m, 0.0, m - x)
    d = tl.where((d.to(tl.int32, bitcast=True) & 0x7F800000) == 0, 0.0, d)
    w = d * s
    w = tl.where((w.to(tl.int32, bitcast=True) & 0x7F800000) == 0, 0.0, w)
    in_range = w < _W_LIMIT
    w = tl.where(in_range, w, 0.0)
    n = tl.floor(w)
    t = (w - n) * _LN2
    # (Tensors lead every expression: in the interpreter ``constexpr op tensor`` would
    # wrap the tensor in a constexpr; the IEEE results are the same either way.)
    r = t * _C9 + _C8
    r = t * r + _C7
    r = t * r + _C6
    r = t * r + _C5
    r = t * r + _C4
    r = t * r + _C3
    r = t * r + _C2
    r = t * r + _C1
    r = t * r + _C0
    scale = ((-n.to(tl.int32) + _SCALE_BIAS) << 23).to(tl.float32, bitcast=True)
    q = tl.floor(r * scale).to(tl.int32)
    return tl.where(in_range, q, 0)


@triton.jit
def min_p_threshold(min_p):
    """int64 ``ceil(min(min_p, 1) * PROB_ONE)`` where ``min_p > 2**-31``, else 0."""
    enabled = min_p > _MIN_P_FLOOR
    clipped = tl.minimum(tl.where(enabled, min_p, 0.0), 1.0)
    return tl.ceil(clipped * _PROB_ONE_F).to(tl.int64)


@triton.jit
def top_p_p16(top_p):
    """``(enabled, p16)``: ``top_p < 1`` and int64 ``floor(max(top_p, 0) * 2**16)``."""
    enabled = top_p < 1.0
    clipped = tl.maximum(tl.where(enabled, top_p, 1.0), 0.0)
    return enabled, tl.floor(clipped * _TOP_P_ONE).to(tl.int64)


@triton.jit
def threefry2x32(key0, key1, x0, x1):
    """threefry2x32 with 20 rounds (``tops.cpu.sampling.threefry2x32``): the two output
    words. Inputs are uint64 holding 32-bit values (broadcast); every word is reduced
    modulo 2**32 after each add and shift, which equals uint32 arithmetic (the
    interpreter checks every add narrower than 64 bits for overflow at several
    operations each, and helper calls cost it about a millisecond, so the rounds are
    written out here)."""
    key2 = key0 ^ key1 ^ _PARITY
    x0 = (x0 + key0) & _MASK32
    x1 = (x1 + key1) & _MASK32
    for group in tl.static_range(5):
        if group % 2 == 0:
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R0) & _MASK32) | (x1 >> (32 - _R0))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R1) & _MASK32) | (x1 >> (32 - _R1))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R2) & _MASK32) | (x1 >> (32 - _R2))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R3) & _MASK32) | (x1 >> (32 - _R3))) ^ x0
        else:
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R4) & _MASK32) | (x1 >> (32 - _R4))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R5) & _MASK32) | (x1 >> (32 - _R5))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R6) & _MASK32) | (x1 >> (32 - _R6))) ^ x0
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << _R7) & _MASK32) | (x1 >> (32 - _R7))) ^ x0
        if group % 3 == 0:
            x0 = (x0 + key1) & _MASK32
            x1 = (x1 + key2 + (group + 1)) & _MASK32
        elif group % 3 == 1:
            x0 = (x0 + key2) & _MASK32
            x1 = (x1 + key0 + (group + 1)) & _MASK32
        else:
            x0 = (x0 + key0) & _MASK32
            x1 = (x1 + key1 + (group + 1)) & _MASK32
    return x0, x1


@triton.jit
def draw(seed, step, total):
    """Rejection-sampled integer in ``[0, total)`` (``total >= 1`` int64): the 64 bits
    ``threefry2x32((seed, step), (attempt, 0))`` of all ``MAX_ATTEMPTS`` attempts at once
    (a ``[MAX_ATTEMPTS]`` block), masked to ``bit_length(total - 1)`` bits; the first below
    ``total``, else the last minus ``total``. ``seed``, ``step`` int64 scalars in
    ``[0, 2**32)``."""
    attempt = tl.arange(0, _ATTEMPTS)
    counter = attempt.to(tl.uint64)
    hi, lo = threefry2x32(seed.to(tl.uint64), step.to(tl.uint64), counter, counter * 0)
    mask = total - 1
    mask = mask | (mask >> 1)
    mask = mask | (mask >> 2)
    mask = mask | (mask >> 4)
    mask = mask | (mask >> 8)
    mask = mask | (mask >> 16)
    mask = mask | (mask >> 32)
    value = ((hi.to(tl.int64) << 32) | lo.to(tl.int64)) & mask
    first = tl.reduce(tl.where(value < total, attempt, _ATTEMPTS), 0, _elementwise_min)
    chosen = tl.reduce(tl.where(attempt == first, value, 0), 0, _sum_combine)
    last = tl.reduce(tl.where(attempt == _ATTEMPTS - 1, value, 0), 0, _sum_combine) - total
    return tl.where(first < _ATTEMPTS, chosen, last)


@triton.jit
def _load_row(row_ptr, column, V):
    """``(raw, key)`` of ``row_ptr[column]``: the raw elements (0 past ``V``) and their
    order keys (``tops.gpu.selection.kernel.order_key`` of the exact upcast)."""
    valid = column < V
    raw = tl.load(row_ptr + column, mask=valid, other=0.0)
    return raw, order_key(upcast(raw), valid)


@triton.jit
def _row_scan(row_ptr, V, BLOCK: tl.constexpr):
    """One pass over a row: ``(best, lowest, has_nan, has_finite)``: the largest entry
    (``key << 32 | INT32_MAX - index``, the first maximum in the top-k order), the
    smallest key, and whether a NaN / a finite value occurs."""
    offsets = tl.arange(0, BLOCK)
    best = tl.full([], _PAD_ENTRY, tl.int64)
    lowest = tl.full([], _INT32_MAX, tl.int32)
    has_nan = tl.full([], 0, tl.int32)
    has_finite = tl.full([], 0, tl.int32)
    for start in range(0, V, BLOCK):
        column = start + offsets
        valid = column < V
        _, key = _load_row(row_ptr, column, V)
        entry = order_entry(key, column)
        best = tl.maximum(best, tl.reduce(entry, 0, _elementwise_max))
        lowest = tl.minimum(
            lowest, tl.reduce(tl.where(valid, key, _INT32_MAX), 0, _elementwise_min)
        )
        has_nan = tl.maximum(
            has_nan, tl.reduce((key == _NAN_KEY).to(tl.int32), 0, _elementwise_max)
        )
        finite = (key > _NEG_INF_KEY) & (key < _POS_INF_KEY)
        has_finite = tl.maximum(has_finite, tl.reduce(finite.to(tl.int32), 0, _elementwise_max))
    return best, lowest, has_nan, has_finite


# ---------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------


@triton.jit
def _row_stats_kernel(x_ptr, greedy_ptr, valid_ptr, V, x_row_stride, BLOCK: tl.constexpr):
    """Greedy token and validity. Grid ``(B,)``: program ``r`` walks row ``r``.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` tiles of row ``r`` (bf16/f16/f32, masked to ``V``).
      ``greedy_ptr``: ``[]`` int32: the first index of the maximum in the top-k order.
      ``valid_ptr``: ``[]`` int32: 1 iff the row has no NaN and a finite value.
    """
    row = tl.program_id(0).to(tl.int64)
    best, _, has_nan, has_finite = _row_scan(x_ptr + row * x_row_stride, V, BLOCK)
    tl.store(greedy_ptr + row, entry_index(best))
    tl.store(valid_ptr + row, (has_nan == 0).to(tl.int32) & has_finite)


@triton.jit
def _integer_weights_kernel(
    x_ptr,
    greedy_ptr,
    valid_ptr,
    temperature_ptr,
    q_ptr,
    V,
    x_row_stride,
    q_row_stride,
    BLOCK: tl.constexpr,
):
    """Step-3 weights with top-k/top-p/min-p disabled. Grid ``(B, cdiv(V, BLOCK))``:
    program ``(r, t)`` writes columns ``[t*BLOCK, (t+1)*BLOCK)`` of row ``r``:
    :func:`quantize` for a sampling row, one-hot ``PROB_ONE`` at the greedy index for a
    greedy row (``T`` not ``>= TINY``), zeros for an invalid row.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` of row ``r`` (masked to ``V``) and ``[]`` at the greedy index.
      ``greedy_ptr``, ``valid_ptr``: ``[]`` int32; ``temperature_ptr``: ``[]`` float32.
      ``q_ptr``: ``[BLOCK]`` int32 of row ``r`` (masked to ``V``).
    """
    row = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = column < V
    row_ptr = x_ptr + row * x_row_stride
    greedy = tl.load(greedy_ptr + row)
    valid = tl.load(valid_ptr + row) != 0
    temperature = tl.load(temperature_ptr + row)
    m = upcast(tl.load(row_ptr + greedy))
    x = upcast(tl.load(row_ptr + column, mask=in_row, other=0.0))
    q = quantize(x, m, log2_scale(temperature))
    q = tl.where(temperature >= _TINY, q, tl.where(column == greedy, _PROB_ONE, 0))
    q = tl.where(valid, q, 0)
    tl.store(q_ptr + row * q_row_stride + column, q, mask=in_row)


@triton.jit
def _bounded_kernel(
    values_ptr,
    indices_ptr,
    kept_ptr,
    valid_ptr,
    temperature_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    step_ptr,
    probs_ptr,
    drawn_ptr,
    tokens_ptr,
    max_k,
    survivors_row_stride,
    KB: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Bounded-k sampling over the top-k survivors. Grid ``(B,)``: program ``r`` takes
    the ``max_k`` survivors of row ``r`` (``tops.gpu.topk`` output, best first, the first
    ``kept[r]`` real), in ``KB`` slots (``KB`` a power of two ``>= max_k``).

    Blocks touched per program:
      ``values_ptr``: ``[KB]`` of row ``r`` (logits dtype, masked to ``kept[r]``).
      ``indices_ptr``: ``[KB]`` int32 of row ``r``, then ``[CHUNK]`` slices of it and of
      the weights for the ``[KB, CHUNK]`` pairwise blocks (top-p mass above each weight,
      vocabulary-order prefix sums).
      ``kept_ptr``, ``valid_ptr``: ``[]`` int32; ``temperature_ptr``, ``top_p_ptr``,
      ``min_p_ptr``: ``[]`` float32; ``seed_ptr``, ``step_ptr``: ``[]`` int64 (mod 2**32).
      ``probs_ptr``: ``[KB]`` int32 of row ``r`` (masked to ``max_k``): the final integer
      weights of the survivors (also the scratch the pairwise blocks read).
      ``drawn_ptr``: ``[]`` int64; ``tokens_ptr``: ``[]`` int32.
    """
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, KB)
    kept = tl.load(kept_ptr + row)
    live = slot < kept
    base = row * survivors_row_stride
    x = upcast(tl.load(values_ptr + base + slot, mask=live, other=0.0))
    index = tl.load(indices_ptr + base + slot, mask=live, other=-1)
    m = upcast(tl.load(values_ptr + base))
    greedy = tl.load(indices_ptr + base)
    valid = tl.load(valid_ptr + row) != 0
    temperature = tl.load(temperature_ptr + row)
    greedy_row = (temperature >= _TINY) == 0  # zero, subnormal, negative or NaN
    q = tl.where(live, quantize(x, m, log2_scale(temperature)), 0).to(tl.int64)
    total = tl.reduce(q, 0, _sum_combine)
    keep_min_p = q >= min_p_threshold(tl.load(min_p_ptr + row))
    top_p_enabled, p16 = top_p_p16(tl.load(top_p_ptr + row))
    # Scratch copy of q for the pairwise blocks (overwritten with the result below).
    probs_row = probs_ptr + base
    tl.store(probs_row + slot, q.to(tl.int32), mask=slot < max_k)
    tl.debug_barrier()
    above = tl.zeros([KB], tl.int64)
    for start in tl.static_range(0, KB, CHUNK):
        other = start + tl.arange(0, CHUNK)
        theirs = tl.load(probs_row + other, mask=other < max_k, other=0).to(tl.int64)
        bigger = theirs[None, :] > q[:, None]
        above += tl.reduce(tl.where(bigger, theirs[None, :], 0), 1, _sum_combine)
    small_mass_above = (above.to(tl.uint64) << _TOP_P_BITS) < p16.to(tl.uint64) * total.to(
        tl.uint64
    )
    keep_top_p = (top_p_enabled == 0) | (q == _PROB_ONE) | small_mass_above
    probs = tl.where(keep_min_p & keep_top_p, q, 0)
    probs = tl.where(greedy_row, tl.where(slot == 0, _PROB_ONE, 0), probs)
    probs = tl.where(valid, probs, 0)
    sampled_total = tl.reduce(probs, 0, _sum_combine)
    sampling = valid & (temperature >= _TINY)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    drawn = tl.where(sampling, draw(seed, step, tl.maximum(sampled_total, 1)), 0)
    tl.debug_barrier()
    tl.store(probs_row + slot, probs.to(tl.int32), mask=slot < max_k)
    tl.debug_barrier()
    # Vocabulary-order inclusive prefix at each survivor: the weights of survivors whose
    # index is at most its own (non-survivors weigh 0).
    prefix = tl.zeros([KB], tl.int64)
    for start in tl.static_range(0, KB, CHUNK):
        other = start + tl.arange(0, CHUNK)
        their_live = other < kept
        theirs = tl.load(probs_row + other, mask=their_live, other=0).to(tl.int64)
        their_index = tl.load(indices_ptr + base + other, mask=their_live, other=_BIG_INDEX)
        before = their_index[None, :] <= index[:, None]
        prefix += tl.reduce(tl.where(before, theirs[None, :], 0), 1, _sum_combine)
    passed = live & (prefix > drawn)
    token = tl.reduce(tl.where(passed, index, _BIG_INDEX), 0, _elementwise_min)
    tl.store(tokens_ptr + row, tl.where(valid, token, greedy))
    tl.store(drawn_ptr + row, drawn)


@triton.jit
def _full_kernel(
    x_ptr,
    k_ptr,
    temperature_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    step_ptr,
    probs_ptr,
    topk_logits_ptr,
    greedy_ptr,
    valid_ptr,
    drawn_ptr,
    tokens_ptr,
    V,
    x_row_stride,
    out_row_stride,
    BLOCK: tl.constexpr,
    SEARCH_BLOCK: tl.constexpr,
    PROBES: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """Arbitrary-k sampling over the whole row. Grid ``(B,)``: program ``r`` walks row
    ``r`` in passes over ``[BLOCK]`` tiles (``[SEARCH_BLOCK, PROBES]`` blocks in the
    searches), in column order:

    1. greedy token (first maximum entry), smallest key, NaN and finite flags;
    2. if ``k[r] < V`` (``k`` already the effective k in ``[1, V]``) and the row needs it:
       the top-k key threshold ``T`` (largest key with ``count(key >= T) >= k``) by a
       search testing ``PROBES`` thresholds a pass, and ``count(key > T)``;
    3. weights: kept = ``key > T`` or the first ``k - count(key > T)`` ties at ``T`` in
       column order; :func:`quantize` on kept entries, written to ``probs``; ``S`` = sum;
       (``DEBUG``) the top-k logits;
    4. if top-p is enabled: ``v*``, the least ``v`` with ``A(v) * 2**16 < p16 * S``
       (``A(v)`` = weight strictly above ``v``, non-increasing) by the same multi-probe
       search; an entry survives top-p and min-p iff ``q >= tau = min(max(thr, v*), 2**30)``;
    5. ``S'`` = sum of the surviving weights ((``DEBUG``) written back as the final
       weights, one-hot or zeros for greedy or invalid rows), the draw;
    6. the CDF walk: the first column whose inclusive prefix exceeds the draw.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` / ``[SEARCH_BLOCK]`` tiles of row ``r`` (bf16/f16/f32).
      ``k_ptr``: ``[]`` int32; ``temperature_ptr``, ``top_p_ptr``, ``min_p_ptr``: ``[]``
      float32; ``seed_ptr``, ``step_ptr``: ``[]`` int64.
      ``probs_ptr``: ``[BLOCK]`` / ``[SEARCH_BLOCK]`` int32 tiles of row ``r``: the weights
      (a workspace without ``DEBUG``, the final weights with it).
      ``topk_logits_ptr``: (``DEBUG``) ``[BLOCK]`` tiles of row ``r`` (logits dtype).
      ``greedy_ptr``, ``valid_ptr``, ``tokens_ptr``: ``[]`` int32; ``drawn_ptr``: ``[]``
      int64.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = x_ptr + row * x_row_stride
    probs_row = probs_ptr + row * out_row_stride
    offsets = tl.arange(0, BLOCK)
    best, lowest, has_nan, has_finite = _row_scan(row_ptr, V, BLOCK)
    greedy = entry_index(best)
    valid = (has_nan == 0) & (has_finite != 0)
    temperature = tl.load(temperature_ptr + row)
    sampling = valid & (temperature >= _TINY)  # not greedy: T not zero, subnormal or NaN
    k = tl.load(k_ptr + row)

    # 2. top-k threshold.
    threshold = tl.full([], _NAN_KEY, tl.int32)  # every real key is >= NAN_KEY
    count_above = tl.full([], 0, tl.int32)
    if (k < V) & (sampling | DEBUG):
        probe = tl.arange(0, PROBES)
        search_offsets = tl.arange(0, SEARCH_BLOCK)
        lo = lowest.to(tl.int64)  # count(key >= lo) = V >= k
        hi = (best >> 32).to(tl.int32).to(tl.int64)
        count_hi = tl.full([], 0, tl.int32)  # count(key > hi)
        while lo < hi:
            mid = lo + ((hi - lo) * (probe + 1) + PROBES) // (PROBES + 1)
            mid32 = mid.to(tl.int32)
            counts = tl.zeros([PROBES], tl.int32)
            for start in range(0, V, SEARCH_BLOCK):
                _, key = _load_row(row_ptr, start + search_offsets, V)
                counts += tl.reduce((key[:, None] >= mid32[None, :]).to(tl.int32), 0, _sum_combine)
            enough = counts >= k
            lo = tl.reduce(tl.where(enough, mid, lo), 0, _elementwise_max)
            new_hi = tl.reduce(tl.where(enough, hi, mid - 1), 0, _elementwise_min)
            count_hi = tl.where(
                new_hi < hi,
                tl.reduce(tl.where(mid - 1 == new_hi, counts, 0), 0, _elementwise_max),
                count_hi,
            )
            hi = new_hi
        threshold = lo.to(tl.int32)
        count_above = count_hi
    needed = k - count_above

    # 3. weights, their sum and the top-k logits.
    m = upcast(tl.load(row_ptr + greedy))
    s = log2_scale(temperature)
    total = tl.full([], 0, tl.int64)
    if sampling | DEBUG:
        ties = tl.full([], 0, tl.int32)
        for start in range(0, V, BLOCK):
            column = start + offsets
            in_row = column < V
            raw, key = _load_row(row_ptr, column, V)
            tie = key == threshold
            tie_rank = ties + tl.associative_scan(tie.to(tl.int32), 0, _sum_combine)
            kept = in_row & ((key > threshold) | (tie & (tie_rank <= needed)))
            ties += tl.reduce(tie.to(tl.int32), 0, _sum_combine)
            if DEBUG:
                out = topk_logits_ptr + row * out_row_stride + column
                # -inf cast from float32, not a scalar in where: Triton 3.6's interpreter
                # cannot make a bfloat16 constant. Kept logits keep their bits (NaN payloads).
                neg_inf = tl.full([], float("-inf"), tl.float32).to(raw.dtype)
                tl.store(out, tl.where(kept, raw, neg_inf), mask=in_row)
            q = tl.where(kept, quantize(upcast(raw), m, s), 0)
            tl.store(probs_row + column, q, mask=in_row)
            total += tl.reduce(q.to(tl.int64), 0, _sum_combine)
    # Later passes read weights other threads wrote (the search blocks are laid out
    # differently from the [BLOCK] tiles).
    tl.debug_barrier()

    # 4. top-p threshold v* and the combined threshold tau.
    top_p_enabled, p16 = top_p_p16(tl.load(top_p_ptr + row))
    v_star = tl.full([], 0, tl.int64)
    if sampling & top_p_enabled:
        v_star = tl.where(p16 > 0, _PROB_ONE, _PROB_ONE + 1).to(tl.int64)
        if p16 > 0:
            probe = tl.arange(0, PROBES)
            search_offsets = tl.arange(0, SEARCH_BLOCK)
            budget = p16.to(tl.uint64) * total.to(tl.uint64)
            lo = tl.full([], -1, tl.int64)  # A(-1) = S fails: p16 < 2**16
            hi = tl.full([], _PROB_ONE, tl.int64)  # A(2**30) = 0 passes: p16 > 0
            while hi - lo > 1:
                mid = lo + ((hi - lo) * (probe + 1)) // (PROBES + 1)
                mass = tl.zeros([PROBES], tl.int64)
                for start in range(0, V, SEARCH_BLOCK):
                    column = start + search_offsets
                    q = tl.load(probs_row + column, mask=column < V, other=0).to(tl.int64)
                    heavier = q[:, None] > mid[None, :]
                    mass += tl.reduce(tl.where(heavier, q[:, None], 0), 0, _sum_combine)
                small = (mass.to(tl.uint64) << _TOP_P_BITS) < budget
                lo = tl.reduce(tl.where(small, lo, mid), 0, _elementwise_max)
                hi = tl.reduce(tl.where(small, mid, hi), 0, _elementwise_min)
            v_star = hi
    cut = tl.minimum(tl.maximum(min_p_threshold(tl.load(min_p_ptr + row)), v_star), _PROB_ONE)

    # 5. surviving mass (and the final weights) and the draw.
    sampled_total = tl.full([], 0, tl.int64)
    if sampling | DEBUG:
        for start in range(0, V, BLOCK):
            column = start + offsets
            in_row = column < V
            q = tl.load(probs_row + column, mask=in_row, other=0)
            probs = tl.where(q >= cut, q, 0)
            sampled_total += tl.reduce(probs.to(tl.int64), 0, _sum_combine)
            if DEBUG:
                probs = tl.where(
                    sampling, probs, tl.where(valid & (column == greedy), _PROB_ONE, 0)
                )
                tl.store(probs_row + column, probs, mask=in_row)
    tl.debug_barrier()
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    drawn = tl.where(sampling, draw(seed, step, tl.maximum(sampled_total, 1)), 0)

    # 6. the first column whose inclusive prefix exceeds the draw.
    token = greedy
    if sampling:
        prefix = tl.full([], 0, tl.int64)
        found = tl.full([], _BIG_INDEX, tl.int32)
        start = 0
        while (start < V) & (found == _BIG_INDEX):
            column = start + offsets
            in_row = column < V
            q = tl.load(probs_row + column, mask=in_row, other=0).to(tl.int64)
            probs = tl.where(q >= cut, q, 0)
            inclusive = prefix + tl.associative_scan(probs, 0, _sum_combine)
            found = tl.reduce(
                tl.where(in_row & (inclusive > drawn), column, _BIG_INDEX), 0, _elementwise_min
            )
            prefix += tl.reduce(probs, 0, _sum_combine)
            start += BLOCK
        token = found
    tl.store(greedy_ptr + row, greedy)
    tl.store(valid_ptr + row, valid.to(tl.int32))
    tl.store(drawn_ptr + row, drawn)
    tl.store(tokens_ptr + row, token)


# ---------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(greedy int32[B], valid int32[B])`` of ``x [B, V]`` (``B >= 1``, last dim
    contiguous)."""
    batch, vocab = x.shape
    greedy = torch.empty(batch, dtype=torch.int32, device=x.device)
    valid = torch.empty(batch, dtype=torch.int32, device=x.device)
    block, _ = row_blocks(vocab)
    _row_stats_kernel[(batch,)](
        x, greedy, valid, vocab, x.stride(0), BLOCK=block, num_warps=ROW_WARPS
    )
    return greedy, valid


def launch_integer_weights(x, greedy, valid, temperature, q) -> None:
    """Write the step-3 weights of ``x [B, V]`` into ``q int32[B, V]`` (contiguous)."""
    batch, vocab = x.shape
    _integer_weights_kernel[(batch, triton.cdiv(vocab, WEIGHTS_BLOCK))](
        x,
        greedy,
        valid,
        temperature,
        q,
        vocab,
        x.stride(0),
        q.stride(0),
        BLOCK=WEIGHTS_BLOCK,
        num_warps=WEIGHTS_WARPS,
        **FP_OPTIONS,
    )


def launch_bounded(values, indices, kept, valid, params, probs, drawn, tokens) -> None:
    """Bounded-k sampling over the survivors ``values, indices [B, max_k]`` (contiguous).
    ``params`` = (temperature, top_p, min_p float32[B], seed, step int64[B])."""
    batch, max_k = values.shape
    size = bounded_size(max_k)
    _bounded_kernel[(batch,)](
        values,
        indices,
        kept,
        valid,
        *params,
        probs,
        drawn,
        tokens,
        max_k,
        values.stride(0),
        KB=size,
        CHUNK=PAIR_CHUNK,
        num_warps=BOUNDED_WARPS,
        **FP_OPTIONS,
    )


def launch_full(
    x, k, params, probs, topk_logits, greedy, valid, drawn, tokens, debug: bool
) -> None:
    """Arbitrary-k sampling of ``x [B, V]``; ``probs`` int32 ``[B, V]`` and (with
    ``debug``) ``topk_logits`` ``[B, V]`` contiguous, sharing one row stride."""
    batch, vocab = x.shape
    block, search_block = row_blocks(vocab)
    _full_kernel[(batch,)](
        x,
        k,
        *params,
        probs,
        topk_logits if debug else probs,
        greedy,
        valid,
        drawn,
        tokens,
        vocab,
        x.stride(0),
        probs.stride(0),
        BLOCK=block,
        SEARCH_BLOCK=search_block,
        PROBES=PROBES,
        DEBUG=debug,
        num_warps=ROW_WARPS,
        **FP_OPTIONS,
    )


def compile_configs() -> list[dict]:
    """Every shipped kernel configuration, for the compile-only checks.

    Per input dtype (bf16, f16, f32): :func:`_row_stats_kernel`,
    :func:`_integer_weights_kernel`, :func:`_bounded_kernel` at each of ``BOUNDED_SIZES``
    and :func:`_full_kernel` with and without ``DEBUG``, at the GPU block sizes; each with
    the warps it launches with and its compile ``options`` (``num_warps``, and
    ``enable_fp_fusion=False`` where the kernel does float32 arithmetic: pass them to
    ``triton.compile``). Entries: ``{"name", "kernel", "signature", "constexprs",
    "num_warps", "options"}``.
    """
    configs = []

    def add(kernel, suffix, pointers, integers, constexprs, num_warps, options):
        signature = {**pointers, **dict.fromkeys(integers, "i32")}
        configs.append(
            {
                "name": f"{kernel.__name__.strip('_')}_{suffix}",
                "kernel": kernel,
                "signature": {**signature, **dict.fromkeys(constexprs, "constexpr")},
                "constexprs": constexprs,
                "num_warps": num_warps,
                "options": {"num_warps": num_warps, **options},
            }
        )

    params = {
        "temperature_ptr": "*fp32",
        "top_p_ptr": "*fp32",
        "min_p_ptr": "*fp32",
        "seed_ptr": "*i64",
        "step_ptr": "*i64",
    }
    for dtype in ("bf16", "fp16", "fp32"):
        x = f"*{dtype}"
        add(
            _row_stats_kernel,
            f"{dtype}_BLOCK{BLOCK_V}",
            {"x_ptr": x, "greedy_ptr": "*i32", "valid_ptr": "*i32"},
            ("V", "x_row_stride"),
            {"BLOCK": BLOCK_V},
            ROW_WARPS,
            {},
        )
        add(
            _integer_weights_kernel,
            f"{dtype}_BLOCK{WEIGHTS_BLOCK}",
            {
                "x_ptr": x,
                "greedy_ptr": "*i32",
                "valid_ptr": "*i32",
                "temperature_ptr": "*fp32",
                "q_ptr": "*i32",
            },
            ("V", "x_row_stride", "q_row_stride"),
            {"BLOCK": WEIGHTS_BLOCK},
            WEIGHTS_WARPS,
            FP_OPTIONS,
        )
        for size in BOUNDED_SIZES:
            add(
                _bounded_kernel,
                f"{dtype}_KB{size}",
                {
                    "values_ptr": x,
                    "indices_ptr": "*i32",
                    "kept_ptr": "*i32",
                    "valid_ptr": "*i32",
                    **params,
                    "probs_ptr": "*i32",
                    "drawn_ptr": "*i64",
                    "tokens_ptr": "*i32",
                },
                ("max_k", "survivors_row_stride"),
                {"KB": size, "CHUNK": PAIR_CHUNK},
                BOUNDED_WARPS,
                FP_OPTIONS,
            )
        for debug in (False, True):
            add(
                _full_kernel,
                f"{dtype}_{'debug' if debug else 'plain'}",
                {
                    "x_ptr": x,
                    "k_ptr": "*i32",
                    **params,
                    "probs_ptr": "*i32",
                    "topk_logits_ptr": x,
                    "greedy_ptr": "*i32",
                    "valid_ptr": "*i32",
                    "drawn_ptr": "*i64",
                    "tokens_ptr": "*i32",
                },
                ("V", "x_row_stride", "out_row_stride"),
                {"BLOCK": BLOCK_V, "SEARCH_BLOCK": SEARCH_BLOCK, "PROBES": PROBES, "DEBUG": debug},
                ROW_WARPS,
                FP_OPTIONS,
            )
    return configs
