"""Bad input to ``tops.ops.topk`` and ``tops.gpu.topk``: one test per row of the "Bad
input" table in ``tops/spec/topk.py``, run on both backends (``[tpu]``, ``[gpu]``). The
GPU API is imported inside the tests, so its half is skipped where torch is missing."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tops import backends, cpu, ops
from tops.precision.convert import from_torch, to_torch
from tops.spec.topk import MAX_VOCAB, validate

Backend = Literal["tpu", "gpu"]
BACKENDS: list[Backend] = ["tpu", "gpu"]
X = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
WRONG_API = {
    "tpu": r"must be a JAX or NumPy array for tops.ops",
    "gpu": r"must be a torch tensor for tops.gpu",
}
COUNTS_DEVICE = "cpu"  # per-row counts on the host: tops.gpu moves them to x's device


def _topk(backend: Backend):
    if backend == "tpu":
        return ops.topk
    from tops import gpu

    return gpu.topk


def _native(backend: Backend, array: np.ndarray, device: str | None = None):
    """``array`` as the API's own type: itself for tops.ops (NumPy is one of its array
    types), a torch tensor on ``device`` (default: the backend's) for tops.gpu."""
    if backend == "tpu":
        return array
    return to_torch(array, device or backends.torch_device())


def _counts(backend: Backend, counts: np.ndarray):
    return _native(backend, counts, COUNTS_DEVICE)


def _numpy(array) -> np.ndarray:
    return np.asarray(array) if isinstance(array, np.ndarray | jax.Array) else from_torch(array)


def _assert_equal(got, expected):
    values, indices = got
    assert str(indices.dtype).endswith("int32")
    np.testing.assert_array_equal(_numpy(indices), expected[1])
    np.testing.assert_array_equal(_numpy(values).astype(np.float64), expected[0])


@pytest.mark.parametrize(
    ("name", "x", "k", "max_k"),
    [
        ("x", X.tolist(), 2, None),
        ("x", tuple(map(tuple, X)), 2, None),
        ("k", X, [1, 2, 3, 4, 5], 4),
        ("k", X, (1, 2, 3, 4, 5), 4),
    ],
    ids=["x-list", "x-tuple", "k-list", "k-tuple"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_and_tuples(backend, name, x, k, max_k):
    if name == "k":
        x = _native(backend, x)
    with pytest.raises(TypeError, match=f"{name} {WRONG_API[backend]}"):
        _topk(backend)(x, k, max_k=max_k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars(backend):
    """``k`` and ``max_k`` as NumPy integers act as the Python ints."""
    topk, x = _topk(backend), _native(backend, X)
    _assert_equal(topk(x, np.int64(7)), cpu.topk(X, 7))
    row_k = np.array([7, 0, 3, 9, 1], np.int32)
    expected = cpu.topk(X, row_k, max_k=9)
    _assert_equal(topk(x, _counts(backend, row_k), max_k=np.int32(9)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_dim_arrays(backend):
    """A ``[]`` count applies to every row (on tops.ops also a traced scalar under
    ``jax.jit``)."""
    expected = cpu.topk(X, np.full(5, 3, np.int32), max_k=9)
    count = _counts(backend, np.array(3, np.int64))
    _assert_equal(_topk(backend)(_native(backend, X), count, max_k=9), expected)
    if backend == "tpu":
        _assert_equal(ops.topk(X, jnp.int32(3), max_k=9), expected)
        run = jax.jit(lambda x, k: ops.topk(x, k, max_k=9))
        _assert_equal(run(X, jnp.int32(3)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_framework(backend):
    torch = pytest.importorskip("torch")
    if backend == "tpu":
        wrong = [
            ("x", torch.from_numpy(X), 2, None, "torch.Tensor"),
            ("k", X, torch.ones(5, dtype=torch.int32), 2, "torch.Tensor"),
        ]
    else:
        wrong = [
            ("x", jnp.asarray(X), 2, None, "jaxlib"),
            ("x", X, 2, None, "numpy.ndarray"),
            ("k", _native(backend, X), np.ones(5, np.int32), 2, "numpy.ndarray"),
        ]
    for name, x, k, max_k, got in wrong:
        with pytest.raises(TypeError, match=f"{name} {WRONG_API[backend]}.*got {got}"):
            _topk(backend)(x, k, max_k=max_k)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("backend", BACKENDS)
def test_x64_mode(backend):
    """With ``jax_enable_x64`` on: the same values and indices (on tops.ops also on the
    sort path and with per-row int64 counts under ``jax.jit``; a JAX flag has no effect
    on tops.gpu); float64 ``x`` is refused."""
    topk, x = _topk(backend), _native(backend, X)
    _assert_equal(topk(x, 7), cpu.topk(X, 7))
    if backend == "tpu":
        bf16 = jnp.asarray(X, jnp.bfloat16)
        row_k = jnp.asarray([7, 0, 2**40, -3, 1])  # int64 under x64
        assert row_k.dtype == jnp.int64
        _assert_equal(ops.topk(bf16, 7), cpu.topk(np.asarray(bf16), 7))
        _assert_equal(ops.topk(X, 300), cpu.topk(X, 300))
        run = jax.jit(lambda x, k: ops.topk(x, k, max_k=7))
        _assert_equal(run(jnp.asarray(X), row_k), cpu.topk(X, np.asarray(row_k), max_k=7))
    with pytest.raises(ValueError, match="x must have dtype"):
        topk(_native(backend, X.astype(np.float64)), 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    """``B = 0``: empty results of the documented shapes."""
    empty = _native(backend, np.zeros((0, 300), ml_dtypes.bfloat16))
    for k, max_k in ((3, None), (_counts(backend, np.zeros(0, np.int32)), 4)):
        values, indices = _topk(backend)(empty, k, max_k=max_k)
        assert tuple(values.shape) == tuple(indices.shape) == (0, 3 if max_k is None else 4)
        assert str(values.dtype).endswith("bfloat16") and str(indices.dtype).endswith("int32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_column(backend):
    """``V = 1``: the column itself; ``V = 0``: ValueError."""
    topk, x = _topk(backend), _native(backend, X)
    expected = (X[:, :1].astype(np.float64), np.zeros((5, 1), np.int32))
    _assert_equal(topk(x[:, :1], 1), expected)
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= V = 1"):
        topk(x[:, :1], 2)
    with pytest.raises(ValueError, match="x must have V >= 1"):
        topk(x[:, :0], 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_vocab(backend):
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation."""
    if backend == "tpu":  # shape structs stand in for the arrays
        widest = jax.ShapeDtypeStruct((1, MAX_VOCAB), jnp.float32)
        assert validate(widest, 8, api="tops.ops") == (8, False)
        too_wide = jax.ShapeDtypeStruct((1, MAX_VOCAB + 1), jnp.float32)
    else:  # a meta tensor has a shape and a dtype but no storage
        import torch

        too_wide = torch.empty((1, MAX_VOCAB + 1), dtype=torch.float32, device="meta")
    with pytest.raises(ValueError, match=f"x must have V <= MAX_VOCAB = {MAX_VOCAB}"):
        _topk(backend)(too_wide, 8)


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
        (np.ones(5, np.int64), None, r"max_k must be given"),
        (np.ones(5, np.int64), 0, r"max_k must satisfy 1 <= max_k <= V = 300, got 0"),
        (np.ones(5, np.int64), 301, r"max_k must satisfy 1 <= max_k <= V = 300, got 301"),
        (np.ones(5, np.int64), 2.0, r"max_k must be a Python int"),
        (np.ones(5, np.float32), 2, r"k must have dtype"),
        (np.ones(4, np.int64), 2, r"k must have shape \(\) or \(5,\)"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_numbers_out_of_range(backend, k, max_k, message):
    if isinstance(k, np.ndarray):
        k = _counts(backend, k)
    with pytest.raises(ValueError, match=message):
        _topk(backend)(_native(backend, X), k, max_k=max_k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_k_out_of_range(backend):
    """Per-row counts are run-time values: clipped to ``[0, max_k]``, int64 without wrap."""
    topk, x = _topk(backend), _native(backend, X)
    clipped = cpu.topk(X, np.array([0, 0, 9, 9, 9], np.int32), max_k=9)
    wide = np.array([-3, 0, 2**40, 9, 10], np.int64)
    _assert_equal(topk(x, _counts(backend, wide), max_k=9), clipped)
    narrow = np.array([-3, 0, 2**31 - 1, 9, 10], np.int32)
    _assert_equal(topk(x, _counts(backend, narrow), max_k=9), clipped)
