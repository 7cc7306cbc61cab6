"""Top-k / top-p / min-p sampling on the GPU backend, bit-identical to
``tops.cpu.sampling``: torch wrappers around the Triton kernels.

* bounded-k (``max_k`` an int <= 256): ``tops.gpu.topk`` keeps each row's ``max_k``
  survivors, then one kernel (``bounded.py``) samples among them;
* arbitrary-k (``max_k=None``): one kernel (``full.py``) over the whole row.

``integer_weights`` runs the row statistics and the quantisation kernel (``kernel.py``).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict

import torch

from tops.backends import torch_device
from tops.gpu.sampling import bounded, full, kernel
from tops.gpu.selection import topk
from tops.spec.common import require_bool
from tops.spec.sampling import validate, validate_weights

# A per-row parameter: a Python or NumPy number, or a tensor [B] or [] (tops.spec.sampling).
Parameter = float | int | torch.Tensor
# The debug arrays of ``sample(..., debug=True)``, by name.
DebugArrays = OrderedDict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


def _require_device(name: str, tensor: torch.Tensor) -> None:
    expected = torch_device()
    if tensor.device.type != expected:
        raise ValueError(f"{name} must be on the {expected} device, got {tensor.device}")


def _float_rows(value: Parameter, batch: int, device: torch.device) -> torch.Tensor:
    """``float32[batch]`` from a number or a float32 tensor ``[B]`` or ``[]``."""
    if isinstance(value, numbers.Real):
        return torch.full((batch,), float(value), dtype=torch.float32, device=device)
    return value.to(device=device, dtype=torch.float32).expand(batch).contiguous()


def _int_rows(value: Parameter, batch: int, device: torch.device) -> torch.Tensor:
    """``int64[batch]`` from an integer or an integer tensor ``[B]`` or ``[]``."""
    if isinstance(value, numbers.Real):
        return torch.full((batch,), int(value), dtype=torch.int64, device=device)
    return value.to(torch.int64).to(device=device).expand(batch).contiguous()


def _logits(logits: torch.Tensor) -> torch.Tensor:
    _require_device("logits", logits)
    batch, vocab = logits.shape
    if batch and vocab > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    return logits


def sample(
    logits: torch.Tensor,
    *,
    temperature: Parameter,
    seed: Parameter,
    step: Parameter,
    top_k: Parameter = 0,
    top_p: Parameter = 1.0,
    min_p: Parameter = 0.0,
    max_k: int | None = None,
    debug: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, DebugArrays]:
    """Sample one token per row (``tops/spec/sampling.py``; bit-identical to
    ``tops.cpu.sampling.sample``).

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 tensor on the GPU backend's device.
      temperature, top_p, min_p: numbers, or float32 tensors ``[B]`` or ``[]``.
      top_k, seed, step: integers, or int32, int64 or uint32 tensors ``[B]`` or ``[]``
        (seed and step modulo 2**32).
      max_k: None (the arbitrary-k path, any ``top_k``), or a Python int in
        ``[1, min(V, 256)]``: the bounded-k path (``tops.gpu.topk`` then a kernel over
        the ``max_k`` survivors), which caps every row's k at ``max_k``.
      debug: also return the debug arrays.

    Returns:
      ``(next_tokens int32 [B], valid bool [B])``, plus with ``debug`` an OrderedDict:
      ``greedy_sampled`` int32 ``[B]``, ``topk_logits_unsorted [B, V]`` (dtype of
      ``logits``), ``topk_topp_unnorm_probs_i32_unsorted`` int32 ``[B, V]``,
      ``random_unnorm_cdf_sampled`` a pair of uint32 ``[B]`` (high, low),
      ``next_tokens`` int32 ``[B]``.
    """
    validate(
        logits,
        temperature=temperature,
        seed=seed,
        step=step,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        max_k=max_k,
        api="tops.gpu",
    )
    debug = require_bool("debug", debug)
    x = _logits(logits)
    batch, vocab = x.shape
    device = x.device
    params = (
        _float_rows(temperature, batch, device),
        _float_rows(top_p, batch, device),
        _float_rows(min_p, batch, device),
        _int_rows(seed, batch, device) & 0xFFFFFFFF,
        _int_rows(step, batch, device) & 0xFFFFFFFF,
    )
    # The effective k per row: V when top_k <= 0 or top_k >= V, capped at max_k.
    cap = vocab if max_k is None else max_k
    if isinstance(top_k, numbers.Real):
        k = int(top_k)
        k = torch.full(
            (batch,),
            min(vocab if k <= 0 or k >= vocab else k, cap),
            dtype=torch.int32,
            device=device,
        )
    else:
        top_k = _int_rows(top_k, batch, device)
        k = (
            torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k)
            .clamp(max=cap)
            .to(torch.int32)
        )
    tokens = torch.zeros(batch, dtype=torch.int32, device=device)
    valid = torch.zeros(batch, dtype=torch.int32, device=device)
    greedy = torch.zeros(batch, dtype=torch.int32, device=device)
    drawn = torch.zeros(batch, dtype=torch.int64, device=device)
    if max_k is None:
        # Weights (the debug array with debug, else a workspace): the kernel writes every
        # entry a later pass or the caller reads.
        probs = torch.empty((batch, vocab), dtype=torch.int32, device=device)
        topk_logits = torch.empty((batch, vocab), dtype=x.dtype, device=device) if debug else None
        if batch:
            full.launch_full(x, k, params, probs, topk_logits, greedy, valid, drawn, tokens, debug)
    else:
        values, indices = topk(x, k, max_k=max_k)
        survivor_probs = torch.zeros((batch, max_k), dtype=torch.int32, device=device)
        if batch:
            greedy, valid = kernel.row_stats(x)
            bounded.launch_bounded(values, indices, k, valid, params, survivor_probs, drawn, tokens)
        if debug:
            # Fill slots (index -1) scatter to a spare column V, dropped afterwards.
            column = torch.where(indices >= 0, indices, vocab).to(torch.int64)
            topk_logits = torch.full(
                (batch, vocab + 1), float("-inf"), dtype=x.dtype, device=device
            )
            # Scattered as bit patterns: torch's CPU scatter of bfloat16 rewrites NaN
            # payloads (0x7FC0 became 0xFFFF), and the debug logits are the input's bits.
            bits = {2: torch.int16, 4: torch.int32}[x.element_size()]
            topk_logits.view(bits).scatter_(1, column, values.view(bits))
            topk_logits = topk_logits[:, :vocab].contiguous()
            probs = torch.zeros((batch, vocab + 1), dtype=torch.int32, device=device)
            probs.scatter_(1, column, survivor_probs)
            probs = probs[:, :vocab].contiguous()
    valid = valid != 0
    if not debug:
        return tokens, valid
    arrays = OrderedDict(
        greedy_sampled=greedy,
        topk_logits_unsorted=topk_logits,
        topk_topp_unnorm_probs_i32_unsorted=probs,
        random_unnorm_cdf_sampled=(
            (drawn >> 32).to(torch.uint32),
            (drawn & 0xFFFFFFFF).to(torch.uint32),
        ),
        next_tokens=tokens,
    )
    return tokens, valid, arrays


def integer_weights(logits: torch.Tensor, temperature: Parameter) -> torch.Tensor:
    """The step-3 integer weights ``q`` (``int32 [B, V]``) with top-k, top-p and min-p
    disabled: ``topk_topp_unnorm_probs_i32_unsorted`` of ``sample(logits,
    temperature=temperature, ..., top_k=0, top_p=1.0, min_p=0.0, debug=True)``, so one-hot
    ``PROB_ONE`` at the greedy index for a greedy row and zeros for an invalid row. Runs
    the same ``quantize`` helper as the sampling kernels.

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 tensor on the GPU backend's device.
      temperature: a number, or a float32 tensor ``[B]`` or ``[]``.
    """
    validate_weights(logits, temperature, api="tops.gpu")
    x = _logits(logits)
    batch, vocab = x.shape
    q = torch.empty((batch, vocab), dtype=torch.int32, device=x.device)
    if batch:
        greedy, valid = kernel.row_stats(x)
        kernel.launch_integer_weights(
            x, greedy, valid, _float_rows(temperature, batch, x.device), q
        )
    return q
