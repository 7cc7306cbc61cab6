"""Bad input to ``tops.gpu.topk``: one test per row of the "Bad input" table in
``tops/spec/topk.py`` (the TPU side of each row is in ``test_api.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tops.gpu  # noqa: F401  (configures the Triton interpreter before the kernels load)
from tops import backends, cpu
from tops.gpu.selection import topk
from tops.spec.topk import MAX_VOCAB

X_NUMPY = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
X = torch.from_numpy(X_NUMPY).to(backends.torch_device())
WRONG_API = r"must be a torch tensor for tops.gpu"


def _assert_equal(got, expected):
    values, indices = got
    assert indices.dtype == torch.int32
    np.testing.assert_array_equal(indices.cpu().numpy(), expected[1])
    np.testing.assert_array_equal(values.cpu().double().numpy(), expected[0])


def _row_k(counts) -> torch.Tensor:
    return torch.tensor(counts, dtype=torch.int64)


@pytest.mark.parametrize(
    ("x", "k", "max_k", "name"),
    [
        (X_NUMPY.tolist(), 2, None, "x"),
        (tuple(map(tuple, X_NUMPY)), 2, None, "x"),
        (X, [1, 2, 3, 4, 5], 4, "k"),
        (X, (1, 2, 3, 4, 5), 4, "k"),
    ],
    ids=["gpu-x-list", "gpu-x-tuple", "gpu-k-list", "gpu-k-tuple"],
)
def test_gpu_lists_and_tuples(x, k, max_k, name):
    with pytest.raises(TypeError, match=f"{name} {WRONG_API}"):
        topk(x, k, max_k=max_k)


def test_gpu_numpy_scalars():
    """``k`` and ``max_k`` as NumPy integers act as the Python ints."""
    _assert_equal(topk(X, np.int64(7)), cpu.topk(X_NUMPY, 7))
    row_k = np.array([7, 0, 3, 9, 1])
    expected = cpu.topk(X_NUMPY, row_k, max_k=9)
    _assert_equal(topk(X, torch.from_numpy(row_k), max_k=np.int32(9)), expected)


def test_gpu_zero_dim_arrays():
    """A ``[]`` count applies to every row."""
    expected = cpu.topk(X_NUMPY, np.full(5, 3, np.int32), max_k=9)
    _assert_equal(topk(X, torch.tensor(3, dtype=torch.int32), max_k=9), expected)


def test_gpu_wrong_framework():
    with pytest.raises(TypeError, match=f"x {WRONG_API}.*got jaxlib"):
        topk(jnp.asarray(X_NUMPY), 2)
    with pytest.raises(TypeError, match=f"x {WRONG_API}.*got numpy.ndarray"):
        topk(X_NUMPY, 2)
    with pytest.raises(TypeError, match=f"k {WRONG_API}.*got numpy.ndarray"):
        topk(X, np.ones(5, np.int32), max_k=2)


def test_gpu_x64_mode():
    """``jax_enable_x64`` is a JAX flag: no effect on the torch API; float64 ``x`` is
    refused with the same ValueError as on the TPU API."""
    jax.config.update("jax_enable_x64", True)
    try:
        _assert_equal(topk(X, 7), cpu.topk(X_NUMPY, 7))
    finally:
        jax.config.update("jax_enable_x64", False)
    with pytest.raises(ValueError, match="x must have dtype"):
        topk(X.double(), 2)


def test_gpu_empty_batch():
    """``B = 0``: empty results of the documented shapes."""
    empty = torch.zeros((0, 300), dtype=torch.bfloat16, device=X.device)
    for k, max_k in ((3, None), (torch.zeros(0, dtype=torch.int32), 4)):
        values, indices = topk(empty, k, max_k=max_k)
        assert values.shape == indices.shape == (0, 3 if max_k is None else 4)
        assert values.dtype == torch.bfloat16 and indices.dtype == torch.int32


def test_gpu_one_column():
    """``V = 1``: the column itself; ``V = 0``: ValueError."""
    column = X[:, :1]
    expected = (X_NUMPY[:, :1].astype(np.float64), np.zeros((5, 1), np.int32))
    _assert_equal(topk(column, 1), expected)
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= V = 1"):
        topk(column, 2)
    with pytest.raises(ValueError, match="x must have V >= 1"):
        topk(X[:, :0], 1)


def test_gpu_huge_vocab():
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation
    (a meta tensor has a shape and a dtype but no storage)."""
    too_wide = torch.empty((1, MAX_VOCAB + 1), dtype=torch.float32, device="meta")
    with pytest.raises(ValueError, match=f"x must have V <= MAX_VOCAB = {MAX_VOCAB}"):
        topk(too_wide, 8)


@pytest.mark.parametrize(
    ("k", "max_k", "message"),
    [
        (0, None, r"k must satisfy 1 <= k <= V = 300, got 0"),
        (-1, None, r"k must satisfy 1 <= k <= V = 300, got -1"),
        (301, None, r"k must satisfy 1 <= k <= V = 300, got 301"),
        (np.int64(301), None, r"k must satisfy"),
        (2.0, None, r"k must be a Python int or an integer array"),
        (True, None, r"k must be a Python int or an integer array"),
        (2, 2, r"max_k must be None when k is an int"),
        (_row_k([1] * 5), None, r"max_k must be given"),
        (_row_k([1] * 5), 0, r"max_k must satisfy 1 <= max_k <= V = 300, got 0"),
        (_row_k([1] * 5), 301, r"max_k must satisfy 1 <= max_k <= V = 300, got 301"),
        (_row_k([1] * 5), 2.0, r"max_k must be a Python int"),
        (torch.ones(5), 2, r"k must have dtype"),
        (_row_k([1] * 4), 2, r"k must have shape \(\) or \(5,\)"),
    ],
)
def test_gpu_numbers_out_of_range(k, max_k, message):
    with pytest.raises(ValueError, match=message):
        topk(X, k, max_k=max_k)


def test_gpu_per_row_k_out_of_range():
    """Per-row counts are run-time values: clipped to ``[0, max_k]``, int64 without wrap."""
    clipped = cpu.topk(X_NUMPY, np.array([0, 0, 9, 9, 9], np.int32), max_k=9)
    _assert_equal(topk(X, _row_k([-3, 0, 2**40, 9, 10]), max_k=9), clipped)
    row_k = torch.tensor([-3, 0, 2**31 - 1, 9, 10], dtype=torch.int32)
    _assert_equal(topk(X, row_k, max_k=9), clipped)
