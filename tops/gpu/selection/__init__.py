"""Exact top-k on the GPU backend: a torch wrapper around the Triton kernels."""

from __future__ import annotations

import torch

from tops.backends import torch_device
from tops.gpu.selection import kernel
from tops.spec.topk import validate


def topk(
    x: torch.Tensor, k: int | torch.Tensor, *, max_k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k entries of each row of ``x``, in the order of ``tops.spec.topk``.

    Args:
      x: ``[B, V]`` bf16, f16 or f32 tensor on the GPU backend's device (any ``B >= 0``,
        ``1 <= V <= tops.spec.topk.MAX_VOCAB``, any row stride; a last dim that is not
        contiguous is copied first).
      k: Python int with ``1 <= k <= V``, or an int32/int64 tensor ``[B]`` or ``[]`` (any
        device; moved to the device of ``x``) with ``max_k`` given.
      max_k: with a tensor ``k``, the output width: a Python int with ``1 <= max_k <= V``.

    Returns:
      ``(values [B, w] in the dtype of x, indices int32[B, w])`` with ``w = k`` or
      ``max_k``: values descending (NaN of either sign below ``-inf``, ``+0.0`` above
      ``-0.0``), ties by lower index, each value the input element at its index bit for
      bit. With a tensor ``k``, row ``b`` keeps its first ``clip(k[b], 0, max_k)``
      entries and holds ``FILL_INDEX`` (-1) and ``-inf`` past them.
    """
    width, per_row = validate(x, k, max_k, api="tops.gpu")
    expected = torch_device()
    if x.device.type != expected:
        raise ValueError(f"x must be on the {expected} device, got {x.device}")
    batch, vocab = x.shape
    values = torch.empty((batch, width), dtype=x.dtype, device=x.device)
    indices = torch.empty((batch, width), dtype=torch.int32, device=x.device)
    if batch == 0:
        return values, indices
    if vocab > 1 and x.stride(1) != 1:
        x = x.contiguous()
    if per_row:
        kept = k.to(device=x.device).clamp(0, width).to(torch.int32).expand(batch).contiguous()
    else:
        kept = torch.full((batch,), width, dtype=torch.int32, device=x.device)
    kernel.launch(x, kept, values, indices)
    return values, indices
