"""The arbitrary-k path of the Triton sampler: :func:`_full_kernel` samples each row over
its whole vocabulary, grid ``(B,)``, in passes over ``[BLOCK]`` tiles and
``[SEARCH_BLOCK, PROBES]`` search blocks of the row (``BLOCKS.row_blocks``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.exact import upcast
from tops.gpu.reduce import add_combine, max_combine, min_combine
from tops.gpu.sampling.common import (
    BLOCKS,
    FP_OPTIONS,
    NAN_KEY,
    NO_INDEX,
    PARAMETER_POINTERS,
    PROB_ONE,
    TINY,
    TOP_P_BITS,
    draw,
    load_row,
    log2_scale,
    min_p_threshold,
    quantize,
    row_scan,
    top_p_p16,
)
from tops.gpu.selection.kernel import entry_index


@triton.jit
def _full_kernel(
    x_ptr,
    k_ptr,
    temperature_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    step_ptr,
    probs_ptr,
    topk_logits_ptr,
    greedy_ptr,
    valid_ptr,
    drawn_ptr,
    tokens_ptr,
    V,
    x_row_stride,
    out_row_stride,
    BLOCK: tl.constexpr,
    SEARCH_BLOCK: tl.constexpr,
    PROBES: tl.constexpr,
    DEBUG: tl.constexpr,
):
    """Arbitrary-k sampling over the whole row. Grid ``(B,)``: program ``r`` walks row
    ``r`` in passes over ``[BLOCK]`` tiles (``[SEARCH_BLOCK, PROBES]`` blocks in the
    searches), in column order:

    1. greedy token (first maximum entry), smallest key, NaN and finite flags;
    2. if ``k[r] < V`` (``k`` already the effective k in ``[1, V]``) and the row needs it:
       the top-k key threshold ``T`` (largest key with ``count(key >= T) >= k``) by a
       search testing ``PROBES`` thresholds a pass, and ``count(key > T)``;
    3. weights: kept = ``key > T`` or the first ``k - count(key > T)`` ties at ``T`` in
       column order; :func:`quantize` on kept entries, written to ``probs``; ``S`` = sum;
       (``DEBUG``) the top-k logits;
    4. if top-p is enabled: ``v*``, the least ``v`` with ``A(v) * 2**16 < p16 * S``
       (``A(v)`` = weight strictly above ``v``, non-increasing) by the same multi-probe
       search; an entry survives top-p and min-p iff ``q >= tau = min(max(thr, v*), 2**30)``;
    5. ``S'`` = sum of the surviving weights ((``DEBUG``) written back as the final
       weights, one-hot or zeros for greedy or invalid rows), the draw;
    6. the CDF walk: the first column whose inclusive prefix exceeds the draw.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` / ``[SEARCH_BLOCK]`` tiles of row ``r`` (bf16/f16/f32).
      ``k_ptr``: ``[]`` int32; ``temperature_ptr``, ``top_p_ptr``, ``min_p_ptr``: ``[]``
      float32; ``seed_ptr``, ``step_ptr``: ``[]`` int64.
      ``probs_ptr``: ``[BLOCK]`` / ``[SEARCH_BLOCK]`` int32 tiles of row ``r``: the weights
      (a workspace without ``DEBUG``, the final weights with it).
      ``topk_logits_ptr``: (``DEBUG``) ``[BLOCK]`` tiles of row ``r`` (logits dtype).
      ``greedy_ptr``, ``valid_ptr``, ``tokens_ptr``: ``[]`` int32; ``drawn_ptr``: ``[]``
      int64.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = x_ptr + row * x_row_stride
    probs_row = probs_ptr + row * out_row_stride
    offsets = tl.arange(0, BLOCK)
    best, lowest, has_nan, has_finite = row_scan(row_ptr, V, BLOCK)
    greedy = entry_index(best)
    valid = (has_nan == 0) & (has_finite != 0)
    temperature = tl.load(temperature_ptr + row)
    sampling = valid & (temperature >= TINY)  # not greedy: T not zero, subnormal or NaN
    k = tl.load(k_ptr + row)

    # 2. top-k threshold.
    threshold = tl.full([], NAN_KEY, tl.int32)  # every real key is >= NAN_KEY
    count_above = tl.full([], 0, tl.int32)
    if (k < V) & (sampling | DEBUG):
        probe = tl.arange(0, PROBES)
        search_offsets = tl.arange(0, SEARCH_BLOCK)
        lo = lowest.to(tl.int64)  # count(key >= lo) = V >= k
        hi = (best >> 32).to(tl.int32).to(tl.int64)
        count_hi = tl.full([], 0, tl.int32)  # count(key > hi)
        while lo < hi:
            mid = lo + ((hi - lo) * (probe + 1) + PROBES) // (PROBES + 1)
            mid32 = mid.to(tl.int32)
            counts = tl.zeros([PROBES], tl.int32)
            for start in range(0, V, SEARCH_BLOCK):
                _, key = load_row(row_ptr, start + search_offsets, V)
                counts += tl.reduce((key[:, None] >= mid32[None, :]).to(tl.int32), 0, add_combine)
            enough = counts >= k
            lo = tl.reduce(tl.where(enough, mid, lo), 0, max_combine)
            new_hi = tl.reduce(tl.where(enough, hi, mid - 1), 0, min_combine)
            count_hi = tl.where(
                new_hi < hi,
                tl.reduce(tl.where(mid - 1 == new_hi, counts, 0), 0, max_combine),
                count_hi,
            )
            hi = new_hi
        threshold = lo.to(tl.int32)
        count_above = count_hi
    needed = k - count_above

    # 3. weights, their sum and the top-k logits.
    m = upcast(tl.load(row_ptr + greedy))
    s = log2_scale(temperature)
    total = tl.full([], 0, tl.int64)
    if sampling | DEBUG:
        ties = tl.full([], 0, tl.int32)
        for start in range(0, V, BLOCK):
            column = start + offsets
            in_row = column < V
            raw, key = load_row(row_ptr, column, V)
            tie = key == threshold
            tie_rank = ties + tl.associative_scan(tie.to(tl.int32), 0, add_combine)
            kept = in_row & ((key > threshold) | (tie & (tie_rank <= needed)))
            ties += tl.reduce(tie.to(tl.int32), 0, add_combine)
            if DEBUG:
                out = topk_logits_ptr + row * out_row_stride + column
                # -inf cast from float32, not a scalar in where: Triton 3.6's interpreter
                # cannot make a bfloat16 constant. Kept logits keep their bits (NaN payloads).
                neg_inf = tl.full([], float("-inf"), tl.float32).to(raw.dtype)
                tl.store(out, tl.where(kept, raw, neg_inf), mask=in_row)
            q = tl.where(kept, quantize(upcast(raw), m, s), 0)
            tl.store(probs_row + column, q, mask=in_row)
            total += tl.reduce(q.to(tl.int64), 0, add_combine)
    # Later passes read weights other threads wrote (the search blocks are laid out
    # differently from the [BLOCK] tiles).
    tl.debug_barrier()

    # 4. top-p threshold v* and the combined threshold tau.
    top_p_enabled, p16 = top_p_p16(tl.load(top_p_ptr + row))
    v_star = tl.full([], 0, tl.int64)
    if sampling & top_p_enabled:
        v_star = tl.where(p16 > 0, PROB_ONE, PROB_ONE + 1).to(tl.int64)
        if p16 > 0:
            probe = tl.arange(0, PROBES)
            search_offsets = tl.arange(0, SEARCH_BLOCK)
            budget = p16.to(tl.uint64) * total.to(tl.uint64)
            lo = tl.full([], -1, tl.int64)  # A(-1) = S fails: p16 < 2**16
            hi = tl.full([], PROB_ONE, tl.int64)  # A(2**30) = 0 passes: p16 > 0
            while hi - lo > 1:
                mid = lo + ((hi - lo) * (probe + 1)) // (PROBES + 1)
                mass = tl.zeros([PROBES], tl.int64)
                for start in range(0, V, SEARCH_BLOCK):
                    column = start + search_offsets
                    q = tl.load(probs_row + column, mask=column < V, other=0).to(tl.int64)
                    heavier = q[:, None] > mid[None, :]
                    mass += tl.reduce(tl.where(heavier, q[:, None], 0), 0, add_combine)
                small = (mass.to(tl.uint64) << TOP_P_BITS) < budget
                lo = tl.reduce(tl.where(small, lo, mid), 0, max_combine)
                hi = tl.reduce(tl.where(small, mid, hi), 0, min_combine)
            v_star = hi
    cut = tl.minimum(tl.maximum(min_p_threshold(tl.load(min_p_ptr + row)), v_star), PROB_ONE)

    # 5. surviving mass (and the final weights) and the draw.
    sampled_total = tl.full([], 0, tl.int64)
    if sampling | DEBUG:
        for start in range(0, V, BLOCK):
            column = start + offsets
            in_row = column < V
            q = tl.load(probs_row + column, mask=in_row, other=0)
            probs = tl.where(q >= cut, q, 0)
            sampled_total += tl.reduce(probs.to(tl.int64), 0, add_combine)
            if DEBUG:
                probs = tl.where(sampling, probs, tl.where(valid & (column == greedy), PROB_ONE, 0))
                tl.store(probs_row + column, probs, mask=in_row)
    tl.debug_barrier()
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    drawn = tl.where(sampling, draw(seed, step, tl.maximum(sampled_total, 1)), 0)

    # 6. the first column whose inclusive prefix exceeds the draw.
    token = greedy
    if sampling:
        prefix = tl.full([], 0, tl.int64)
        found = tl.full([], NO_INDEX, tl.int32)
        start = 0
        while (start < V) & (found == NO_INDEX):
            column = start + offsets
            in_row = column < V
            q = tl.load(probs_row + column, mask=in_row, other=0).to(tl.int64)
            probs = tl.where(q >= cut, q, 0)
            inclusive = prefix + tl.associative_scan(probs, 0, add_combine)
            found = tl.reduce(
                tl.where(in_row & (inclusive > drawn), column, NO_INDEX), 0, min_combine
            )
            prefix += tl.reduce(probs, 0, add_combine)
            start += BLOCK
        token = found
    tl.store(greedy_ptr + row, greedy)
    tl.store(valid_ptr + row, valid.to(tl.int32))
    tl.store(drawn_ptr + row, drawn)
    tl.store(tokens_ptr + row, token)


def launch_full(
    x: torch.Tensor,
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    probs: torch.Tensor,
    topk_logits: torch.Tensor | None,
    greedy: torch.Tensor,
    valid: torch.Tensor,
    drawn: torch.Tensor,
    tokens: torch.Tensor,
    debug: bool,
) -> None:
    """Arbitrary-k sampling of ``x [B, V]``; ``probs`` int32 ``[B, V]`` and (with
    ``debug``) ``topk_logits`` ``[B, V]`` contiguous, sharing one row stride."""
    batch, vocab = x.shape
    block, search_block = BLOCKS.row_blocks(vocab)
    _full_kernel[(batch,)](
        x,
        k,
        *params,
        probs,
        topk_logits if debug else probs,
        greedy,
        valid,
        drawn,
        tokens,
        vocab,
        x.stride(0),
        probs.stride(0),
        BLOCK=block,
        SEARCH_BLOCK=search_block,
        PROBES=BLOCKS.probes,
        DEBUG=debug,
        num_warps=BLOCKS.row_warps,
        **FP_OPTIONS,
    )


def shipped_configs() -> list[TritonConfig]:
    """:func:`_full_kernel` per logits dtype, with and without ``DEBUG``, at the GPU block
    sizes."""
    return [
        TritonConfig.build(
            f"full_kernel_{dtype}_{'debug' if debug else 'plain'}",
            _full_kernel,
            pointers={
                "x_ptr": f"*{dtype}",
                "k_ptr": "*i32",
                **PARAMETER_POINTERS,
                "probs_ptr": "*i32",
                "topk_logits_ptr": f"*{dtype}",
                "greedy_ptr": "*i32",
                "valid_ptr": "*i32",
                "drawn_ptr": "*i64",
                "tokens_ptr": "*i32",
            },
            integers=("V", "x_row_stride", "out_row_stride"),
            constexprs={
                "BLOCK": BLOCKS.row_block,
                "SEARCH_BLOCK": BLOCKS.search_block,
                "PROBES": BLOCKS.probes,
                "DEBUG": debug,
            },
            num_warps=BLOCKS.row_warps,
            **FP_OPTIONS,
        )
        for dtype in ("bf16", "fp16", "fp32")
        for debug in (False, True)
    ]
