"""The float64 top-k reference against independent facts: brute force by Python's
``sorted`` on small rows, ``jax.lax.top_k`` on every NaN-free registered case, and the
contract's special orders (NaN last, +0.0 before -0.0, ties by lower index)."""

import math

import jax
import numpy as np
import pytest

from tops.cpu.selection import topk
from tops.precision.registry import op


def _brute_force(row: np.ndarray, k: int) -> list[int]:
    """Indices of the top k by the contract's order, written independently: sort by
    (is NaN, -value, is -0.0, index)."""

    def key(i: int):
        value = float(row[i])
        if math.isnan(value):
            return (1, 0.0, False, i)
        return (0, -value, value == 0 and math.copysign(1.0, value) < 0, i)

    return sorted(range(len(row)), key=key)[:k]


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force_on_small_tie_dense_rows(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(1, 60))
    row = rng.choice([-np.inf, -1.0, -0.0, 0.0, 0.5, 2.0, np.inf, np.nan], size=vocab)
    k = int(rng.integers(1, vocab + 1))
    values, indices = topk(row[None, :].astype(np.float32), k)
    expected = _brute_force(row, k)
    assert indices[0].tolist() == expected
    np.testing.assert_array_equal(values[0], row[expected])


def test_documented_order_by_hand():
    x = np.array([[1.0, np.nan, 3.0, 3.0, -np.inf, -0.0, 0.0, np.nan]], np.float32)
    values, indices = topk(x, 8)
    assert indices.tolist() == [[2, 3, 0, 6, 5, 4, 1, 7]]
    assert np.signbit(values[0, 4]) and not np.signbit(values[0, 3])


def test_per_row_k_fills_past_each_rows_k():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    values, indices = topk(x, np.array([2, 0, 9], np.int32), max_k=3)
    assert indices.tolist() == [[3, 2, -1], [-1, -1, -1], [3, 2, 1]]
    assert values[0, 2] == -np.inf and values[2].tolist() == [11.0, 10.0, 9.0]


NAN_FREE_CASES = [
    pytest.param(case, id=case.name)
    for case in op("topk").cases
    if not case.slow and "special" not in case.name
]


@pytest.mark.parametrize("case", NAN_FREE_CASES)
def test_matches_jax_lax_top_k_on_nan_free_cases(case):
    """On NaN-free rows the contract is ``jax.lax.top_k``'s order (the per-row variant
    is checked on its first ``max_k`` columns before filling)."""
    inputs = case.make_inputs()
    x = inputs["x"]
    width = int(inputs["max_k"]) if "max_k" in inputs else int(inputs["k"])
    values, indices = topk(x, width)
    lax_values, lax_indices = jax.lax.top_k(x, width)
    np.testing.assert_array_equal(indices, np.asarray(lax_indices))
    np.testing.assert_array_equal(values, np.asarray(lax_values).astype(np.float64))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((2, 5), np.float32), 0), "k must satisfy"),
        ((np.zeros((2, 5), np.float32), 6), "k must satisfy"),
        ((np.zeros(5, np.float32), 1), "x must have rank 2"),
        ((np.zeros((2, 5), np.float64), 1), "x must have dtype"),
        ((np.zeros((2, 0), np.float32), 1), "x must have V >= 1"),
        ((np.zeros((2, 5), np.float32), np.ones(2, np.int32)), "max_k must be given"),
        ((np.zeros((2, 5), np.float32), np.ones(3, np.int32), 2), "k must have shape"),
        ((np.zeros((2, 5), np.float32), np.ones((2, 1), np.int32), 2), "k must have shape"),
        ((np.zeros((2, 5), np.float32), np.ones(2, np.float32), 2), "k must have dtype"),
        ((np.zeros((2, 5), np.float32), np.ones(2, np.int32), 6), "max_k must satisfy"),
        ((np.zeros((2, 5), np.float32), 2, 2), "max_k must be None"),
        ((np.zeros((2, 5), np.float32), True), "k must be a Python int"),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        topk(*args[:2], max_k=args[2] if len(args) > 2 else None)
