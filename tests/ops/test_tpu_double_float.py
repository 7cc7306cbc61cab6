"""The double-float32 primitives of the Pallas kernels, run inside a Pallas kernel in the
TPU mode under test and measured against float64 on millions of inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from tops.backends import pallas_interpret
from tops.ops.double_float import add_dd, div_dd_to_f32, exp_dd, two_prod, two_sum

ROWS, COLS = 2048, 1024
BLOCK = (256, COLS)


def _elementwise(fn, *arrays, n_out):
    """Apply ``fn`` to float32 ``[ROWS, COLS]`` arrays inside a Pallas TPU kernel."""

    def body(*refs):
        results = fn(*(r[...] for r in refs[: len(arrays)]))
        for ref, value in zip(refs[len(arrays) :], results, strict=True):
            ref[...] = value

    spec = pl.BlockSpec(BLOCK, lambda i: (i, 0))
    out = pl.pallas_call(
        body,
        grid=(ROWS // BLOCK[0],),
        in_specs=[spec] * len(arrays),
        out_specs=[spec] * n_out,
        out_shape=[jax.ShapeDtypeStruct((ROWS, COLS), jnp.float32)] * n_out,
        interpret=pallas_interpret(),
    )(*(jnp.asarray(a) for a in arrays))
    return [np.asarray(o, np.float64) for o in out]


def _uniform(rng, low, high):
    return rng.uniform(low, high, (ROWS, COLS)).astype(np.float32)


def test_tpu_two_sum_and_two_prod_are_exact():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((ROWS, COLS)) * 2.0 ** rng.integers(-30, 30, (ROWS, COLS))).astype(
        np.float32
    )
    b = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    s, s_err, p, p_err = _elementwise(lambda a, b: (*two_sum(a, b), *two_prod(a, b)), a, b, n_out=4)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_array_equal(s + s_err, a64 + b64)
    np.testing.assert_array_equal(p + p_err, a64 * b64)


@pytest.mark.parametrize(
    ("low", "high", "log2_bound"),
    [(-1e-3, 0.0, -29), (-1.0, 0.0, -29), (-64.0, -1.0, -29), (-86.0, -64.0, -23)],
    ids=["tiny", "unit", "wide", "near_underflow"],
)
def test_tpu_exp_dd_accuracy(low, high, log2_bound):
    """Relative error of exp_dd(y_hi, y_lo) against float64 exp(y_hi + y_lo).

    Measured on 2M points per range: 2**-29.1 (the Taylor tail W in float32, scaled by
    r**2 <= 0.12); near underflow the low part may be flushed, leaving hi's 2**-24."""
    rng = np.random.default_rng(int(-low))
    y = _uniform(rng, low, high)
    y_lo = (_uniform(rng, -0.5, 0.5) * np.spacing(np.abs(y))).astype(np.float32)
    hi, lo = _elementwise(exp_dd, y, y_lo, n_out=2)
    exact = np.exp(y.astype(np.float64) + y_lo.astype(np.float64))
    assert np.max(np.abs(hi + lo - exact) / exact) < 2.0**log2_bound


def test_tpu_exp_dd_special_inputs():
    y = np.zeros((ROWS, COLS), np.float32)
    y[0, :4] = [-np.inf, -87.0, 0.0, -0.0]
    hi, lo = _elementwise(exp_dd, y, np.zeros_like(y), n_out=2)
    assert list(hi[0, :4]) == [0.0, 0.0, 1.0, 1.0] and not lo[0, :4].any()


def test_tpu_division_is_correctly_rounded():
    """div_dd_to_f32 with a low part: the correctly rounded quotient of the double-floats."""
    rng = np.random.default_rng(4)
    a_hi, b_hi = _uniform(rng, 0.5, 2.0), _uniform(rng, 1.0, 5000.0)
    a_lo = (_uniform(rng, -0.5, 0.5) * np.spacing(a_hi)).astype(np.float32)
    b_lo = (_uniform(rng, -0.5, 0.5) * np.spacing(b_hi)).astype(np.float32)

    def divide(a_hi, a_lo, b_hi, b_lo):
        return (div_dd_to_f32(a_hi, a_lo, b_hi, b_lo, 1.0 / b_hi),)

    (q,) = _elementwise(divide, a_hi, a_lo, b_hi, b_lo, n_out=1)
    exact = (a_hi.astype(np.float64) + a_lo) / (b_hi.astype(np.float64) + b_lo)
    wrong = np.count_nonzero(q != exact.astype(np.float32))
    assert wrong <= 2, f"{wrong} of {q.size} quotients not correctly rounded"


def test_tpu_add_dd_keeps_44_bits():
    rng = np.random.default_rng(6)
    a, b = _uniform(rng, -1, 1), _uniform(rng, -1, 1)
    a_lo = (a * 2.0**-30).astype(np.float32)
    hi, lo = _elementwise(lambda a, al, b: add_dd(a, al, b, 0.0 * b), a, a_lo, b, n_out=2)
    exact = a.astype(np.float64) + a_lo + b
    assert np.max(np.abs(hi + lo - exact)) <= 2.0**-48
