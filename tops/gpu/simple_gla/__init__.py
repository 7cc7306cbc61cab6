"""Chunked simple gated linear attention on the GPU backend: torch wrapper around the
Triton kernels of :mod:`tops.gpu.simple_gla.kernel` (forward) and
:mod:`tops.gpu.simple_gla.backward` (backward), joined by a ``torch.autograd.Function``."""

from __future__ import annotations

import dataclasses
from typing import Literal, NoReturn

import torch

from tops.backends import torch_device
from tops.gpu.simple_gla import backward, kernel
from tops.spec.simple_gla import (
    FIRST_DERIVATIVES_ONLY,
    check_cu_seqlens,
    check_device_cu_seqlens,
    validate,
)

# The tensor arguments of chunk_simple_gla and _ChunkSimpleGLA, in their order.
_INPUT_NAMES = ("q", "k", "v", "g", "g_gamma", "initial_state", "cu_seqlens")


def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    chunk_size: Literal[64, 128] = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Simple GLA forward, chunked: ``h_t = exp(g_t + gamma) h_{t-1} + k_t^T v_t``,
    ``o_t = scale q_t h_t`` per sequence and head (the current token included).

    Positional order as in flash-linear-attention's ``chunk_simple_gla``: ``q, k, v, g,
    g_gamma, scale, initial_state, output_final_state, cu_seqlens``; ``chunk_size`` is
    keyword-only.

    Args:
      q, k: ``[B, T, H, K]`` bf16 or f32 tensors on the GPU backend's device.
      v: ``[B, T, H, V]``, the dtype of ``q``.
      g: None or f32 ``[B, T, H]``, per-token log decay.
      g_gamma: None or f32 ``[H]``, per-head constant log decay (adds to ``g``).
      scale: None (``K ** -0.5``) or a finite Python or NumPy number.
      initial_state: None (zeros) or f32 ``[N, H, K, V]``; ``N = B``, or the number of
        sequences with ``cu_seqlens``.
      output_final_state: whether to return the final states (a Python or NumPy bool).
      cu_seqlens: None or int32 or int64 (FLA's ``torch.long``) ``[N + 1]`` (``B == 1``):
        sequence ``n`` is tokens ``[cu[n], cu[n+1])``, any lengths, each from its own
        initial state; starting at 0, never decreasing, ending at ``T``. A CPU tensor is
        checked; a CUDA tensor is read only on the device (no host sync): malformed
        offsets are repaired there (``tops/spec/simple_gla.py``), or, with
        ``TOPS_CHECK_CU_SEQLENS=1``, synced and checked.
      chunk_size: 64 or 128, the kernels' block of tokens.

    Returns:
      ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of ``v``; ``final_state`` f32
      ``[N, H, K, V]`` or None. The arithmetic (bf16 or tf32 tensor-core operands, f32
      accumulation and state) is :mod:`tops.gpu.arith`'s.
      Differentiable: ``backward()`` through ``o`` and/or ``final_state`` gives the
      gradients w.r.t. ``q, k, v, g, g_gamma, initial_state`` in each input's dtype
      (``g_gamma``'s is the exact derivative, the sum over every position of its head's
      total-gate gradient), computed by :mod:`tops.gpu.simple_gla.backward` from the
      chunk states the forward stores.

    Raises:
      TypeError: an array argument that is not a torch tensor, or a flag that is not a bool.
      ValueError: arguments that break the contract of :mod:`tops.spec.simple_gla`
        (malformed ``cu_seqlens`` when checked, see above), or tensors that are not on
        the backend's device (all on ``q``'s).
      RuntimeError: when a gradient computed with ``create_graph=True`` is differentiated
        (first derivatives only).

    Warns:
      HeadFirstWarning: ``1 < T < H`` suggests head-first ``[B, H, T, K]`` inputs.
    """
    shapes = validate(
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        api="tops.gpu",
    )
    inputs = (q, k, v, g, g_gamma, initial_state, cu_seqlens)
    for name, tensor in zip(_INPUT_NAMES, inputs, strict=True):
        if tensor is not None:
            _require_device(name, tensor, q)
    if cu_seqlens is not None:
        _check_host_cu_seqlens(cu_seqlens, shapes.seq_len)
    static = _Static(shapes.scale, bool(output_final_state), int(chunk_size))
    o, final_state = _ChunkSimpleGLA.apply(static, *inputs)
    return o, final_state


@dataclasses.dataclass(frozen=True)
class _Static:
    """The non-tensor arguments of :class:`_ChunkSimpleGLA`, resolved."""

    scale: float
    output_final_state: bool
    chunk_size: int


class _ChunkSimpleGLA(torch.autograd.Function):
    """Forward by :func:`tops.gpu.simple_gla.kernel.forward`, which also returns the state
    entering every chunk; the backward reuses those states in
    :func:`tops.gpu.simple_gla.backward.backward`. Gradients w.r.t. ``q, k, v, g,
    g_gamma, initial_state`` in each input's dtype; the cotangents of ``o`` and of the
    final state may each be absent (zeros)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, static: _Static, *inputs: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v, g, g_gamma, initial_state, cu_seqlens = inputs
        ctx.static = static
        ctx.has_g = g is not None
        ctx.has_gamma = g_gamma is not None
        ctx.has_h0 = initial_state is not None
        ctx.set_materialize_grads(False)
        batch, _, heads, key_dim = q.shape
        value_dim = v.shape[3]
        if batch == 0:
            ctx.save_for_backward(q, k, v, g, g_gamma, initial_state)
            o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
            final_state = (
                torch.zeros((0, heads, key_dim, value_dim), dtype=torch.float32, device=v.device)
                if static.output_final_state
                else None
            )
            return o, final_state
        q, k, v, g, g_gamma, initial_state, cu_seqlens = (
            None if t is None else t.contiguous() for t in inputs
        )
        o, final_state, states, _ = kernel.forward(
            q,
            k,
            v,
            g,
            g_gamma,
            static.scale,
            initial_state,
            static.output_final_state,
            cu_seqlens,
            static.chunk_size,
        )
        ctx.save_for_backward(q, k, v, g, g_gamma, initial_state, cu_seqlens, states)
        return o, final_state

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, do: torch.Tensor | None, dht: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        with torch.no_grad():  # the kernels' outputs; create_graph=True is handled below
            gradients = _gradients(ctx, saved, do, dht)
        inputs = saved[:6]  # q, k, v, g, g_gamma, initial_state
        sources = [t for t in (*inputs, do, dht) if t is not None and t.requires_grad]
        if torch.is_grad_enabled() and sources:
            gradients = _FirstDerivativesOnly.apply(len(sources), *sources, *gradients)
        return (None, *gradients, None)  # static, q .. initial_state, cu_seqlens


def _gradients(
    ctx: torch.autograd.function.FunctionCtx,
    saved: tuple[torch.Tensor | None, ...],
    do: torch.Tensor | None,
    dht: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    """``(dq, dk, dv, dg, dg_gamma, dh0)`` of :class:`_ChunkSimpleGLA` from its saved
    tensors and the cotangents of ``o`` and the final state (None for absent inputs)."""
    q, k, v, g, g_gamma, initial_state, *rest = saved
    if q.shape[0] == 0:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dg = torch.zeros_like(g) if ctx.has_g else None
        dg_gamma = torch.zeros_like(g_gamma) if ctx.has_gamma else None
        dh0 = torch.zeros_like(initial_state) if ctx.has_h0 else None
        return dq, dk, dv, dg, dg_gamma, dh0
    cu_seqlens, states = rest
    do = torch.zeros_like(v) if do is None else do.to(v.dtype).contiguous()
    dht = None if dht is None else dht.to(torch.float32).contiguous()
    dq, dk, dv, dg, dg_gamma, dh0 = backward.backward(
        q, k, v, g, g_gamma, ctx.static.scale, states, do, dht, cu_seqlens, ctx.static.chunk_size
    )
    return dq, dk, dv, dg, dg_gamma, (dh0 if ctx.has_h0 else None)


class _FirstDerivativesOnly(torch.autograd.Function):
    """The identity on :class:`_ChunkSimpleGLA`'s gradients under ``create_graph=True``,
    tied to the tensors they depend on, whose backward raises: the Triton backward kernels
    have no derivative. Without it the gradients would not require grad, and a second
    backward would fail without naming the limit (or silently miss this op's part)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, num_sources: int, *tensors: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        return tensors[num_sources:]

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *cotangents: torch.Tensor) -> NoReturn:
        raise RuntimeError(FIRST_DERIVATIVES_ONLY)


def _check_host_cu_seqlens(cu_seqlens: torch.Tensor, seq_len: int) -> None:
    """ValueError for malformed offsets that can be read without a stall: a CPU tensor
    (every tensor under the interpreter), or a CUDA one when ``TOPS_CHECK_CU_SEQLENS``
    asks for the sync. Unchecked device offsets are repaired by the launchers
    (:func:`tops.gpu.simple_gla.common.repair_cu_seqlens`)."""
    if cu_seqlens.device.type == "cpu" or check_device_cu_seqlens():
        check_cu_seqlens(cu_seqlens.detach().cpu().numpy(), seq_len)


def _require_device(name: str, tensor: torch.Tensor, q: torch.Tensor) -> None:
    """``tensor`` is on the backend's device type, and on ``q``'s device."""
    expected = torch_device()
    if tensor.device.type != expected:
        raise ValueError(f"{name} must be on the {expected} device, got {tensor.device}")
    if tensor.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {tensor.device}")


__all__ = ["chunk_simple_gla"]
