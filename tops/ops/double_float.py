"""Double-float32 arithmetic for Pallas TPU kernels: a value is an unevaluated sum
``hi + lo`` of two float32 numbers, carrying about 44 significant bits.

Everything here uses only IEEE float32 add, subtract, multiply, comparisons and exact
power-of-two scaling. Those are correctly rounded on TPU, on XLA:CPU and in NumPy, so a
kernel built from them computes the same bits in Pallas interpret mode as on a TPU. No
transcendental function, division or fused multiply-add is used: their last bit differs
between platforms. XLA:CPU does contract ``a * b + c`` into an FMA in jitted code (about 28% of
random float32 triples then differ from NumPy); the error-free transformations here
(Knuth's TwoSum, Dekker's TwoProduct with Veltkamp's split) stay exact under it, because
TwoProduct only adds partial products of 12-bit halves, which are exact either way, and
``tests/ops/test_tpu_double_float.py`` checks the exactness on millions of inputs in the
mode under test. Code that needs IEEE rounding of a product that feeds an add, bit for
bit, must prevent the contraction (``tops/ops/sampling/kernel.py`` does).

Inputs must stay away from overflow (``|a| < 2**100``); outputs below ``2**-126`` may
lose their low part (TPUs flush subnormals).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_SPLITTER = 4097.0  # 2**12 + 1: splits a float32 significand into two 12-bit halves
LOG2E = 1.4426950408889634
LOG_2 = 0.6931471805599453
# ln 2 = LN2_HI + LN2_MID + LN2_LO (Cody-Waite in three parts): LN2_HI and LN2_MID have
# at most 16 significant bits, so k * LN2_HI and k * LN2_MID are exact for |k| < 256 and
# no rounding hides in a product that a compiler could contract into an FMA.
LN2_HI = 0.693145751953125
LN2_MID = 1.4286197256296873e-06
LN2_LO = -1.2905320270077144e-11
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


def exp_dd(y_hi, y_lo, *, scale_log2: int = 0):
    """``exp(y_hi + y_lo) * 2**scale_log2`` as a double-float ``(hi, lo)`` for ``y_hi <= 0``.

    ``scale_log2`` (0 to 40) lifts results that would fall below the float32 normal
    range into it, for a caller that scales them back after dividing.

    Relative error below 2**-29 for ``y >= -64``; below that the low part may be
    flushed, leaving the float32 accuracy of ``hi`` (``tests/ops/test_tpu_double_float.py``
    measures both against float64). ``y_hi`` may be ``-inf``; below
    ``EXP_UNDERFLOW - scale_log2 * ln 2`` the result is exactly ``(0, 0)``. ``|y_lo|``
    must be at most a few ulps of ``y_hi``.

    Method: Cody-Waite reduction ``y = k ln2 + r1 + c`` with ``|r1| <= ln2 / 2``
    (``y - k LN2_HI`` is exact, since ``k LN2_HI`` is exact and close to ``y``; its sum
    with the exact ``-k LN2_MID`` is split by TwoSum) and ``c``, of the order of an ulp
    of ``r1``;
    ``exp(r1) - 1 = t = r1 + r1**2 / 2 + r1**2 W(r1)`` with ``r1**2`` exact from
    ``two_prod`` and the Taylor tail ``W`` (to ``r1**9 / 9!``) in float32, whose error is
    scaled by ``r1**2 <= 0.12``; ``exp(c) ~ 1 + c + c**2 / 2``; finally
    ``2**k (1 + t)(1 + c)`` summed with ``2**k`` as the leading term.

    No constant takes part in an error-free transformation: XLA's algebraic simplifier
    folds ``(x + C) - C`` to ``x`` and would silently drop the compensation.
    """
    lowest = EXP_UNDERFLOW - scale_log2 * LOG_2
    underflow = y_hi < lowest
    y = jnp.maximum(y_hi, lowest)
    k = jnp.floor(y * LOG2E + 0.5)
    r1, r_err = two_sum(y - k * LN2_HI, -(k * LN2_MID))
    c = (jnp.where(underflow, 0.0, y_lo) + r_err) - k * LN2_LO
    c = c + 0.5 * c * c
    w = _INV_FACTORIALS[-1] * r1
    for coefficient in reversed(_INV_FACTORIALS[:-1]):
        w = (coefficient + w) * r1
    q_hi, q_lo = two_prod(r1, r1)
    t_hi, t_err = fast_two_sum(r1, 0.5 * q_hi)
    t_hi, t_lo = fast_two_sum(t_hi, t_err + (0.5 * q_lo + q_hi * w))
    t_hi, t_lo = two_sum(t_hi, t_lo + c * (1.0 + t_hi))
    # Underflow zeroes the scale rather than the results: a select applied to the outputs
    # lets XLA:CPU fuse and recompute e_hi apart from e_err, which loses their pairing.
    # The sum is formed 2**64 higher, where scale * t_hi cannot be subnormal (and be
    # flushed), then brought down exactly.
    scale = jnp.where(underflow, 0.0, _pow2(k + (scale_log2 + 64)))
    e_hi, e_err = fast_two_sum(scale, scale * t_hi)
    return e_hi * 2.0**-64, (e_err + scale * t_lo) * 2.0**-64
