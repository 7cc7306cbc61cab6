"""Double-float32 arithmetic for Pallas TPU kernels: a value is an unevaluated sum
``hi + lo`` of two float32 numbers, carrying about 44 significant bits.

Everything here uses only IEEE float32 add, subtract, multiply, comparisons and exact
power-of-two scaling. Those are correctly rounded on TPU, on XLA:CPU and in NumPy, so a
kernel built from them computes the same bits in Pallas interpret mode as on a TPU. No
transcendental function, division or fused multiply-add is used: their last bit differs
between platforms. The error-free transformations (Knuth's TwoSum, Dekker's TwoProduct
with Veltkamp's split) assume the multiply and add are *not* contracted into an FMA; XLA
and Mosaic do not contract float32 by default, and ``tests/ops/test_double_float.py``
checks the exactness on millions of inputs in the mode under test.

Inputs must stay away from overflow (``|a| < 2**100``); outputs below ``2**-126`` may
lose their low part (TPUs flush subnormals).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_SPLITTER = 4097.0  # 2**12 + 1: splits a float32 significand into two 12-bit halves
LOG2E = 1.4426950408889634
# ln 2 = LN2_HI + LN2_LO, LN2_HI with 16 significant bits so that k * LN2_HI is exact
# for |k| < 256.
LN2_HI = 0.693145751953125
LN2_LO = 1.4286068202862268e-06
# exp(y) with y below this (e < 2**-124) is treated as exactly zero: above it the
# scale 2**k and the leading terms stay normal, so the float32 flush-to-zero of a TPU
# (and of XLA:CPU) cannot change a result.
EXP_UNDERFLOW = -86.0
# 1 / n! for n = 3..9: the Taylor tail of exp used by exp_dd.
_INV_FACTORIALS = (
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362880.0,
)


def two_sum(a, b):
    """``(s, err)`` with ``s = fl(a + b)`` and ``s + err == a + b`` exactly (Knuth)."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def fast_two_sum(a, b):
    """``two_sum`` for ``|a| >= |b|`` (Dekker), three operations instead of six."""
    s = a + b
    return s, b - (s - a)


def split(a):
    """``(hi, lo)`` with ``hi + lo == a``, each half fitting in 12 significant bits."""
    t = a * _SPLITTER
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a, b):
    """``(p, err)`` with ``p = fl(a * b)`` and ``p + err == a * b`` exactly (Dekker)."""
    p = a * b
    a_hi, a_lo = split(a)
    b_hi, b_lo = split(b)
    err = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, err


def add_dd(a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo) + (b_hi + b_lo)``, normalised, relative error about 2**-44."""
    s, err = two_sum(a_hi, b_hi)
    return fast_two_sum(s, err + (a_lo + b_lo))


def mul_dd(a_hi, a_lo, b_hi, b_lo):
    """``(a_hi + a_lo) * (b_hi + b_lo)``, normalised, relative error about 2**-44."""
    p, err = two_prod(a_hi, b_hi)
    return fast_two_sum(p, err + (a_hi * b_lo + a_lo * b_hi))


def div_dd_to_f32(a_hi, a_lo, b_hi, b_lo, b_inv):
    """``(a_hi + a_lo) / (b_hi + b_lo)`` rounded once to float32.

    ``b_inv`` is any approximation of ``1 / b_hi`` good to a few ulps (a hardware
    reciprocal will do): the quotient ``q = a_hi * b_inv`` is corrected by the exactly
    computed residual ``a - q * b``, so the result is the correctly rounded quotient
    except within about 2**-40 relative of a rounding boundary.
    """
    q = a_hi * b_inv
    p, p_err = two_prod(q, b_hi)
    residual = ((a_hi - p) - p_err) + (a_lo - q * b_lo)
    return q + residual * b_inv


def _pow2(k):
    """``2.0 ** k`` as float32 for integer-valued float ``k`` in [-126, 127], exactly."""
    bits = (k.astype(jnp.int32) + 127) << 23
    return lax.bitcast_convert_type(bits, jnp.float32)


def exp_dd(y_hi, y_lo):
    """``exp(y_hi + y_lo)`` as a double-float ``(hi, lo)`` for ``y_hi <= 0``.

    Relative error below 2**-29 for ``y >= -64``; below that the low part may be
    flushed, leaving the float32 accuracy of ``hi`` (``tests/ops/test_double_float.py``
    measures both against float64). ``y_hi`` may be ``-inf``; below ``EXP_UNDERFLOW``
    the result is exactly ``(0, 0)``. ``|y_lo|`` must be at most a few ulps of ``y_hi``.

    Method: Cody-Waite reduction ``y = k ln2 + r1 + c`` with ``|r1| <= ln2 / 2`` (exact,
    since ``k * LN2_HI`` is exact and close to ``y``) and ``c = y_lo - k LN2_LO`` tiny;
    ``exp(r1) - 1 = t = r1 + r1**2 / 2 + r1**2 W(r1)`` with ``r1**2`` exact from
    ``two_prod`` and the Taylor tail ``W`` (to ``r1**9 / 9!``) in float32, whose error is
    scaled by ``r1**2 <= 0.12``; ``exp(c) ~ 1 + c + c**2 / 2``; finally
    ``2**k (1 + t)(1 + c)`` summed with ``2**k`` as the leading term.

    No constant takes part in an error-free transformation: XLA's algebraic simplifier
    folds ``(x + C) - C`` to ``x`` and would silently drop the compensation.
    """
    underflow = y_hi < EXP_UNDERFLOW
    y = jnp.maximum(y_hi, EXP_UNDERFLOW)
    k = jnp.floor(y * LOG2E + 0.5)
    r1 = y - k * LN2_HI
    c = jnp.where(underflow, 0.0, y_lo) - k * LN2_LO
    c = c + 0.5 * c * c
    w = _INV_FACTORIALS[-1] * r1
    for coefficient in reversed(_INV_FACTORIALS[:-1]):
        w = (coefficient + w) * r1
    q_hi, q_lo = two_prod(r1, r1)
    t_hi, t_err = fast_two_sum(r1, 0.5 * q_hi)
    t_hi, t_lo = fast_two_sum(t_hi, t_err + (0.5 * q_lo + q_hi * w))
    t_lo = t_lo + c * (1.0 + t_hi)
    scale = _pow2(k)
    e_hi, e_err = fast_two_sum(scale, scale * t_hi)
    e_lo = e_err + scale * t_lo
    return jnp.where(underflow, 0.0, e_hi), jnp.where(underflow, 0.0, e_lo)
