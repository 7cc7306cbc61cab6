"""The Pallas simple GLA on input the contract repairs or defines specially
(``tops/spec/simple_gla.py``, "Malformed cu_seqlens" and "Special values"), under the TPU
interpreter at small shapes: malformed device ``cu_seqlens`` (run on the repaired
offsets, in bounds, the launchers included) and ``-inf`` gates (exact resets).

Tolerances are those of ``test_tpu_kernels.py`` and ``test_tpu_backward.py`` (float32
kernels against the float64 references): ``F32_EPS`` relative L2 for ``o``, the final
state, ``dq, dk, dv, dh0``; ``DG_EPS`` for ``dg``, ``DG_EPS * kappa`` for ``d g_gamma``.
Against the same kernels on the repaired offsets the results are bit for bit equal.

Every kernel run goes through one ``jax.jit`` of forward and ``jax.vjp`` per static
configuration (``_runner``), so each configuration compiles once for the whole file.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops.backends import pallas_interpret
from tops.cpu import simple_gla as reference
from tops.ops.simple_gla import backward, chunk_simple_gla, common, kernel
from tops.precision.cases.simple_gla import random_arrays
from tops.precision.metrics import compare
from tops.spec.simple_gla import repaired_cu_seqlens

F32_EPS = 1e-6
DG_EPS = 2e-6
HEADS, DIM = 2, 16
INPUTS = ("q", "k", "v", "g", "g_gamma", "initial_state")
GRADIENT_OF = {"q": "dq", "k": "dk", "v": "dv", "g": "dg", "g_gamma": "dg_gamma"}
GRADIENT_OF["initial_state"] = "dh0"


def _problem(seed, *, batch, seq_len, num_states, gate="both"):
    """Float32 inputs (NumPy, named like the arguments, with an initial state) and the
    cotangents ``do``, ``dht``."""
    rng = np.random.default_rng(seed)
    arrays = random_arrays(
        rng, batch=batch, seq_len=seq_len, heads=HEADS, key_dim=DIM, value_dim=DIM,
        dtype="float32", gate=gate, num_states=num_states,
    )  # fmt: skip
    do = rng.standard_normal((batch, seq_len, HEADS, DIM)).astype(np.float32)
    dht = rng.standard_normal((num_states, HEADS, DIM, DIM)).astype(np.float32)
    return arrays, do, dht


@functools.cache
def _runner(chunk, names):
    """``run(arrays, do, dht, cu_seqlens) -> {"o", "final_state", "dq", ...}``: the
    forward and every gradient (``jax.vjp``) under one ``jax.jit``, ``cu_seqlens``
    traced."""

    @jax.jit
    def run(arrays, do, dht, cu_seqlens):
        def forward(*values):
            return chunk_simple_gla(
                **dict(zip(names, values, strict=True)), cu_seqlens=cu_seqlens,
                output_final_state=True, chunk_size=chunk,
            )  # fmt: skip

        (o, final_state), pullback = jax.vjp(forward, *(arrays[n] for n in names))
        grads = pullback((do, dht))
        results = {"o": o, "final_state": final_state}
        results.update({GRADIENT_OF[n]: x for n, x in zip(names, grads, strict=True)})
        return results

    return run


def _run(arrays, do, dht, *, chunk, cu=None):
    names = tuple(n for n in INPUTS if n in arrays)
    run = _runner(chunk, names)
    results = run({n: jnp.asarray(arrays[n]) for n in names}, do, dht, cu)
    return {name: np.asarray(x) for name, x in results.items()}


def _reference(arrays, do, dht, *, chunk, cu=None):
    """The float64 recurrence and its gradients, plus ``"da"`` (the per-token gradient of
    the total log decay) when ``g_gamma`` is given (a zero ``g`` obtains it without one)."""
    o, final_state = reference.chunk_simple_gla(
        **arrays, cu_seqlens=cu, output_final_state=True, chunk_size=chunk
    )
    args = dict(arrays)
    if "g" not in args:
        args["g"] = np.zeros(arrays["q"].shape[:3], np.float32)
    grads = reference.chunk_simple_gla_grad(**args, cu_seqlens=cu, chunk_size=chunk, do=do, dht=dht)
    grads["da"] = grads["dg"] if "g" in arrays else grads.pop("dg")
    return {"o": o, "final_state": final_state, **grads}


def _check(got, ref):
    """Every result finite and within the float32 tolerance of the reference."""
    for name, value in got.items():
        c = compare(value, ref[name], "float32")
        if name == "dg_gamma":
            da = ref["da"]
            size = np.linalg.norm(ref[name])
            kappa = np.linalg.norm(np.abs(da).sum(axis=(0, 1))) / size if size else 1.0
            bound = DG_EPS * max(kappa, 1.0)
        else:
            bound = DG_EPS if name == "dg" else F32_EPS
        assert c.nonfinite == 0 and np.isfinite(value).all(), name
        assert c.rel_l2 <= bound, (name, c.rel_l2, bound, c.worst_index)


def _assert_identical(got, want):
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------------------------------
# Malformed cu_seqlens on the device: the result on the repaired offsets.

SHORT = 16  # T of the malformed-offset cases (one partial chunk)
MALFORMED = {
    "tpu_last_past_T": [0, 4, 40],
    "tpu_negative_first": [-3, 4, 16],
    "tpu_decreasing": [0, 12, 4],
    "tpu_all_past_T": [20, 30, 40],
    "tpu_all_negative": [-5, -1, -7],
}


def test_tpu_repair_matches_the_spec():
    """``common.repair_cu_seqlens`` is ``repaired_cu_seqlens`` for NumPy and JAX arrays,
    int32 and int64 (x64 on, entries past int32 that would wrap to valid-looking ones);
    valid offsets come back unchanged."""
    rng = np.random.default_rng(0)
    cases = [np.asarray(cu) for cu in MALFORMED.values()]
    cases += [rng.integers(-30, 50, size) for size in (2, 3, 9, 40)]
    cases += [np.asarray([0, 7, 7, 16]), np.zeros(33, np.int64)]
    wide = [np.asarray([0, 2**32 + 4, 16]), np.asarray([-(2**40), 4, 2**40, 2**33, 3])]
    for cu in cases:
        want = repaired_cu_seqlens(cu, SHORT)
        for x in (cu.astype(np.int32), jnp.asarray(cu, jnp.int32)):
            got = common.repair_cu_seqlens(x, SHORT)
            assert got.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(got), want)
    for cu in wide:
        want = repaired_cu_seqlens(cu, SHORT)
        np.testing.assert_array_equal(np.asarray(common.repair_cu_seqlens(cu, SHORT)), want)
        with jax.enable_x64(True):
            x = jnp.asarray(cu)
            assert x.dtype == jnp.int64
            np.testing.assert_array_equal(np.asarray(common.repair_cu_seqlens(x, SHORT)), want)
    np.testing.assert_array_equal(repaired_cu_seqlens(wide[0], SHORT), [0, 16, 16])


@pytest.mark.parametrize("cu", list(MALFORMED.values()), ids=list(MALFORMED))
def test_tpu_malformed_device_offsets_are_repaired(cu):
    """Traced malformed offsets (under ``jax.jit``): forward and every gradient finite,
    bit for bit those of the repaired offsets, and the float64 reference's on them."""
    arrays, do, dht = _problem(1, batch=1, seq_len=SHORT, num_states=len(cu) - 1)
    repaired = repaired_cu_seqlens(cu, SHORT)
    got = _run(arrays, do, dht, chunk=64, cu=jnp.asarray(cu, jnp.int32))
    _assert_identical(got, _run(arrays, do, dht, chunk=64, cu=repaired))
    _check(got, _reference(arrays, do, dht, chunk=64, cu=repaired))


def test_tpu_malformed_concrete_offsets_are_repaired():
    """Concrete JAX arrays (no ``jit`` around the call) take the same repair: the forward
    on each malformed case equals the call on the repaired NumPy offsets, bit for bit."""
    arrays, _, _ = _problem(1, batch=1, seq_len=SHORT, num_states=2)
    for cu in MALFORMED.values():
        got = chunk_simple_gla(**arrays, cu_seqlens=jnp.asarray(cu), output_final_state=True)
        want = chunk_simple_gla(
            **arrays, cu_seqlens=repaired_cu_seqlens(cu, SHORT), output_final_state=True
        )
        for x, y in zip(got, want, strict=True):
            assert np.isfinite(np.asarray(x)).all()
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tpu_huge_int64_offsets_clip_under_x64():
    """int64 entries past int32 (``jax_enable_x64``) clip to ``[0, T]`` before the int32
    conversion: ``2**32 + 4`` is T (wrapping would give 4); the results are those of the
    repaired offsets without x64, bit for bit."""
    arrays, do, dht = _problem(2, batch=1, seq_len=SHORT, num_states=2)
    for cu in ([0, 2**32 + 4, 16], [-(2**40), 4, 2**40]):
        repaired = repaired_cu_seqlens(np.asarray(cu), SHORT)
        with jax.enable_x64(True):
            wide = jnp.asarray(cu, jnp.int64)
            assert wide.dtype == jnp.int64
            got = _run(arrays, do, dht, chunk=64, cu=wide)
        _assert_identical(got, _run(arrays, do, dht, chunk=64, cu=repaired))
    _check(got, _reference(arrays, do, dht, chunk=64, cu=repaired))


def test_tpu_many_empty_sequences_of_zeros():
    """``N = 32`` offsets, all zero: 31 empty sequences (their final states are their
    initial states, their ``dh0`` the final-state cotangents) and one of all T tokens."""
    cu = np.zeros(33, np.int32)
    arrays, do, dht = _problem(3, batch=1, seq_len=SHORT, num_states=32)
    repaired = repaired_cu_seqlens(cu, SHORT)
    got = _run(arrays, do, dht, chunk=64, cu=jnp.asarray(cu))
    _assert_identical(got, _run(arrays, do, dht, chunk=64, cu=repaired))
    _check(got, _reference(arrays, do, dht, chunk=64, cu=repaired))
    np.testing.assert_array_equal(got["final_state"][:31], arrays["initial_state"][:31])
    np.testing.assert_array_equal(got["dh0"][:31], dht[:31])


@functools.cache
def _launchers():
    """``kernel.forward`` (saving the states) then ``backward.backward`` under one jit, on
    whatever ``cu_seqlens`` they get."""

    @jax.jit
    def run(arrays, do, dht, cu_seqlens):
        q, k, v, g, g_gamma, h0 = (arrays[n] for n in INPUTS)
        o, final_state, states = kernel.forward(
            q, k, v, g, g_gamma, h0, cu_seqlens, scale=0.25, chunk_size=64,
            output_final_state=True, save_states=True, interpret=pallas_interpret(),
            padded_states=True,
        )  # fmt: skip
        grads = backward.backward(
            q, k, v, g, g_gamma, cu_seqlens, states, do, dht, has_h0=True, scale=0.25,
            chunk_size=64, interpret=pallas_interpret(),
        )  # fmt: skip
        names = ("dq", "dk", "dv", "da", "dh0")
        return {"o": o, "final_state": final_state, **dict(zip(names, grads, strict=True))}

    return run


def test_tpu_launchers_repair_raw_offsets():
    """The launchers themselves, given raw malformed offsets (as the custom_vjp's
    internals could be), run in bounds: finite, and bit for bit the launchers on the
    repaired offsets."""
    arrays, do, dht = _problem(4, batch=1, seq_len=SHORT, num_states=2)
    arrays = {n: jnp.asarray(x) for n, x in arrays.items()}
    run = _launchers()
    for cu in MALFORMED.values():
        got = run(arrays, do, dht, jnp.asarray(cu, jnp.int32))
        want = run(arrays, do, dht, jnp.asarray(repaired_cu_seqlens(cu, SHORT)))
        for name in got:
            x = np.asarray(got[name])
            assert np.isfinite(x).all(), (cu, name)
            np.testing.assert_array_equal(x, np.asarray(want[name]), err_msg=f"{cu} {name}")


# ---------------------------------------------------------------------------------------
# g = -inf: exact resets.

LONG = 200
VARLEN = (0, 100, 200)


def _with_resets(arrays, resets):
    """``g`` with ``-inf`` at ``resets``: ``{(batch row, head): tokens}``."""
    g = arrays["g"].copy()
    for (b, h), tokens in resets.items():
        g[b, list(tokens), h] = -np.inf
    return {**arrays, "g": g}


def _check_resets(got, arrays):
    """``dg`` exactly 0 at every ``-inf`` gate, and ``d g_gamma`` is the sum of ``dg``
    (so a reset token adds exactly 0 to it)."""
    resets = np.isneginf(arrays["g"])
    assert resets.any()
    assert (got["dg"][resets] == 0).all()
    if "dg_gamma" in got:
        summed = np.asarray(backward.sum_tokens(jnp.asarray(got["dg"])))
        np.testing.assert_array_equal(got["dg_gamma"], summed)


RESETS_C64 = {
    # head 0: the first token of both sequences, inside a chunk, both sides of the chunk
    # boundary 63 | 64, three in one chunk (64, 100, 101), the last token; head 1: others
    "tpu_first_inside_boundary_last": {(0, 0): (0, 30, 63, 64, 100, 101, 199),
                                       (0, 1): (1, 99, 127, 128, 150)},
    "tpu_boundary_only": {(0, 0): (64,), (0, 1): (63,)},
}  # fmt: skip


@pytest.mark.parametrize("resets", list(RESETS_C64.values()), ids=list(RESETS_C64))
def test_tpu_resets_varlen_both_gates(resets):
    """Chunk 64, ``g`` and ``g_gamma``, two packed sequences: forward and every gradient
    match the float64 recurrence, ``dg`` is 0 at each reset."""
    arrays, do, dht = _problem(5, batch=1, seq_len=LONG, num_states=2)
    arrays = _with_resets(arrays, resets)
    got = _run(arrays, do, dht, chunk=64, cu=np.asarray(VARLEN, np.int32))
    _check(got, _reference(arrays, do, dht, chunk=64, cu=np.asarray(VARLEN, np.int32)))
    _check_resets(got, arrays)


def test_tpu_resets_batched_chunk128_without_g_gamma():
    """Chunk 128, ``g`` only, two batch rows: resets on both sides of the boundary
    127 | 128, at the first and last token, and a run of three."""
    arrays, do, dht = _problem(6, batch=2, seq_len=LONG, num_states=2, gate="g")
    arrays = _with_resets(
        arrays, {(0, 0): (0, 127, 128, 199), (1, 1): (60, 61, 62), (1, 0): (128,)}
    )
    got = _run(arrays, do, dht, chunk=128)
    _check(got, _reference(arrays, do, dht, chunk=128))
    _check_resets(got, arrays)


def test_tpu_g_gamma_minus_inf_with_g():
    """``g_gamma[0] = -inf`` resets every token of head 0 (``o_t = scale q_t . k_t v_t``);
    head 1 keeps finite decays with resets of its own; ``d g_gamma[0]`` and head 0's
    ``dg`` are exactly 0."""
    arrays, do, dht = _problem(7, batch=1, seq_len=LONG, num_states=2)
    arrays = _with_resets(arrays, {(0, 1): (10, 64, 170)})
    arrays["g_gamma"] = np.asarray([-np.inf, -0.1], np.float32)
    got = _run(arrays, do, dht, chunk=64, cu=np.asarray(VARLEN, np.int32))
    _check(got, _reference(arrays, do, dht, chunk=64, cu=np.asarray(VARLEN, np.int32)))
    _check_resets(got, arrays)
    assert got["dg_gamma"][0] == 0 and (got["dg"][..., 0] == 0).all()
    scores = np.einsum("bthk,bthk->bth", arrays["q"], arrays["k"]) * DIM**-0.5
    np.testing.assert_allclose(
        got["o"][..., 0, :], (scores[..., None] * arrays["v"])[..., 0, :], rtol=1e-5, atol=1e-5
    )


def test_tpu_g_gamma_minus_inf_without_g():
    """``g_gamma`` alone (the kernels' path without a gate block) with ``g_gamma[0] =
    -inf``: the reference's result, ``d g_gamma[0] = 0``."""
    arrays, do, dht = _problem(8, batch=2, seq_len=LONG, num_states=2, gate="g_gamma")
    arrays["g_gamma"] = np.asarray([-np.inf, -0.1], np.float32)
    got = _run(arrays, do, dht, chunk=64)
    _check(got, _reference(arrays, do, dht, chunk=64))
    assert got["dg_gamma"][0] == 0


@pytest.mark.parametrize(
    ("chunk", "reset"),
    [(64, 70), (64, 64), (128, 128)],
    ids=["tpu_C64_inside", "tpu_C64_boundary", "tpu_C128_boundary"],
)
def test_tpu_state_before_a_reset_contributes_nothing(chunk, reset):
    """Changing ``q, k, v`` before a reset (in both heads) and the initial state of its
    sequence leaves every output row from the reset on and the final states unchanged,
    bit for bit (also in the chunks after the reset's). Chunk 64: the first of two
    packed sequences; chunk 128: both batch rows."""
    rng = np.random.default_rng(10)
    if chunk == 64:
        arrays, do, dht = _problem(5, batch=1, seq_len=LONG, num_states=2)
        cu, rows, states = np.asarray(VARLEN, np.int32), (0,), (0,)
    else:
        arrays, do, dht = _problem(6, batch=2, seq_len=LONG, num_states=2, gate="g")
        cu, rows, states = None, (0, 1), (0, 1)
    arrays = _with_resets(arrays, {(b, h): (reset,) for b in rows for h in range(HEADS)})
    changed = {name: x.copy() for name, x in arrays.items()}
    for name in ("q", "k", "v"):
        shape = changed[name][:, :reset].shape
        changed[name][:, :reset] = 100 * rng.standard_normal(shape).astype(np.float32)
    shape = changed["initial_state"][list(states)].shape
    changed["initial_state"][list(states)] = 100 * rng.standard_normal(shape)
    before = _run(arrays, do, dht, chunk=chunk, cu=cu)
    after = _run(changed, do, dht, chunk=chunk, cu=cu)
    np.testing.assert_array_equal(after["o"][:, reset:], before["o"][:, reset:])
    np.testing.assert_array_equal(after["final_state"], before["final_state"])
    assert not np.array_equal(after["o"][:, :reset], before["o"][:, :reset])
