"""Property-based: drawn shapes, dtypes, ties, special values and counts (Python, NumPy,
0-d and per-row ``k``, ``max_k``), inside and just outside the valid ranges, on both APIs.
Every draw either raises a ValueError/TypeError whose message starts with an argument's
name, or equals the float64 reference exactly (indices, and values bit for bit).
``--hypothesis-show-statistics`` prints how many draws were computed and refused per
argument."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tops import backends, cpu, ops
from tops.precision.convert import to_torch
from tops.precision.testing import attempt, property_settings

ARGUMENTS = ("x", "k", "max_k")
DEFAULT_EXAMPLES, LONG_EXAMPLES = 14, 300  # draws per API: the default suite, -m slow
DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "float64": np.float64,  # refused
}
SPECIALS = (np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0)


@st.composite
def topk_inputs(draw):
    """``(x, k, max_k)``: NumPy ``x`` and the count in one of its forms."""
    batch = draw(st.sampled_from((0, 1, 3)))
    vocab = draw(st.sampled_from((1, 9, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # dense ties
        x = rng.integers(-3, 4, (batch, vocab)).astype(np.float64)
    else:
        x = rng.standard_normal((batch, vocab))
    for _ in range(draw(st.integers(0, 4)) if x.size else 0):
        x[rng.integers(batch), rng.integers(vocab)] = draw(st.sampled_from(SPECIALS))
    x = x.astype(DTYPES[draw(st.sampled_from(tuple(DTYPES)))])
    counts = st.sampled_from((-1, 0, 1, 3, vocab, vocab + 1))
    form = draw(st.sampled_from(("int", "numpy int", "rows", "0-d", "rows int64", "float")))
    max_k = draw(st.sampled_from((None, 1, 3, vocab, vocab + 1)))
    if form in ("int", "numpy int", "float"):
        k = {"int": int, "numpy int": np.int64, "float": float}[form](draw(counts))
        max_k = None if draw(st.integers(0, 3)) else max_k
    else:
        rows = np.array(draw(st.lists(counts, min_size=batch, max_size=batch)), np.int64)
        k = {
            "rows": rows.astype(np.int32),
            "rows int64": rows,
            "0-d": np.asarray(draw(counts), np.int32),
        }[form]
    return x, k, max_k


def _check(values, indices, x, k, max_k) -> None:
    expected_values, expected_indices = cpu.topk(x, k, max_k=max_k)
    np.testing.assert_array_equal(np.asarray(indices), expected_indices)
    np.testing.assert_array_equal(np.asarray(values).astype(np.float64), expected_values)


def _tpu_check(drawn) -> None:
    x, k, max_k = drawn
    result, _ = attempt(lambda: ops.topk(x, k, max_k=max_k), ARGUMENTS)
    if result is not None:
        _check(*result, x, k, max_k)


def _gpu_check(drawn) -> None:
    from tops import gpu

    x, k, max_k = drawn
    device = backends.torch_device()
    count = to_torch(k, device) if isinstance(k, np.ndarray) else k
    result, _ = attempt(lambda: gpu.topk(to_torch(x, device), count, max_k=max_k), ARGUMENTS)
    if result is not None:
        values, indices = result
        _check(values.cpu().float().numpy(), indices.cpu().numpy(), x, k, max_k)


@property_settings(DEFAULT_EXAMPLES)
@given(topk_inputs())
def test_tpu_inputs_are_refused_by_name_or_computed_exactly(drawn):
    _tpu_check(drawn)


@property_settings(DEFAULT_EXAMPLES)
@given(topk_inputs())
def test_gpu_inputs_are_refused_by_name_or_computed_exactly(drawn):
    _gpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(topk_inputs())
def test_tpu_inputs_at_length(drawn):
    _tpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(topk_inputs())
def test_gpu_inputs_at_length(drawn):
    _gpu_check(drawn)
