"""The Pallas kernels beyond the registered cases: the two-pass path across many
vocabulary blocks, jit with traced temperatures, and the at-the-floor claim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops import cpu, ops
from tops.backends import pallas_interpret
from tops.ops.softmax import kernel
from tops.precision import runner
from tops.precision.metrics import compare
from tops.precision.testing import case_params

inf, nan = np.inf, np.nan


def _two_pass(x, t, block_v=256):
    t_col = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))[:, None]
    out = kernel.two_pass(jnp.asarray(x), t_col, interpret=pallas_interpret(), block_v=block_v)
    return np.asarray(out)


def test_tpu_two_pass_across_blocks_matches_the_reference():
    """Rows whose maximum moves between 256-column blocks (rescaling the lane sums), with
    -inf blocks first, +inf and NaN late, and greedy ties across blocks."""
    rng = np.random.default_rng(5)
    v = 1000  # four blocks, the last one partial
    x = (rng.standard_normal((9, v)) * 3).astype(np.float32)
    x[0, :600] = -inf
    x[1, 900] = 40.0
    x[2, [100, 700]] = inf
    x[3, 999] = nan
    x[4, :] = np.linspace(-50, 50, v)
    x[5, [10, 300]] = 99.0  # greedy tie across blocks: index 10
    t = np.array([1.0, 0.5, 1.0, 1.0, 2.0, 0.0, 1e-3, 7.0, inf], np.float32)
    got = _two_pass(x, t)
    ref = cpu.temperature_softmax(x, t)
    c = compare(got, ref, "float32")
    assert (c.nonfinite, c.special) == (0, 0)
    assert c.rel_l2 <= c.floor * 1.01
    assert got[5, 10] == 1.0 and got[5].sum() == 1.0
    single = np.asarray(ops.temperature_softmax(jnp.asarray(x), jnp.asarray(t)))
    assert compare(single, ref, "float32").rel_l2 <= c.floor * 1.01


def test_tpu_under_jit_with_traced_temperature():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 200)), jnp.bfloat16)
    t = jnp.asarray([0.5, -1.0, 0.0], jnp.float32)
    p = np.asarray(jax.jit(ops.temperature_softmax)(x, t))
    assert np.isnan(p[1]).all()  # a negative temperature known only at run time
    assert p[2].sum() == 1.0 and p[2].max() == 1.0
    np.testing.assert_allclose(p[0], cpu.temperature_softmax(np.asarray(x), t)[0], rtol=1e-6)


@pytest.mark.parametrize("case", case_params("temperature_softmax"))
def test_tpu_sits_at_the_float32_floor(case):
    """The double-float kernel rounds once: ε_TPU is within 1% of the rounding floor
    (measured: equal to it to 4+ significant digits on every case)."""
    for m in runner.measure("temperature_softmax", case.name, "tpu"):
        assert m.eps <= m.comparison.floor * 1.01, m.worst()


def test_tpu_kernels_under_the_checked_interpreter(monkeypatch):
    """With race detection and NaN-filled uninitialised memory (in tpu-interpret mode),
    both paths still give the reference's probabilities: no scratch is read before it is
    written, and partial row and column blocks never leak into valid rows."""
    monkeypatch.setenv("TOPS_TPU_INTERPRET", "checked")
    x = np.random.default_rng(8).standard_normal((10, 1000)).astype(np.float32)
    ref = cpu.temperature_softmax(x, 0.7)
    floor = compare(ref.astype(np.float32), ref, "float32").rel_l2
    single = np.asarray(ops.temperature_softmax(jnp.asarray(x), 0.7))
    assert compare(single, ref, "float32").rel_l2 <= floor * 1.01
    assert compare(_two_pass(x, 0.7), ref, "float32").rel_l2 <= floor * 1.01
