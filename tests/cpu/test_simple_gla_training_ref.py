"""The training loops of ``tests/ops/simple_gla/test_training.py`` on the float64 reference:
``jax.grad`` of the step recurrence (``tops.cpu.simple_gla.recurrence_f64``) under a
scoped ``jax.enable_x64``, the same synthetic data (same seeds and builder), the same
steps and learning rates. The TPU loops must recover what the reference recovers; here
the recovered values (printed) are ``g_gamma = [-0.1, -0.49914]`` and ``w`` within 2e-6
of the truth, matching the TPU path to the printed digits. Tolerances as there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tops.cpu.simple_gla import chunk_simple_gla as reference_forward
from tops.cpu.simple_gla import recurrence_f64

STEPS = 300
TRUE_G_GAMMA = np.asarray([-0.1, -0.5], np.float32)
TRUE_W = np.asarray([[0.8, -0.5], [0.4, 1.0], [-0.6, 0.3]], np.float32)
SCALE = 16**-0.5


def _data(seed):
    """The builder of ``tests/ops/simple_gla/test_training.py`` (kept identical)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 64, 2, 16)).astype(np.float32)
    k = (rng.standard_normal((2, 64, 2, 16)) / 4).astype(np.float32)
    v = rng.standard_normal((2, 64, 2, 16)).astype(np.float32)
    x = rng.standard_normal((2, 64, 3)).astype(np.float32)
    return q, k, v, x


def _outputs(q, k, v, g_total):
    """o ``[B, T, H, V]`` of the recurrence per batch row, all float64."""
    h0 = jnp.zeros((q.shape[2], q.shape[3], v.shape[3]), jnp.float64)
    run = jax.vmap(lambda q, k, v, g: recurrence_f64(q, k, v, g, h0, SCALE)[0])
    return run(q, k, v, g_total)


def _descend(loss, start, learning_rate):
    @jax.jit
    def train(params):
        def step(_, params):
            return params - learning_rate * jax.grad(loss)(params)

        return jax.lax.fori_loop(0, STEPS, step, params)

    params = train(start)
    return np.asarray(params), float(loss(params))


def test_reference_training_recovers_g_gamma():
    q, k, v, _ = _data(0)
    target, _ = reference_forward(q, k, v, g_gamma=TRUE_G_GAMMA)
    with jax.enable_x64(True):
        q, k, v = (jnp.asarray(x, jnp.float64) for x in (q, k, v))
        target = jnp.asarray(target, jnp.float32).astype(jnp.float64)  # as the TPU loop
        norm = jnp.mean(target**2)

        def loss(g_gamma):
            g_total = jnp.broadcast_to(g_gamma, q.shape[:3])
            return jnp.mean((_outputs(q, k, v, g_total) - target) ** 2) / norm

        found, final_loss = _descend(loss, jnp.full((2,), -0.3, jnp.float64), 0.03)
    print("g_gamma", found, "true", TRUE_G_GAMMA, "loss", final_loss)
    assert np.all(np.abs(found - TRUE_G_GAMMA) <= 2e-3), found


def test_reference_training_recovers_a_gate_projection():
    q, k, v, x = _data(1)
    with jax.enable_x64(True):
        g_true = jax.nn.log_sigmoid(jnp.asarray(x) @ TRUE_W + 2.0)  # float32, as there
    target, _ = reference_forward(q, k, v, g=np.asarray(g_true))
    with jax.enable_x64(True):
        q, k, v, x = (jnp.asarray(a, jnp.float64) for a in (q, k, v, x))
        target = jnp.asarray(target, jnp.float32).astype(jnp.float64)
        norm = jnp.mean(target**2)

        def loss(w):
            g_total = jax.nn.log_sigmoid(x @ w + 2.0)
            return jnp.mean((_outputs(q, k, v, g_total) - target) ** 2) / norm

        found, final_loss = _descend(loss, jnp.zeros((3, 2), jnp.float64), 1.0)
    print("w error", np.abs(found - TRUE_W).max(), "loss", final_loss)
    assert np.all(np.abs(found - TRUE_W) <= 1e-4), found
