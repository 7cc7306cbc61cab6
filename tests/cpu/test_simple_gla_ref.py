"""The float64 simple-GLA references (step recurrence and chunked form) against each other,
closed forms and brute force; the ALiBi helpers against hand-computed slopes; the
argument contract."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tops.cpu.simple_gla import (
    chunk_simple_gla,
    chunk_simple_gla_chunked,
    chunked_f64,
    recurrence_f64,
)
from tops.ops.simple_gla.alibi import build_alibi_slopes, make_alibi_g_gamma
from tops.spec.simple_gla import GLAShapes, validate

REFERENCES = pytest.mark.parametrize(
    "reference", [chunk_simple_gla, chunk_simple_gla_chunked], ids=["step", "chunked"]
)


def _inputs(rng, B, T, H, K, V, *, gate="both", initial_state=True, N=None):
    """float32 inputs; ``g`` is a log-sigmoid decay (<= 0), ``g_gamma`` from ALiBi."""
    q = rng.standard_normal((B, T, H, K)).astype(np.float32)
    k = rng.standard_normal((B, T, H, K)).astype(np.float32)
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    kwargs = {}
    if gate in ("g", "both"):
        x = rng.standard_normal((B, T, H)) + 2.0
        kwargs["g"] = -np.logaddexp(0.0, -x).astype(np.float32)
    if gate in ("g_gamma", "both"):
        kwargs["g_gamma"] = np.asarray(make_alibi_g_gamma(H, 4, 1))
    if initial_state:
        shape = (B if N is None else N, H, K, V)
        kwargs["initial_state"] = rng.standard_normal(shape).astype(np.float32)
    return q, k, v, kwargs


def _assert_close(actual, expected, rel=1e-12):
    """Relative L2 error <= rel, and every element within rel * max|expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max(initial=0.0)
    assert np.linalg.norm(actual - expected) <= rel * np.linalg.norm(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


# --- step recurrence vs chunked form -------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [64, 128])
@pytest.mark.parametrize("gate", ["none", "g", "g_gamma", "both"])
@pytest.mark.parametrize("T", [1, 63, 64, 100, 300])
def test_step_and_chunked_forms_agree(T, gate, chunk_size):
    rng = np.random.default_rng(T * 10 + chunk_size)
    with_state = (T + len(gate)) % 2 == 0  # half of the grid starts from a state
    q, k, v, kwargs = _inputs(rng, 2, T, 2, 5, 3, gate=gate, initial_state=with_state)
    common = dict(kwargs, output_final_state=True, chunk_size=chunk_size)
    o_step, h_step = chunk_simple_gla(q, k, v, **common)
    o_chunk, h_chunk = chunk_simple_gla_chunked(q, k, v, **common)
    assert o_step.dtype == h_step.dtype == np.float64
    assert o_step.shape == (2, T, 2, 3) and h_step.shape == (2, 2, 5, 3)
    _assert_close(o_chunk, o_step)
    _assert_close(h_chunk, h_step)


def test_positive_gates_are_allowed():
    rng = np.random.default_rng(7)
    q, k, v, kwargs = _inputs(rng, 1, 200, 2, 4, 4, gate="none")
    g = rng.uniform(-0.5, 0.5, (1, 200, 2)).astype(np.float32)
    common = dict(kwargs, g=g, output_final_state=True, chunk_size=128)
    o_step, h_step = chunk_simple_gla(q, k, v, **common)
    o_chunk, h_chunk = chunk_simple_gla_chunked(q, k, v, **common)
    _assert_close(o_chunk, o_step)
    _assert_close(h_chunk, h_step)


@pytest.mark.parametrize(
    "cu", [[0, 15], [0, 256, 500, 1000], [0, 1, 100, 300, 1200, 2048]], ids=["1seq", "3seq", "5seq"]
)
def test_varlen_forms_agree_and_equal_separate_calls(cu):
    rng = np.random.default_rng(len(cu))
    N, T = len(cu) - 1, cu[-1]
    q, k, v, kwargs = _inputs(rng, 1, T, 2, 4, 3, N=N)
    cu_seqlens = np.array(cu, np.int32)
    common = dict(kwargs, output_final_state=True, cu_seqlens=cu_seqlens)
    o_step, h_step = chunk_simple_gla(q, k, v, **common)
    o_chunk, h_chunk = chunk_simple_gla_chunked(q, k, v, **common, chunk_size=128)
    _assert_close(o_chunk, o_step)
    _assert_close(h_chunk, h_step)
    for n in range(N):
        tokens = slice(cu[n], cu[n + 1])
        o_n, h_n = chunk_simple_gla(
            q[:, tokens],
            k[:, tokens],
            v[:, tokens],
            g=kwargs["g"][:, tokens],
            g_gamma=kwargs["g_gamma"],
            initial_state=kwargs["initial_state"][n : n + 1],
            output_final_state=True,
        )
        np.testing.assert_array_equal(o_step[:, tokens], o_n)
        np.testing.assert_array_equal(h_step[n], h_n[0])


# --- closed forms and brute force ----------------------------------------------------------


@REFERENCES
def test_two_tokens_one_dimension_closed_form(reference):
    q, k, v = [0.5, -2.0], [1.5, 0.25], [2.0, -4.0]
    g, gamma, h0, scale = [-0.5, -1.0], -0.25, 3.0, 0.75
    o, h = reference(
        np.array(q, np.float32).reshape(1, 2, 1, 1),
        np.array(k, np.float32).reshape(1, 2, 1, 1),
        np.array(v, np.float32).reshape(1, 2, 1, 1),
        g=np.array(g, np.float32).reshape(1, 2, 1),
        g_gamma=np.array([gamma], np.float32),
        scale=scale,
        initial_state=np.full((1, 1, 1, 1), h0, np.float32),
        output_final_state=True,
    )
    h_0 = math.exp(-0.75) * 3.0 + 1.5 * 2.0
    h_1 = math.exp(-1.25) * h_0 + 0.25 * -4.0
    assert o[0, :, 0, 0] == pytest.approx([0.75 * 0.5 * h_0, 0.75 * -2.0 * h_1], rel=1e-15)
    assert h[0, 0, 0, 0] == pytest.approx(h_1, rel=1e-15)


@REFERENCES
def test_no_decay_is_causal_linear_attention(reference):
    rng = np.random.default_rng(3)
    q, k, v, _ = _inputs(rng, 2, 70, 3, 4, 5, gate="none", initial_state=False)
    o, h = reference(q, k, v, output_final_state=True)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    states = np.cumsum(np.einsum("bthk,bthv->bthkv", k64, v64), axis=1)  # sum_{s<=t} k_s^T v_s
    expected = 4**-0.5 * np.einsum("bthk,bthkv->bthv", q64, states)
    _assert_close(o, expected)
    _assert_close(h, states[:, -1])


@REFERENCES
def test_brute_force_with_both_gates_and_a_state(reference):
    rng = np.random.default_rng(4)
    T = 150  # crosses chunk boundaries of 64 and 128
    q, k, v, kwargs = _inputs(rng, 1, T, 2, 3, 2)
    o, h = reference(q, k, v, **kwargs, scale=0.3, output_final_state=True, chunk_size=64)
    q64, k64, v64, h0 = (x[0].astype(np.float64) for x in (q, k, v, kwargs["initial_state"]))
    g_total = kwargs["g"][0].astype(np.float64) + np.asarray(kwargs["g_gamma"], np.float64)
    expected = np.zeros((T, 2, 2))
    for t in range(T):
        for head in range(2):
            total = math.exp(g_total[: t + 1, head].sum()) * (q64[t, head] @ h0[head])
            for s in range(t + 1):
                weight = math.exp(g_total[s + 1 : t + 1, head].sum())
                total = total + weight * (q64[t, head] @ k64[s, head]) * v64[s, head]
            expected[t, head] = 0.3 * total
    final = np.exp(g_total.sum(axis=0))[:, None, None] * h0 + np.einsum(
        "sh,shk,shv->hkv", np.exp(np.cumsum(g_total[::-1], axis=0)[::-1] - g_total), k64, v64
    )
    _assert_close(o[0], expected)
    _assert_close(h[0], final)


def test_default_scale_is_inverse_sqrt_key_dim():
    rng = np.random.default_rng(5)
    q, k, v, kwargs = _inputs(rng, 1, 10, 1, 9, 2)
    o_default, _ = chunk_simple_gla(q, k, v, **kwargs)
    o_explicit, _ = chunk_simple_gla(q, k, v, **kwargs, scale=1 / 3)
    np.testing.assert_array_equal(o_default, o_explicit)


@REFERENCES
def test_empty_sequence_keeps_its_initial_state(reference):
    rng = np.random.default_rng(6)
    q, k, v, kwargs = _inputs(rng, 1, 5, 2, 3, 3, N=3)
    o, h = reference(
        q, k, v, **kwargs, output_final_state=True, cu_seqlens=np.array([0, 0, 5, 5], np.int32)
    )
    np.testing.assert_array_equal(h[0], kwargs["initial_state"][0])
    np.testing.assert_array_equal(h[2], kwargs["initial_state"][2])
    o_1, h_1 = reference(
        q,
        k,
        v,
        g=kwargs["g"],
        g_gamma=kwargs["g_gamma"],
        initial_state=kwargs["initial_state"][1:2],
        output_final_state=True,
    )
    np.testing.assert_array_equal(o, o_1)
    np.testing.assert_array_equal(h[1], h_1[0])


def test_jax_cu_seqlens_and_missing_states_are_zeros():
    rng = np.random.default_rng(8)
    q, k, v, kwargs = _inputs(rng, 1, 40, 1, 2, 2, initial_state=False)
    cu = jnp.array([0, 10, 40], jnp.int32)
    o, h = chunk_simple_gla(q, k, v, **kwargs, output_final_state=True, cu_seqlens=cu)
    o_0, h_0 = chunk_simple_gla(
        q[:, :10],
        k[:, :10],
        v[:, :10],
        g=kwargs["g"][:, :10],
        g_gamma=kwargs["g_gamma"],
        initial_state=np.zeros((1, 1, 2, 2), np.float32),
        output_final_state=True,
    )
    np.testing.assert_array_equal(o[:, :10], o_0)
    np.testing.assert_array_equal(h[0], h_0[0])


@REFERENCES
def test_bf16_inputs_are_taken_exactly(reference):
    rng = np.random.default_rng(9)
    q, k, v, kwargs = _inputs(rng, 1, 20, 2, 3, 4)
    q16, k16, v16 = (x.astype(ml_dtypes.bfloat16) for x in (q, k, v))
    o, h = reference(q16, k16, v16, **kwargs, output_final_state=True)
    o_jax, h_jax = reference(
        jnp.asarray(q16), jnp.asarray(k16), jnp.asarray(v16), **kwargs, output_final_state=True
    )
    q32, k32, v32 = (x.astype(np.float32) for x in (q16, k16, v16))
    o_32, h_32 = reference(q32, k32, v32, **kwargs, output_final_state=True)
    for actual in (o, o_jax):
        np.testing.assert_array_equal(actual, o_32)
    for actual in (h, h_jax):
        np.testing.assert_array_equal(actual, h_32)


@REFERENCES
def test_empty_batch_and_no_final_state(reference):
    o, h = reference(
        np.zeros((0, 3, 2, 4), np.float32),
        np.zeros((0, 3, 2, 4), np.float32),
        np.zeros((0, 3, 2, 5), np.float32),
        output_final_state=True,
    )
    assert o.shape == (0, 3, 2, 5) and h.shape == (0, 2, 4, 5)
    _, h = reference(*(np.ones((1, 3, 1, 1), np.float32) for _ in range(3)))
    assert h is None


def test_reference_checks_the_cu_seqlens_invariants():
    x = np.ones((1, 10, 1, 1), np.float32)
    for cu in ([1, 10], [0, 6, 4, 10], [0, 9]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            chunk_simple_gla(x, x, x, cu_seqlens=np.array(cu, np.int32))


def test_one_sequence_functions_are_differentiable_and_agree():
    rng = np.random.default_rng(10)
    T, H, K, V = 130, 2, 3, 2
    with jax.enable_x64(True):
        q, k = (jnp.asarray(rng.standard_normal((T, H, K))) for _ in range(2))
        v = jnp.asarray(rng.standard_normal((T, H, V)))
        # Masked exponents G_i - G_j reach 0.75 * 127 (overflows float32) and 8 * 127
        # (overflows float64): unmasked, they would give inf and NaN gradients.
        g_total = jnp.broadcast_to(jnp.array([-0.75, -8.0]), (T, H))
        h0 = jnp.asarray(rng.standard_normal((H, K, V)))
        cotangents = (jnp.asarray(rng.standard_normal((T, H, V))), jnp.ones((H, K, V)))
        primals = (q, k, v, g_total, h0)
        out_step, vjp_step = jax.vjp(lambda *a: recurrence_f64(*a, 0.5), *primals)
        out_chunk, vjp_chunk = jax.vjp(lambda *a: chunked_f64(*a, 0.5, 128), *primals)
        for a, b in zip(out_chunk, out_step, strict=True):
            _assert_close(a, b)
        for a, b in zip(vjp_chunk(cotangents), vjp_step(cotangents), strict=True):
            assert np.isfinite(np.asarray(a)).all()
            _assert_close(a, b, rel=1e-11)


def test_one_sequence_functions_require_float64():
    x = jnp.ones((2, 1, 1), jnp.float32)
    with pytest.raises(ValueError, match="float64"):
        recurrence_f64(x, x, x, jnp.zeros((2, 1)), jnp.zeros((1, 1, 1)), 1.0)


# --- ALiBi ---------------------------------------------------------------------------------

# 2 ** (-k / 2) for k = 1 .. 16, by hand: 2 ** -0.5 = 0.70710678118654752..., then halving.
_HALF_POWERS = [
    0.7071067811865476, 0.5, 0.3535533905932738, 0.25,
    0.1767766952966369, 0.125, 0.08838834764831845, 0.0625,
    0.04419417382415922, 0.03125, 0.02209708691207961, 0.015625,
    0.011048543456039806, 0.0078125, 0.005524271728019903, 0.00390625,
]  # fmt: skip
_POWERS_OF_TWO = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]


@pytest.mark.parametrize(
    ("num_heads", "expected"),
    [
        (1, [0.00390625]),  # 2 ** -8
        (8, _POWERS_OF_TWO),  # 2 ** -1 .. 2 ** -8
        (16, _HALF_POWERS),  # 2 ** -0.5 .. 2 ** -8
        # not a power of two: the 8 slopes for H = 8, then slopes 0, 2, 4, 6 of H = 16
        (
            12,
            [
                *_POWERS_OF_TWO,
                0.7071067811865476,
                0.3535533905932738,
                0.1767766952966369,
                0.08838834764831845,
            ],
        ),
        (3, [0.0625, 0.00390625, 0.25]),  # H = 2 gives 2**-4, 2**-8; then 2**-2 from H = 4
        (6, [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]),
    ],
)
def test_alibi_slopes_by_hand(num_heads, expected):
    slopes = build_alibi_slopes(num_heads)
    assert isinstance(slopes, jax.Array) and slopes.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(slopes), np.array(expected, np.float32))


@pytest.mark.parametrize(
    ("num_layers", "layer_idx", "factor"),
    [(5, 0, 1.00001), (5, 2, 0.50001), (5, 4, 0.00001), (1, 0, 1.00001)],
)
def test_alibi_g_gamma_by_hand(num_layers, layer_idx, factor):
    g_gamma = make_alibi_g_gamma(8, num_layers, layer_idx)
    assert g_gamma.dtype == jnp.float32 and g_gamma.shape == (8,)
    expected = np.array([-s * factor for s in _POWERS_OF_TWO]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(g_gamma), expected)


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        ((0, 4, 0), "num_heads"),
        ((2.0, 4, 0), "num_heads"),
        ((True, 4, 0), "num_heads"),
        ((8, 0, 0), "num_layers"),
        ((8, 4, -1), "layer_idx"),
        ((8, 4, 4), "layer_idx"),
        ((8, 4, 1.0), "layer_idx"),
    ],
)
def test_alibi_bad_arguments(args, argument):
    with pytest.raises(ValueError, match=rf"^{argument} "):
        make_alibi_g_gamma(*args)
    if argument == "num_heads":
        with pytest.raises(ValueError, match=r"^num_heads "):
            build_alibi_slopes(args[0])


def test_alibi_chunk_128_overflows_an_unmasked_float32_exp_but_not_the_reference():
    H, C = 16, 128
    gamma = np.asarray(make_alibi_g_gamma(H, 20, 0))
    assert np.abs(gamma).max() * (C - 1) > 88.7  # log(float32 max) = 88.72
    G = gamma[None, :] * np.arange(1, C + 1, dtype=np.float32)[:, None]  # [C, H]
    log_decay = G.T[:, :, None] - G.T[:, None, :]  # G_i - G_j; above the diagonal > 0
    causal = np.tril(np.ones((C, C), bool))
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isinf(np.exp(log_decay)).any()  # exp then mask: inf, and inf * 0 = NaN
        assert np.isnan(np.exp(log_decay) * causal).any()
    assert np.isfinite(np.exp(np.where(causal, log_decay, 0.0))).all()  # the masked rule

    rng = np.random.default_rng(11)
    q, k, v, _ = _inputs(rng, 1, 2 * C, H, 2, 2, gate="none", initial_state=False)
    common = dict(g_gamma=gamma, output_final_state=True, chunk_size=C)
    o_chunk, h_chunk = chunk_simple_gla_chunked(q, k, v, **common)
    o_step, h_step = chunk_simple_gla(q, k, v, **common)
    assert np.isfinite(o_chunk).all() and np.isfinite(h_chunk).all()
    _assert_close(o_chunk, o_step)
    _assert_close(h_chunk, h_step)


# --- argument contract ---------------------------------------------------------------------


def _valid(B=2, T=5, H=3, K=4, V=6, dtype=np.float32):
    return dict(
        q=np.zeros((B, T, H, K), dtype),
        k=np.zeros((B, T, H, K), dtype),
        v=np.zeros((B, T, H, V), dtype),
        g=None,
        g_gamma=None,
        scale=None,
        initial_state=None,
        output_final_state=False,
        cu_seqlens=None,
        chunk_size=64,
    )


def test_validate_resolves_the_shapes():
    assert validate(**_valid()) == GLAShapes(2, 5, 3, 4, 6, 2, 0.5, False)
    varlen = _valid(B=1) | dict(cu_seqlens=np.array([0, 2, 2, 5], np.int32), scale=2)
    assert validate(**varlen) == GLAShapes(1, 5, 3, 4, 6, 3, 2.0, True)


@pytest.mark.parametrize("library", ["jax", "torch"])
def test_validate_accepts_jax_and_torch_arrays(library):
    if library == "jax":
        zeros, bf16, f32, i32 = jnp.zeros, jnp.bfloat16, jnp.float32, jnp.int32
        api = "tops.ops"
    else:
        torch = pytest.importorskip("torch", reason="torch arrays need torch: tops[gpu]")
        zeros, bf16, f32, i32 = torch.zeros, torch.bfloat16, torch.float32, torch.int32
        api = "tops.gpu"
    shapes = validate(
        zeros((1, 7, 2, 3), dtype=bf16),
        zeros((1, 7, 2, 3), dtype=bf16),
        zeros((1, 7, 2, 5), dtype=bf16),
        g=zeros((1, 7, 2), dtype=f32),
        g_gamma=zeros((2,), dtype=f32),
        scale=np.float32(0.25),
        initial_state=zeros((2, 2, 3, 5), dtype=f32),
        output_final_state=True,
        cu_seqlens=zeros((3,), dtype=i32),
        chunk_size=128,
        api=api,
    )
    assert shapes == GLAShapes(1, 7, 2, 3, 5, 2, 0.25, True)


def _bad(**changes):
    return changes


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        (_bad(q=np.zeros((2, 5, 3), np.float32)), "q"),
        (_bad(q=np.zeros((2, 5, 3, 4), np.float16)), "q"),
        (_bad(q=np.zeros((2, 0, 3, 4), np.float32), k=np.zeros((2, 0, 3, 4), np.float32)), "q"),
        (_bad(k=np.zeros((2, 5, 3, 4), ml_dtypes.bfloat16)), "k"),
        (_bad(k=np.zeros((2, 5, 3, 5), np.float32)), "k"),
        (_bad(k=np.zeros((2, 5, 3), np.float32)), "k"),
        (_bad(v=np.zeros((2, 5, 3, 6), np.float64)), "v"),
        (_bad(v=np.zeros((1, 5, 3, 6), np.float32)), "v"),
        (_bad(v=np.zeros((2, 5, 3, 0), np.float32)), "v"),
        (_bad(g=np.zeros((2, 5), np.float32)), "g"),
        (_bad(g=np.zeros((2, 5, 4), np.float32)), "g"),
        (_bad(g=np.zeros((2, 5, 3), ml_dtypes.bfloat16)), "g"),
        (_bad(g_gamma=np.zeros(4, np.float32)), "g_gamma"),
        (_bad(g_gamma=np.zeros(3, np.float64)), "g_gamma"),
        (_bad(scale=float("nan")), "scale"),
        (_bad(scale=float("inf")), "scale"),
        (_bad(scale=True), "scale"),
        (_bad(scale=np.ones(1, np.float32)), "scale"),
        (_bad(chunk_size=32), "chunk_size"),
        (_bad(chunk_size=64.0), "chunk_size"),
        (_bad(cu_seqlens=np.array([0, 5], np.int32)), "cu_seqlens"),  # B == 2
        (_bad(initial_state=np.zeros((3, 3, 4, 6), np.float32)), "initial_state"),
        (_bad(initial_state=np.zeros((2, 3, 4, 6), np.float64)), "initial_state"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(changes, argument):
    with pytest.raises(ValueError, match=rf"^{argument} "):
        validate(**(_valid() | changes))


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        (_bad(g_gamma=[0.0, 0.0, 0.0]), "g_gamma"),
        (_bad(initial_state=(np.zeros((3, 4, 6), np.float32),) * 2), "initial_state"),
        (_bad(output_final_state=1), "output_final_state"),
    ],
)
def test_wrong_types_raise_type_errors_naming_them(changes, argument):
    with pytest.raises(TypeError, match=rf"^{argument} must be a "):
        validate(**(_valid() | changes))


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        (_bad(cu_seqlens=np.array([0, 5], np.float32)), "cu_seqlens"),
        (_bad(cu_seqlens=np.array([[0, 5]], np.int32)), "cu_seqlens"),
        (_bad(cu_seqlens=np.array([5], np.int32)), "cu_seqlens"),
        (_bad(cu_seqlens=np.array([0, 2, 5], np.int32)), "initial_state"),  # N = 2, not 1
    ],
)
def test_bad_varlen_arguments_raise_value_errors_naming_them(changes, argument):
    valid = _valid(B=1) | dict(initial_state=np.zeros((1, 3, 4, 6), np.float32))
    with pytest.raises(ValueError, match=rf"^{argument} "):
        validate(**(valid | changes))


def test_references_validate_their_arguments():
    for reference in (chunk_simple_gla, chunk_simple_gla_chunked):
        with pytest.raises(ValueError, match=r"^chunk_size "):
            reference(*(np.ones((1, 3, 1, 1), np.float32) for _ in range(3)), chunk_size=256)
