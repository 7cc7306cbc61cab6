"""Chunked simple gated linear attention on the GPU backend: torch wrapper around the
Triton kernels of :mod:`tops.gpu.simple_gla.kernel`."""

from __future__ import annotations

import torch

from tops.backends import torch_device
from tops.gpu.simple_gla import kernel
from tops.spec.simple_gla import validate


def chunk_simple_gla(
    q,
    k,
    v,
    *,
    g=None,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    chunk_size=64,
):
    """Simple GLA forward, chunked: ``h_t = exp(g_t + gamma) h_{t-1} + k_t^T v_t``,
    ``o_t = scale q_t h_t`` per sequence and head (the current token included).

    Args:
      q, k: ``[B, T, H, K]`` bf16 or f32 tensors on the GPU backend's device.
      v: ``[B, T, H, V]``, the dtype of ``q``.
      g: None or f32 ``[B, T, H]``, per-token log decay.
      g_gamma: None or f32 ``[H]``, per-head constant log decay (adds to ``g``).
      scale: None (``K ** -0.5``) or a finite Python number.
      initial_state: None (zeros) or f32 ``[N, H, K, V]``; ``N = B``, or the number of
        sequences with ``cu_seqlens``.
      output_final_state: whether to return the final states.
      cu_seqlens: None or int32 ``[N + 1]`` (``B == 1``): sequence ``n`` is tokens
        ``[cu[n], cu[n+1])``, any lengths, each from its own initial state. Read only on
        the device (no host sync).
      chunk_size: 64 or 128, the kernels' block of tokens.

    Returns:
      ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of ``v``; ``final_state`` f32
      ``[N, H, K, V]`` or None. The arithmetic (bf16 or tf32 tensor-core operands, f32
      accumulation and state) is described in :mod:`tops.gpu.simple_gla.kernel`.

    Raises:
      ValueError: arguments that break the contract of :mod:`tops.spec.simple_gla`, or
        tensors that are not torch tensors on the backend's device (all on ``q``'s).
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
    )
    named = {
        "q": q,
        "k": k,
        "v": v,
        "g": g,
        "g_gamma": g_gamma,
        "initial_state": initial_state,
        "cu_seqlens": cu_seqlens,
    }
    for name, tensor in named.items():
        if tensor is not None:
            _require_device(name, tensor, q)
    if shapes.batch == 0:
        o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        final_state = (
            torch.zeros(
                (0, shapes.heads, shapes.key_dim, shapes.value_dim),
                dtype=torch.float32,
                device=v.device,
            )
            if output_final_state
            else None
        )
        return o, final_state
    o, final_state, _, _ = kernel.forward(
        *(t.contiguous() if t is not None else None for t in (q, k, v, g, g_gamma)),
        shapes.scale,
        None if initial_state is None else initial_state.contiguous(),
        output_final_state,
        None if cu_seqlens is None else cu_seqlens.contiguous(),
        int(chunk_size),
    )
    return o, final_state


def _require_device(name: str, tensor, q) -> None:
    """``tensor`` is a torch tensor on the backend's device type, and on ``q``'s device."""
    expected = torch_device()
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != expected:
        raise ValueError(f"{name} must be on the {expected} device, got {tensor.device}")
    if tensor.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {tensor.device}")


__all__ = ["chunk_simple_gla"]
