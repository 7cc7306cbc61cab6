"""The float64 simple-GLA gradient reference (``chunk_simple_gla_grad``, ``jax.vjp`` of the
step recurrence) against central finite differences of an independent NumPy loop, against
the chunked formulation's ``jax.vjp``, against closed forms; its keys, shapes and errors."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

from tops.cpu.simple_gla import (
    chunk_simple_gla,
    chunk_simple_gla_chunked_grad,
    chunk_simple_gla_grad,
)
from tops.precision.cases.simple_gla_grad import GRADIENTS

INPUTS = ("q", "k", "v", "g", "g_gamma", "initial_state")


def _inputs(rng, B, T, H=2, K=3, V=2, *, gate="both", initial_state=True, final_state=True, N=None):
    """float32 arguments (``g`` a log-sigmoid decay, ``g_gamma`` negative per head) and
    float64 cotangents ``do`` and ``dht`` (None unless ``final_state``)."""
    N = B if N is None else N
    arrays = {
        "q": rng.standard_normal((B, T, H, K)).astype(np.float32),
        "k": rng.standard_normal((B, T, H, K)).astype(np.float32),
        "v": rng.standard_normal((B, T, H, V)).astype(np.float32),
    }
    if gate in ("g", "both"):
        arrays["g"] = -np.logaddexp(0.0, -rng.standard_normal((B, T, H)) - 1.0).astype(np.float32)
    if gate in ("g_gamma", "both"):
        arrays["g_gamma"] = -np.linspace(0.1, 0.6, H).astype(np.float32)
    if initial_state:
        arrays["initial_state"] = rng.standard_normal((N, H, K, V)).astype(np.float32)
    do = rng.standard_normal((B, T, H, V))
    dht = rng.standard_normal((N, H, K, V)) if final_state else None
    return arrays, do, dht


def _loss(arrays, *, do, dht, scale, cu_seqlens=None) -> float:
    """``sum(o * do) + sum(final_state * dht)`` by a plain NumPy loop over tokens (float64)."""
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    B, T, H, K = q.shape
    V = v.shape[-1]
    g_total = np.zeros((B, T, H))
    if "g" in arrays:
        g_total = g_total + arrays["g"]
    if "g_gamma" in arrays:
        g_total = g_total + arrays["g_gamma"]
    if cu_seqlens is None:
        sequences = [(b, 0, T) for b in range(B)]
    else:
        sequences = [(0, a, e) for a, e in itertools.pairwise(cu_seqlens)]
    total = 0.0
    for n, (b, start, end) in enumerate(sequences):
        h = arrays["initial_state"][n] if "initial_state" in arrays else np.zeros((H, K, V))
        for t in range(start, end):
            h = np.exp(g_total[b, t])[:, None, None] * h + k[b, t, :, :, None] * v[b, t, :, None]
            o = scale * np.einsum("hk,hkv->hv", q[b, t], h)
            total += float(np.sum(o * do[b, t]))
        if dht is not None:
            total += float(np.sum(h * dht[n]))
    return total


def _finite_differences(arrays, step=1e-5, **loss_args) -> dict[str, np.ndarray]:
    """Central differences of :func:`_loss` w.r.t. every element of every array."""
    point = {name: np.asarray(a, np.float64) for name, a in arrays.items()}
    grads = {}
    for name, array in point.items():
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + step
            up = _loss(point, **loss_args)
            array[index] = original - step
            down = _loss(point, **loss_args)
            array[index] = original
            grad[index] = (up - down) / (2 * step)
        grads[GRADIENTS[name]] = grad
    return grads


def _assert_close(actual, expected, rel):
    """Relative L2 error <= rel, and every element within rel * max|expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    scale = np.abs(expected).max(initial=0.0)
    assert np.linalg.norm(actual - expected) <= rel * np.linalg.norm(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


def _assert_grads_close(actual: dict, expected: dict, rel: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        _assert_close(actual[name], expected[name], rel)


def _arguments(arrays):
    return {name: arrays[name] for name in INPUTS[3:] if name in arrays}


# --- against finite differences -------------------------------------------------------------


@pytest.mark.parametrize("gate", ["none", "g", "g_gamma", "both"])
@pytest.mark.parametrize("T", [1, 3, 7])
def test_gradient_matches_finite_differences(T, gate):
    with_state = (T + len(gate)) % 2 == 1  # half of the grid starts from a state
    with_final = T != 3 or gate == "none"  # some cases have no cotangent for final_state
    rng = np.random.default_rng(100 * T + len(gate))
    arrays, do, dht = _inputs(
        rng, 2, T, gate=gate, initial_state=with_state, final_state=with_final
    )
    grads = chunk_simple_gla_grad(
        arrays["q"], arrays["k"], arrays["v"], **_arguments(arrays), scale=0.7, do=do, dht=dht
    )
    expected = _finite_differences(arrays, do=do, dht=dht, scale=0.7)
    _assert_grads_close(grads, expected, rel=1e-8)


@pytest.mark.parametrize(
    "cu_seqlens",
    [(0, 2, 5), (0, 2, 2, 5), (0, 0, 5), (0, 5, 5)],
    ids=lambda c: "-".join(map(str, c)),
)
def test_varlen_gradient_matches_finite_differences(cu_seqlens):
    rng = np.random.default_rng(sum(cu_seqlens) + len(cu_seqlens))
    N = len(cu_seqlens) - 1
    arrays, do, dht = _inputs(rng, 1, 5, gate="both", N=N)
    cu = np.asarray(cu_seqlens, np.int32)
    grads = chunk_simple_gla_grad(
        arrays["q"], arrays["k"], arrays["v"], **_arguments(arrays), cu_seqlens=cu, do=do, dht=dht
    )
    loss_args = dict(do=do, dht=dht, scale=3**-0.5, cu_seqlens=cu_seqlens)
    _assert_grads_close(grads, _finite_differences(arrays, **loss_args), rel=1e-8)


# --- against the chunked formulation -------------------------------------------------------


@pytest.mark.parametrize(
    ("T", "chunk_size", "cu_seqlens", "gate"),
    [
        (130, 64, None, "both"),
        (129, 128, None, "g_gamma"),
        (150, 64, (0, 1, 65, 65, 150), "g"),
        (140, 128, (0, 130, 140), "none"),
    ],
)
def test_step_and_chunked_gradients_agree(T, chunk_size, cu_seqlens, gate):
    rng = np.random.default_rng(T + chunk_size)
    N = None if cu_seqlens is None else len(cu_seqlens) - 1
    arrays, do, dht = _inputs(rng, 1, T, H=2, K=5, V=3, gate=gate, N=N)
    kwargs = dict(_arguments(arrays), chunk_size=chunk_size, do=do, dht=dht)
    if cu_seqlens is not None:
        kwargs["cu_seqlens"] = np.asarray(cu_seqlens, np.int32)
    step = chunk_simple_gla_grad(arrays["q"], arrays["k"], arrays["v"], **kwargs)
    chunked = chunk_simple_gla_chunked_grad(arrays["q"], arrays["k"], arrays["v"], **kwargs)
    _assert_grads_close(chunked, step, rel=1e-11)


# --- closed forms ----------------------------------------------------------------------------


def test_single_token_closed_form():
    """T = 1: ``h = e h0 + k^T v`` (``e = exp(g + gamma)``), ``o = s q h``, so ``dq = s do
    h^T``, ``dk = s (q . do) v``-shaped terms, and ``dg_total = <s q^T do + dht, e h0>``."""
    rng = np.random.default_rng(1)
    arrays, do, dht = _inputs(rng, 1, 1, H=2, K=3, V=2)
    q, k, v = (arrays[n][0, 0].astype(np.float64) for n in "qkv")  # [H, K], [H, K], [H, V]
    h0 = arrays["initial_state"][0].astype(np.float64)
    decay = np.exp(arrays["g"][0, 0].astype(np.float64) + arrays["g_gamma"])  # [H]
    s = 0.5
    h = decay[:, None, None] * h0 + k[:, :, None] * v[:, None, :]
    adjoint = s * q[:, :, None] * do[0, 0][:, None, :] + dht[0]  # dL/dh [H, K, V]
    dg_total = np.einsum("hkv,hkv->h", adjoint, decay[:, None, None] * h0)
    expected = {
        "dq": (s * np.einsum("hv,hkv->hk", do[0, 0], h))[None, None],
        "dk": np.einsum("hkv,hv->hk", adjoint, v)[None, None],
        "dv": np.einsum("hkv,hk->hv", adjoint, k)[None, None],
        "dg": dg_total[None, None],
        "dg_gamma": dg_total,
        "dh0": (decay[:, None, None] * adjoint)[None],
    }
    grads = chunk_simple_gla_grad(
        arrays["q"], arrays["k"], arrays["v"], **_arguments(arrays), scale=s, do=do, dht=dht
    )
    _assert_grads_close(grads, expected, rel=1e-13)


def test_empty_sequence_passes_the_final_state_cotangent_to_its_initial_state():
    rng = np.random.default_rng(2)
    arrays, do, dht = _inputs(rng, 1, 4, N=3)
    cu = np.asarray([0, 4, 4, 4], np.int32)
    grads = chunk_simple_gla_grad(
        arrays["q"], arrays["k"], arrays["v"], **_arguments(arrays), cu_seqlens=cu, do=do, dht=dht
    )
    np.testing.assert_array_equal(grads["dh0"][1:], dht[1:])


# --- keys, shapes, None handling, validation ----------------------------------------------------


@pytest.mark.parametrize("gate", ["none", "g", "g_gamma", "both"])
@pytest.mark.parametrize("initial_state", [False, True])
def test_keys_shapes_and_dtypes(gate, initial_state):
    rng = np.random.default_rng(3)
    arrays, do, _ = _inputs(rng, 2, 5, H=3, K=4, V=2, gate=gate, initial_state=initial_state)
    grads = chunk_simple_gla_grad(
        arrays["q"], arrays["k"], arrays["v"], **_arguments(arrays), do=do.astype(np.float32)
    )
    assert set(grads) == {GRADIENTS[name] for name in arrays}
    for name, array in arrays.items():
        grad = grads[GRADIENTS[name]]
        assert isinstance(grad, np.ndarray)
        assert grad.dtype == np.float64 and grad.shape == array.shape


def test_absent_dht_equals_zero_dht_and_bf16_cotangents_are_accepted():
    rng = np.random.default_rng(4)
    arrays, do, dht = _inputs(rng, 2, 6)
    do_bf16 = do.astype(ml_dtypes.bfloat16)
    args = (arrays["q"].astype(ml_dtypes.bfloat16), arrays["k"], arrays["v"])
    args = tuple(a.astype(ml_dtypes.bfloat16) for a in args)
    without = chunk_simple_gla_grad(*args, **_arguments(arrays), do=do_bf16)
    zero = chunk_simple_gla_grad(
        *args, **_arguments(arrays), do=do_bf16, dht=np.zeros_like(dht, np.float32)
    )
    _assert_grads_close(without, zero, rel=0.0)
    # dht only adds its own (linear) contribution
    with_dht = chunk_simple_gla_grad(*args, **_arguments(arrays), do=do_bf16, dht=dht)
    only_dht = chunk_simple_gla_grad(
        *args, **_arguments(arrays), do=np.zeros(do.shape, np.float32), dht=dht
    )
    for name in with_dht:
        _assert_close(with_dht[name], without[name] + only_dht[name], rel=1e-13)


def test_gradient_of_the_forward_reference_loss():
    """``dv`` is linear in the cotangents: the directional derivative along ``v`` is the
    forward reference's loss change (exact, since o is linear in v for fixed h0 = 0)."""
    rng = np.random.default_rng(5)
    arrays, do, _ = _inputs(rng, 1, 9, gate="g", initial_state=False, final_state=False)
    direction = rng.standard_normal(arrays["v"].shape).astype(np.float32)
    grads = chunk_simple_gla_grad(arrays["q"], arrays["k"], arrays["v"], g=arrays["g"], do=do)
    o_dir, _ = chunk_simple_gla(arrays["q"], arrays["k"], direction, g=arrays["g"])
    np.testing.assert_allclose(np.sum(o_dir * do), np.sum(grads["dv"] * direction), rtol=1e-12)


def test_empty_batch():
    q = np.zeros((0, 3, 2, 4), np.float32)
    v = np.zeros((0, 3, 2, 5), np.float32)
    grads = chunk_simple_gla_grad(
        q, q, v, do=np.zeros((0, 3, 2, 5)), g_gamma=np.zeros(2, np.float32)
    )
    assert grads["dq"].shape == (0, 3, 2, 4) and grads["dv"].shape == (0, 3, 2, 5)
    np.testing.assert_array_equal(grads["dg_gamma"], np.zeros(2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(do=np.zeros((1, 4, 2, 3))), "do must have shape"),
        (dict(do=np.zeros((1, 4, 2))), "do must have rank 4"),
        (dict(do=np.zeros((1, 4, 2, 2), np.int32)), "do must have dtype"),
        (dict(dht=np.zeros((1, 2, 3, 3), np.float32)), "dht must have shape"),
        (dict(dht=np.zeros((1, 2, 3, 2), ml_dtypes.bfloat16)), "dht must have dtype"),
        (dict(dht=np.zeros((2, 3, 2), np.float32)), "dht must have rank 4"),
        (dict(chunk_size=32), "chunk_size"),
        (dict(g=np.zeros((1, 4, 2), np.float64)), "g must have dtype"),
        (dict(cu_seqlens=np.asarray([0, 3], np.int32)), "cu_seqlens must end at T"),
        (dict(initial_state=np.zeros((2, 2, 3, 2), np.float32)), "initial_state must have"),
    ],
)
def test_bad_input_raises_value_error(change, message):
    rng = np.random.default_rng(6)
    arrays, do, _ = _inputs(rng, 1, 4, gate="none", initial_state=False, final_state=False)
    kwargs = dict(do=do) | change
    with pytest.raises(ValueError, match=message):
        chunk_simple_gla_grad(arrays["q"], arrays["k"], arrays["v"], **kwargs)
