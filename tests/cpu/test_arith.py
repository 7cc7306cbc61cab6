"""``tops.cpu.arith.exp``: within an ulp of the C library's exp over float64's whole range,
with the special values of ``np.exp``. That it gives the same bits on every host is
``tests/precision/test_reproducibility.py``'s (its softmax cases follow it)."""

from __future__ import annotations

import math

import numpy as np

from tops.cpu import arith


def test_exp_is_within_an_ulp_of_libm_over_the_whole_range():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(arith.UNDERFLOW, arith.OVERFLOW, 100_000),
            rng.uniform(-1.0, 1.0, 100_000),
            rng.uniform(-1e-8, 1e-8, 1_000),
            np.arange(-1074, 1024) * math.log(2.0),  # every binade boundary
        ]
    )
    got = arith.exp(x)
    expected = np.array([math.exp(v) for v in x.tolist()])
    normal = expected >= np.finfo(np.float64).tiny
    ulps = np.abs(got[normal] - expected[normal]) / np.spacing(expected[normal])
    assert ulps.max() <= 1.0
    # Subnormal results: within one subnormal step.
    assert np.all(np.abs(got[~normal] - expected[~normal]) <= 2.0**-1074)


def test_exp_special_values_and_range_ends():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 710.0, -746.0, arith.OVERFLOW])
    got = arith.exp(x)
    assert got[:2].tolist() == [1.0, 1.0]
    assert got[2] == np.inf and got[3] == 0.0 and np.isnan(got[4])
    assert got[5] == np.inf and got[6] == 0.0
    assert np.isfinite(got[7]) and got[7] == math.exp(arith.OVERFLOW)
