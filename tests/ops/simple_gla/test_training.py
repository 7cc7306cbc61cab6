"""Training through the Pallas simple GLA backward: plain gradient descent, jitted, recovers
known decays from synthetic data whose targets the float64 reference forward produced
with the true decays. The same loops on the float64 reference (``jax.grad`` of the step
recurrence) are in ``tests/cpu/test_simple_gla_training_ref.py``, on the same data.

* ``g_gamma``: per-head constant decays ``[-0.1, -0.5]`` from ``[-0.3, -0.3]``, 300 steps
  at learning rate 0.03 (0.1 diverges: the loss is steep in a weak decay).
* ``g = log_sigmoid(x @ w + 2)`` through a learned ``w [3, 2]`` from zeros, 300 steps at
  learning rate 1.

The loss is the mean squared error over the targets' mean square. Measured on the TPU
path (interpret mode): ``g_gamma`` within 1e-7 (head 0) and 9e-4 (head 1, still
converging) of the truth, final loss 2e-7; ``w`` within 2e-6 of the truth, final loss
2e-13; the reference loops agree to the printed digits. Tolerances: 2e-3 for
``g_gamma`` and 1e-4 for ``w`` (the iteration's own convergence, not float32 rounding,
limits both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tops.cpu.simple_gla import chunk_simple_gla as reference_forward
from tops.ops.simple_gla import chunk_simple_gla

STEPS = 300
TRUE_G_GAMMA = np.asarray([-0.1, -0.5], np.float32)
TRUE_W = np.asarray([[0.8, -0.5], [0.4, 1.0], [-0.6, 0.3]], np.float32)


def _data(seed):
    """q, k, v ``[2, 64, 2, 16]`` float32 (k scaled by 1/4) and features ``x [2, 64, 3]``."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 64, 2, 16)).astype(np.float32)
    k = (rng.standard_normal((2, 64, 2, 16)) / 4).astype(np.float32)
    v = rng.standard_normal((2, 64, 2, 16)).astype(np.float32)
    x = rng.standard_normal((2, 64, 3)).astype(np.float32)
    return q, k, v, x


def _gates(x, w):
    return jax.nn.log_sigmoid(x @ w + 2.0)


def _descend(loss, start, learning_rate):
    """``STEPS`` of plain gradient descent in one jitted loop."""

    @jax.jit
    def train(params):
        def step(_, params):
            return params - learning_rate * jax.grad(loss)(params)

        return jax.lax.fori_loop(0, STEPS, step, params)

    params = train(start)
    return np.asarray(params), float(loss(params))


def test_tpu_training_recovers_g_gamma():
    q, k, v, _ = _data(0)
    target, _ = reference_forward(q, k, v, g_gamma=TRUE_G_GAMMA)
    target = jnp.asarray(target, jnp.float32)
    norm = jnp.mean(target**2)

    def loss(g_gamma):
        o, _ = chunk_simple_gla(q, k, v, g_gamma=g_gamma)
        return jnp.mean((o - target) ** 2) / norm

    found, final_loss = _descend(loss, jnp.full((2,), -0.3, jnp.float32), 0.03)
    print("g_gamma", found, "true", TRUE_G_GAMMA, "loss", final_loss)
    assert np.all(np.abs(found - TRUE_G_GAMMA) <= 2e-3), found


def test_tpu_training_recovers_a_gate_projection():
    q, k, v, x = _data(1)
    target, _ = reference_forward(q, k, v, g=np.asarray(_gates(x, TRUE_W)))
    target = jnp.asarray(target, jnp.float32)
    norm = jnp.mean(target**2)

    def loss(w):
        o, _ = chunk_simple_gla(q, k, v, g=_gates(x, w))
        return jnp.mean((o - target) ** 2) / norm

    found, final_loss = _descend(loss, jnp.zeros((3, 2), jnp.float32), 1.0)
    print("w error", np.abs(found - TRUE_W).max(), "loss", final_loss)
    assert np.all(np.abs(found - TRUE_W) <= 1e-4), found
