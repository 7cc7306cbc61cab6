"""The Triton chunked simple GLA forward against the float64 reference: the contract's
shapes, gates, states and varlen layouts, the ALiBi overflow case and validation (the
tf32/bf16 dot arithmetic is tested in tests/ops/test_gpu_arith.py, the sm_90 compile of
every shipped configuration in tests/ops/test_gpu_compile.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tops import backends, gpu  # tops.gpu configures Triton first
from tops.cpu import simple_gla as reference
from tops.gpu.simple_gla import chunk_simple_gla
from tops.ops.simple_gla.alibi import FLOAT32_EXP_LIMIT, make_alibi_g_gamma, max_discarded_exponent
from tops.precision.cases.simple_gla import random_arrays
from tops.precision.convert import from_torch, to_torch
from tops.precision.metrics import numpy_dtype

# rel_l2 bounds of this file's small cases (T <= 300). f32 inputs run tf32 dots: each
# operand is truncated to 10 mantissa bits (relative error < 2**-10, biased toward zero,
# so it does not average out): about 1e-3 measured, 4e-3 allowed. bf16 inputs round the
# decayed values, the chunk states and the attention matrix to bf16 before their dots
# (2**-9 each): about 5e-3 measured, 2e-2 allowed.
TOLERANCE = {"float32": 4e-3, "bfloat16": 2e-2}


def _inputs(rng, *, states, **shapes):
    """``random_arrays`` with milder per-token gates (logits shifted by +2) and
    ``states`` initial states (none when 0)."""
    return random_arrays(rng, num_states=states, gate_shift=2.0, **shapes)


def _run_both(arrays: dict, **static):
    """(GPU outputs, reference outputs) as NumPy, for NumPy ``arrays``."""
    device = backends.torch_device()
    tensors = {name: to_torch(array, device) for name, array in arrays.items()}
    o, final_state = chunk_simple_gla(**tensors, **static)
    ref_o, ref_final = reference.chunk_simple_gla(**arrays, **static)
    return (from_torch(o), None if final_state is None else from_torch(final_state)), (
        ref_o,
        ref_final,
    )


def _rel_l2(out, ref) -> float:
    out = np.asarray(out, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _check(gpu_outputs, ref_outputs, dtype, output_final_state):
    (o, final_state), (ref_o, ref_final) = gpu_outputs, ref_outputs
    assert o.dtype == numpy_dtype(dtype) and o.shape == ref_o.shape
    assert np.isfinite(np.asarray(o, np.float64)).all()
    assert _rel_l2(o, ref_o) <= TOLERANCE[dtype], _rel_l2(o, ref_o)
    if not output_final_state:
        assert final_state is None
        return
    assert final_state.dtype == np.float32 and final_state.shape == ref_final.shape
    assert np.isfinite(final_state).all()
    assert _rel_l2(final_state, ref_final) <= TOLERANCE[dtype], _rel_l2(final_state, ref_final)


# (batch, T, heads, K, V, chunk, gate, initial state, final state)
CASES = [
    (2, 1, 2, 64, 64, 64, "both", True, True),
    (1, 63, 2, 100, 64, 64, "g", True, False),
    (2, 64, 2, 64, 128, 128, "g_gamma", False, True),
    (1, 100, 2, 128, 100, 64, "none", True, True),
    (2, 100, 2, 64, 64, 128, "both", False, True),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("batch", "seq_len", "heads", "key_dim", "value_dim", "chunk", "gate", "h0", "ht"), CASES
)
def test_gpu_matches_reference(
    dtype, batch, seq_len, heads, key_dim, value_dim, chunk, gate, h0, ht
):
    rng = np.random.default_rng(seq_len * 1000 + key_dim + value_dim + chunk)
    arrays = _inputs(
        rng,
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
        dtype=dtype,
        gate=gate,
        states=batch if h0 else 0,
    )
    outputs = _run_both(arrays, output_final_state=ht, chunk_size=chunk)
    _check(*outputs, dtype, ht)


VARLEN_CASES = [
    ((0, 15), "float32", 64, "g"),
    ((0, 1, 100, 300), "bfloat16", 128, "both"),
    ((0, 1, 100, 300), "float32", 64, "g_gamma"),
    ((0, 0, 70, 70, 130), "float32", 64, "both"),  # empty sequences keep their state
]


@pytest.mark.parametrize(("cu_seqlens", "dtype", "chunk", "gate"), VARLEN_CASES)
def test_gpu_varlen_matches_reference(cu_seqlens, dtype, chunk, gate):
    rng = np.random.default_rng(len(cu_seqlens) + chunk)
    arrays = _inputs(
        rng,
        batch=1,
        seq_len=cu_seqlens[-1],
        heads=2,
        key_dim=64,
        value_dim=32,
        dtype=dtype,
        gate=gate,
        states=len(cu_seqlens) - 1,
    )
    arrays["cu_seqlens"] = np.asarray(cu_seqlens, np.int32)
    outputs = _run_both(arrays, output_final_state=True, chunk_size=chunk, scale=0.3)
    _check(*outputs, dtype, True)
    if cu_seqlens[1] == 0:  # an empty sequence's final state is its initial state
        np.testing.assert_array_equal(outputs[0][1][0], arrays["initial_state"][0])


def test_gpu_alibi_gates_at_chunk_128_stay_finite():
    """ALiBi decays (layer 0 of 20, H = 16) at chunk 128: the exponents G_i - G_j that the
    causal mask discards exceed 88.7, where exp overflows in f32, and so do the decays
    G_last - G_j of the 127 rows past the end of the last chunk (T = 513). Masking every
    exponent before exp keeps the outputs finite and accurate (factoring the decay as
    exp(G_i) exp(-G_j), or decaying the padded rows unmasked, gives NaN here)."""
    heads, seq_len, chunk, layer, layers = 16, 513, 128, 0, 20
    g_gamma = np.asarray(make_alibi_g_gamma(heads, layers, layer))
    assert max_discarded_exponent(g_gamma, chunk) > FLOAT32_EXP_LIMIT

    rng = np.random.default_rng(20)
    arrays = _inputs(
        rng,
        batch=1,
        seq_len=seq_len,
        heads=heads,
        key_dim=32,
        value_dim=32,
        dtype="float32",
        gate="none",
        states=1,
    )
    arrays["g_gamma"] = g_gamma
    outputs = _run_both(arrays, output_final_state=True, chunk_size=chunk)
    _check(*outputs, "float32", True)


def _tiny_varlen(seed: int):
    """f32 torch inputs of a tiny varlen case, both gates and initial states, and its int32
    ``cu_seqlens`` (an empty sequence included)."""
    arrays = _inputs(
        np.random.default_rng(seed),
        batch=1,
        seq_len=40,
        heads=2,
        key_dim=16,
        value_dim=16,
        dtype="float32",
        gate="both",
        states=3,
    )
    device = backends.torch_device()
    tensors = {name: to_torch(array, device) for name, array in arrays.items()}
    return tensors, torch.tensor([0, 7, 7, 40], dtype=torch.int32, device=device)


def test_gpu_int64_cu_seqlens_equal_int32():
    """FLA's callers pass ``torch.long`` offsets. The wrapper casts them to int32 before
    the autograd Function, so the forward and every gradient match int32's bit for bit."""
    tensors, cu_seqlens = _tiny_varlen(30)
    leaves = [tensor.requires_grad_(True) for tensor in tensors.values()]

    def run(cu):
        o, final_state = chunk_simple_gla(**tensors, output_final_state=True, cu_seqlens=cu)
        loss = (o * o).sum() + (final_state * final_state).sum()
        return o, final_state, *torch.autograd.grad(loss, leaves)

    for got, want in zip(run(cu_seqlens.long()), run(cu_seqlens), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_gpu_takes_fla_positional_order():
    """``(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens)``
    positionally, as flash-linear-attention's ``chunk_simple_gla`` takes them, equals the
    keyword call; ``chunk_size`` stays keyword-only."""
    tensors, cu_seqlens = _tiny_varlen(31)
    q, k, v, g, g_gamma, h0 = tensors.values()
    positional = chunk_simple_gla(q, k, v, g, g_gamma, 0.3, h0, True, cu_seqlens)
    keyword = chunk_simple_gla(
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=0.3,
        initial_state=h0,
        output_final_state=True,
        cu_seqlens=cu_seqlens,
    )
    for got, want in zip(positional, keyword, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(TypeError):
        chunk_simple_gla(q, k, v, g, g_gamma, 0.3, h0, True, cu_seqlens, 64)


def test_gpu_chunk_simple_gla_is_exported_from_tops_gpu():
    from tops.gpu import chunk_simple_gla as exported

    assert exported is chunk_simple_gla and "chunk_simple_gla" in gpu.__all__


@pytest.mark.parametrize("output_final_state", [False, True])
def test_gpu_empty_batch(output_final_state):
    device = backends.torch_device()
    q = torch.zeros((0, 5, 2, 8), dtype=torch.bfloat16, device=device)
    v = torch.zeros((0, 5, 2, 3), dtype=torch.bfloat16, device=device)
    o, final_state = chunk_simple_gla(q, q, v, output_final_state=output_final_state)
    assert o.shape == (0, 5, 2, 3) and o.dtype == torch.bfloat16
    if output_final_state:
        assert final_state.shape == (0, 2, 8, 3) and final_state.dtype == torch.float32
    else:
        assert final_state is None


def _bad_call(change: str):
    device = backends.torch_device()
    q = torch.zeros((1, 4, 2, 8), device=device)
    v = torch.zeros((1, 4, 2, 6), device=device)
    kwargs = {}
    if change == "rank":
        q = q[0]
    elif change == "dtype":
        v = v.to(torch.bfloat16)
    elif change == "chunk":
        kwargs["chunk_size"] = 32
    elif change == "gamma_shape":
        kwargs["g_gamma"] = torch.zeros(3, device=device)
    elif change == "state_shape":
        kwargs["initial_state"] = torch.zeros((1, 2, 6, 8), device=device)
    elif change == "varlen_batch":
        q, v = q.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)
        kwargs["cu_seqlens"] = torch.tensor([0, 4], dtype=torch.int32, device=device)
    elif change == "cu_float":
        kwargs["cu_seqlens"] = torch.tensor([0.0, 4.0], device=device)
    return chunk_simple_gla(q, q, v, **kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rank", "q must have rank 4"),
        ("dtype", "v must have the dtype of q"),
        ("chunk", "chunk_size must be one of"),
        ("gamma_shape", "g_gamma must have shape"),
        ("state_shape", "initial_state must have shape"),
        ("varlen_batch", "cu_seqlens requires B == 1"),
        ("cu_float", "cu_seqlens must have dtype"),
    ],
)
def test_gpu_bad_arguments_raise_value_errors(change, message):
    with pytest.raises(ValueError, match=message):
        _bad_call(change)
