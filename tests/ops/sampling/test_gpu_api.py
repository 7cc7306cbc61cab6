"""Bad input to ``tops.gpu.sample``: one test per row of the "Bad input" table in
``tops/spec/sampling.py`` (the TPU side of each row is in ``test_api.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tops.gpu  # noqa: F401  (configures the Triton interpreter before the kernels load)
from tops import backends
from tops.cpu import sampling as ref
from tops.gpu.sampling import integer_weights, sample
from tops.spec.sampling import MAX_VOCAB

X_NUMPY = (np.random.default_rng(0).standard_normal((6, 300)) * 3).astype(np.float32)
X = torch.from_numpy(X_NUMPY).to(backends.torch_device())
# Every filter on, so that a parameter taken wrongly changes some array.
PARAMS = dict(temperature=0.8, seed=5, step=2, top_k=40, top_p=0.9, min_p=0.01)
WRONG_API = "must be a torch tensor for tops.gpu"
PATHS = pytest.mark.parametrize("max_k", [None, 64], ids=["gpu-full", "gpu-bounded"])


def _comparable(value) -> np.ndarray:
    """A tensor or array as NumPy that torch can produce: uint32 as int64, 16-bit floats
    as float32 (both exact)."""
    if isinstance(value, torch.Tensor):
        value = value.cpu()
        if value.dtype == torch.uint32:
            value = value.to(torch.int64)
        return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    value = np.asarray(value)
    if value.dtype == np.uint32:
        return value.astype(np.int64)
    return value.astype(np.float32) if value.dtype.itemsize == 2 else value


def _assert_same(got, expected):
    """Tokens, validity and every debug array: equal shapes and values."""
    got_leaves, expected_leaves = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(_comparable(g), _comparable(e))


def _expected(x=X_NUMPY, max_k=None, **params):
    return ref.sample(x, **(PARAMS | params), max_k=max_k, debug=True)


def _tensors(params: dict) -> dict:
    """NumPy parameter arrays as tensors on the device (uint32 travels as int64)."""
    return {
        name: torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value).to(
            X.device
        )
        for name, value in params.items()
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("logits", X_NUMPY.tolist()),
        ("logits", tuple(map(tuple, X_NUMPY))),
        ("temperature", [0.8] * 6),
        ("top_p", (0.9,) * 6),
        ("top_k", [40] * 6),
        ("seed", (5,) * 6),
    ],
    ids=[
        "gpu-logits-list",
        "gpu-logits-tuple",
        "gpu-temperature",
        "gpu-top_p",
        "gpu-top_k",
        "gpu-seed",
    ],
)
def test_gpu_lists_and_tuples(name, value):
    arguments = dict(PARAMS, logits=X) | {name: value}
    with pytest.raises(TypeError, match=f"{name} {WRONG_API}"):
        sample(**arguments)


@PATHS
def test_gpu_numpy_scalars(max_k):
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
    got = sample(X, **numpy_params, max_k=max_k and np.int64(max_k), debug=True)
    _assert_same(got, _expected(max_k=max_k))
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\]"):
        sample(X, **(numpy_params | dict(top_p=np.float32(-0.5))))


@PATHS
def test_gpu_zero_dim_arrays(max_k):
    """Parameters as ``[]`` tensors act as numbers."""
    dtypes = dict(
        temperature=np.float32,
        seed=np.uint32,
        step=np.int64,
        top_k=np.int32,
        top_p=np.float32,
        min_p=np.float32,
    )
    params = _tensors({name: np.array(PARAMS[name], dtypes[name]) for name in PARAMS})
    assert all(value.shape == () for value in params.values())
    _assert_same(sample(X, **params, max_k=max_k, debug=True), _expected(max_k=max_k))


def test_gpu_wrong_framework():
    with pytest.raises(TypeError, match=f"logits {WRONG_API}.*got jaxlib"):
        sample(jnp.asarray(X_NUMPY), **PARAMS)
    with pytest.raises(TypeError, match=f"logits {WRONG_API}.*got numpy.ndarray"):
        sample(X_NUMPY, **PARAMS)
    with pytest.raises(TypeError, match=f"temperature {WRONG_API}.*got numpy.ndarray"):
        sample(X, **(PARAMS | dict(temperature=np.ones(6, np.float32))))


def test_gpu_x64_mode():
    """``jax_enable_x64`` is a JAX flag: no effect on the torch API; float64 logits are
    refused with the same ValueError as on the TPU API."""
    jax.config.update("jax_enable_x64", True)
    try:
        _assert_same(sample(X, **PARAMS, debug=True), _expected())
    finally:
        jax.config.update("jax_enable_x64", False)
    with pytest.raises(ValueError, match="logits must have dtype"):
        sample(X.double(), **PARAMS)


@PATHS
def test_gpu_empty_batch(max_k):
    """``B = 0``: empty results of the documented dtypes and shapes, with numbers, ``[0]``
    and ``[]`` parameters."""
    empty = torch.zeros((0, 300), dtype=torch.bfloat16, device=X.device)
    empty_numpy = np.asarray(jnp.zeros((0, 300), jnp.bfloat16))
    tensors = _tensors(dict(temperature=np.zeros(0, np.float32), seed=np.array(1, np.int32)))
    for params, reference in ((PARAMS, PARAMS), (PARAMS | tensors, PARAMS | {"seed": 1})):
        tokens, valid, arrays = sample(empty, **params, max_k=max_k, debug=True)
        _assert_same((tokens, valid, arrays), _expected(empty_numpy, max_k, **reference))
        assert arrays["topk_logits_unsorted"].dtype == torch.bfloat16
    assert integer_weights(empty, 1.0).shape == (0, 300)


@pytest.mark.parametrize("max_k", [None, 1], ids=["gpu-full", "gpu-bounded"])
def test_gpu_one_column(max_k):
    """``V = 1``: the one token (valid rows) or ``greedy_sampled`` = 0 (invalid rows), as
    the reference; ``V = 0``: ValueError."""
    column = np.array([[0.5], [-np.inf], [np.nan], [np.inf]], np.float32)
    got = sample(torch.from_numpy(column).to(X.device), **PARAMS, max_k=max_k, debug=True)
    _assert_same(got, _expected(column, max_k))
    assert got[0].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=f"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB}"):
        sample(X[:, :0], **PARAMS)


def test_gpu_huge_vocab():
    """Past ``MAX_VOCAB`` columns: a ValueError naming the limit, before any allocation
    (a meta tensor has a shape and a dtype but no storage)."""
    too_wide = torch.empty((1, MAX_VOCAB + 1), dtype=torch.float32, device="meta")
    message = rf"logits must have 1 <= V <= MAX_VOCAB = {MAX_VOCAB} columns, got shape \(1, "
    for max_k in (None, 64):
        with pytest.raises(ValueError, match=message):
            sample(too_wide, **PARAMS, max_k=max_k)
    with pytest.raises(ValueError, match=message):
        integer_weights(too_wide, 1.0)


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
    (dict(top_p=torch.ones(5)), r"top_p must have shape \(\) or \(6,\), got \(5,\)"),
    (dict(top_k=torch.ones(6)), r"top_k must have dtype in"),
]


@pytest.mark.parametrize(("change", "message"), NUMBERS_OUT_OF_RANGE)
def test_gpu_numbers_out_of_range(change, message):
    arguments = PARAMS | change
    with pytest.raises(ValueError, match=message):
        sample(X, **arguments)


def test_gpu_bool_flags():
    """``debug`` takes Python and NumPy bools; anything else is a TypeError naming it."""
    _assert_same(sample(X, **PARAMS, debug=np.bool_(True)), _expected())
    _assert_same(sample(X, **PARAMS, debug=np.False_), _expected()[:2])
    with pytest.raises(TypeError, match="debug must be a bool, got str"):
        sample(X, **PARAMS, debug="yes")


@PATHS
def test_gpu_per_row_arrays_out_of_range(max_k):
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
    _assert_same(sample(X, **(PARAMS | _tensors(rows)), max_k=max_k, debug=True), expected)
