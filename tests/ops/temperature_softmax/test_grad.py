"""The gradient's semantics on both kernels (``tops/spec/temperature_softmax.py``):
special rows exactly, ordinary rows against the float64 reference, the temperature's
(absent) gradient, dtypes and jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops import backends, cpu, ops
from tops.precision.convert import from_torch, to_torch

BACKENDS = ["tpu", "gpu"]
inf, nan = np.inf, np.nan


def _grad(backend, logits, temperature, cotangent):
    """``(probs, dlogits)`` as NumPy arrays through the backend's public API."""
    if backend == "tpu":
        t = jnp.asarray(temperature)
        probs, vjp = jax.vjp(lambda x: ops.temperature_softmax(x, t), jnp.asarray(logits))
        return np.asarray(probs), np.asarray(vjp(jnp.asarray(cotangent))[0])
    from tops import gpu

    device = backends.torch_device()
    x = to_torch(np.asarray(logits), device).requires_grad_()
    probs = gpu.temperature_softmax(x, to_torch(np.asarray(temperature), device))
    probs.backward(to_torch(np.asarray(cotangent), device))
    return from_torch(probs.detach()), from_torch(x.grad)


@pytest.mark.parametrize("vocab", [300, 40000])  # both kernel paths of each backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_special_rows_of_the_gradient(backend, vocab):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, vocab)).astype(np.float32)
    g = rng.standard_normal((10, vocab)).astype(np.float32)
    t = np.array([0.7, 0.0, inf, 2.0**64, 1.0, -1.0, 1.0, 1.0, 1.0, 1e-45], np.float32)
    x[4, 3] = nan  # NaN logit
    x[6] = -inf  # all -inf
    x[7, [2, 9]] = inf  # +inf logits
    x[8, ::3] = -inf  # masked entries
    g[2, 0] = inf  # a non-finite cotangent in a zero row does not matter
    _, dx = _grad(backend, x, t, g)
    for row in (1, 2, 3, 9):  # greedy and uniform temperatures
        np.testing.assert_array_equal(dx[row], 0.0)
    assert np.isnan(dx[[4, 5]]).all()  # NaN logit, negative temperature
    np.testing.assert_array_equal(dx[6], 0.0)
    np.testing.assert_array_equal(dx[8, ::3], 0.0)
    inf_row = np.zeros(vocab)  # the limit of two equal large logits: p = 1/2 each
    inf_row[[2, 9]] = 0.5 * (g[7, [2, 9]] - 0.5 * g[7, [2, 9]].astype(np.float64).sum())
    np.testing.assert_allclose(dx[7], inf_row, rtol=1e-6, atol=0)
    ref = cpu.temperature_softmax_vjp(x, t, g)
    np.testing.assert_allclose(dx[[0, 8]], ref[[0, 8]], rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_cotangent_makes_its_row_nan(backend):
    x = np.random.default_rng(6).standard_normal((3, 50)).astype(np.float32)
    g = np.ones((3, 50), np.float32)
    g[0, 7], g[1, 0] = inf, nan
    _, dx = _grad(backend, x, np.float32(1.0), g)
    assert np.isnan(dx[:2]).all()
    np.testing.assert_allclose(dx[2], 0.0, atol=1e-7)  # constant cotangent: zero gradient


def test_tpu_temperature_gets_a_zero_cotangent_and_the_gradient_jits():
    x = jnp.asarray(np.random.default_rng(7).standard_normal((4, 33)), jnp.bfloat16)
    w = jnp.asarray(np.random.default_rng(8).standard_normal((4, 33)), jnp.float32)

    def loss(x, t):
        return jnp.sum(ops.temperature_softmax(x, t) * w)

    dx, dt = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, jnp.float32(0.8))
    assert dx.dtype == jnp.bfloat16 and dt.dtype == jnp.float32 and float(dt) == 0.0
    dt_rows = jax.grad(loss, argnums=1)(x, jnp.full(4, 0.8, jnp.float32))
    np.testing.assert_array_equal(dt_rows, 0.0)
    assert float(jax.grad(lambda t: loss(x, t))(0.8)) == 0.0  # a traced Python number
    ref = cpu.temperature_softmax_vjp(np.asarray(x), np.float32(0.8), np.asarray(w))
    np.testing.assert_allclose(np.asarray(dx, np.float64), ref, rtol=2**-8, atol=1e-30)


def test_gpu_temperature_gets_no_gradient_and_dtypes_are_kept():
    import torch

    from tops import gpu

    device = backends.torch_device()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = torch.randn(4, 33, dtype=dtype, device=device, requires_grad=True)
        t = torch.full((4,), 0.8, device=device, requires_grad=True)
        gpu.temperature_softmax(x, t)[:, 0].sum().backward()
        assert x.grad.dtype == dtype and t.grad is None
