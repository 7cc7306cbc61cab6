"""The Triton chunked simple GLA backward (``loss.backward()`` through
``tops.gpu.simple_gla.chunk_simple_gla``) against the float64 reference gradients
(``tops.cpu.simple_gla.chunk_simple_gla_grad``, ``jax.vjp`` of the step recurrence): every
gradient (``q, k, v, g, g_gamma, initial_state``) for the contract's shapes, gates,
states, cotangents and varlen layouts, the gradient dtypes, the empty batch and the ALiBi
overflow case (the sm_90 compile of every shipped backward configuration is in
tests/ops/test_gpu_compile.py, via ``tops.gpu.simple_gla.backward``).

Tolerance: the forward's (``tops/precision/cases/simple_gla.py``), with the value width
added to the accumulation term since ``dq``, ``dk`` sum over ``V``::

    ε <= u_out + 4 u_op + (C + K + V + ceil(T / C)) 2**-24

``u_op`` is the rounding of the kernels' matmul operands (tf32 truncation ``2**-10`` for
f32 inputs, bf16 ``2**-8``), ``u_out`` the rounding of the gradient itself (``2**-9`` for
bf16 ``dq, dk, dv``; ``2**-24`` for the f32 ``dg, dg_gamma, dh0`` and for f32 inputs).
Every gradient path rounds at most about four operands: for bf16, ``dk_j = exp(G_L -
G_j) v_j dS'^T + ds^T q`` rounds the gated queries of the dh pass, the stored ``dS'``
and the gated ``ds`` matrix, and ``dq`` rounds the forward's state and ``ds``; for f32
every operand is truncated once. ``dg`` is formed in f32 from the unrounded f32 ``dq, dk``
(``q . dq - k . dk``), so it carries their operand errors only. Measured in interpret
mode on this file's cases (largest ε per gradient): f32 ``dq`` 1.5e-3, ``dk`` 1.5e-3,
``dv`` 1.5e-3, ``dg`` 1.5e-3, ``dg_gamma`` 1.7e-3, ``dh0`` 7.6e-4 (the tf32 truncation,
as the forward's 1.5e-3 for ``o``); bf16 ``dq`` 6.2e-3, ``dk`` 6.8e-3, ``dv`` 6.7e-3
(bf16 operands plus the bf16 output), ``dg`` 2.8e-3, ``dg_gamma`` 2.0e-3, ``dh0``
3.3e-3. The bounds are 3.9e-3 (f32) and 1.8e-2 (bf16): 2.3x and 2.6x headroom.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
from tops.cpu import simple_gla as reference
from tops.gpu.simple_gla import chunk_simple_gla
from tops.ops.simple_gla.alibi import FLOAT32_EXP_LIMIT, make_alibi_g_gamma, max_discarded_exponent
from tops.precision.cases.simple_gla import OPERAND_UNIT, OUTPUT_UNIT, random_arrays
from tops.precision.cases.simple_gla_grad import GRADIENTS
from tops.precision.convert import from_torch, to_torch


def _tolerance(dtype: str, grad_dtype, seq_len: int, chunk: int, key_dim, value_dim) -> float:
    u_out = OUTPUT_UNIT["bfloat16" if grad_dtype == torch.bfloat16 else "float32"]
    terms = chunk + key_dim + value_dim + math.ceil(seq_len / chunk)
    return u_out + 4 * OPERAND_UNIT[dtype] + terms * 2.0**-24


def _rel_l2(out, ref) -> float:
    out = np.asarray(out, np.float64)
    norm = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (norm if norm > 0 else 1.0))


def _backward(arrays: dict, *, do, dht, chunk_size: int, scale=None):
    """``loss.backward()`` through the GPU op with ``loss = sum(o * do) + sum(final_state *
    dht)`` (either term absent when its cotangent is None); returns the leaf tensors."""
    device = backends.torch_device()
    tensors = {name: to_torch(array, device) for name, array in arrays.items()}
    for name in GRADIENTS:
        if name in tensors:
            tensors[name].requires_grad_(True)
    o, final_state = chunk_simple_gla(
        **tensors, output_final_state=dht is not None, chunk_size=chunk_size, scale=scale
    )
    loss = 0.0
    if do is not None:
        loss = (o * to_torch(do, device)).sum()
    if dht is not None:
        loss = loss + (final_state * to_torch(dht, device)).sum()
    loss.backward()
    return tensors


def _check(arrays: dict, *, do, dht, chunk_size: int, scale=None):
    """Run the backward, compare every gradient with the reference; returns the ε's (by
    gradient name) and the leaf tensors."""
    tensors = _backward(arrays, do=do, dht=dht, chunk_size=chunk_size, scale=scale)
    ref_do = np.zeros(arrays["v"].shape, np.float32) if do is None else do
    ref = reference.chunk_simple_gla_grad(
        **arrays, chunk_size=chunk_size, scale=scale, do=ref_do, dht=dht
    )
    dtype = str(arrays["q"].dtype)
    seq_len = arrays["q"].shape[1]
    key_dim, value_dim = arrays["q"].shape[3], arrays["v"].shape[3]
    errors = {}
    for name, grad_name in GRADIENTS.items():
        if name not in tensors:
            continue
        tensor = tensors[name]
        assert tensor.grad is not None, name
        assert tensor.grad.dtype == tensor.dtype and tensor.grad.shape == tensor.shape, name
        grad = from_torch(tensor.grad)
        assert np.isfinite(np.asarray(grad, np.float64)).all(), name
        errors[grad_name] = _rel_l2(grad, ref[grad_name])
        bound = _tolerance(dtype, tensor.dtype, seq_len, chunk_size, key_dim, value_dim)
        assert errors[grad_name] <= bound, (grad_name, errors[grad_name], bound)
    return errors, tensors


def _cotangents(rng, arrays: dict, *, num_states: int, use_o: bool, use_dht: bool):
    """``do`` (in the dtype of ``v``) and ``dht`` (f32), or None where unused."""
    v = arrays["v"]
    key_dim = arrays["q"].shape[3]
    do = rng.standard_normal(v.shape).astype(v.dtype) if use_o else None
    dht = None
    if use_dht:
        shape = (num_states, v.shape[2], key_dim, v.shape[3])
        dht = rng.standard_normal(shape).astype(np.float32)
    return do, dht


# (batch, T, heads, K, V, chunk, gate, initial state, cotangent of o, of final state, dtype)
CASES = [
    (2, 1, 2, 20, 12, 64, "both", True, True, True, "float32"),
    (2, 1, 1, 12, 20, 128, "g", False, True, False, "bfloat16"),
    (1, 63, 2, 40, 24, 64, "g", True, True, False, "bfloat16"),
    (1, 63, 2, 24, 40, 128, "none", False, True, True, "float32"),
    (2, 64, 1, 24, 40, 128, "g_gamma", False, True, True, "float32"),
    (1, 64, 2, 36, 20, 64, "both", True, False, True, "bfloat16"),  # final state only
    (1, 100, 1, 72, 20, 64, "none", True, True, True, "bfloat16"),  # two key blocks
    (1, 100, 1, 20, 72, 64, "g_gamma", True, True, False, "float32"),  # two value blocks
    (1, 200, 2, 20, 36, 128, "both", True, True, True, "bfloat16"),
    (1, 200, 1, 36, 20, 64, "both", False, True, False, "float32"),
    (1, 200, 1, 28, 28, 128, "g", True, False, True, "float32"),  # final state only
]


@pytest.mark.parametrize(
    (
        "batch",
        "seq_len",
        "heads",
        "key_dim",
        "value_dim",
        "chunk",
        "gate",
        "h0",
        "use_o",
        "dht",
        "dtype",
    ),
    CASES,
)
def test_gpu_backward_matches_reference(
    batch, seq_len, heads, key_dim, value_dim, chunk, gate, h0, use_o, dht, dtype
):
    rng = np.random.default_rng(seq_len * 1000 + key_dim * 10 + value_dim + chunk)
    arrays = random_arrays(
        rng,
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=key_dim,
        value_dim=value_dim,
        dtype=dtype,
        gate=gate,
        num_states=batch if h0 else 0,
        gate_shift=2.0,
    )
    do, dht_array = _cotangents(rng, arrays, num_states=batch, use_o=use_o, use_dht=dht)
    _check(arrays, do=do, dht=dht_array, chunk_size=chunk)


VARLEN_CASES = [
    # empty sequences keep their state: dh0 = dht there
    ((0, 0, 70, 70, 130), "float32", 64, "both"),
    ((0, 1, 100, 228), "bfloat16", 128, "g"),
    ((0, 64, 127), "float32", 64, "g_gamma"),
]


@pytest.mark.parametrize(("cu_seqlens", "dtype", "chunk", "gate"), VARLEN_CASES)
def test_gpu_backward_varlen_matches_reference(cu_seqlens, dtype, chunk, gate):
    rng = np.random.default_rng(len(cu_seqlens) + chunk)
    num_states = len(cu_seqlens) - 1
    arrays = random_arrays(
        rng,
        batch=1,
        seq_len=cu_seqlens[-1],
        heads=2,
        key_dim=20,
        value_dim=12,
        dtype=dtype,
        gate=gate,
        num_states=num_states,
        gate_shift=2.0,
    )
    arrays["cu_seqlens"] = np.asarray(cu_seqlens, np.int32)
    do, dht = _cotangents(rng, arrays, num_states=num_states, use_o=True, use_dht=True)
    _, tensors = _check(arrays, do=do, dht=dht, chunk_size=chunk, scale=0.3)
    if cu_seqlens[1] == 0:  # an empty sequence: its initial state's gradient is dht
        np.testing.assert_array_equal(from_torch(tensors["initial_state"].grad)[0], dht[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_backward_gradient_dtypes(dtype):
    """Each gradient has its input's dtype and shape: bf16 or f32 ``dq, dk, dv``, f32
    ``dg, dg_gamma, dh0``."""
    rng = np.random.default_rng(3)
    arrays = random_arrays(
        rng,
        batch=1,
        seq_len=5,
        heads=2,
        key_dim=8,
        value_dim=4,
        dtype=dtype,
        gate="both",
        num_states=1,
    )
    do, dht = _cotangents(rng, arrays, num_states=1, use_o=True, use_dht=True)
    tensors = _backward(arrays, do=do, dht=dht, chunk_size=64)
    expected = {name: torch.float32 for name in ("g", "g_gamma", "initial_state")}
    expected.update(dict.fromkeys(("q", "k", "v"), getattr(torch, dtype)))
    for name, tensor_dtype in expected.items():
        grad = tensors[name].grad
        assert grad.dtype == tensor_dtype and grad.shape == tensors[name].shape, name


def test_gpu_backward_empty_batch():
    """B = 0: ``loss.backward()`` works and every gradient is an empty (or, for
    ``g_gamma``, zero) tensor of its input's shape and dtype."""
    device = backends.torch_device()
    q = torch.zeros((0, 5, 2, 8), dtype=torch.bfloat16, device=device, requires_grad=True)
    k = torch.zeros((0, 5, 2, 8), dtype=torch.bfloat16, device=device, requires_grad=True)
    v = torch.zeros((0, 5, 2, 3), dtype=torch.bfloat16, device=device, requires_grad=True)
    g = torch.zeros((0, 5, 2), device=device, requires_grad=True)
    g_gamma = torch.full((2,), -0.1, device=device, requires_grad=True)
    h0 = torch.zeros((0, 2, 8, 3), device=device, requires_grad=True)
    o, final_state = chunk_simple_gla(
        q, k, v, g=g, g_gamma=g_gamma, initial_state=h0, output_final_state=True
    )
    (o.float().sum() + final_state.sum()).backward()
    for tensor in (q, k, v, g, g_gamma, h0):
        assert tensor.grad.shape == tensor.shape and tensor.grad.dtype == tensor.dtype
    assert (g_gamma.grad == 0).all()


def test_gpu_backward_alibi_gates_at_chunk_128_stay_finite():
    """ALiBi decays (layer 0 of 20, H = 16) at chunk 128: the exponents ``G_i - G_j``
    (``j > i``) that the causal masks of the backward's ``ds`` and ``dv`` attention
    matrices discard exceed 88.7, where exp overflows in f32, and so do the decays of the
    rows past the end of the last chunk (T = 129). Masking every exponent before exp
    keeps every gradient finite and accurate."""
    heads, seq_len, chunk = 16, 129, 128
    g_gamma = np.array(make_alibi_g_gamma(heads, 20, 0), np.float32)
    assert max_discarded_exponent(g_gamma, chunk) > FLOAT32_EXP_LIMIT

    rng = np.random.default_rng(20)
    arrays = random_arrays(
        rng,
        batch=1,
        seq_len=seq_len,
        heads=heads,
        key_dim=16,
        value_dim=16,
        dtype="float32",
        gate="none",
        num_states=1,
    )
    arrays["g_gamma"] = g_gamma
    do, dht = _cotangents(rng, arrays, num_states=1, use_o=True, use_dht=True)
    _check(arrays, do=do, dht=dht, chunk_size=chunk)
