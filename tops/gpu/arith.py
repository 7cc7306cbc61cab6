"""Tensor-core dots and exponentials for the Triton kernels, with one arithmetic under the
interpreter on every host.

Compiled for a GPU these are ``tl.dot`` and ``tl.exp``/``tl.exp2``. Under the Triton
interpreter ``tl.dot`` is a NumPy float32 matmul, summed in the order that the host's
OpenBLAS picks for its CPU model and thread count, and ``tl.exp`` is ``np.exp``, whose
last bit follows NumPy's SIMD dispatch. Interpreted, these helpers instead compute:

* :func:`dot`: the tensor core's exact products (bf16 operands, or f32 operands truncated
  to tf32: both products fit float32's significand), summed in float32 in ascending
  contraction index ``k``, one rounding per addition. The sum is NumPy's reduction over
  the middle axis of ``[M, K, N]``, which adds the ``[M, N]`` slices one after the other
  (elementwise IEEE additions, no SIMD-dependent order); ``tests/ops/test_gpu_arith.py``
  pins that order against a sequential loop. A tensor core accumulates in its own order
  (and with its own internal width), so a real GPU's last bits differ; the interpreted
  ε is then one draw from the summation-order spread that rule 2's margins allow for.
* :func:`exp2`: ``2**t`` for float32 ``t`` computed in float64 (``t = n + f``,
  ``|f| <= 1/2``, a degree-14 Taylor polynomial of ``exp(f ln 2)`` by Horner, relative
  error below 1e-16, times ``2**n`` built from its bits) and rounded once to float32:
  correctly rounded except when ``2**t`` lies within 1e-16 relative of a float32 rounding
  boundary, and the same bits on every host (IEEE float64 add, multiply and floor only).
  The GPU's ``ex2.approx.f32`` is within 2 ulp of ``2**t`` (PTX ISA: maximum relative
  error 2**-22 over its range), so the interpreted exp2 differs from the GPU's by at most
  that. Subnormal results are kept here; the metrics compare float32 subnormals as zero.
* :func:`exp`: ``exp2(x * log2(e))`` with the product rounded to float32, the sequence
  Triton emits for ``tl.exp`` of float32 (``mul.f32`` by ``log2(e)``, then
  ``ex2.approx.f32``).

:func:`pairwise_sum` is the torch-side reduction the launchers use for the same reason.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tops.backends import triton_interprets

# Triton reads TRITON_INTERPRET when a kernel is defined; tops.backends.configure_triton
# sets it before this module is imported.
INTERPRETED = tl.constexpr(triton_interprets())

_LOG2E = tl.constexpr(math.log2(math.e))
_LN2 = tl.constexpr(math.log(2.0))
# 2**t overflows float32 from t = 128 and is below half the smallest subnormal from
# t = -150: clamping to -160 keeps 2**n a normal float64 and the result a float32 zero.
_EXP2_OVERFLOW = tl.constexpr(128.0)
_EXP2_CLAMP = tl.constexpr(-160.0)


@triton.jit
def dot(a, b, TF32: tl.constexpr):
    """``a [M, K] @ b [K, N]`` in float32: bf16 operands (``TF32`` false) or float32
    operands as tf32 (``TF32`` true), f32 accumulation."""
    if INTERPRETED:
        if TF32:
            # The tensor core reads the top 19 bits of an f32 register: truncation.
            a = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            b = (b.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
        else:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif TF32:
        return tl.dot(a, b, input_precision="tf32", out_dtype=tl.float32)
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def _exp2_float64(t):
    """``2**t`` for float32 ``t``, rounded once to float32 from a float64 evaluation
    (see the module docstring); NaN for NaN, ``inf`` from 128 up, 0 below -150."""
    in_range = (t == t) & (t < _EXP2_OVERFLOW)
    x = tl.where(in_range, tl.maximum(t, _EXP2_CLAMP), 0.0).to(tl.float64)
    n = tl.floor(x + 0.5)
    y = (x - n) * _LN2  # x - n is exact; |y| <= ln(2) / 2
    p = y * (1.0 / 87178291200.0) + 1.0 / 6227020800.0  # 1/14!, 1/13!
    p = p * y + 1.0 / 479001600.0
    p = p * y + 1.0 / 39916800.0
    p = p * y + 1.0 / 3628800.0
    p = p * y + 1.0 / 362880.0
    p = p * y + 1.0 / 40320.0
    p = p * y + 1.0 / 5040.0
    p = p * y + 1.0 / 720.0
    p = p * y + 1.0 / 120.0
    p = p * y + 1.0 / 24.0
    p = p * y + 1.0 / 6.0
    p = p * y + 0.5
    p = p * y + 1.0
    p = p * y + 1.0
    scale = ((n.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)  # 2**n, exact
    result = (p * scale).to(tl.float32)
    return tl.where(in_range, result, tl.where(t == t, float("inf"), t))


@triton.jit
def exp2(t):
    """``2**t`` of float32 ``t``: ``ex2.approx.f32`` on a GPU."""
    if INTERPRETED:
        return _exp2_float64(t)
    else:
        return tl.exp2(t)


@triton.jit
def exp(x):
    """``e**x`` of float32 ``x``: ``ex2.approx.f32(x * log2(e))`` on a GPU."""
    if INTERPRETED:
        return _exp2_float64(x * _LOG2E)
    else:
        return tl.exp(x)


def pairwise_sum(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(0)`` in a fixed order: a tree of elementwise additions, each level adding
    row ``i + n // 2`` to row ``i`` (an odd last row is carried to the next level).
    torch's own reduction picks its order by the CPU's vector width
    (``ATEN_CPU_CAPABILITY``) and thread count, or by the GPU's launch configuration;
    this is the same bits everywhere."""
    if x.shape[0] == 0:
        return torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        paired = x[:half] + x[half : 2 * half]
        x = torch.cat([paired, x[2 * half :]]) if x.shape[0] % 2 else paired
    return x[0]
