"""Temperature softmax on the GPU backend: torch wrappers around the Triton kernels,
differentiable w.r.t. the logits (``torch.autograd.Function``)."""

from __future__ import annotations

import torch

from tops.backends import torch_device
from tops.gpu.softmax import kernel
from tops.spec.common import python_number, require_array
from tops.spec.temperature_softmax import validate

# A Python or NumPy number, or a float tensor of shape [] or [B].
Temperature = float | torch.Tensor


def temperature_softmax(
    logits: torch.Tensor, temperature: Temperature, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(logits / T)`` per row, in float32, with the special rows of the contract.

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 tensor on the GPU backend's device; any row
        stride (a last dim that is not contiguous is copied first).
      temperature: Python or NumPy number, or tensor of shape ``[]`` or ``[B]`` of any
        float dtype; rounded to ``float32[B]`` on the logits' device.
      out: optional ``float32[B, V]`` tensor on the logits' device to write into; may be
        ``logits`` itself when that is float32. Not differentiable: ValueError when
        autograd would need the logits' gradient.

    Returns:
      ``float32[B, V]`` probabilities (``out`` when given). Per row: NaN or negative
      temperature, or any NaN logit, gives all NaN; an all ``-inf`` row gives all zeros; a
      temperature below the smallest normal float32 gives a one-hot row at the first
      maximum; one of at least ``2**64`` a row uniform over the entries above ``-inf``;
      a ``+inf`` maximum shares the mass evenly among the ``+inf`` entries. A negative
      Python-number temperature raises ValueError.

    Gradient (``backward``, without ``out``): w.r.t. ``logits`` in their dtype, per row
    ``p * (g - sum(p * g)) / T`` for the cotangent ``g``, with the special rows of
    ``tops.spec.temperature_softmax`` (NaN rows NaN, greedy and uniform rows zero); the
    temperature gets none.
    """
    _validate(logits, temperature)
    if out is None:
        return _TemperatureSoftmax.apply(logits, temperature)
    if torch.is_grad_enabled() and logits.requires_grad:
        raise ValueError(
            "out= is not differentiable and logits requires grad: pass out=None (or run "
            "under torch.no_grad())"
        )
    _check_out(out, logits)
    _forward(logits, temperature, out)
    return out


def temperature_softmax_(logits: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """In-place :func:`temperature_softmax`: writes the probabilities into ``logits``.

    Args:
      logits: ``float32[B, V]`` tensor, contiguous in its last dim, rows not overlapping;
        not differentiable (ValueError when it requires grad and autograd is on).
      temperature: Python or NumPy number, or tensor of shape ``[]`` or ``[B]`` of any
        float dtype.

    Returns:
      ``logits``, now holding ``float32[B, V]`` probabilities.
    """
    _validate(logits, temperature)
    if logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 to be written in place, got {logits.dtype}")
    if not _last_dim_contiguous(logits):
        raise ValueError(
            f"logits must be contiguous in its last dim to be written in place, "
            f"got strides {tuple(logits.stride())}"
        )
    if torch.is_grad_enabled() and logits.requires_grad:
        raise ValueError(
            "the in-place temperature_softmax_ is not differentiable and logits requires "
            "grad: use temperature_softmax"
        )
    _require_disjoint_rows("logits", logits)
    _forward(logits, temperature, logits)
    return logits


class _TemperatureSoftmax(torch.autograd.Function):
    """Forward by :func:`tops.gpu.softmax.kernel.launch`, saving the
    probabilities; backward by :func:`~tops.gpu.softmax.kernel.launch_grad`,
    the logits' gradient in their dtype (none for the temperature)."""

    @staticmethod
    def forward(ctx, logits, temperature):
        batch, vocab = logits.shape
        probs = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
        t = _forward(logits, temperature, probs)
        ctx.save_for_backward(probs, t)
        ctx.logits_dtype = logits.dtype
        return probs

    @staticmethod
    def backward(ctx, cotangent):
        probs, t = ctx.saved_tensors
        dx = torch.empty_like(probs)
        if probs.shape[0] > 0:
            # The forward's NaN rows (a NaN logit) enter the kernel as a NaN temperature.
            t = torch.where(probs[:, 0].isnan(), torch.nan, t)
            cotangent = cotangent.to(torch.float32).contiguous()
            kernel.launch_grad(probs, cotangent, t, dx)
        return dx.to(ctx.logits_dtype), None


def _validate(logits: torch.Tensor, temperature: Temperature) -> None:
    require_array("logits", logits, "tops.gpu")
    if python_number(temperature) is None:
        require_array("temperature", temperature, "tops.gpu")
    validate(logits, temperature)
    _require_device("logits", logits)


def _forward(logits: torch.Tensor, temperature: Temperature, out: torch.Tensor) -> torch.Tensor:
    """Write the probabilities into ``out`` (``float32[B, V]``, rows not overlapping, may
    be ``logits``); returns the ``float32[B]`` temperatures used."""
    batch = logits.shape[0]
    t = _temperature_rows(temperature, batch, logits.device)
    if batch == 0:
        return t
    x = logits if _last_dim_contiguous(logits) else logits.contiguous()
    if _last_dim_contiguous(out):
        kernel.launch(x, t, out)
    else:
        result = torch.empty(tuple(out.shape), dtype=torch.float32, device=out.device)
        kernel.launch(x, t, result)
        out.copy_(result)
    return t


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


def _check_out(out: object, logits: torch.Tensor) -> None:
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


def _temperature_rows(temperature: Temperature, batch: int, device: torch.device) -> torch.Tensor:
    """``float32[batch]`` temperatures on ``device`` from a number or ``[]``/``[B]`` tensor."""
    value = python_number(temperature)
    if value is not None:
        t = torch.tensor(value, dtype=torch.float32, device=device)
    else:
        # detach: the temperature gets no gradient, and the rows are saved for backward.
        t = temperature.detach().to(device=device, dtype=torch.float32)
    return t.expand(batch).contiguous() if t.ndim == 0 else t.contiguous()
