"""Shared arithmetic of the Triton sampling kernels (:mod:`tops.gpu.sampling.kernel`,
``full``, ``bounded``), bit-identical to ``tops.cpu.sampling``, and their launch constants.

Every token-deciding step is the reference's sequence of float32 add, subtract, multiply,
compare, floor/ceil and exponent-field bit manipulation, or exact integer arithmetic (int64
sums, uint64 for the top-p comparison, threefry on 32-bit words); no exp, exp2 or division
touches a decision. Order keys and entries are those of ``tops.gpu.selection.kernel``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import triton
import triton.language as tl

from tops.backends import triton_interprets
from tops.gpu.exact import upcast
from tops.gpu.reduce import add_combine, max_combine, min_combine
from tops.gpu.selection import kernel as selection
from tops.gpu.selection.kernel import order_entry, order_key
from tops.spec import sampling as spec


def _f32(value: float) -> float:
    """``value`` rounded to float32 (so that Triton's constant is that exact value)."""
    return float(np.float32(value))


# quantize's Horner steps, threefry2x32's 5 x 4 rounds and log2_scale's Newton start are
# written for these.
assert len(spec.EXP_COEFFICIENTS) == 10 and spec.THREEFRY_ROUNDS == 20
assert spec.NEWTON_A == 24.0 / 17.0
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = (
    tl.constexpr(_f32(c)) for c in spec.EXP_COEFFICIENTS
)
_LN2 = tl.constexpr(_f32(spec.LN2))
_LOG2E = tl.constexpr(_f32(spec.LOG2E))
_NEWTON_A = tl.constexpr(_f32(spec.NEWTON_A))
_NEWTON_B = tl.constexpr(_f32(spec.NEWTON_B))
_RECIPROCAL_LIMIT = tl.constexpr(spec.RECIPROCAL_LIMIT)
_PROB_ONE_F = tl.constexpr(float(spec.PROB_ONE))
_W_LIMIT = tl.constexpr(float(spec.PROB_BITS + 1))
_SCALE_BIAS = tl.constexpr(127 + spec.PROB_BITS)
_MIN_P_FLOOR = tl.constexpr(2.0**-31)
_TOP_P_ONE = tl.constexpr(float(2**spec.TOP_P_BITS))
_PARITY = tl.constexpr(spec.THREEFRY_PARITY)
_ROTATIONS = tl.constexpr(spec.THREEFRY_ROTATIONS)
_MASK32 = tl.constexpr(0xFFFFFFFF)
_ATTEMPTS = tl.constexpr(spec.MAX_ATTEMPTS)
_INT32_MAX = tl.constexpr(selection.INT32_MAX)
_PAD_ENTRY = tl.constexpr(selection.PAD_ENTRY)
# Order keys of -inf and +inf (negative bits b map to b ^ INT32_MAX).
_NEG_INF_KEY = tl.constexpr(
    int(np.int32(np.uint32(0xFF800000).view(np.int32) ^ np.int32(selection.INT32_MAX)))
)
_POS_INF_KEY = tl.constexpr(0x7F800000)

# The constants the sampling kernels read, as Triton constants.
TINY = tl.constexpr(spec.TINY)
PROB_ONE = tl.constexpr(spec.PROB_ONE)
TOP_P_BITS = tl.constexpr(spec.TOP_P_BITS)
NAN_KEY = tl.constexpr(selection.NAN_KEY)
NO_INDEX = tl.constexpr(selection.INT32_MAX)  # above every column: "not found yet"

# Launch option of every kernel with float32 arithmetic: ptxas must not contract a multiply
# and an add into an FMA (the interpreter computes in NumPy, which never does).
FP_OPTIONS = {"enable_fp_fusion": False}
# The per-row parameter pointers (temperature, top_p, min_p, seed, step) of the sampling
# kernels' signatures.
PARAMETER_POINTERS = {
    "temperature_ptr": "*fp32",
    "top_p_ptr": "*fp32",
    "min_p_ptr": "*fp32",
    "seed_ptr": "*i64",
    "step_ptr": "*i64",
}


@dataclasses.dataclass(frozen=True)
class SamplingBlocks:
    """Launch constants of the sampling kernels (8 warps: 256 threads a program)."""

    # Columns per tile of the one-dimensional row passes: 16 a thread.
    row_block: int = 4096
    row_warps: int = 8
    # Thresholds tested per pass of the two searches of the arbitrary-k path (so about
    # log2(2**32) / log2(probes + 1) = 8 passes each), over [search_block, probes] blocks:
    # 32 elements a thread.
    probes: int = 16
    search_block: int = 512
    # The interpreter's cost is per operation rather than per element (about 4x faster at
    # V = 128256 with 16384-column tiles than with the GPU's), so interpreted launches take
    # tiles of min(interpret_block, next_pow2(V)) columns for both block shapes. Every
    # result is exact integer arithmetic, independent of the tiling.
    interpret_block: int = 16384
    # Bounded-k survivors per program (a power of two >= max_k) and the column chunk of
    # the pairwise [KB, pair_chunk] comparison blocks (32 a thread for KB = 256).
    bounded_sizes: tuple[int, ...] = (64, 256)
    pair_chunk: int = 32
    bounded_warps: int = 8
    # Tile of the integer-weights kernel: 16 elements a thread.
    weights_block: int = 4096
    weights_warps: int = 8

    def row_blocks(self, vocab: int) -> tuple[int, int]:
        """``(BLOCK, SEARCH_BLOCK)`` of the row kernels for rows of ``vocab`` columns."""
        if not triton_interprets():
            return self.row_block, self.search_block
        block = min(self.interpret_block, max(16, triton.next_power_of_2(vocab)))
        return block, block

    def bounded_size(self, max_k: int) -> int:
        """Survivor slots per program of the bounded-k kernel for a static ``max_k``."""
        return next(size for size in self.bounded_sizes if max_k <= size)


BLOCKS = SamplingBlocks()


@triton.jit
def log2_scale(temperature):
    """``reciprocal(T) * LOG2E`` in float32 (``tops.cpu.sampling.reciprocal``): 0 unless
    ``TINY <= T < RECIPROCAL_LIMIT``; else ``T = M * 2**E``, ``y = A - B*M`` and three
    Newton steps ``y = y * (2 - M*y)``, scaled by ``2**-E`` through the exponent field."""
    in_range = (temperature >= TINY) & (temperature < _RECIPROCAL_LIMIT)
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
    inline)."""
    key2 = key0 ^ key1 ^ _PARITY
    x0 = (x0 + key0) & _MASK32
    x1 = (x1 + key1) & _MASK32
    for group in tl.static_range(5):
        for i in tl.static_range(4):
            rotation = _ROTATIONS[4 * (group % 2) + i]
            x0 = (x0 + x1) & _MASK32
            x1 = (((x1 << rotation) & _MASK32) | (x1 >> (32 - rotation))) ^ x0
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
    first = tl.reduce(tl.where(value < total, attempt, _ATTEMPTS), 0, min_combine)
    chosen = tl.reduce(tl.where(attempt == first, value, 0), 0, add_combine)
    last = tl.reduce(tl.where(attempt == _ATTEMPTS - 1, value, 0), 0, add_combine) - total
    return tl.where(first < _ATTEMPTS, chosen, last)


@triton.jit
def load_row(row_ptr, column, V):
    """``(raw, key)`` of ``row_ptr[column]``: the raw elements (0 past ``V``) and their
    order keys (``tops.gpu.selection.kernel.order_key`` of the exact upcast)."""
    valid = column < V
    raw = tl.load(row_ptr + column, mask=valid, other=0.0)
    return raw, order_key(upcast(raw), valid)


@triton.jit
def row_scan(row_ptr, V, BLOCK: tl.constexpr):
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
        _, key = load_row(row_ptr, column, V)
        entry = order_entry(key, column)
        best = tl.maximum(best, tl.reduce(entry, 0, max_combine))
        lowest = tl.minimum(lowest, tl.reduce(tl.where(valid, key, _INT32_MAX), 0, min_combine))
        has_nan = tl.maximum(has_nan, tl.reduce((key == NAN_KEY).to(tl.int32), 0, max_combine))
        finite = (key > _NEG_INF_KEY) & (key < _POS_INF_KEY)
        has_finite = tl.maximum(has_finite, tl.reduce(finite.to(tl.int32), 0, max_combine))
    return best, lowest, has_nan, has_finite
