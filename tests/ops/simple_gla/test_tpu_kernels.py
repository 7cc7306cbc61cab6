"""The Pallas simple GLA forward against the float64 reference across the contract: tail
chunks, decoding, K/V that need padding, every gate combination, states, varlen with
run-time ``cu_seqlens``, overflow-prone ALiBi decays, the saved chunk states for the
backward, and the Mosaic lowering of every shipped configuration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tops.ops
from tops.backends import pallas_interpret
from tops.cpu import simple_gla as reference
from tops.ops.simple_gla import chunk_simple_gla, common, kernel, make_alibi_g_gamma
from tops.ops.simple_gla.alibi import FLOAT32_EXP_LIMIT, max_discarded_exponent
from tops.precision.cases.simple_gla import random_arrays
from tops.precision.metrics import compare

# float32 arithmetic throughout (HIGHEST matmuls, float32 state, double-float gate sums):
# measured ε <= 2.6e-7 for o and final_state on these sizes (T <= 512); the bound leaves 4x.
F32_EPS = 1e-6


def _inputs(seed, *, h0, num_states, **shapes):
    """``random_arrays`` from ``seed``, with an initial state when ``h0``."""
    return random_arrays(np.random.default_rng(seed), num_states=num_states if h0 else 0, **shapes)


def _check(got, ref, dtype):
    """ε within the float32 bound; for bf16 outputs, at the bf16 rounding floor."""
    c = compare(got, ref, dtype)
    assert c.nonfinite == 0 and c.special == 0
    bound = c.floor * 1.01 if dtype == "bfloat16" else F32_EPS
    assert c.rel_l2 <= bound, (c.rel_l2, bound, c.worst_index, c.worst_out, c.worst_ref)
    return c


# (batch, seq_len, heads, K, V, chunk, dtype, gate, initial state, final state, cu_seqlens)
CASES = [
    (2, 1, 2, 64, 128, 64, "float32", "g", True, True, None),  # decoding from a state
    (2, 63, 2, 100, 64, 64, "bfloat16", "both", True, True, None),
    (1, 64, 3, 128, 100, 64, "float32", "g_gamma", False, True, None),
    (2, 100, 2, 64, 64, 128, "float32", "none", True, False, None),
    (2, 100, 2, 128, 128, 64, "bfloat16", "g", False, True, None),
    (1, 100, 2, 100, 100, 128, "float32", "both", True, True, None),
    (1, 63, 2, 64, 128, 128, "bfloat16", "g_gamma", True, True, None),
    (1, 64, 2, 128, 64, 128, "float32", "g", False, False, None),
    (1, 15, 2, 64, 100, 64, "float32", "both", True, True, (0, 15)),
    (1, 300, 2, 100, 64, 64, "bfloat16", "g", True, True, (0, 1, 100, 300)),
    (1, 300, 2, 128, 128, 128, "float32", "g_gamma", False, True, (0, 1, 100, 300)),
    # empty sequences, boundaries on chunk edges, a sequence filling a whole chunk
    (1, 300, 2, 64, 64, 64, "float32", "none", True, True, (0, 0, 64, 64, 200, 300, 300)),
    # several value tiles: V = 300 pads to 384, three tiles of 128 lanes
    (1, 100, 2, 64, 300, 64, "float32", "both", True, True, (0, 30, 100)),
    (2, 70, 2, 128, 512, 128, "bfloat16", "g", True, True, None),  # two tiles of 256
]


def _case_id(case):
    batch, seq_len, heads, key_dim, value_dim, chunk, dtype, gate, h0, ht, cu = case
    name = f"tpu_{dtype}_B{batch}_T{seq_len}_H{heads}_K{key_dim}_V{value_dim}_C{chunk}_{gate}"
    name += "_h0" if h0 else ""
    name += "_hT" if ht else ""
    return name + ("" if cu is None else "_cu" + "-".join(map(str, cu)))


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c)) for c in CASES])
def test_tpu_matches_the_reference(case):
    batch, seq_len, heads, key_dim, value_dim, chunk, dtype, gate, h0, ht, cu = case
    num_states = batch if cu is None else len(cu) - 1
    arrays = _inputs(
        len(CASES) + CASES.index(case),
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
        dtype=dtype,
        gate=gate,
        h0=h0,
        num_states=num_states,
    )
    if cu is not None:
        arrays["cu_seqlens"] = np.asarray(cu, np.int32)
    o, final = chunk_simple_gla(
        **{name: jnp.asarray(x) for name, x in arrays.items()},
        output_final_state=ht,
        chunk_size=chunk,
    )
    ref_o, ref_final = reference.chunk_simple_gla(**arrays, output_final_state=ht, chunk_size=chunk)
    assert o.dtype == jnp.dtype(dtype) and o.shape == ref_o.shape
    _check(np.asarray(o), ref_o, dtype)
    if ht:
        assert final.dtype == jnp.float32 and final.shape == ref_final.shape
        _check(np.asarray(final), ref_final, "float32")
    else:
        assert final is None


def test_tpu_custom_scale():
    arrays = _inputs(
        1, batch=1, seq_len=70, heads=2, key_dim=64, value_dim=64, dtype="float32",
        gate="both", h0=True, num_states=1,
    )  # fmt: skip
    o, final = chunk_simple_gla(**arrays, scale=0.3, output_final_state=True)
    ref_o, ref_final = reference.chunk_simple_gla(**arrays, scale=0.3, output_final_state=True)
    _check(np.asarray(o), ref_o, "float32")
    _check(np.asarray(final), ref_final, "float32")


@pytest.mark.parametrize("chunk", [64, 128], ids=["tpu_C64", "tpu_C128"])
def test_tpu_per_token_gates_cost_no_precision(chunk):
    """The gates are summed in double-float, so exponent differences are accurate to
    their own ulp: with strong per-token decays (about -3 per token, partial sums near
    -400 at chunk 128) the final state is within 2x of the float32 rounding floor
    (measured 1.03x; a float32 cumulative sum gives 5x at chunk 64, 590x at 128)."""
    arrays = _inputs(
        6, batch=1, seq_len=200, heads=2, key_dim=64, value_dim=64, dtype="float32",
        gate="g", h0=True, num_states=1,
    )  # fmt: skip
    arrays["g"] = arrays["g"] * 4.0
    _, final = chunk_simple_gla(**arrays, output_final_state=True, chunk_size=chunk)
    _, ref_final = reference.chunk_simple_gla(**arrays, output_final_state=True)
    c = compare(np.asarray(final), ref_final, "float32")
    assert c.rel_l2 <= 2 * c.floor, (c.rel_l2, c.floor)


def test_tpu_alibi_chunk128_is_stable():
    """ALiBi decays of layer 0 of 20 with H = 16 at chunk 128: the exponents a causal
    mask discards reach past float32's exp range (88.7), so computing exp before masking
    would give inf (and NaN after multiplying by zero). Per-token gates on top push the
    discarded exponents further."""
    heads, chunk = 16, 128
    g_gamma = np.asarray(make_alibi_g_gamma(heads, 20, 0))
    assert max_discarded_exponent(g_gamma, chunk) > FLOAT32_EXP_LIMIT
    arrays = _inputs(
        2, batch=1, seq_len=512, heads=heads, key_dim=128, value_dim=128,
        dtype="float32", gate="g", h0=True, num_states=1,
    )  # fmt: skip
    arrays["g"] = arrays["g"] * 4.0  # mean log decay about -3.2 per token
    arrays["g_gamma"] = g_gamma
    o, final = chunk_simple_gla(**arrays, output_final_state=True, chunk_size=chunk)
    assert np.isfinite(np.asarray(o)).all() and np.isfinite(np.asarray(final)).all()
    ref_o, ref_final = reference.chunk_simple_gla(
        **arrays, output_final_state=True, chunk_size=chunk
    )
    _check(np.asarray(o), ref_o, "float32")
    _check(np.asarray(final), ref_final, "float32")


def test_tpu_under_jit_with_traced_cu_seqlens():
    """One compilation serves different sequence layouts: the chunk tables are built
    from the traced ``cu_seqlens`` at run time."""
    arrays = _inputs(
        3, batch=1, seq_len=200, heads=2, key_dim=64, value_dim=64, dtype="float32",
        gate="both", h0=True, num_states=3,
    )  # fmt: skip

    traces = 0  # the body runs once per trace: new offsets must not retrace

    @jax.jit
    def run(q, k, v, g, g_gamma, initial_state, cu_seqlens):
        nonlocal traces
        traces += 1
        return chunk_simple_gla(
            q, k, v, g=g, g_gamma=g_gamma, initial_state=initial_state,
            output_final_state=True, cu_seqlens=cu_seqlens,
        )  # fmt: skip

    for cu in ((0, 70, 130, 200), (0, 5, 6, 200)):
        cu_seqlens = np.asarray(cu, np.int32)
        o, final = run(**{n: jnp.asarray(x) for n, x in arrays.items()}, cu_seqlens=cu_seqlens)
        ref_o, ref_final = reference.chunk_simple_gla(
            **arrays, output_final_state=True, cu_seqlens=cu_seqlens
        )
        _check(np.asarray(o), ref_o, "float32")
        _check(np.asarray(final), ref_final, "float32")
    assert traces == 1


def test_tpu_invalid_cu_seqlens_do_not_crash():
    """Entries outside the contract (past T, decreasing) give unspecified but finite
    results of the right shapes, never an out-of-range block."""
    arrays = _inputs(
        4, batch=1, seq_len=100, heads=2, key_dim=64, value_dim=64, dtype="float32",
        gate="g", h0=False, num_states=3,
    )  # fmt: skip
    cu = jnp.asarray([0, 250, 30, -7], jnp.int32)
    o, final = chunk_simple_gla(**arrays, output_final_state=True, cu_seqlens=cu)
    assert o.shape == (1, 100, 2, 64) and final.shape == (3, 2, 64, 64)
    assert np.isfinite(np.asarray(final)).all()


def test_tpu_int64_cu_seqlens_equal_int32():
    """FLA's callers pass int64 offsets (a NumPy array here: a JAX array is int64 only
    under ``jax_enable_x64``). The wrapper converts them to int32 before the jitted
    ``custom_vjp``, so the forward and every gradient match int32's bit for bit."""
    arrays = _inputs(
        7, batch=1, seq_len=40, heads=2, key_dim=16, value_dim=16, dtype="float32",
        gate="both", h0=True, num_states=3,
    )  # fmt: skip
    arrays = {name: jnp.asarray(x) for name, x in arrays.items()}

    def run(cu_dtype):
        cu_seqlens = np.asarray((0, 7, 7, 40), cu_dtype)  # an empty sequence included

        def loss(arrays):
            o, final = chunk_simple_gla(**arrays, output_final_state=True, cu_seqlens=cu_seqlens)
            return jnp.sum(o * o) + jnp.sum(final * final), (o, final)

        grads, (o, final) = jax.grad(loss, has_aux=True)(arrays)
        return o, final, grads

    for got, want in zip(
        jax.tree.leaves(run(np.int64)), jax.tree.leaves(run(np.int32)), strict=True
    ):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_tpu_chunk_simple_gla_is_exported_from_tops_ops():
    from tops.ops import chunk_simple_gla as exported

    assert exported is chunk_simple_gla and "chunk_simple_gla" in tops.ops.__all__


@pytest.mark.parametrize("cu", [None, (0, 1, 100, 300)], ids=["tpu_batched", "tpu_varlen"])
def test_tpu_saved_segment_states_for_the_backward(cu):
    """``kernel.forward(save_states=True)`` returns the state before every segment: the
    final state of the sequence's prefix that ends where the segment starts."""
    chunk = 64
    batch, seq_len = (2, 150) if cu is None else (1, 300)
    num_states = batch if cu is None else len(cu) - 1
    arrays = _inputs(
        5, batch=batch, seq_len=seq_len, heads=2, key_dim=64, value_dim=100,
        dtype="float32", gate="both", h0=True, num_states=num_states,
    )  # fmt: skip
    cu_seqlens = None if cu is None else jnp.asarray(cu, jnp.int32)
    _, _, states = kernel.forward(
        *(jnp.asarray(arrays[n]) for n in ("q", "k", "v", "g", "g_gamma", "initial_state")),
        cu_seqlens,
        scale=64**-0.5,
        chunk_size=chunk,
        output_final_state=False,
        save_states=True,
        interpret=pallas_interpret(),
    )
    states = np.asarray(states)
    if cu is None:
        expected = [(b, s, b, 0, s * chunk) for b in range(batch) for s in range(states.shape[2])]
    else:
        chunks, seqs = (
            np.asarray(t) for t in common.segment_tables(cu_seqlens, seq_len=seq_len, chunk=chunk)
        )
        num_chunks = -(-seq_len // chunk)
        expected = [
            (0, s, int(n), cu[n], max(cu[n], int(c) * chunk))
            for s, (c, n) in enumerate(zip(chunks, seqs, strict=True))
            if c < num_chunks
        ]
    assert len(expected) >= states.shape[2] - (0 if cu is None else len(cu) - 1)
    for b, s, n, start, end in expected:
        prefix = {name: arrays[name][b : b + 1, start:end] for name in ("q", "k", "v", "g")}
        if end == start:
            ref_state = arrays["initial_state"][n]
        else:
            _, ref_final = reference.chunk_simple_gla(
                **prefix,
                g_gamma=arrays["g_gamma"],
                initial_state=arrays["initial_state"][n : n + 1],
                output_final_state=True,
            )
            ref_state = ref_final[0]
        _check(states[b, :, s], ref_state, "float32")


def test_tpu_empty_batch():
    q = jnp.zeros((0, 10, 2, 64), jnp.bfloat16)
    v = jnp.zeros((0, 10, 2, 32), jnp.bfloat16)
    o, final = chunk_simple_gla(q, q, v, output_final_state=True)
    assert o.shape == (0, 10, 2, 32) and o.dtype == jnp.bfloat16
    assert final.shape == (0, 2, 64, 32) and final.dtype == jnp.float32
    o, final = chunk_simple_gla(q, q, v)
    assert final is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"q": jnp.zeros((10, 2, 64))}, "q must have rank 4"),
        ({"g": jnp.zeros((1, 10, 2), jnp.bfloat16)}, "g must have dtype"),
        ({"g_gamma": jnp.zeros((3,), jnp.float32)}, "g_gamma must have shape"),
        ({"chunk_size": 32}, "chunk_size"),
        ({"scale": float("nan")}, "scale"),
        ({"initial_state": jnp.zeros((2, 2, 64, 64), jnp.float32)}, "initial_state"),
        ({"cu_seqlens": np.asarray([0, 10], np.float32)}, "cu_seqlens must have dtype"),
    ],
    ids=["tpu_rank", "tpu_g_dtype", "tpu_g_gamma_shape", "tpu_chunk", "tpu_scale", "tpu_h0",
         "tpu_cu_dtype"],
)  # fmt: skip
def test_tpu_rejects_bad_arguments(change, match):
    args = {
        "q": jnp.zeros((1, 10, 2, 64), jnp.float32),
        "k": jnp.zeros((1, 10, 2, 64), jnp.float32),
        "v": jnp.zeros((1, 10, 2, 64), jnp.float32),
    }
    args.update(change)
    with pytest.raises(ValueError, match=match):
        chunk_simple_gla(**args)
