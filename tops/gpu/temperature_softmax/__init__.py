"""Temperature softmax on the GPU backend: torch wrappers around the Triton kernels."""

from __future__ import annotations

import numbers

import torch

from tops.backends import torch_device
from tops.gpu.temperature_softmax import kernel
from tops.spec.temperature_softmax import validate


def temperature_softmax(logits, temperature, *, out=None) -> torch.Tensor:
    """``softmax(logits / T)`` per row, in float32, with the special rows of the contract.

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 tensor on the GPU backend's device; any row
        stride (a last dim that is not contiguous is copied first).
      temperature: Python number, or tensor of shape ``[]`` or ``[B]`` of any float dtype;
        rounded to ``float32[B]`` on the logits' device.
      out: optional ``float32[B, V]`` tensor on the logits' device to write into; may be
        ``logits`` itself when that is float32.

    Returns:
      ``float32[B, V]`` probabilities (``out`` when given). Per row: NaN or negative
      temperature, or any NaN logit, gives all NaN; an all ``-inf`` row gives all zeros; a
      temperature below the smallest normal float32 gives a one-hot row at the first
      maximum; one of at least ``2**64`` a row uniform over the entries above ``-inf``;
      a ``+inf`` maximum shares the mass evenly among the ``+inf`` entries. A negative
      Python-number temperature raises ValueError.
    """
    validate(logits, temperature)
    _require_device("logits", logits)
    batch, vocab = logits.shape
    if out is None:
        out = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
    else:
        _check_out(out, logits)
    if batch == 0:
        return out
    x = logits if _last_dim_contiguous(logits) else logits.contiguous()
    t = _temperature_rows(temperature, batch, logits.device)
    if _last_dim_contiguous(out):
        kernel.launch(x, t, out)
    else:
        result = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
        kernel.launch(x, t, result)
        out.copy_(result)
    return out


def temperature_softmax_(logits, temperature) -> torch.Tensor:
    """In-place :func:`temperature_softmax`: writes the probabilities into ``logits``.

    Args:
      logits: ``float32[B, V]`` tensor, contiguous in its last dim, rows not overlapping.
      temperature: Python number, or tensor of shape ``[]`` or ``[B]`` of any float dtype.

    Returns:
      ``logits``, now holding ``float32[B, V]`` probabilities.
    """
    validate(logits, temperature)
    _require_device("logits", logits)
    if logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 to be written in place, got {logits.dtype}")
    if not _last_dim_contiguous(logits):
        raise ValueError(
            f"logits must be contiguous in its last dim to be written in place, "
            f"got strides {tuple(logits.stride())}"
        )
    _require_disjoint_rows("logits", logits)
    batch = logits.shape[0]
    if batch == 0:
        return logits
    kernel.launch(logits, _temperature_rows(temperature, batch, logits.device), logits)
    return logits


def _last_dim_contiguous(tensor: torch.Tensor) -> bool:
    return tensor.shape[1] <= 1 or tensor.stride(1) == 1


def _require_device(name: str, tensor: torch.Tensor) -> None:
    expected = torch_device()
    if tensor.device.type != expected:
        raise ValueError(f"{name} must be on the {expected} device, got {tensor.device}")


def _require_disjoint_rows(name: str, tensor: torch.Tensor) -> None:
    """Reject a last-dim-contiguous tensor whose rows share memory (programs would race)."""
    batch, vocab = tensor.shape
    if _last_dim_contiguous(tensor) and batch > 1 and tensor.stride(0) < vocab:
        raise ValueError(
            f"{name} rows overlap in memory (shape {tuple(tensor.shape)}, strides "
            f"{tuple(tensor.stride())}), so it cannot be written"
        )


def _check_out(out, logits: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"out must be a torch.Tensor, got {type(out).__name__}")
    expected = tuple(logits.shape)
    if tuple(out.shape) != expected or out.dtype != torch.float32:
        raise ValueError(
            f"out must be float32 with shape {expected}, got {out.dtype} {tuple(out.shape)}"
        )
    if out.device != logits.device:
        raise ValueError(f"out must be on the logits' device {logits.device}, got {out.device}")
    _require_disjoint_rows("out", out)


def _temperature_rows(temperature, batch: int, device: torch.device) -> torch.Tensor:
    """``float32[batch]`` temperatures on ``device`` from a number or ``[]``/``[B]`` tensor."""
    if isinstance(temperature, numbers.Number):
        t = torch.tensor(float(temperature), dtype=torch.float32, device=device)
    else:
        t = torch.as_tensor(temperature).to(device=device, dtype=torch.float32)
    return t.expand(batch).contiguous() if t.ndim == 0 else t.contiguous()
