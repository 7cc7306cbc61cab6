"""The bounded-k path of the Triton sampler: :func:`_bounded_kernel` samples each row among
its ``max_k`` top-k survivors (``tops.gpu.topk``'s output), grid ``(B,)``, in ``[KB]``
slots and ``[KB, CHUNK]`` pairwise comparison blocks."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.exact import upcast
from tops.gpu.reduce import add_combine, min_combine
from tops.gpu.sampling.common import (
    BLOCKS,
    FP_OPTIONS,
    NO_INDEX,
    PARAMETER_POINTERS,
    PROB_ONE,
    TINY,
    TOP_P_BITS,
    draw,
    log2_scale,
    min_p_threshold,
    quantize,
    top_p_p16,
)


@triton.jit
def _bounded_kernel(
    values_ptr,
    indices_ptr,
    kept_ptr,
    valid_ptr,
    temperature_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    step_ptr,
    probs_ptr,
    drawn_ptr,
    tokens_ptr,
    max_k,
    survivors_row_stride,
    KB: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Bounded-k sampling over the top-k survivors. Grid ``(B,)``: program ``r`` takes
    the ``max_k`` survivors of row ``r`` (``tops.gpu.topk`` output, best first, the first
    ``kept[r]`` real), in ``KB`` slots (``KB`` a power of two ``>= max_k``).

    Blocks touched per program:
      ``values_ptr``: ``[KB]`` of row ``r`` (logits dtype, masked to ``kept[r]``).
      ``indices_ptr``: ``[KB]`` int32 of row ``r``, then ``[CHUNK]`` slices of it and of
      the weights for the ``[KB, CHUNK]`` pairwise blocks (top-p mass above each weight,
      vocabulary-order prefix sums).
      ``kept_ptr``, ``valid_ptr``: ``[]`` int32; ``temperature_ptr``, ``top_p_ptr``,
      ``min_p_ptr``: ``[]`` float32; ``seed_ptr``, ``step_ptr``: ``[]`` int64 (mod 2**32).
      ``probs_ptr``: ``[KB]`` int32 of row ``r`` (masked to ``max_k``): the final integer
      weights of the survivors (also the scratch the pairwise blocks read).
      ``drawn_ptr``: ``[]`` int64; ``tokens_ptr``: ``[]`` int32.
    """
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, KB)
    kept = tl.load(kept_ptr + row)
    live = slot < kept
    base = row * survivors_row_stride
    x = upcast(tl.load(values_ptr + base + slot, mask=live, other=0.0))
    index = tl.load(indices_ptr + base + slot, mask=live, other=-1)
    m = upcast(tl.load(values_ptr + base))
    greedy = tl.load(indices_ptr + base)
    valid = tl.load(valid_ptr + row) != 0
    temperature = tl.load(temperature_ptr + row)
    greedy_row = (temperature >= TINY) == 0  # zero, subnormal, negative or NaN
    q = tl.where(live, quantize(x, m, log2_scale(temperature)), 0).to(tl.int64)
    total = tl.reduce(q, 0, add_combine)
    keep_min_p = q >= min_p_threshold(tl.load(min_p_ptr + row))
    top_p_enabled, p16 = top_p_p16(tl.load(top_p_ptr + row))
    # Scratch copy of q for the pairwise blocks (overwritten with the result below).
    probs_row = probs_ptr + base
    tl.store(probs_row + slot, q.to(tl.int32), mask=slot < max_k)
    tl.debug_barrier()
    above = tl.zeros([KB], tl.int64)
    for start in tl.static_range(0, KB, CHUNK):
        other = start + tl.arange(0, CHUNK)
        theirs = tl.load(probs_row + other, mask=other < max_k, other=0).to(tl.int64)
        bigger = theirs[None, :] > q[:, None]
        above += tl.reduce(tl.where(bigger, theirs[None, :], 0), 1, add_combine)
    small_mass_above = (above.to(tl.uint64) << TOP_P_BITS) < p16.to(tl.uint64) * total.to(tl.uint64)
    keep_top_p = (top_p_enabled == 0) | (q == PROB_ONE) | small_mass_above
    probs = tl.where(keep_min_p & keep_top_p, q, 0)
    probs = tl.where(greedy_row, tl.where(slot == 0, PROB_ONE, 0), probs)
    probs = tl.where(valid, probs, 0)
    sampled_total = tl.reduce(probs, 0, add_combine)
    sampling = valid & (temperature >= TINY)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    drawn = tl.where(sampling, draw(seed, step, tl.maximum(sampled_total, 1)), 0)
    tl.debug_barrier()
    tl.store(probs_row + slot, probs.to(tl.int32), mask=slot < max_k)
    tl.debug_barrier()
    # Vocabulary-order inclusive prefix at each survivor: the weights of survivors whose
    # index is at most its own (non-survivors weigh 0).
    prefix = tl.zeros([KB], tl.int64)
    for start in tl.static_range(0, KB, CHUNK):
        other = start + tl.arange(0, CHUNK)
        their_live = other < kept
        theirs = tl.load(probs_row + other, mask=their_live, other=0).to(tl.int64)
        their_index = tl.load(indices_ptr + base + other, mask=their_live, other=NO_INDEX)
        before = their_index[None, :] <= index[:, None]
        prefix += tl.reduce(tl.where(before, theirs[None, :], 0), 1, add_combine)
    passed = live & (prefix > drawn)
    token = tl.reduce(tl.where(passed, index, NO_INDEX), 0, min_combine)
    tl.store(tokens_ptr + row, tl.where(valid, token, greedy))
    tl.store(drawn_ptr + row, drawn)


def launch_bounded(
    values: torch.Tensor,
    indices: torch.Tensor,
    kept: torch.Tensor,
    valid: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    probs: torch.Tensor,
    drawn: torch.Tensor,
    tokens: torch.Tensor,
) -> None:
    """Bounded-k sampling over the survivors ``values, indices [B, max_k]`` (contiguous).
    ``params`` = (temperature, top_p, min_p float32[B], seed, step int64[B])."""
    batch, max_k = values.shape
    size = BLOCKS.bounded_size(max_k)
    _bounded_kernel[(batch,)](
        values,
        indices,
        kept,
        valid,
        *params,
        probs,
        drawn,
        tokens,
        max_k,
        values.stride(0),
        KB=size,
        CHUNK=BLOCKS.pair_chunk,
        num_warps=BLOCKS.bounded_warps,
        **FP_OPTIONS,
    )


def shipped_configs() -> list[TritonConfig]:
    """:func:`_bounded_kernel` per survivors dtype at each of ``BLOCKS.bounded_sizes``."""
    return [
        TritonConfig.build(
            f"bounded_kernel_{dtype}_KB{size}",
            _bounded_kernel,
            pointers={
                "values_ptr": f"*{dtype}",
                "indices_ptr": "*i32",
                "kept_ptr": "*i32",
                "valid_ptr": "*i32",
                **PARAMETER_POINTERS,
                "probs_ptr": "*i32",
                "drawn_ptr": "*i64",
                "tokens_ptr": "*i32",
            },
            integers=("max_k", "survivors_row_stride"),
            constexprs={"KB": size, "CHUNK": BLOCKS.pair_chunk},
            num_warps=BLOCKS.bounded_warps,
            **FP_OPTIONS,
        )
        for dtype in ("bf16", "fp16", "fp32")
        for size in BLOCKS.bounded_sizes
    ]
