"""``jax.grad`` through the Pallas simple GLA (``tops/ops/simple_gla/backward.py``) against
the float64 reference gradients (``tops.cpu.simple_gla.chunk_simple_gla_grad``, ``jax.vjp``
of the step recurrence): every gate combination, initial and final states on and off,
tail chunks, decoding, K/V that need padding and several value tiles, varlen with empty
sequences, both chunk sizes and both dtypes; composition with ``jit``/``value_and_grad``,
gradient dtypes, the empty batch and overflow-prone ALiBi decays.

Tolerance (relative L2 per gradient). The kernels compute every gradient in float32 from
inputs that are exact in float32 (bf16 upcasts exactly): HIGHEST matmuls, double-float
gate sums (so each ``exp`` is good to a few ulps) and a float32 state. A gradient entry is
a sum of ``n <= C + max(Kp, BV) + ceil(T / C)`` rounded products and partial sums
(the intra-chunk terms over ``C``, the state terms over ``K`` or ``V``, the state
gradient carried over the chunks), so its rounding error is a random walk of about
``sqrt(n) 2**-24`` relative to the terms; with ``n <= 400`` here that is ``1.2e-6`` and
measured values are ``1e-7 .. 4e-7``: ``F32_EPS = 1e-6``. Gradients returned in bf16
(``dq, dk, dv`` for bf16 inputs) are those float32 values rounded once, so by the
triangle inequality ``ε <= ||round(x) - x|| + ||x - ref|| ≈ floor + F32_EPS`` (the bf16
floor is about 1.6e-3; the bound allows 2% for the rounding of ``x`` rather than
``ref``). ``dh0`` is float32 for either input dtype: ``F32_EPS``.

The decay gradients are float32 for either dtype but less well conditioned: ``da_t =
exp(a_t) <dh_t, h_{t-1}>`` is an inner product of two ``K x V`` float32 matrices (the
state and its gradient, each carrying its own relative error of ~1e-7), and with weak
decays both are large and nearly orthogonal (measured ``sum |dh * h| / |da|`` up to 27),
so a small relative error of the factors shows up a few times larger: ``DG_EPS = 2e-6``
for ``dg`` (measured at most 7.4e-7). ``d g_gamma[h] = sum_t da_t`` sums tokens of mixed
signs whose errors are correlated within a chunk (the ``<dS, S>`` term is shared), so its
error scales with ``kappa = ||sum_t |da_t| ||_2 / ||sum_t da_t||_2`` over the heads
(computed from the reference's per-token gradient): bound ``DG_EPS * kappa``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops.cpu import simple_gla as reference
from tops.ops.simple_gla import chunk_simple_gla, make_alibi_g_gamma
from tops.ops.simple_gla.alibi import FLOAT32_EXP_LIMIT, max_discarded_exponent
from tops.precision.cases.simple_gla import random_arrays
from tops.precision.cases.simple_gla_grad import GRADIENTS
from tops.precision.metrics import compare

F32_EPS = 1e-6
DG_EPS = 2e-6
INPUTS = ("q", "k", "v", "g", "g_gamma", "initial_state")


def _problem(seed, *, batch, seq_len, heads, key_dim, value_dim, dtype, gate, h0, ht, cu):
    """Inputs (NumPy, named like the arguments) and the cotangents ``do`` (the dtype of
    ``o``) and ``dht`` (float32, or None without a final state)."""
    rng = np.random.default_rng(seed)
    num_states = batch if cu is None else len(cu) - 1
    arrays = random_arrays(
        rng, batch=batch, seq_len=seq_len, heads=heads, key_dim=key_dim,
        value_dim=value_dim, dtype=dtype, gate=gate, num_states=num_states if h0 else 0,
    )  # fmt: skip
    do = rng.standard_normal((batch, seq_len, heads, value_dim)).astype(arrays["v"].dtype)
    dht = None
    if ht:
        dht = rng.standard_normal((num_states, heads, key_dim, value_dim)).astype(np.float32)
    return arrays, do, dht


def _tpu_grads(arrays, do, dht, *, chunk, cu=None, scale=None):
    """``jax.grad`` of ``sum(o do) + sum(final_state dht)`` w.r.t. every given input."""
    names = [n for n in INPUTS if n in arrays]
    cu_seqlens = None if cu is None else jnp.asarray(cu, jnp.int32)

    def loss(*values):
        o, final = chunk_simple_gla(
            **dict(zip(names, values, strict=True)), scale=scale, cu_seqlens=cu_seqlens,
            output_final_state=dht is not None, chunk_size=chunk,
        )  # fmt: skip
        total = jnp.sum(o.astype(jnp.float32) * jnp.asarray(do, jnp.float32))
        return total if dht is None else total + jnp.sum(final * dht)

    values = [jnp.asarray(arrays[name]) for name in names]
    grads = jax.grad(loss, argnums=tuple(range(len(names))))(*values)
    return dict(zip(names, grads, strict=True))


def _reference_grads(arrays, do, dht, *, chunk, cu=None, scale=None):
    """The reference's gradients, plus ``"da"``: the per-token gradient of the total log
    decay (with ``g_gamma``; a zero ``g`` is passed to obtain it when there is none)."""
    cu_seqlens = None if cu is None else np.asarray(cu, np.int32)
    args = dict(arrays)
    if "g_gamma" in arrays and "g" not in arrays:
        args["g"] = np.zeros(arrays["q"].shape[:3], np.float32)
    ref = reference.chunk_simple_gla_grad(
        **args, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk, do=do, dht=dht
    )
    if "g_gamma" in arrays:
        ref["da"] = ref["dg"] if "g" in arrays else ref.pop("dg")
    return ref


def _check(grads, ref, arrays, *, eps=F32_EPS, dg_eps=DG_EPS):
    """Every gradient: the input's dtype and shape, finite, within the tolerance."""
    measured = {}
    for name, grad in grads.items():
        expected = ref[GRADIENTS[name]]
        assert grad.dtype == arrays[name].dtype and grad.shape == expected.shape, name
        dtype = str(grad.dtype)
        c = compare(np.asarray(grad), expected, dtype)
        if name == "g_gamma":
            da = ref["da"]
            kappa = np.linalg.norm(np.abs(da).sum(axis=(0, 1))) / np.linalg.norm(expected)
            bound = dg_eps * kappa
        elif name == "g":
            bound = dg_eps
        else:
            bound = 1.02 * c.floor + eps if dtype == "bfloat16" else eps
        assert c.nonfinite == 0, (name, c.nonfinite)
        assert c.rel_l2 <= bound, (name, c.rel_l2, bound, c.worst_index)
        measured[name] = c.rel_l2
    print({name: f"{e:.2e}" for name, e in measured.items()})
    return measured


# (batch, seq_len, heads, K, V, chunk, dtype, gate, initial state, final state, cu_seqlens)
CASES = [
    (2, 1, 2, 64, 128, 64, "float32", "g", True, True, None),  # decoding from a state
    (1, 63, 2, 100, 64, 64, "bfloat16", "both", True, True, None),
    (1, 64, 2, 128, 100, 128, "float32", "g_gamma", False, True, None),
    (2, 100, 2, 64, 64, 128, "float32", "none", True, False, None),
    (1, 100, 2, 48, 80, 64, "bfloat16", "g", False, False, None),
    (1, 200, 2, 100, 64, 128, "bfloat16", "g_gamma", True, True, None),
    (1, 200, 2, 32, 32, 128, "float32", "g", False, True, None),  # dht only
    # empty sequences, boundaries on chunk edges, a sequence filling a whole chunk
    (1, 300, 2, 64, 64, 64, "float32", "both", True, True, (0, 0, 64, 64, 200, 300, 300)),
    (1, 200, 2, 100, 40, 128, "bfloat16", "g", True, False, (0, 1, 100, 200)),
    # several value tiles: V = 300 pads to 384, three tiles of 128 lanes (partial dq, dk)
    (1, 70, 2, 64, 300, 64, "float32", "both", True, True, (0, 30, 70)),
]


def _case_id(case):
    batch, seq_len, _, key_dim, value_dim, chunk, dtype, gate, h0, ht, cu = case
    name = f"tpu_{dtype}_B{batch}_T{seq_len}_K{key_dim}_V{value_dim}_C{chunk}_{gate}"
    name += "_h0" if h0 else ""
    name += "_dht" if ht else ""
    return name + ("" if cu is None else "_cu" + "-".join(map(str, cu)))


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in CASES])
def test_tpu_grad_matches_the_reference(case):
    batch, seq_len, heads, key_dim, value_dim, chunk, dtype, gate, h0, ht, cu = case
    arrays, do, dht = _problem(
        100 + CASES.index(case), batch=batch, seq_len=seq_len, heads=heads, key_dim=key_dim,
        value_dim=value_dim, dtype=dtype, gate=gate, h0=h0, ht=ht, cu=cu,
    )  # fmt: skip
    grads = _tpu_grads(arrays, do, dht, chunk=chunk, cu=cu)
    assert set(grads) == {n for n in INPUTS if n in arrays}
    _check(grads, _reference_grads(arrays, do, dht, chunk=chunk, cu=cu), arrays)


def test_tpu_grad_composes_with_jit_and_value_and_grad():
    """``jax.jit(jax.value_and_grad(...))`` with a traced ``cu_seqlens`` and a custom
    scale: the value is the forward's loss, the gradients the reference's, and one
    compilation serves two sequence layouts."""
    arrays, do, dht = _problem(
        7, batch=1, seq_len=100, heads=2, key_dim=32, value_dim=32, dtype="float32",
        gate="both", h0=True, ht=True, cu=(0, 70, 100),
    )  # fmt: skip

    traces = 0  # the body runs once per trace: new offsets must not retrace

    @jax.jit
    def step(params, cu_seqlens):
        nonlocal traces
        traces += 1

        def loss(params):
            o, final = chunk_simple_gla(
                **params, scale=0.3, cu_seqlens=cu_seqlens, output_final_state=True
            )
            return jnp.sum(o * do) + jnp.sum(final * dht)

        return jax.value_and_grad(loss)(params)

    params = {name: jnp.asarray(x) for name, x in arrays.items()}
    for cu in ((0, 70, 100), (0, 5, 100)):
        value, grads = step(params, jnp.asarray(cu, jnp.int32))
        o, final = reference.chunk_simple_gla(
            **arrays, scale=0.3, cu_seqlens=np.asarray(cu, np.int32), output_final_state=True
        )
        expected = np.sum(o * do) + np.sum(final * dht)
        assert abs(float(value) - expected) <= 1e-5 * np.sum(np.abs(o * do))
        _check(grads, _reference_grads(arrays, do, dht, chunk=64, cu=cu, scale=0.3), arrays)
    assert traces == 1


def test_tpu_grad_dtypes():
    """q, k, v gradients in bf16 (f32 is checked by every reference case); g, g_gamma,
    initial_state in float32; a
    cotangent of only the final state reaches q through nothing (dq = 0) but k and v."""
    arrays, _, dht = _problem(
        8, batch=1, seq_len=20, heads=2, key_dim=16, value_dim=8, dtype="bfloat16",
        gate="both", h0=True, ht=True, cu=None,
    )  # fmt: skip
    params = {name: jnp.asarray(x) for name, x in arrays.items()}

    def loss(params):
        return jnp.sum(chunk_simple_gla(**params, output_final_state=True)[1] * dht)

    grads = jax.grad(loss)(params)
    for name, grad in grads.items():
        assert grad.dtype == params[name].dtype and grad.shape == params[name].shape
    assert not np.any(np.asarray(grads["q"]))
    assert np.all(np.isfinite(np.asarray(grads["k"], np.float32)))


def test_tpu_grad_empty_batch():
    q = jnp.zeros((0, 10, 2, 64), jnp.bfloat16)
    v = jnp.zeros((0, 10, 2, 32), jnp.bfloat16)
    g = jnp.zeros((0, 10, 2), jnp.float32)
    g_gamma = jnp.full((2,), -0.1, jnp.float32)

    def loss(q, k, v, g, g_gamma):
        o, final = chunk_simple_gla(q, k, v, g=g, g_gamma=g_gamma, output_final_state=True)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, q, v, g, g_gamma)
    for grad, x in zip(grads, (q, q, v, g, g_gamma), strict=True):
        assert grad.shape == x.shape and grad.dtype == x.dtype
    assert not np.any(np.asarray(grads[4]))


def test_tpu_grad_alibi_chunk128_is_stable():
    """The masked-exp rule in the backward: ALiBi decays of layer 0 of 20 with H = 16 at
    chunk 128 plus per-token gates (mean -3.2 per token) put the exponents a causal mask
    discards past float32's exp range (88.7); every gradient is finite and within the
    tolerance. The decay gradient comes from four cancellation-free terms, so strong
    decays cost it no precision (the usual ``sum (q . dq - k . dk)`` form subtracts
    near-equal sums here)."""
    heads, chunk = 16, 128
    arrays, do, dht = _problem(
        9, batch=1, seq_len=256, heads=heads, key_dim=32, value_dim=32, dtype="float32",
        gate="g", h0=True, ht=True, cu=None,
    )  # fmt: skip
    g_gamma = np.asarray(make_alibi_g_gamma(heads, 20, 0))
    assert max_discarded_exponent(g_gamma, chunk) > FLOAT32_EXP_LIMIT
    arrays["g"] = arrays["g"] * 4.0
    arrays["g_gamma"] = g_gamma
    grads = _tpu_grads(arrays, do, dht, chunk=chunk)
    _check(grads, _reference_grads(arrays, do, dht, chunk=chunk), arrays)
