"""Bad input to ``tops.ops.topk``: one test per row of the "Bad input" table in
``tops/spec/topk.py`` (the GPU side of each row is in ``test_gpu_api.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops import cpu, ops
from tops.spec.topk import MAX_VOCAB, validate

X = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
WRONG_API = r"must be a JAX or NumPy array for tops.ops"


def _assert_equal(got, expected):
    values, indices = got
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(indices), expected[1])
    np.testing.assert_array_equal(np.asarray(values, np.float64), expected[0])


@pytest.fixture
def x64():
    """``jax_enable_x64`` on for one test (global state, restored whatever happens)."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize(
    ("x", "k", "max_k", "name"),
    [
        (X.tolist(), 2, None, "x"),
        (tuple(map(tuple, X)), 2, None, "x"),
        (X, [1, 2, 3, 4, 5], 4, "k"),
        (X, (1, 2, 3, 4, 5), 4, "k"),
    ],
    ids=["tpu-x-list", "tpu-x-tuple", "tpu-k-list", "tpu-k-tuple"],
)
def test_tpu_lists_and_tuples(x, k, max_k, name):
    with pytest.raises(TypeError, match=f"{name} {WRONG_API}"):
        ops.topk(x, k, max_k=max_k)


def test_tpu_numpy_scalars():
    """``k`` and ``max_k`` as NumPy integers act as the Python ints."""
    _assert_equal(ops.topk(X, np.int64(7)), cpu.topk(X, 7))
    row_k = np.array([7, 0, 3, 9, 1], np.int32)
    _assert_equal(ops.topk(X, row_k, max_k=np.int32(9)), cpu.topk(X, row_k, max_k=9))


def test_tpu_zero_dim_arrays():
    """A ``[]`` count applies to every row, also as a traced scalar under ``jax.jit``."""
    expected = cpu.topk(X, np.full(5, 3, np.int32), max_k=9)
    _assert_equal(ops.topk(X, np.array(3, np.int64), max_k=9), expected)
    _assert_equal(ops.topk(X, jnp.int32(3), max_k=9), expected)
    run = jax.jit(lambda x, k: ops.topk(x, k, max_k=9))
    _assert_equal(run(X, jnp.int32(3)), expected)


def test_tpu_wrong_framework():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=f"x {WRONG_API}.*got torch.Tensor"):
        ops.topk(torch.from_numpy(X), 2)
    with pytest.raises(TypeError, match=f"k {WRONG_API}.*got torch.Tensor"):
        ops.topk(X, torch.ones(5, dtype=torch.int32), max_k=2)


@pytest.mark.usefixtures("x64")
def test_tpu_x64_mode():
    """With ``jax_enable_x64`` on: the same values and indices on the kernel path, the
    sort path and per-row int64 counts under ``jax.jit``; float64 ``x`` is refused."""
    bf16 = jnp.asarray(X, jnp.bfloat16)
    row_k = jnp.asarray([7, 0, 2**40, -3, 1])  # int64 under x64
    assert row_k.dtype == jnp.int64
    _assert_equal(ops.topk(X, 7), cpu.topk(X, 7))
    _assert_equal(ops.topk(bf16, 7), cpu.topk(np.asarray(bf16), 7))
    _assert_equal(ops.topk(X, 300), cpu.topk(X, 300))
    run = jax.jit(lambda x, k: ops.topk(x, k, max_k=7))
    _assert_equal(run(jnp.asarray(X), row_k), cpu.topk(X, np.asarray(row_k), max_k=7))
    with pytest.raises(ValueError, match="x must have dtype"):
        ops.topk(jnp.asarray(X, jnp.float64), 2)


def test_tpu_empty_batch():
    """``B = 0``: empty results of the documented shapes."""
    for k, max_k in ((3, None), (np.zeros(0, np.int32), 4)):
        values, indices = ops.topk(jnp.zeros((0, 300), jnp.bfloat16), k, max_k=max_k)
        assert values.shape == indices.shape == (0, 3 if max_k is None else 4)
        assert values.dtype == jnp.bfloat16 and indices.dtype == jnp.int32


def test_tpu_one_column():
    """``V = 1``: the column itself; ``V = 0``: ValueError."""
    column = X[:, :1]
    _assert_equal(ops.topk(column, 1), (column.astype(np.float64), np.zeros((5, 1), np.int32)))
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= V = 1"):
        ops.topk(column, 2)
    with pytest.raises(ValueError, match="x must have V >= 1"):
        ops.topk(X[:, :0], 1)


def test_tpu_huge_vocab():
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation
    (shape structs stand in for the arrays)."""
    widest = jax.ShapeDtypeStruct((1, MAX_VOCAB), jnp.float32)
    assert validate(widest, 8, api="tops.ops") == (8, False)
    too_wide = jax.ShapeDtypeStruct((1, MAX_VOCAB + 1), jnp.float32)
    with pytest.raises(ValueError, match=f"x must have V <= MAX_VOCAB = {MAX_VOCAB}"):
        ops.topk(too_wide, 8)


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
        (np.ones(5, np.int32), None, r"max_k must be given"),
        (np.ones(5, np.int32), 0, r"max_k must satisfy 1 <= max_k <= V = 300, got 0"),
        (np.ones(5, np.int32), 301, r"max_k must satisfy 1 <= max_k <= V = 300, got 301"),
        (np.ones(5, np.int32), 2.0, r"max_k must be a Python int"),
        (np.ones(5, np.float32), 2, r"k must have dtype"),
        (np.ones(4, np.int32), 2, r"k must have shape \(\) or \(5,\)"),
    ],
)
def test_tpu_numbers_out_of_range(k, max_k, message):
    with pytest.raises(ValueError, match=message):
        ops.topk(X, k, max_k=max_k)


def test_tpu_per_row_k_out_of_range():
    """Per-row counts are run-time values: clipped to ``[0, max_k]``, int64 without wrap."""
    row_k = np.array([-3, 0, 2**40, 9, 10], np.int64)
    clipped = cpu.topk(X, np.array([0, 0, 9, 9, 9], np.int32), max_k=9)
    _assert_equal(ops.topk(X, row_k, max_k=9), clipped)
    _assert_equal(ops.topk(X, jnp.asarray([-3, 0, 2**31 - 1, 9, 10], jnp.int32), max_k=9), clipped)
