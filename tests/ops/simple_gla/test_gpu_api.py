"""Bad input to ``tops.gpu.simple_gla.chunk_simple_gla``: one test per row of the "Bad
input" table in ``tops/spec/simple_gla.py`` (the JAX API's twins are in ``test_api.py``),
in the Triton interpreter at small shapes."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from tops import backends
from tops.gpu.simple_gla import chunk_simple_gla, kernel
from tops.spec import simple_gla as spec
from tops.spec.simple_gla import FIRST_DERIVATIVES_ONLY, HeadFirstWarning


def _tensors(seed=0, *, batch=1, seq_len=10, heads=2, dim=8, dtype=torch.float32):
    """q, k, v ``[B, T, H, dim]`` in ``dtype``, g ``[B, T, H]``, g_gamma ``[H]`` and one
    initial state per batch row in float32, on the backend's device."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(shape, generator=generator)

    tensors = {name: normal(batch, seq_len, heads, dim).to(dtype) for name in "qkv"}
    tensors["g"] = -torch.rand((batch, seq_len, heads), generator=generator)
    tensors["g_gamma"] = -torch.rand(heads, generator=generator) / 4
    tensors["initial_state"] = normal(batch, heads, dim, dim)
    return {name: x.to(backends.torch_device()) for name, x in tensors.items()}


@pytest.mark.parametrize(
    "change",
    [{"g_gamma": [-0.1, -0.2]}, {"cu_seqlens": [0, 3, 10]}, {"q": ((0.0,),)}],
    ids=["gpu_g_gamma_list", "gpu_cu_seqlens_list", "gpu_q_tuple"],
)
def test_gpu_lists_and_tuples(change):
    (name,) = change
    tensors = {**_tensors(), "initial_state": None, **change}
    with pytest.raises(TypeError, match=rf"^{name} must be a torch tensor for tops.gpu"):
        chunk_simple_gla(**tensors)


def test_gpu_numpy_scalars():
    tensors = _tensors()
    python = chunk_simple_gla(**tensors, scale=0.25, chunk_size=128)
    numpy = chunk_simple_gla(**tensors, scale=np.float32(0.25), chunk_size=np.int64(128))
    assert torch.equal(numpy[0], python[0])


def test_gpu_wrong_framework():
    jnp = pytest.importorskip("jax.numpy")
    tensors = _tensors()
    for name in ("q", "g", "cu_seqlens"):
        for wrong in (jnp.zeros(3, jnp.int32), np.zeros(3, np.int32)):
            with pytest.raises(TypeError, match=rf"^{name} must be a torch tensor .* got"):
                chunk_simple_gla(**{**tensors, name: wrong})


def test_gpu_x64_mode():
    """torch has no x64 mode: float64 tensors get the ValueError float64 JAX arrays get."""
    q = torch.zeros((1, 4, 2, 8), dtype=torch.float64, device=backends.torch_device())
    with pytest.raises(ValueError, match=r"^q must have dtype in"):
        chunk_simple_gla(q, q, q)


@pytest.mark.parametrize("final_state", [False, True], ids=["gpu_o", "gpu_o_and_state"])
def test_gpu_empty_batch(final_state):
    tensors = {name: x.requires_grad_() for name, x in _tensors(batch=0, seq_len=5, dim=16).items()}
    o, state = chunk_simple_gla(**tensors, output_final_state=final_state)
    assert o.shape == (0, 5, 2, 16) and o.dtype == torch.float32
    assert (state.shape == (0, 2, 16, 16)) if final_state else (state is None)
    grads = torch.autograd.grad(o.sum(), list(tensors.values()))
    assert [x.shape for x in grads] == [x.shape for x in tensors.values()]


def test_gpu_no_tokens():
    with pytest.raises(ValueError, match=r"^q must have T, H, K >= 1, got shape \(1, 0, 2, 8\)"):
        chunk_simple_gla(**_tensors(seq_len=0))


def test_gpu_huge_seq_len(monkeypatch):
    """Above ``MAX_TOKENS`` (patched small: the real one needs 2**31 tokens) B * T is
    refused before any kernel; at the limit the call runs."""
    monkeypatch.setattr(spec, "MAX_TOKENS", 20)
    assert chunk_simple_gla(**_tensors(batch=2, seq_len=10))[0].shape == (2, 10, 2, 8)
    with pytest.raises(ValueError, match=r"^q must have B \* T <= 20 \(token positions are int32"):
        chunk_simple_gla(**_tensors(batch=3, seq_len=7))


def test_gpu_head_first_layout():
    """``1 < T < H`` warns (a ``[B, H, T, K]`` tensor read as ``[B, T, H, K]``); ``T >= H``
    and ``T = 1`` do not; the dedicated category silences it."""
    head_first = _tensors(seq_len=3, heads=8)
    with pytest.warns(HeadFirstWarning, match=r"expects \[B, T, H, K\], not head-first") as seen:
        chunk_simple_gla(**head_first)
    # Only the category counts: Triton 3.6's interpreter adds DeprecationWarnings.
    ours = [w for w in seen if issubclass(w.category, HeadFirstWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadFirstWarning)
        for seq_len, heads in ((8, 8), (1, 8)):
            chunk_simple_gla(**_tensors(seq_len=seq_len, heads=heads))
        warnings.filterwarnings("ignore", category=HeadFirstWarning)
        chunk_simple_gla(**head_first)


def _second_derivative_of_grad(f, q):
    (dq,) = torch.autograd.grad(f(q), q, create_graph=True)
    dq.sum().backward()


@pytest.mark.parametrize(
    "derivative",
    [_second_derivative_of_grad, torch.autograd.functional.hessian],
    ids=["gpu_grad_of_grad", "gpu_hessian"],
)
def test_gpu_higher_order(derivative):
    tensors = _tensors(seq_len=5)
    q = tensors.pop("q").requires_grad_()

    def f(q):
        return chunk_simple_gla(q, **tensors)[0].sum()

    with pytest.raises(RuntimeError, match=f"^{re.escape(FIRST_DERIVATIVES_ONLY)}"):
        derivative(f, q)


def test_gpu_bool_flags():
    """``output_final_state`` is a Python or NumPy bool; anything else a TypeError."""
    tensors = _tensors()
    for flag in (1, 1.0, "yes", None, np.int64(1), torch.tensor(True)):
        with pytest.raises(TypeError, match=r"^output_final_state must be a bool"):
            chunk_simple_gla(**tensors, output_final_state=flag)
    _, state = chunk_simple_gla(**tensors, output_final_state=np.bool_(True))
    _, expected = chunk_simple_gla(**tensors, output_final_state=True)
    assert torch.equal(state, expected)


MALFORMED_CU_SEQLENS = {
    "start": ([1, 3, 10], r"start at 0 \(cu_seqlens\[0\] = 1\)"),
    "decrease": ([0, 6, 3, 10], r"never decrease \(cu_seqlens\[1\] = 6 > cu_seqlens\[2\] = 3\)"),
    "end": ([0, 3, 11], r"end at T = 10 \(cu_seqlens\[-1\] = 11\)"),
    "negative": ([0, -2, 10], r"never decrease"),
    "int64": ([0, 2**32 + 3, 10], r"never decrease .* = 4294967299 >"),
}


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["gpu_int32", "gpu_int64"])
def test_gpu_malformed_cu_seqlens(dtype, monkeypatch):
    """CPU tensors that do not start at 0, decrease or do not end at T: ValueError naming
    ``cu_seqlens`` and the broken invariant, before any kernel is launched. (Device
    offsets, which the wrapper does not read, reach the launchers unchecked: their twin
    of ``test_tpu_device_cu_seqlens`` is ``test_gpu_robustness.py``, on the launchers.)"""
    tensors = {**_tensors(), "initial_state": None}
    monkeypatch.setattr(kernel, "forward", None)  # a kernel launch would fail differently
    for cu, match in MALFORMED_CU_SEQLENS.values():
        if dtype == torch.int32 and max(cu) >= 2**31:
            continue
        with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
            chunk_simple_gla(**tensors, cu_seqlens=torch.tensor(cu, dtype=dtype))


def test_gpu_checked_cu_seqlens(monkeypatch):
    """With ``TOPS_CHECK_CU_SEQLENS=1`` (which syncs CUDA offsets): malformed offsets raise
    the same ValueError; valid ones give the unchecked result."""
    tensors = {**_tensors(), "initial_state": None}
    valid = torch.tensor([0, 3, 10], dtype=torch.int32)
    expected = chunk_simple_gla(**tensors, cu_seqlens=valid)[0]
    monkeypatch.setenv(spec.CHECK_CU_SEQLENS_VARIABLE, "1")
    for cu, match in MALFORMED_CU_SEQLENS.values():
        with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
            chunk_simple_gla(**tensors, cu_seqlens=torch.tensor(cu, dtype=torch.int64))
    assert torch.equal(chunk_simple_gla(**tensors, cu_seqlens=valid)[0], expected)
