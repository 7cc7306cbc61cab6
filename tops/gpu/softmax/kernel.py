"""Triton kernels for temperature softmax: one program per row, single- or multi-pass.

Per row, with ``T = temperature[row]`` (float32), ``x`` the row in float32 and ``m`` the
maximum over its non-NaN entries (the contract of ``tops.cpu.temperature_softmax``):

1. ``T`` NaN, ``T < 0`` or a NaN in the row: the row is NaN.
2. else ``m == -inf``: the row is zeros.
3. else ``T < SMALLEST_NORMAL_F32``: one-hot at the first index where ``x == m``.
4. else ``p = exp2(z) * (1 / sum(exp2(z)))`` with the exponent ``z`` of :func:`_exponent`,
   masked before ``exp2`` and scaled by ``c = LOG2E / T`` (computed once per row;
   ``c = 0`` for ``T >= UNIFORM_TEMPERATURE``, which gives a uniform row).

The maximum is taken over the raw logits, never over ``x / T``. NaN detection is explicit
(``x != x``) and the maximum is taken over ``where(isnan, -inf, x)``, so no result depends
on how a backend's max treats NaN. Divisions use ``tl.math.div_rn`` (IEEE rounding), so
the interpreter and native code round them identically.

Both kernels accept ``out`` aliasing ``logits`` (in place): every element is read by the
same program before it is written.

Backward kernels (same single/multi-pass split): ``dx = p * (g - s) / T`` from the saved
probabilities ``p`` and their cotangent ``g``, ``s = sum(p * g) / sum(p)`` summed in
double-float32 by a fixed pairwise tree of error-free additions, compiled without FMA
contraction (``GRAD_OPTIONS``): the arithmetic of the Pallas backward.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tops.gpu.arith import exp2
from tops.gpu.exact import upcast
from tops.spec.temperature_softmax import SMALLEST_NORMAL_F32, UNIFORM_TEMPERATURE

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)
_TINY = tl.constexpr(SMALLEST_NORMAL_F32)
_UNIFORM_T = tl.constexpr(UNIFORM_TEMPERATURE)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)

# Largest V handled by the single-pass kernel, which holds the whole row (padded to a power
# of two) in registers. Chosen by register-pressure reasoning, not measured (no GPU was at
# hand): at 16384 elements and 16 warps (512 threads, so at most 128 registers a thread)
# each thread holds 32 values per live row tensor; ptxas for sm_90 fits that in the 128
# registers (at most a 16-byte stack spill for f32 logits). A larger row would need more
# warps than a program may have or would spill, while the multi-pass kernel only reads the
# row a second time (mostly from L2). The benchmark script sweeps this threshold.
SINGLE_PASS_MAX_V = 16384
# Chunk length of the multi-pass kernel (8 warps, 16 f32 values per thread per chunk).
MULTI_PASS_BLOCK_V = 4096


def num_warps_for(block_v: int) -> int:
    """Warps per program for a block of ``block_v`` elements."""
    if block_v <= 2048:
        return 4
    if block_v <= 8192:
        return 8
    return 16


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
    c = tl.math.div_rn(tl.full((), _LOG2E, tl.float32), t_safe)
    return t_bad, greedy, tl.where(t >= _UNIFORM_T, 0.0, c)


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

    is_nan = x != x
    has_nan = tl.max(is_nan.to(tl.int32), axis=0) > 0
    xm = tl.where(is_nan, float("-inf"), x)
    m = tl.max(xm, axis=0)
    first_max = tl.min(tl.where((xm == m) & mask, offs, BLOCK_V), axis=0)

    z = _exponent(x, m, c)
    e = exp2(z)
    s = tl.sum(e, axis=0)
    inv = tl.math.div_rn(1.0, tl.where(s > 0.0, s, 1.0))
    p = e * inv

    p = _special_rows(p, offs, first_max, greedy, m == float("-inf"), t_bad | has_nan)
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
        is_nan = x != x
        nan_run = tl.maximum(nan_run, tl.max(is_nan.to(tl.int32), axis=0))
        xm = tl.where(is_nan, float("-inf"), x)
        m_chunk = tl.max(xm, axis=0)
        arg_chunk = tl.min(tl.where((xm == m_chunk) & mask, offs, V), axis=0)
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
    if logits.shape[1] <= SINGLE_PASS_MAX_V:
        launch_single_pass(logits, temperature, out)
    else:
        launch_multi_pass(logits, temperature, out)


def _row_args(logits, temperature, out) -> tuple:
    """The runtime arguments both kernels take, in order."""
    return (logits, temperature, out, logits.shape[1], logits.stride(0), out.stride(0))


def launch_single_pass(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor):
    """:func:`launch` forced onto the single-pass kernel (any ``V``; for benchmarks)."""
    batch, vocab = logits.shape
    block_v = triton.next_power_of_2(vocab)
    _single_pass_kernel[(batch,)](
        *_row_args(logits, temperature, out), BLOCK_V=block_v, num_warps=num_warps_for(block_v)
    )


def launch_multi_pass(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor):
    """:func:`launch` forced onto the multi-pass kernel (any ``V``; for benchmarks)."""
    _multi_pass_kernel[(logits.shape[0],)](
        *_row_args(logits, temperature, out),
        BLOCK_V=MULTI_PASS_BLOCK_V,
        num_warps=num_warps_for(MULTI_PASS_BLOCK_V),
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
    if vocab <= SINGLE_PASS_MAX_V:
        kernel, block_v = _grad_single_pass_kernel, triton.next_power_of_2(vocab)
    else:
        kernel, block_v = _grad_multi_pass_kernel, MULTI_PASS_BLOCK_V
    kernel[(batch,)](
        probs,
        cotangent,
        temperature,
        dx,
        vocab,
        BLOCK_V=block_v,
        LOG2_BLOCK_V=block_v.bit_length() - 1,
        num_warps=num_warps_for(block_v),
        **GRAD_OPTIONS,
    )


def compile_configs() -> list[dict]:
    """Every shipped kernel configuration, for the compile-only checks.

    Each logits dtype (bf16, f16, f32) for the single-pass kernel at the smallest (1) and
    largest (``SINGLE_PASS_MAX_V``) block it can pick, and for the multi-pass kernel at
    ``MULTI_PASS_BLOCK_V``, each with the warps it launches with; the same three blocks for
    the float32 backward kernels, with their ``options`` (``enable_fp_fusion=False``).
    Entries: ``{"name", "kernel", "signature", "constexprs", "num_warps"[, "options"]}``.
    """
    configs = []
    for dtype in ("bf16", "fp16", "fp32"):
        signature = {
            "logits_ptr": f"*{dtype}",
            "temperature_ptr": "*fp32",
            "out_ptr": "*fp32",
            "V": "i32",
            "logits_row_stride": "i32",
            "out_row_stride": "i32",
            "BLOCK_V": "constexpr",
        }
        shipped = [(_single_pass_kernel, 1), (_single_pass_kernel, SINGLE_PASS_MAX_V)]
        shipped.append((_multi_pass_kernel, MULTI_PASS_BLOCK_V))
        for kernel, block_v in shipped:
            configs.append(
                {
                    "name": f"{kernel.__name__.strip('_')}_{dtype}_BLOCK{block_v}",
                    "kernel": kernel,
                    "signature": dict(signature),
                    "constexprs": {"BLOCK_V": block_v},
                    "num_warps": num_warps_for(block_v),
                }
            )
    grad_signature = dict.fromkeys(("p_ptr", "g_ptr", "temperature_ptr", "dx_ptr"), "*fp32")
    grad_signature.update(V="i32", BLOCK_V="constexpr", LOG2_BLOCK_V="constexpr")
    shipped = [(_grad_single_pass_kernel, 1), (_grad_single_pass_kernel, SINGLE_PASS_MAX_V)]
    shipped.append((_grad_multi_pass_kernel, MULTI_PASS_BLOCK_V))
    for kernel, block_v in shipped:
        num_warps = num_warps_for(block_v)
        configs.append(
            {
                "name": f"{kernel.__name__.strip('_')}_fp32_BLOCK{block_v}",
                "kernel": kernel,
                "signature": dict(grad_signature),
                "constexprs": {"BLOCK_V": block_v, "LOG2_BLOCK_V": block_v.bit_length() - 1},
                "num_warps": num_warps,
                "options": {"num_warps": num_warps, **GRAD_OPTIONS},
            }
        )
    return configs
