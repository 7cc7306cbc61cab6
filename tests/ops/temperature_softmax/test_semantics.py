"""Exact behaviour of both kernels on the rows the contract pins down, checked against
hand-written expectations (not against the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from tops.precision.registry import op

RUNNERS = op("temperature_softmax").runners
BACKENDS = ["tpu", "gpu"]
inf, nan = np.inf, np.nan


def softmax(backend, logits, temperature):
    inputs = {"logits": np.asarray(logits), "temperature": np.asarray(temperature, np.float32)}
    probs = RUNNERS[backend](inputs)["probs"]
    assert probs.dtype == np.float32 and probs.shape == inputs["logits"].shape
    return probs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [1, 7, 1000, 40000])
def test_equal_logits_give_an_exactly_uniform_row(backend, vocab):
    p = softmax(backend, np.full((2, vocab), -3.5, np.float32), np.float32(0.6))
    assert (p == p[0, 0]).all()
    assert abs(float(p[0, 0]) - 1 / vocab) <= np.spacing(np.float32(1 / vocab))


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_at_low_temperature_stay_finite_and_correct(backend):
    x = np.array([[1e6, -1e6, 0.0], [1e4, 1e4 + 1, 1e4 - 1]], np.float32)
    p = softmax(backend, x, np.float32(0.01))
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.0])
    assert p[1, 1] == 1.0 and 0.0 <= p[1, 0] < 1e-43 and 0.0 <= p[1, 2] < 1e-43
    q = softmax(backend, np.array([[1e4, -1e4, 9999.0]], np.float32), np.float32(1e-4))
    np.testing.assert_array_equal(q, [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_high_temperature_is_near_uniform(backend):
    x = np.random.default_rng(0).standard_normal((3, 500)).astype(np.float32)
    p = softmax(backend, x, np.float32(100.0))
    np.testing.assert_allclose(p, 1 / 500, rtol=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_temperatures_including_zero(backend):
    x = np.array([[0.5, 2.0, 2.0, -1.0]] * 4, np.float32)
    p = softmax(backend, x, np.array([0.0, 1.0, 0.0, 1e-30], np.float32))
    np.testing.assert_array_equal(p[0], [0.0, 1.0, 0.0, 0.0])  # ties: the lower index
    np.testing.assert_array_equal(p[2], p[0])
    np.testing.assert_array_equal(p[3], [0.0, 0.5, 0.5, 0.0])  # 1e-30 is a normal float
    e = np.exp(np.array([0.5, 2.0, 2.0, -1.0]) - 2.0)
    np.testing.assert_allclose(p[1], e / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocabulary_of_one(backend):
    p = softmax(backend, np.array([[3.0], [-inf], [nan]], np.float32), np.float32(0.5))
    assert p[0, 0] == 1.0 and p[1, 0] == 0.0 and np.isnan(p[2, 0])
    np.testing.assert_array_equal(softmax(backend, np.array([[3.0]], np.float32), 0.0), [[1.0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_rows_are_identical_on_every_backend(backend):
    x = np.array(
        [
            [1.0, nan, 2.0, 0.0],
            [-inf, -inf, -inf, -inf],
            [inf, 1.0, inf, 0.0],
            [inf, 1.0, inf, 0.0],
            [1.0, -inf, 2.0, 3.0],
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 9.0, 9.0, -inf],
            [-inf, -inf, -inf, -inf],
        ],
        np.float32,
    )
    t = np.array([1.0, 1.0, 1.0, 0.0, inf, -1.0, nan, 2.0**64, 1e-40, 0.0], np.float32)
    p = softmax(backend, x, t)
    assert np.isnan(p[0]).all()
    np.testing.assert_array_equal(p[1], 0.0)
    np.testing.assert_array_equal(p[2], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(p[3], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(p[4], np.float32([1 / 3, 0.0, 1 / 3, 1 / 3]))
    assert np.isnan(p[5]).all() and np.isnan(p[6]).all()
    np.testing.assert_array_equal(p[7], 0.25)
    np.testing.assert_array_equal(p[8], [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(p[9], 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_empty_batch(backend, dtype):
    from tops.precision.metrics import numpy_dtype

    p = softmax(backend, np.zeros((0, 300), numpy_dtype(dtype)), np.float32(1.0))
    assert p.shape == (0, 300)
