"""Triton kernels for temperature softmax (the special rows and arithmetic of
``tops.cpu.softmax``) and its backward, one program per row: every grid is ``(B,)``.

* :func:`_single_pass_kernel`: the row as one ``[BLOCK_V]`` block (``V`` padded to a power
  of two), read once, then written; :func:`_multi_pass_kernel`: ``[BLOCK_V]`` chunks of the
  row, each read twice (online max and sum, then the probabilities) and written once.
  Every element is read before it is written, so ``out`` may alias ``logits``.
* :func:`_grad_single_pass_kernel`, :func:`_grad_multi_pass_kernel`: the same blocks of
  ``p``, ``g`` and ``dx`` (float32) for ``dx = p * (g - s) / T``, ``s = sum(p * g) /
  sum(p)`` in double-float32, the arithmetic of the Pallas backward.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.arith import exp2
from tops.gpu.exact import upcast
from tops.spec.temperature_softmax import SMALLEST_NORMAL_F32, UNIFORM_TEMPERATURE

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)
_TINY = tl.constexpr(SMALLEST_NORMAL_F32)
_UNIFORM_T = tl.constexpr(UNIFORM_TEMPERATURE)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)


@dataclasses.dataclass(frozen=True)
class SoftmaxBlocks:
    """Launch constants of the temperature-softmax kernels."""

    # Largest V of the single-pass kernels, which hold the whole row (padded to a power of
    # two) in registers. Chosen by register-pressure reasoning, not measured: at 16384
    # elements and 16 warps each thread holds 32 values per live row tensor, which ptxas
    # for sm_90 fits in 128 registers (at most a 16-byte stack spill for f32 logits); a
    # larger row would spill, while the multi-pass kernel only reads the row a second
    # time (mostly from L2). scripts/bench_temperature_softmax.py sweeps this threshold.
    single_pass_max_v: int = 16384
    # Chunk of the multi-pass kernels: 16 f32 values a thread at 8 warps.
    multi_pass_block_v: int = 4096

    def num_warps(self, block_v: int) -> int:
        """Warps per program for a block of ``block_v`` elements."""
        if block_v <= 2048:
            return 4
        if block_v <= 8192:
            return 8
        return 16


BLOCKS = SoftmaxBlocks()


@triton.jit
def _exponent(x, m, c):
    """The base-2 exponent ``z`` of each entry of ``x`` under the row maximum ``m``.

    ``-inf`` where ``x == -inf``; ``0`` where ``x == m`` (the ``+inf`` entries when
    ``m == +inf``); ``-inf`` for the other entries when ``m == +inf``; otherwise
    ``(x - m) * c``. Operands are made finite before subtracting so no ``inf - inf`` is
    ever formed, and the difference is clamped to ``-FLT_MAX`` so a row spanning more than
    FLT_MAX (``x - m`` overflowing to ``-inf``) cannot form ``-inf * 0`` when ``c == 0``
    (``T == +inf``).
    """
    x_finite = tl.abs(x) < float("inf")
    m_finite = tl.abs(m) < float("inf")
    d = tl.where(x_finite, x, 0.0) - tl.where(m_finite, m, 0.0)
    z = tl.maximum(d, -_FLT_MAX) * c
    z = tl.where(m_finite, z, float("-inf"))
    z = tl.where(x == m, 0.0, z)
    z = tl.where(x == float("-inf"), float("-inf"), z)
    return z


@triton.jit
def _row_scale(t):
    """Per-row flags and scale from the temperature ``t`` (f32 scalar).

    Returns ``(t_bad, greedy, c)``: NaN or negative ``t``; ``t`` below the smallest normal
    f32; ``c = LOG2E / t`` (``t`` replaced by 1 for the bad and greedy rows, whose exponents
    are never used, so no division by zero or overflow happens there), and ``c = 0`` for
    ``t >= UNIFORM_TEMPERATURE``, which counts as infinite.
    """
    t_bad = (t != t) | (t < 0.0)
    greedy = t < _TINY
    t_safe = tl.where(t_bad | greedy, 1.0, t)
    # div_rn (IEEE rounding): the interpreter and native code round it identically.
    c = tl.math.div_rn(tl.full((), _LOG2E, tl.float32), t_safe)
    return t_bad, greedy, tl.where(t >= _UNIFORM_T, 0.0, c)


@triton.jit
def _row_max(x, offs, mask, not_found):
    """``(has_nan, m, first)`` of a block of float32 ``x`` at columns ``offs``: int32 1 if
    it holds a NaN, the maximum over its non-NaN entries (``-inf`` if none), and the first
    column of ``mask`` where ``x == m`` (``not_found`` if none). NaN is tested
    explicitly, so no result depends on how a backend's max treats NaN."""
    is_nan = x != x
    xm = tl.where(is_nan, float("-inf"), x)
    m = tl.max(xm, axis=0)
    first = tl.min(tl.where((xm == m) & mask, offs, not_found), axis=0)
    return tl.max(is_nan.to(tl.int32), axis=0), m, first


@triton.jit
def _special_rows(p, offs, first_max, greedy, empty_row, nan_row):
    """Apply the special rows to probabilities ``p`` at columns ``offs``, in order of
    precedence: NaN row, then empty (all ``-inf``) row: zeros, then greedy: one-hot at
    ``first_max``."""
    p = tl.where(greedy, tl.where(offs == first_max, 1.0, 0.0), p)
    p = tl.where(empty_row, 0.0, p)
    return tl.where(nan_row, float("nan"), p)


@triton.jit
def _single_pass_kernel(
    logits_ptr,
    temperature_ptr,
    out_ptr,
    V,
    logits_row_stride,
    out_row_stride,
    BLOCK_V: tl.constexpr,
):
    """Whole row in one block. Grid ``(B,)``: program ``r`` handles row ``r``.

    Blocks touched per program:
      ``logits_ptr``: ``[BLOCK_V]`` of row ``r`` (bf16/f16/f32, masked to ``V``), read once.
      ``temperature_ptr``: ``[]`` (f32 scalar ``temperature[r]``).
      ``out_ptr``: ``[BLOCK_V]`` of row ``r`` (f32, masked to ``V``), written once after the
      whole row is read (so ``out`` may alias ``logits``).
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_V)
    mask = offs < V
    x = tl.load(logits_ptr + row * logits_row_stride + offs, mask=mask, other=float("-inf"))
    x = upcast(x)
    t = tl.load(temperature_ptr + row)
    t_bad, greedy, c = _row_scale(t)

    nan_count, m, first_max = _row_max(x, offs, mask, BLOCK_V)

    z = _exponent(x, m, c)
    e = exp2(z)
    s = tl.sum(e, axis=0)
    inv = tl.math.div_rn(1.0, tl.where(s > 0.0, s, 1.0))
    p = e * inv

    p = _special_rows(p, offs, first_max, greedy, m == float("-inf"), t_bad | (nan_count > 0))
    tl.store(out_ptr + row * out_row_stride + offs, p, mask=mask)


@triton.jit
def _multi_pass_kernel(
    logits_ptr,
    temperature_ptr,
    out_ptr,
    V,
    logits_row_stride,
    out_row_stride,
    BLOCK_V: tl.constexpr,
):
    """Row in ``BLOCK_V`` chunks. Grid ``(B,)``: program ``r`` handles row ``r``.

    Loop 1 reads every chunk once, keeping an online max and sum (the running sum rescaled
    by ``exp2((m_old - m_new) * c)``, that exponent masked so ``-inf - -inf`` and
    ``inf - inf`` never reach ``exp2``), a NaN flag and the first argmax (a later chunk
    replaces it only if its max is strictly greater). Loop 2 reads each chunk again and
    writes its probabilities.

    Blocks touched per program:
      ``logits_ptr``: ``[BLOCK_V]`` chunks of row ``r`` (bf16/f16/f32, last one masked to
      ``V``), each read twice.
      ``temperature_ptr``: ``[]`` (f32 scalar ``temperature[r]``).
      ``out_ptr``: ``[BLOCK_V]`` chunks of row ``r`` (f32, masked), each written once in
      loop 2 right after the same chunk is read (so ``out`` may alias ``logits``).
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * logits_row_stride
    out_row = out_ptr + row * out_row_stride
    t = tl.load(temperature_ptr + row)
    t_bad, greedy, c = _row_scale(t)
    chunk = tl.arange(0, BLOCK_V)

    m_run = tl.full((), float("-inf"), tl.float32)
    s_run = tl.full((), 0.0, tl.float32)
    nan_run = tl.full((), 0, tl.int32)
    arg_run = tl.full((), 0, tl.int32) + V
    for start in range(0, V, BLOCK_V):
        offs = start + chunk
        mask = offs < V
        x = upcast(tl.load(x_row + offs, mask=mask, other=float("-inf")))
        nan_chunk, m_chunk, arg_chunk = _row_max(x, offs, mask, V)
        nan_run = tl.maximum(nan_run, nan_chunk)
        arg_run = tl.where(m_chunk > m_run, arg_chunk, arg_run)
        m_new = tl.maximum(m_run, m_chunk)
        # Rescale exponent of the running sum; operands made finite before subtracting.
        old_finite = tl.abs(m_run) < float("inf")
        new_finite = tl.abs(m_new) < float("inf")
        d = tl.where(old_finite, m_run, 0.0) - tl.where(new_finite, m_new, 0.0)
        alpha = tl.maximum(d, -_FLT_MAX) * c
        alpha = tl.where(m_new == float("inf"), float("-inf"), alpha)
        alpha = tl.where((m_run == m_new) | (m_run == float("-inf")), 0.0, alpha)
        s_run = s_run * exp2(alpha) + tl.sum(exp2(_exponent(x, m_new, c)), axis=0)
        m_run = m_new

    special_nan = t_bad | (nan_run > 0)
    zero_row = m_run == float("-inf")
    inv = tl.math.div_rn(1.0, tl.where(s_run > 0.0, s_run, 1.0))
    for start in range(0, V, BLOCK_V):
        offs = start + chunk
        mask = offs < V
        x = upcast(tl.load(x_row + offs, mask=mask, other=float("-inf")))
        p = exp2(_exponent(x, m_run, c)) * inv
        p = _special_rows(p, offs, arg_run, greedy, zero_row, special_nan)
        tl.store(out_row + offs, p, mask=mask)


def launch(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    """Write the probabilities of ``logits`` into ``out``; picks the kernel by ``V``.

    Args:
      logits: ``[B, V]`` bf16/f16/f32, ``B >= 1``, last dim contiguous (any row stride).
      temperature: ``float32[B]``, contiguous, on the logits' device.
      out: ``float32[B, V]``, last dim contiguous, rows not overlapping; may be ``logits``.
    """
    if logits.shape[1] <= BLOCKS.single_pass_max_v:
        launch_single_pass(logits, temperature, out)
    else:
        launch_multi_pass(logits, temperature, out)


def _row_args(
    logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """The runtime arguments both kernels take, in order."""
    return (logits, temperature, out, logits.shape[1], logits.stride(0), out.stride(0))


def launch_single_pass(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`launch` forced onto the single-pass kernel (any ``V``; for benchmarks)."""
    batch, vocab = logits.shape
    block_v = triton.next_power_of_2(vocab)
    _single_pass_kernel[(batch,)](
        *_row_args(logits, temperature, out), BLOCK_V=block_v, num_warps=BLOCKS.num_warps(block_v)
    )


def launch_multi_pass(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`launch` forced onto the multi-pass kernel (any ``V``; for benchmarks)."""
    _multi_pass_kernel[(logits.shape[0],)](
        *_row_args(logits, temperature, out),
        BLOCK_V=BLOCKS.multi_pass_block_v,
        num_warps=BLOCKS.num_warps(BLOCKS.multi_pass_block_v),
    )


# ---------------------------------------------------------------------------------------
# Backward: ``dx = p * (g - s) / T`` per row, ``s = sum(p * g) / sum(p)`` in
# double-float32, the arithmetic of the Pallas backward (``tops.ops.temperature_softmax``).

# ptxas must not contract a multiply into the add that follows: the error-free
# transformations below rely on both being rounded, as the interpreter (NumPy) rounds them.
GRAD_OPTIONS = {"enable_fp_fusion": False}
_SPLITTER = tl.constexpr(4097.0)  # 2**12 + 1: splits a float32 significand in two halves


@triton.jit
def _two_sum(a, b):
    """``(s, err)``: ``s = fl(a + b)``, ``s + err == a + b`` exactly (Knuth)."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


@triton.jit
def _add_dd(a_hi, a_lo, b_hi, b_lo):
    """Double-float ``a + b``, normalised (``tops.ops.double_float.add_dd``)."""
    s, err = _two_sum(a_hi, b_hi)
    lo = err + (a_lo + b_lo)
    hi = s + lo
    return hi, lo - (hi - s)


@triton.jit
def _two_prod(a, b):
    """``(p, err)``: ``p = fl(a * b)``, ``p + err == a * b`` exactly (Dekker, Veltkamp's
    split; no FMA, so the interpreter and sm_90 agree bit for bit)."""
    p = a * b
    t = a * _SPLITTER
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = b * _SPLITTER
    b_hi = t - (t - b)
    b_lo = b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


@triton.jit
def _sum_dd(hi, lo, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Double-float sum of a ``[BLOCK]`` double-float vector (``BLOCK = 2**LOG2_BLOCK``)
    by a fixed pairwise tree of error-free additions: accurate to about 2**-44 whatever
    the layout, and the same bits interpreted and compiled."""
    for level in tl.static_range(LOG2_BLOCK):
        a_hi, b_hi = tl.split(tl.reshape(hi, (BLOCK >> (level + 1), 2)))
        a_lo, b_lo = tl.split(tl.reshape(lo, (BLOCK >> (level + 1), 2)))
        hi, lo = _add_dd(a_hi, a_lo, b_hi, b_lo)
    return tl.sum(hi, axis=0), tl.sum(lo, axis=0)  # one element each: exact


@triton.jit
def _block_sums(p, g, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """``(pg_hi, pg_lo, p_hi, p_lo)``: double-float ``sum(p * g)`` (exact products) and
    ``sum(p)`` of a ``[BLOCK]`` chunk."""
    pg_hi, pg_lo = _sum_dd(*_two_prod(p, g), BLOCK, LOG2_BLOCK)
    p_hi, p_lo = _sum_dd(p, tl.zeros_like(p), BLOCK, LOG2_BLOCK)
    return pg_hi, pg_lo, p_hi, p_lo


@triton.jit
def _row_mean(pg_hi, pg_lo, p_hi, p_lo):
    """``s = sum(p * g) / sum(p)`` as a double-float ``(s_hi, s_lo)`` (why ``sum(p)``:
    ``tops.ops.softmax.kernel._row_mean``); ``s = 0`` where ``sum(p) = 0``."""
    total = tl.where(p_hi > 0.0, p_hi, 1.0)
    inv = tl.math.div_rn(tl.full((), 1.0, tl.float32), total)
    q = pg_hi * inv
    prod, err = _two_prod(q, total)
    residual = ((pg_hi - prod) - err) + (pg_lo - q * p_lo)
    return q, residual * inv


@triton.jit
def _grad_row(t):
    """``(nan_row, zero_row, inv_t)`` from the row's temperature ``t`` (f32 scalar): NaN or
    negative ``t`` (the launcher also sets NaN for the forward's NaN rows); greedy or
    uniform ``t``, where the forward is constant in the logits; ``1 / t`` rounded once."""
    nan_row = (t != t) | (t < 0.0)
    zero_row = (t < _TINY) | (t >= _UNIFORM_T)
    t_safe = tl.where(nan_row | zero_row, 1.0, t)
    return nan_row, zero_row, tl.math.div_rn(tl.full((), 1.0, tl.float32), t_safe)


@triton.jit
def _grad_values(p, g, s_hi, s_lo, nan_row, zero_row, inv_t):
    """``p * (g - s) / T`` with the special rows; ``g - s`` is formed against both parts
    of ``s`` (``g - s_hi`` is exact where they are close), then two products, exactly the
    arithmetic of the Pallas kernel."""
    dx = (p * ((g - s_hi) - s_lo)) * inv_t
    dx = tl.where(zero_row, 0.0, dx)
    return tl.where(nan_row, float("nan"), dx)


@triton.jit
def _grad_single_pass_kernel(
    p_ptr, g_ptr, temperature_ptr, dx_ptr, V, BLOCK_V: tl.constexpr, LOG2_BLOCK_V: tl.constexpr
):
    """Whole row in one block. Grid ``(B,)``: program ``r`` handles row ``r``.

    Blocks touched per program: ``p_ptr`` (probabilities), ``g_ptr`` (their cotangent):
    ``[BLOCK_V]`` f32 of row ``r`` (rows contiguous, masked to ``V``), read once;
    ``temperature_ptr``: ``[]`` f32; ``dx_ptr``: ``[BLOCK_V]`` f32 of row ``r``, written once.
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_V)
    mask = offs < V
    p = tl.load(p_ptr + row * V + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + row * V + offs, mask=mask, other=0.0)
    s_hi, s_lo = _row_mean(*_block_sums(p, g, BLOCK_V, LOG2_BLOCK_V))
    nan_row, zero_row, inv_t = _grad_row(tl.load(temperature_ptr + row))
    dx = _grad_values(p, g, s_hi, s_lo, nan_row, zero_row, inv_t)
    tl.store(dx_ptr + row * V + offs, dx, mask=mask)


@triton.jit
def _grad_multi_pass_kernel(
    p_ptr, g_ptr, temperature_ptr, dx_ptr, V, BLOCK_V: tl.constexpr, LOG2_BLOCK_V: tl.constexpr
):
    """Row in ``BLOCK_V`` chunks. Grid ``(B,)``: program ``r`` handles row ``r``.

    Loop 1 adds each chunk's double-float ``sum(p * g)`` and ``sum(p)`` to the row's;
    loop 2 writes ``dx``.
    Blocks touched per program: ``p_ptr``, ``g_ptr``: ``[BLOCK_V]`` f32 chunks of row ``r``
    (last one masked), each read twice; ``temperature_ptr``: ``[]`` f32; ``dx_ptr``:
    ``[BLOCK_V]`` f32 chunks, each written once.
    """
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.arange(0, BLOCK_V)
    pg_hi = tl.full((), 0.0, tl.float32)
    pg_lo = pg_hi
    p_hi = pg_hi
    p_lo = pg_hi
    for start in range(0, V, BLOCK_V):
        offs = start + chunk
        mask = offs < V
        p = tl.load(p_ptr + row * V + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + row * V + offs, mask=mask, other=0.0)
        c_pg_hi, c_pg_lo, c_p_hi, c_p_lo = _block_sums(p, g, BLOCK_V, LOG2_BLOCK_V)
        pg_hi, pg_lo = _add_dd(pg_hi, pg_lo, c_pg_hi, c_pg_lo)
        p_hi, p_lo = _add_dd(p_hi, p_lo, c_p_hi, c_p_lo)
    s_hi, s_lo = _row_mean(pg_hi, pg_lo, p_hi, p_lo)
    nan_row, zero_row, inv_t = _grad_row(tl.load(temperature_ptr + row))
    for start in range(0, V, BLOCK_V):
        offs = start + chunk
        mask = offs < V
        p = tl.load(p_ptr + row * V + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + row * V + offs, mask=mask, other=0.0)
        dx = _grad_values(p, g, s_hi, s_lo, nan_row, zero_row, inv_t)
        tl.store(dx_ptr + row * V + offs, dx, mask=mask)


def launch_grad(
    probs: torch.Tensor, cotangent: torch.Tensor, temperature: torch.Tensor, dx: torch.Tensor
) -> None:
    """Write the logits' gradient into ``dx``; picks the kernel by ``V`` as :func:`launch`.

    Args:
      probs: the forward's ``float32[B, V]``, ``B >= 1``, contiguous.
      cotangent: ``float32[B, V]``, contiguous.
      temperature: ``float32[B]``, contiguous, NaN where the forward's row is NaN.
      dx: ``float32[B, V]``, contiguous.
    """
    batch, vocab = probs.shape
    if vocab <= BLOCKS.single_pass_max_v:
        kernel, block_v = _grad_single_pass_kernel, triton.next_power_of_2(vocab)
    else:
        kernel, block_v = _grad_multi_pass_kernel, BLOCKS.multi_pass_block_v
    kernel[(batch,)](
        probs,
        cotangent,
        temperature,
        dx,
        vocab,
        BLOCK_V=block_v,
        LOG2_BLOCK_V=block_v.bit_length() - 1,
        num_warps=BLOCKS.num_warps(block_v),
        **GRAD_OPTIONS,
    )


def shipped_configs() -> list[TritonConfig]:
    """Every shipped kernel configuration at the warps it launches with: per logits dtype
    the single-pass kernel at its smallest (1) and largest (``single_pass_max_v``) block
    and the multi-pass kernel at ``multi_pass_block_v``; the same three blocks for the
    float32 backward kernels, compiled with ``GRAD_OPTIONS``."""
    single, multi = (1, BLOCKS.single_pass_max_v), BLOCKS.multi_pass_block_v
    forward = [(_single_pass_kernel, b) for b in single] + [(_multi_pass_kernel, multi)]
    backward = [(_grad_single_pass_kernel, b) for b in single] + [(_grad_multi_pass_kernel, multi)]
    configs = []
    for dtype in ("bf16", "fp16", "fp32"):
        for kernel, block_v in forward:
            configs.append(
                TritonConfig.build(
                    f"{kernel.__name__.strip('_')}_{dtype}_BLOCK{block_v}",
                    kernel,
                    pointers={
                        "logits_ptr": f"*{dtype}",
                        "temperature_ptr": "*fp32",
                        "out_ptr": "*fp32",
                    },
                    integers=("V", "logits_row_stride", "out_row_stride"),
                    constexprs={"BLOCK_V": block_v},
                    num_warps=BLOCKS.num_warps(block_v),
                )
            )
    for kernel, block_v in backward:
        configs.append(
            TritonConfig.build(
                f"{kernel.__name__.strip('_')}_fp32_BLOCK{block_v}",
                kernel,
                pointers=dict.fromkeys(("p_ptr", "g_ptr", "temperature_ptr", "dx_ptr"), "*fp32"),
                integers=("V",),
                constexprs={"BLOCK_V": block_v, "LOG2_BLOCK_V": block_v.bit_length() - 1},
                num_warps=BLOCKS.num_warps(block_v),
                **GRAD_OPTIONS,
            )
        )
    return configs
