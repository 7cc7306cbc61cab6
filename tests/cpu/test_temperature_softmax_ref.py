"""The float64 temperature-softmax reference against closed forms, brute force and the
special rows of the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tops.cpu import temperature_softmax, temperature_softmax_vjp


def test_two_logits_match_the_logistic_closed_form():
    for x0, x1, t in ((0.0, 1.0, 1.0), (2.5, -1.0, 0.3), (7.0, 7.5, 100.0)):
        p = temperature_softmax(np.array([[x0, x1]], np.float32), t)
        gap = float(np.float32(x1)) - float(np.float32(x0))
        expected = 1.0 / (1.0 + math.exp(gap / float(np.float32(t))))
        assert p[0, 0] == pytest.approx(expected, rel=1e-15)
        assert p[0, 1] == pytest.approx(1.0 - expected, rel=1e-14)


def test_brute_force_with_exactly_summed_exponentials():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 17)) * 5).astype(np.float32)
    t = np.array([0.25, 1.0, 8.0], np.float32)
    p = temperature_softmax(x, t)
    for row in range(3):
        weights = [math.exp(float(v) / float(t[row])) for v in x[row]]
        total = math.fsum(weights)
        np.testing.assert_allclose(p[row], np.array(weights) / total, rtol=1e-13)


def test_shift_invariance_and_normalisation():
    rng = np.random.default_rng(1)
    x = (np.round(rng.standard_normal((4, 1000)) * 256) / 256).astype(np.float32)
    p = temperature_softmax(x, 0.7)  # x + 64 below is exact in float32
    shifted = temperature_softmax(x + np.float32(64.0), 0.7)
    np.testing.assert_allclose(shifted, p, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-14)


def test_huge_logits_at_tiny_temperature_stay_finite():
    p = temperature_softmax(np.array([[1e4, 1e4 + 1, 1e4 - 1], [1e6, -1e6, 0.0]], np.float32), 1e-4)
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_special_rows():
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [1.0, nan, 2.0, 0.0],
            [-inf, -inf, -inf, -inf],
            [inf, 1.0, inf, 0.0],
            [3.0, 5.0, 5.0, -inf],
            [1.0, -inf, 2.0, 3.0],
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 9.0, 9.0, 4.0],
        ],
        np.float32,
    )
    t = np.array([1.0, 1.0, 1.0, 0.0, inf, -1.0, 2.0**64, 1e-40], np.float32)
    p = temperature_softmax(x, t)
    assert np.isnan(p[0]).all()
    np.testing.assert_array_equal(p[1], 0.0)
    np.testing.assert_array_equal(p[2], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(p[3], [0.0, 1.0, 0.0, 0.0])  # greedy: first maximum
    np.testing.assert_array_equal(p[4], [1 / 3, 0.0, 1 / 3, 1 / 3])  # T = inf
    assert np.isnan(p[5]).all()  # negative temperature in an array: run-time NaN
    np.testing.assert_array_equal(p[6], 0.25)  # T >= 2**64 counts as infinite
    np.testing.assert_array_equal(p[7], [0.0, 1.0, 0.0, 0.0])  # subnormal T is greedy


def test_empty_batch():
    assert temperature_softmax(np.zeros((0, 5), np.float32), 1.0).shape == (0, 5)


@pytest.mark.parametrize(
    ("logits", "temperature", "argument"),
    [
        (np.zeros(5, np.float32), 1.0, "logits must have rank 2"),
        (np.zeros((2, 5), np.int32), 1.0, "logits must have dtype"),
        (np.zeros((2, 5), np.float64), 1.0, "logits must have dtype"),
        (np.zeros((2, 0), np.float32), 1.0, "logits must have V >= 1"),
        (np.zeros((2, 5), np.float32), np.ones(3, np.float32), "temperature must be a scalar"),
        (np.zeros((2, 5), np.float32), -0.5, "temperature must be >= 0"),
        (np.zeros((2, 5), np.float32), float("nan"), "temperature must be >= 0"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(logits, temperature, argument):
    with pytest.raises(ValueError, match=argument):
        temperature_softmax(logits, temperature)


def _softmax64(x: np.ndarray, t: float) -> np.ndarray:
    """An independent float64 softmax of one finite row, for finite differences."""
    e = np.exp((x - x.max()) / t)
    return e / e.sum()


def test_vjp_matches_central_finite_differences():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 9)) * 2).astype(np.float32)
    g = rng.standard_normal((3, 9))
    t = np.array([0.3, 1.0, 7.0], np.float32)
    dx = temperature_softmax_vjp(x, t, g)
    h = 1e-5  # truncation error about h**2, rounding about 1e-16 / h
    for row in range(3):
        x64, t64 = x[row].astype(np.float64), float(t[row])
        for i in range(9):
            step = np.zeros(9)
            step[i] = h
            up, down = _softmax64(x64 + step, t64), _softmax64(x64 - step, t64)
            assert dx[row, i] == pytest.approx(g[row] @ (up - down) / (2 * h), rel=1e-7, abs=1e-9)


def test_vjp_special_rows():
    x = np.array(
        [
            [1.0, 2.0, 3.0],
            [1.0, 2.0, 3.0],
            [1.0, np.nan, 3.0],
            [-np.inf, -np.inf, -np.inf],
            [np.inf, np.inf, 0.0],
            [1.0, -np.inf, 3.0],
            [1.0, 2.0, 3.0],
        ],
        np.float32,
    )
    t = np.array([0.0, np.inf, 1.0, 1.0, 1.0, 1.0, -1.0], np.float32)
    g = np.array([[1.0, -2.0, 0.5]] * 7)
    dx = temperature_softmax_vjp(x, t, g)
    np.testing.assert_array_equal(dx[[0, 1, 3]], 0.0)  # greedy, uniform, all -inf
    assert np.isnan(dx[[2, 6]]).all()  # NaN logit, negative temperature
    # +inf logits: the limit of equal large finite logits.
    limit = temperature_softmax_vjp(np.array([[1e4, 1e4, 0.0]], np.float32), 1.0, g[:1])
    np.testing.assert_allclose(dx[4], limit[0], rtol=1e-15)
    assert dx[5, 1] == 0.0 and np.isfinite(dx[5]).all()
    g_bad = g.copy()
    g_bad[:, 1] = np.inf
    dx_bad = temperature_softmax_vjp(x, t, g_bad)
    np.testing.assert_array_equal(dx_bad[[0, 1]], 0.0)  # zero rows stay zero
    assert np.isnan(dx_bad[[3, 4, 5]]).all()  # a non-finite cotangent: NaN


def test_vjp_rejects_a_mismatched_cotangent():
    with pytest.raises(ValueError, match="cotangent must have shape"):
        temperature_softmax_vjp(np.zeros((2, 3), np.float32), 1.0, np.zeros((2, 4)))
