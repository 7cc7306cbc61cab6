"""The public wrappers' argument handling, the same on both kernels: each row of the
"Bad input" table of ``tops/spec/temperature_softmax.py`` (the GPU-only variants are in
test_gpu_api.py). GPU tests import torch inside the test function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops import backends, ops
from tops.precision.convert import to_torch
from tops.spec.temperature_softmax import MAX_VOCAB

BACKENDS = ["tpu", "gpu"]
BAD_ARGUMENTS = [
    ((5,), "float32", 1.0, "logits must have rank 2"),
    ((2, 5), "int32", 1.0, "logits must have dtype"),
    ((2, 5), "float64", 1.0, "logits must have dtype"),
    ((2, 0), "float32", 1.0, "logits must have V >= 1"),
    ((2, 5), "float32", np.ones(3, np.float32), "temperature must be a scalar"),
    ((2, 5), "float32", -0.5, "temperature must be >= 0"),
    ((2, 5), "float32", float("nan"), "temperature must be >= 0"),
    ((2, 5), "float32", np.float32(-0.5), "temperature must be >= 0"),
    ((2, 5), "float32", np.float64("nan"), "temperature must be >= 0"),
]


def _native(backend, array):
    """``array`` as the API's own array type (JAX, or torch on the backend's device)."""
    if backend == "tpu":
        return jnp.asarray(array)
    return to_torch(np.asarray(array), backends.torch_device())


def _softmax(backend, logits, temperature):
    if backend == "tpu":
        return ops.temperature_softmax(logits, temperature)
    from tops import gpu

    return gpu.temperature_softmax(logits, temperature)


def _numpy(array) -> np.ndarray:
    return np.asarray(array.cpu() if hasattr(array, "cpu") else array)


@pytest.mark.parametrize(("shape", "dtype", "temperature", "message"), BAD_ARGUMENTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_value_errors_naming_them(backend, shape, dtype, temperature, message):
    if backend == "tpu":
        logits = np.zeros(shape, dtype)  # NumPy keeps float64
    else:
        import torch

        logits = torch.zeros(shape, dtype=getattr(torch, dtype)).to(backends.torch_device())
    if isinstance(temperature, np.ndarray):
        temperature = _native(backend, temperature)
    with pytest.raises(ValueError, match=message):
        _softmax(backend, logits, temperature)


@pytest.mark.parametrize("kind", [list, tuple])
@pytest.mark.parametrize("argument", ["logits", "temperature"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_and_tuples_raise_type_errors(backend, argument, kind):
    logits = [[0.0, 1.0], [2.0, 3.0]]
    if argument == "logits":
        args = (kind(kind(row) for row in logits), 1.0)
    else:
        args = (_native(backend, np.array(logits, np.float32)), kind([1.0, 0.5]))
    with pytest.raises(TypeError, match=f"{argument} must be a"):
        _softmax(backend, *args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_temperatures_number_numpy_scalar_and_arrays_agree(backend):
    logits = _native(backend, np.random.default_rng(0).standard_normal((3, 50), np.float32))
    expected = _numpy(_softmax(backend, logits, 0.75))
    for temperature in (
        np.float32(0.75),
        np.float64(0.75),
        _native(backend, np.float32(0.75)),  # 0-d
        _native(backend, np.full(3, 0.75, np.float32)),
    ):
        np.testing.assert_array_equal(_numpy(_softmax(backend, logits, temperature)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_framework_arrays_raise_type_errors(backend):
    x = np.random.default_rng(1).standard_normal((2, 9)).astype(np.float32)
    if backend == "tpu":
        import torch

        # NumPy is tops.ops' own: accepted, same result as JAX.
        np.testing.assert_array_equal(
            _numpy(ops.temperature_softmax(x, np.float32(0.5))),
            _numpy(ops.temperature_softmax(jnp.asarray(x), 0.5)),
        )
        wrong = [(torch.from_numpy(x), 1.0), (jnp.asarray(x), torch.ones(2))]
        api = "tops.ops"
    else:
        logits = _native("gpu", x)
        wrong = [
            (x, 1.0),
            (jnp.asarray(x), 1.0),
            (logits, np.ones(2, np.float32)),
            (logits, np.asarray(1.0, np.float32)),
            (logits, jnp.asarray(1.0)),
        ]
        api = "tops.gpu"
    for logits, temperature in wrong:
        with pytest.raises(TypeError, match=f"for {api}"):
            _softmax(backend, logits, temperature)


@pytest.fixture
def x64_mode():
    """Restores ``jax_enable_x64`` after a test that turns it on."""
    previous = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_tpu_x64_mode_gives_identical_results_and_rejects_float64(x64_mode, dtype):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((3, 40)), dtype)
    cotangent = jnp.asarray(rng.standard_normal((3, 40)), jnp.float32)
    temperatures = (0.6, np.float64(0.6), np.full(3, 0.6))

    def run():
        results = []
        for t in temperatures:
            probs, vjp = jax.vjp(lambda x, t=t: ops.temperature_softmax(x, t), logits)
            results.append((np.asarray(probs), np.asarray(vjp(cotangent)[0])))
        return results

    expected = run()
    jax.config.update("jax_enable_x64", True)
    for (probs, grad), (want_probs, want_grad) in zip(run(), expected, strict=True):
        assert probs.dtype == np.float32 and grad.dtype == logits.dtype
        np.testing.assert_array_equal(probs, want_probs)
        np.testing.assert_array_equal(grad, want_grad)
    with pytest.raises(ValueError, match="logits must have dtype"):
        ops.temperature_softmax(jnp.zeros((2, 5), jnp.float64), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_forward_and_gradient(backend):
    if backend == "tpu":
        logits = jnp.zeros((0, 7), jnp.bfloat16)
        probs, vjp = jax.vjp(lambda x: ops.temperature_softmax(x, 0.5), logits)
        (grad,) = vjp(jnp.zeros((0, 7), jnp.float32))
    else:
        import torch

        from tops import gpu

        logits = torch.zeros((0, 7), dtype=torch.bfloat16, device=backends.torch_device())
        logits.requires_grad_()
        probs = gpu.temperature_softmax(logits, 0.5)
        probs.sum().backward()
        grad = logits.grad
    assert tuple(probs.shape) == (0, 7) and str(probs.dtype).endswith("float32")
    assert tuple(grad.shape) == (0, 7) and str(grad.dtype).endswith("bfloat16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_vocabulary_is_rejected(backend):
    shape = (1, MAX_VOCAB + 1)
    with pytest.raises(ValueError, match="at most"):
        if backend == "tpu":  # traced shapes only: nothing is allocated
            jax.eval_shape(
                lambda x: ops.temperature_softmax(x, 1.0),
                jax.ShapeDtypeStruct(shape, jnp.bfloat16),
            )
        else:
            import torch

            from tops import gpu

            gpu.temperature_softmax(torch.empty(shape, dtype=torch.bfloat16, device="meta"), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_array_temperatures_out_of_range_give_nan_rows(backend):
    logits = np.random.default_rng(3).standard_normal((3, 20)).astype(np.float32)
    temperature = np.array([-1.0, np.nan, 0.5], np.float32)
    probs = _numpy(_softmax(backend, _native(backend, logits), _native(backend, temperature)))
    assert np.isnan(probs[:2]).all() and np.isfinite(probs[2]).all()
