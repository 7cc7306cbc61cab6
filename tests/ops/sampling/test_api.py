"""Bad input to ``tops.ops.sample`` and ``tops.gpu.sample``: one test per row of the "Bad
input" table in ``tops/spec/sampling.py``, run on both backends (``[tpu]``, ``[gpu]``).
The GPU API is imported inside the tests, so its half is skipped where torch is missing."""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tops import backends
from tops.cpu import sampling as ref
from tops.ops import sampling as ops
from tops.precision.convert import from_torch, to_torch
from tops.precision.testing import bits
from tops.spec.sampling import MAX_VOCAB

Backend = Literal["tpu", "gpu"]
BACKENDS: list[Backend] = ["tpu", "gpu"]
X = (np.random.default_rng(0).standard_normal((6, 300)) * 3).astype(np.float32)
# Every filter on, so that a parameter taken wrongly changes some array.
PARAMS = dict(temperature=0.8, seed=5, step=2, top_k=40, top_p=0.9, min_p=0.01)
WRONG_API = {
    "tpu": "must be a JAX or NumPy array for tops.ops",
    "gpu": "must be a torch tensor for tops.gpu",
}
PATHS = pytest.mark.parametrize("max_k", [None, 64], ids=["full", "bounded"])


def _api(backend: Backend):
    """The module holding ``sample`` and ``integer_weights`` of the backend's API."""
    if backend == "tpu":
        return ops
    from tops.gpu import sampling  # configures the Triton interpreter before the kernels

    return sampling


def _native(backend: Backend, array: np.ndarray):
    """``array`` as the API's own type: itself for tops.ops (NumPy is one of its array
    types), a torch tensor on the backend's device for tops.gpu."""
    if backend == "tpu":
        return array
    return to_torch(array, backends.torch_device())


def _device_array(backend: Backend, array: np.ndarray):
    """``array`` on the device: a JAX array for tops.ops, a torch tensor for tops.gpu."""
    return jnp.asarray(array) if backend == "tpu" else _native(backend, array)


def _numpy(array) -> np.ndarray:
    return np.asarray(array) if isinstance(array, np.ndarray | jax.Array) else from_torch(array)


def _assert_same(got, expected):
    """Tokens, validity and every debug array: equal dtypes, shapes and bits."""
    got_leaves, expected_leaves = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        g, e = _numpy(g), np.asarray(e)
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(bits(g), bits(e))


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
    ids=["logits-list", "logits-tuple", "temperature", "top_p", "top_k", "seed"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_and_tuples(backend, name, value):
    arguments = dict(PARAMS, logits=_native(backend, X)) | {name: value}
    with pytest.raises(TypeError, match=f"{name} {WRONG_API[backend]}"):
        _api(backend).sample(**arguments)


@PATHS
@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars(backend, max_k):
    """NumPy numbers act as the Python numbers (also when out of range) and ``max_k`` may
    be a NumPy integer."""
    sample, x = _api(backend).sample, _native(backend, X)
    numpy_params = dict(
        temperature=np.float32(0.8),
        seed=np.uint32(5),
        step=np.int64(2),
        top_k=np.int32(40),
        top_p=np.float64(0.9),
        min_p=np.float32(0.01),
    )
    got = sample(x, **numpy_params, max_k=max_k and np.int64(max_k), debug=True)
    _assert_same(got, _expected(max_k=max_k))
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\]"):
        sample(x, **(numpy_params | dict(top_p=np.float32(-0.5))))


@PATHS
@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_dim_arrays(backend, max_k):
    """Parameters as ``[]`` arrays (NumPy, JAX, traced under ``jax.jit`` on tops.ops;
    tensors on tops.gpu) act as numbers."""
    dtypes = dict(
        temperature=np.float32,
        seed=np.uint32,
        step=np.int64,
        top_k=np.int32,
        top_p=np.float32,
        min_p=np.float32,
    )
    numpy_params = {name: np.array(PARAMS[name], dtypes[name]) for name in PARAMS}
    params = {name: _native(backend, value) for name, value in numpy_params.items()}
    assert all(tuple(value.shape) == () for value in params.values())
    expected = _expected(max_k=max_k)
    sample = _api(backend).sample
    _assert_same(sample(_native(backend, X), **params, max_k=max_k, debug=True), expected)
    if backend == "tpu":
        jax_params = {name: jnp.asarray(value) for name, value in numpy_params.items()}
        _assert_same(ops.sample(X, **jax_params, max_k=max_k, debug=True), expected)
        run = jax.jit(functools.partial(ops.sample, max_k=max_k, debug=True))
        _assert_same(run(jnp.asarray(X), **jax_params), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_framework(backend):
    torch = pytest.importorskip("torch")
    if backend == "tpu":
        wrong = [
            ("logits", torch.from_numpy(X), {}, "torch.Tensor"),
            ("temperature", X, dict(temperature=torch.ones(6)), "torch.Tensor"),
        ]
    else:
        wrong = [
            ("logits", jnp.asarray(X), {}, "jaxlib"),
            ("logits", X, {}, "numpy.ndarray"),
            (
                "temperature",
                _native(backend, X),
                dict(temperature=np.ones(6, np.float32)),
                "numpy.ndarray",
            ),
        ]
    for name, logits, change, got in wrong:
        with pytest.raises(TypeError, match=f"{name} {WRONG_API[backend]}.*got {got}"):
            _api(backend).sample(logits, **(PARAMS | change))


@PATHS
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("backend", BACKENDS)
def test_x64_mode(backend, max_k):
    """With ``jax_enable_x64`` on, float32 logits give the reference's bits (on tops.ops
    also bfloat16 logits, int64 JAX arrays (the default integer under x64) and traced
    parameters; a JAX flag has no effect on tops.gpu); float64 logits are refused."""
    sample = _api(backend).sample
    got = sample(_native(backend, X), **PARAMS, max_k=max_k, debug=True)
    _assert_same(got, _expected(max_k=max_k))
    if backend == "tpu":
        bf16 = np.asarray(jnp.asarray(X, jnp.bfloat16))
        got = ops.sample(bf16, **PARAMS, max_k=max_k, debug=True)
        _assert_same(got, _expected(bf16, max_k))
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
        no_filters = PARAMS | dict(top_k=0, top_p=1.0, min_p=0.0)
        weights = ref.intermediates(X, **no_filters, max_k=None)
        _assert_same(ops.integer_weights(X, 0.8), weights["probs"].astype(np.int32))
    float64 = _device_array(backend, X.astype(np.float64))
    with pytest.raises(ValueError, match="logits must have dtype"):
        sample(float64, **PARAMS, max_k=max_k)


@PATHS
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, max_k):
    """``B = 0``: empty results of the documented dtypes and shapes, with numbers, ``[0]``
    and ``[]`` parameters."""
    api, empty_numpy = _api(backend), np.zeros((0, 300), ml_dtypes.bfloat16)
    empty = _device_array(backend, empty_numpy)
    arrays = dict(temperature=np.zeros(0, np.float32), seed=np.array(1, np.int32))
    given = dict(
        temperature=_native(backend, arrays["temperature"]),
        seed=_device_array(backend, arrays["seed"]),
    )
    for params, reference in ((PARAMS, PARAMS), (PARAMS | given, PARAMS | arrays)):
        tokens, valid, debug = api.sample(empty, **params, max_k=max_k, debug=True)
        _assert_same((tokens, valid, debug), _expected(empty_numpy, max_k, **reference))
        assert str(debug["topk_logits_unsorted"].dtype).endswith("bfloat16")
    assert tuple(api.integer_weights(empty, 1.0).shape) == (0, 300)


@pytest.mark.parametrize("max_k", [None, 1], ids=["full", "bounded"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_column(backend, max_k):
    """``V = 1``: the one token (valid rows) or ``greedy_sampled`` = 0 (invalid rows), as
    the reference; ``V = 0``: ValueError."""
    sample = _api(backend).sample
    column = np.array([[0.5], [-np.inf], [np.nan], [np.inf]], np.float32)
    got = sample(_native(backend, column), **PARAMS, max_k=max_k, debug=True)
    _assert_same(got, _expected(column, max_k))
    assert _numpy(got[0]).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=f"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB}"):
        sample(_native(backend, X)[:, :0], **PARAMS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_vocab(backend):
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation."""
    api = _api(backend)
    if backend == "tpu":  # shape structs stand in for the arrays
        too_wide = jax.ShapeDtypeStruct((1, MAX_VOCAB + 1), jnp.float32)
    else:  # a meta tensor has a shape and a dtype but no storage
        import torch

        too_wide = torch.empty((1, MAX_VOCAB + 1), dtype=torch.float32, device="meta")
    message = rf"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB} columns, got shape \(1, "
    for max_k in (None, 64):
        with pytest.raises(ValueError, match=message):
            api.sample(too_wide, **PARAMS, max_k=max_k)
    with pytest.raises(ValueError, match=message):
        api.integer_weights(too_wide, 1.0)


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
@pytest.mark.parametrize("backend", BACKENDS)
def test_numbers_out_of_range(backend, change, message):
    """Array parameters are given as the API's own type (a tensor on tops.gpu)."""
    change = {
        name: _native(backend, value) if isinstance(value, np.ndarray) else value
        for name, value in change.items()
    }
    with pytest.raises(ValueError, match=message):
        _api(backend).sample(_native(backend, X), **(PARAMS | change))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bool_flags(backend):
    """``debug`` takes Python and NumPy bools; anything else is a TypeError naming it."""
    sample, x = _api(backend).sample, _native(backend, X)
    _assert_same(sample(x, **PARAMS, debug=np.bool_(True)), _expected())
    _assert_same(sample(x, **PARAMS, debug=np.False_), _expected()[:2])
    with pytest.raises(TypeError, match="debug must be a bool, got str"):
        sample(x, **PARAMS, debug="yes")


@PATHS
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_arrays_out_of_range(backend, max_k):
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
    given = {name: _native(backend, value) for name, value in rows.items()}
    got = _api(backend).sample(_native(backend, X), **(PARAMS | given), max_k=max_k, debug=True)
    _assert_same(got, expected)
