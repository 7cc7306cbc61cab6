"""float64 functions the references need that give the same bits on every host.

``np.exp`` does not: NumPy dispatches float64 exp to an AVX-512 implementation where the
CPU has it and to another elsewhere, and the two differ in the last bit for some inputs,
which moved recorded ε by about 1e-11 relative (softmax ``float32_B5_V1000_T1.0``). The
functions here use only IEEE-754 basic operations (each correctly rounded, never fused),
``rint`` and ``ldexp``, so every host computes them identically.
"""

from __future__ import annotations

import math

import numpy as np

# ln 2 split so that k * LN2_HI is exact for |k| < 2**11 (LN2_HI has 32 trailing zero
# bits), and LN2_HI + LN2_LO = ln 2 to about 2**-85.
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
# exp(r) for |r| <= ln(2) / 2 by its Taylor series to r**13: the first term left out,
# (ln(2)/2)**14 / 14!, is below 2**-62 relative.
TAYLOR = tuple(1.0 / math.factorial(n) for n in range(14))
# Beyond these exp overflows to inf or underflows to 0 in float64.
OVERFLOW = 709.782712893384
UNDERFLOW = -745.1332191019412


def exp(x: np.ndarray) -> np.ndarray:
    """``e**x`` elementwise in float64, within 1 ulp and the same bits on every host;
    ``exp(-inf) = 0``, ``exp(inf) = inf``, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x) & (x <= OVERFLOW) & (x >= UNDERFLOW)
    z = np.where(finite, x, 0.0)
    k = np.rint(z * (1.0 / math.log(2.0)))
    r = (z - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, TAYLOR[-1])
    for coefficient in TAYLOR[-2::-1]:
        p = p * r + coefficient
    y = np.ldexp(p, k.astype(np.int32))  # exact scaling, one rounding where subnormal
    beyond = np.where(x > 0, np.inf, 0.0)
    return np.where(finite, y, np.where(np.isnan(x), np.nan, beyond))
