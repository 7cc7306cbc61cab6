"""The Triton sampler's per-row kernels and the manifest of every sampling kernel.

* :func:`_row_stats_kernel`, grid ``(B,)``: program ``r`` walks row ``r`` in ``[BLOCK]``
  tiles for its greedy token and validity (the bounded-k path's row statistics).
* :func:`_integer_weights_kernel`, grid ``(B, cdiv(V, BLOCK))``: the step-3 weights of a
  ``[BLOCK]`` tile of one row with top-k/top-p/min-p disabled.

The sampling kernels proper are in :mod:`~tops.gpu.sampling.full` (arbitrary k) and
:mod:`~tops.gpu.sampling.bounded` (bounded k); the shared arithmetic is in
:mod:`~tops.gpu.sampling.common`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.exact import upcast
from tops.gpu.sampling import bounded, full
from tops.gpu.sampling.common import (
    BLOCKS,
    FP_OPTIONS,
    PROB_ONE,
    TINY,
    log2_scale,
    quantize,
    row_scan,
)
from tops.gpu.selection.kernel import entry_index


@triton.jit
def _row_stats_kernel(x_ptr, greedy_ptr, valid_ptr, V, x_row_stride, BLOCK: tl.constexpr):
    """Greedy token and validity. Grid ``(B,)``: program ``r`` walks row ``r``.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` tiles of row ``r`` (bf16/f16/f32, masked to ``V``).
      ``greedy_ptr``: ``[]`` int32: the first index of the maximum in the top-k order.
      ``valid_ptr``: ``[]`` int32: 1 iff the row has no NaN and a finite value.
    """
    row = tl.program_id(0).to(tl.int64)
    best, _, has_nan, has_finite = row_scan(x_ptr + row * x_row_stride, V, BLOCK)
    tl.store(greedy_ptr + row, entry_index(best))
    tl.store(valid_ptr + row, (has_nan == 0).to(tl.int32) & has_finite)


@triton.jit
def _integer_weights_kernel(
    x_ptr,
    greedy_ptr,
    valid_ptr,
    temperature_ptr,
    q_ptr,
    V,
    x_row_stride,
    q_row_stride,
    BLOCK: tl.constexpr,
):
    """Step-3 weights with top-k/top-p/min-p disabled. Grid ``(B, cdiv(V, BLOCK))``:
    program ``(r, t)`` writes columns ``[t*BLOCK, (t+1)*BLOCK)`` of row ``r``:
    :func:`quantize` for a sampling row, one-hot ``PROB_ONE`` at the greedy index for a
    greedy row (``T`` not ``>= TINY``), zeros for an invalid row.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` of row ``r`` (masked to ``V``) and ``[]`` at the greedy index.
      ``greedy_ptr``, ``valid_ptr``: ``[]`` int32; ``temperature_ptr``: ``[]`` float32.
      ``q_ptr``: ``[BLOCK]`` int32 of row ``r`` (masked to ``V``).
    """
    row = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = column < V
    row_ptr = x_ptr + row * x_row_stride
    greedy = tl.load(greedy_ptr + row)
    valid = tl.load(valid_ptr + row) != 0
    temperature = tl.load(temperature_ptr + row)
    m = upcast(tl.load(row_ptr + greedy))
    x = upcast(tl.load(row_ptr + column, mask=in_row, other=0.0))
    q = quantize(x, m, log2_scale(temperature))
    q = tl.where(temperature >= TINY, q, tl.where(column == greedy, PROB_ONE, 0))
    q = tl.where(valid, q, 0)
    tl.store(q_ptr + row * q_row_stride + column, q, mask=in_row)


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(greedy int32[B], valid int32[B])`` of ``x [B, V]`` (``B >= 1``, last dim
    contiguous)."""
    batch, vocab = x.shape
    greedy = torch.empty(batch, dtype=torch.int32, device=x.device)
    valid = torch.empty(batch, dtype=torch.int32, device=x.device)
    block, _ = BLOCKS.row_blocks(vocab)
    _row_stats_kernel[(batch,)](
        x, greedy, valid, vocab, x.stride(0), BLOCK=block, num_warps=BLOCKS.row_warps
    )
    return greedy, valid


def launch_integer_weights(
    x: torch.Tensor,
    greedy: torch.Tensor,
    valid: torch.Tensor,
    temperature: torch.Tensor,
    q: torch.Tensor,
) -> None:
    """Write the step-3 weights of ``x [B, V]`` into ``q int32[B, V]`` (contiguous)."""
    batch, vocab = x.shape
    _integer_weights_kernel[(batch, triton.cdiv(vocab, BLOCKS.weights_block))](
        x,
        greedy,
        valid,
        temperature,
        q,
        vocab,
        x.stride(0),
        q.stride(0),
        BLOCK=BLOCKS.weights_block,
        num_warps=BLOCKS.weights_warps,
        **FP_OPTIONS,
    )


def shipped_configs() -> list[TritonConfig]:
    """Every shipped sampling kernel configuration: per logits dtype,
    :func:`_row_stats_kernel` and :func:`_integer_weights_kernel` at the GPU block sizes,
    then those of :mod:`~tops.gpu.sampling.bounded` and :mod:`~tops.gpu.sampling.full`."""
    configs = []
    for dtype in ("bf16", "fp16", "fp32"):
        x = f"*{dtype}"
        configs.append(
            TritonConfig.build(
                f"row_stats_kernel_{dtype}_BLOCK{BLOCKS.row_block}",
                _row_stats_kernel,
                pointers={"x_ptr": x, "greedy_ptr": "*i32", "valid_ptr": "*i32"},
                integers=("V", "x_row_stride"),
                constexprs={"BLOCK": BLOCKS.row_block},
                num_warps=BLOCKS.row_warps,
            )
        )
        configs.append(
            TritonConfig.build(
                f"integer_weights_kernel_{dtype}_BLOCK{BLOCKS.weights_block}",
                _integer_weights_kernel,
                pointers={
                    "x_ptr": x,
                    "greedy_ptr": "*i32",
                    "valid_ptr": "*i32",
                    "temperature_ptr": "*fp32",
                    "q_ptr": "*i32",
                },
                integers=("V", "x_row_stride", "q_row_stride"),
                constexprs={"BLOCK": BLOCKS.weights_block},
                num_warps=BLOCKS.weights_warps,
                **FP_OPTIONS,
            )
        )
    return configs + bounded.shipped_configs() + full.shipped_configs()
