"""Bad input to ``tops.ops.sample``: one test per row of the "Bad input" table in
``tops/spec/sampling.py`` (the GPU side of each row is in ``test_gpu_api.py``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops.cpu import sampling as ref
from tops.ops import sampling as ops
from tops.spec.sampling import MAX_VOCAB

X = (np.random.default_rng(0).standard_normal((6, 300)) * 3).astype(np.float32)
# Every filter on, so that a parameter taken wrongly changes some array.
PARAMS = dict(temperature=0.8, seed=5, step=2, top_k=40, top_p=0.9, min_p=0.01)
WRONG_API = "must be a JAX or NumPy array for tops.ops"
PATHS = pytest.mark.parametrize("max_k", [None, 64], ids=["tpu-full", "tpu-bounded"])


def _assert_same(got, expected):
    """Tokens, validity and every debug array: equal dtypes, shapes and bits."""
    got_leaves, expected_leaves = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        g, e = np.asarray(g), np.asarray(e)
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


def _expected(x=X, max_k=None, **params):
    return ref.sample(x, **(PARAMS | params), max_k=max_k, debug=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logits", X.tolist()),
        ("logits", tuple(map(tuple, X))),
        ("temperature", [0.8] * 6),
        ("top_p", (0.9,) * 6),
        ("top_k", [40] * 6),
        ("seed", (5,) * 6),
    ],
    ids=[
        "tpu-logits-list",
        "tpu-logits-tuple",
        "tpu-temperature",
        "tpu-top_p",
        "tpu-top_k",
        "tpu-seed",
    ],
)
def test_tpu_lists_and_tuples(name, value):
    arguments = dict(PARAMS, logits=X) | {name: value}
    with pytest.raises(TypeError, match=f"{name} {WRONG_API}"):
        ops.sample(**arguments)


@PATHS
def test_tpu_numpy_scalars(max_k):
    """NumPy numbers act as the Python numbers (also when out of range) and ``max_k`` may
    be a NumPy integer."""
    numpy_params = dict(
        temperature=np.float32(0.8),
        seed=np.uint32(5),
        step=np.int64(2),
        top_k=np.int32(40),
        top_p=np.float64(0.9),
        min_p=np.float32(0.01),
    )
    got = ops.sample(X, **numpy_params, max_k=max_k and np.int64(max_k), debug=True)
    _assert_same(got, _expected(max_k=max_k))
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\]"):
        ops.sample(X, **(numpy_params | dict(top_p=np.float32(-0.5))))


@PATHS
def test_tpu_zero_dim_arrays(max_k):
    """Parameters as ``[]`` arrays (NumPy, JAX, traced under ``jax.jit``) act as numbers."""
    dtypes = dict(
        temperature=np.float32,
        seed=np.uint32,
        step=np.int64,
        top_k=np.int32,
        top_p=np.float32,
        min_p=np.float32,
    )
    numpy_params = {name: np.array(PARAMS[name], dtypes[name]) for name in PARAMS}
    expected = _expected(max_k=max_k)
    _assert_same(ops.sample(X, **numpy_params, max_k=max_k, debug=True), expected)
    jax_params = {name: jnp.asarray(value) for name, value in numpy_params.items()}
    _assert_same(ops.sample(X, **jax_params, max_k=max_k, debug=True), expected)
    run = jax.jit(functools.partial(ops.sample, max_k=max_k, debug=True))
    _assert_same(run(jnp.asarray(X), **jax_params), expected)


def test_tpu_wrong_framework():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=f"logits {WRONG_API}.*got torch.Tensor"):
        ops.sample(torch.from_numpy(X), **PARAMS)
    with pytest.raises(TypeError, match=f"temperature {WRONG_API}.*got torch.Tensor"):
        ops.sample(X, **(PARAMS | dict(temperature=torch.ones(6))))


@PATHS
@pytest.mark.usefixtures("x64")
def test_tpu_x64_mode(max_k):
    """With ``jax_enable_x64`` on, float32 and bfloat16 logits give the reference's bits
    with numbers, int64 JAX arrays (the default integer under x64) and traced
    parameters; float64 logits are refused."""
    bf16 = np.asarray(jnp.asarray(X, jnp.bfloat16))
    _assert_same(ops.sample(X, **PARAMS, max_k=max_k, debug=True), _expected(max_k=max_k))
    _assert_same(ops.sample(bf16, **PARAMS, max_k=max_k, debug=True), _expected(bf16, max_k))
    rows = dict(
        temperature=jnp.full(6, 0.8, jnp.float32),
        seed=jnp.arange(6) - 3,  # int64, taken modulo 2**32
        step=jnp.arange(6) + 2**33,
        top_k=jnp.asarray([0, 1, 40, 300, 2**40, -2]),
    )
    assert rows["seed"].dtype == jnp.int64
    expected = _expected(max_k=max_k, **{name: np.asarray(v) for name, v in rows.items()})
    run = jax.jit(functools.partial(ops.sample, max_k=max_k, debug=True))
    _assert_same(run(jnp.asarray(X), **(PARAMS | rows)), expected)
    weights = ref.intermediates(X, **(PARAMS | dict(top_k=0, top_p=1.0, min_p=0.0)), max_k=None)
    _assert_same(ops.integer_weights(X, 0.8), weights["probs"].astype(np.int32))
    with pytest.raises(ValueError, match="logits must have dtype"):
        ops.sample(jnp.asarray(X, jnp.float64), **PARAMS, max_k=max_k)


@PATHS
def test_tpu_empty_batch(max_k):
    """``B = 0``: empty results of the documented dtypes and shapes, with numbers, ``[0]``
    and ``[]`` parameters."""
    empty = jnp.zeros((0, 300), jnp.bfloat16)
    for params in (PARAMS, dict(PARAMS, temperature=np.zeros(0, np.float32), seed=jnp.int32(1))):
        tokens, valid, arrays = ops.sample(empty, **params, max_k=max_k, debug=True)
        _assert_same((tokens, valid, arrays), _expected(np.asarray(empty), max_k, **params))
        assert arrays["topk_logits_unsorted"].dtype == jnp.bfloat16
    assert ops.integer_weights(empty, 1.0).shape == (0, 300)


@pytest.mark.parametrize("max_k", [None, 1], ids=["tpu-full", "tpu-bounded"])
def test_tpu_one_column(max_k):
    """``V = 1``: the one token (valid rows) or ``greedy_sampled`` = 0 (invalid rows), as
    the reference; ``V = 0``: ValueError."""
    column = np.array([[0.5], [-np.inf], [np.nan], [np.inf]], np.float32)
    got = ops.sample(column, **PARAMS, max_k=max_k, debug=True)
    _assert_same(got, _expected(column, max_k))
    assert np.asarray(got[0]).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=f"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB}"):
        ops.sample(X[:, :0], **PARAMS)


def test_tpu_huge_vocab():
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation
    (shape structs stand in for the arrays)."""
    too_wide = jax.ShapeDtypeStruct((1, MAX_VOCAB + 1), jnp.float32)
    message = rf"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB} columns, got shape \(1, "
    for max_k in (None, 64):
        with pytest.raises(ValueError, match=message):
            ops.sample(too_wide, **PARAMS, max_k=max_k)
    with pytest.raises(ValueError, match=message):
        ops.integer_weights(too_wide, 1.0)


NUMBERS_OUT_OF_RANGE = [
    (dict(temperature=-1.0), r"temperature must be >= 0 \(0 means greedy\), got -1.0"),
    (dict(temperature=np.nan), r"temperature must be >= 0 \(0 means greedy\), got nan"),
    (dict(top_p=-0.5), r"top_p must be in \[0, 1\] \(1 disables it\), got -0.5"),
    (dict(top_p=1.5), r"top_p must be in \[0, 1\] \(1 disables it\), got 1.5"),
    (dict(top_p=np.nan), r"top_p must be in \[0, 1\]"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\] \(0 disables it\), got -0.1"),
    (dict(min_p=2.0), r"min_p must be in \[0, 1\] \(0 disables it\), got 2.0"),
    (dict(min_p=np.nan), r"min_p must be in \[0, 1\]"),
    (dict(top_k=1.5), r"top_k must be an integer, got 1.5"),
    (dict(top_k=np.inf), r"top_k must be an integer, got inf"),
    (dict(seed=-1), r"seed must be in \[0, 4294967296\), got -1"),
    (dict(step=2**32), r"step must be in \[0, 4294967296\), got 4294967296"),
    (dict(temperature=True), r"temperature must be a number or an array \[B\], got a bool"),
    (dict(top_k=True), r"top_k must be an integer or an array \[B\], got a bool"),
    (dict(max_k=0), r"max_k must satisfy 1 <= max_k <= min\(V, 256\) = 256, got 0"),
    (dict(max_k=257), r"max_k must satisfy 1 <= max_k <= min\(V, 256\) = 256, got 257"),
    (dict(max_k=2.0), r"max_k must be None or a Python int, got float"),
    (dict(top_p=np.ones(5, np.float32)), r"top_p must have shape \(\) or \(6,\), got \(5,\)"),
    (dict(top_k=np.ones(6, np.float32)), r"top_k must have dtype in"),
]


@pytest.mark.parametrize(("change", "message"), NUMBERS_OUT_OF_RANGE)
def test_tpu_numbers_out_of_range(change, message):
    arguments = PARAMS | change
    with pytest.raises(ValueError, match=message):
        ops.sample(X, **arguments)


def test_tpu_bool_flags():
    """``debug`` takes Python and NumPy bools; anything else is a TypeError naming it."""
    _assert_same(ops.sample(X, **PARAMS, debug=np.bool_(True)), _expected())
    _assert_same(ops.sample(X, **PARAMS, debug=np.False_), _expected()[:2])
    with pytest.raises(TypeError, match="debug must be a bool, got str"):
        ops.sample(X, **PARAMS, debug="yes")


@PATHS
def test_tpu_per_row_arrays_out_of_range(max_k):
    """Array entries out of range get the documented clamps: the tokens and arrays of
    the in-range values they stand for, as in the reference."""
    rows = dict(
        temperature=np.array([-1.0, np.nan, 0.8, 0.8, 0.8, 0.8], np.float32),
        top_p=np.array([0.9, 0.9, -0.5, 1.5, np.nan, 0.9], np.float32),
        min_p=np.array([0.0, 0.0, 0.0, 2.0, -1.0, np.nan], np.float32),
        top_k=np.array([40, 40, -5, 2**40, 40, 300], np.int64),
        seed=np.array([-1, 5, 5, 5, 5, 2**32 + 5], np.int64),
    )
    clamped = dict(
        temperature=np.array([0.0, 0.0, 0.8, 0.8, 0.8, 0.8], np.float32),
        top_p=np.array([0.9, 0.9, 0.0, 1.0, 1.0, 0.9], np.float32),
        min_p=np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0], np.float32),
        top_k=np.array([40, 40, 0, 0, 40, 0], np.int64),
        seed=np.array([2**32 - 1, 5, 5, 5, 5, 5], np.uint32),
    )
    expected = _expected(max_k=max_k, **clamped)
    _assert_same(_expected(max_k=max_k, **rows), expected)
    _assert_same(ops.sample(X, **(PARAMS | rows), max_k=max_k, debug=True), expected)
