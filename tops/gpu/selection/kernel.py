"""Triton kernels for exact top-k: integer order keys, threshold selection, counting ranks.

Every element becomes a pair ``(key, index)``. ``key`` is an int32 whose signed order is
the contract's order of the values (``tops.spec.topk``): the element is upcast exactly to
float32 and its bits ``b`` (as int32) map to ``b`` when ``b >= 0`` and to
``b ^ 0x7FFFFFFF`` when ``b < 0``, which is IEEE total order (so ``+0.0`` ranks above
``-0.0``); every NaN maps to ``NAN_KEY = INT32_MIN + 1``, below ``-inf``'s key
``0x807FFFFF``. ``PAD_KEY = INT32_MIN`` marks empty slots and ranks below everything.
An entry ranks ahead of another when its key is larger, or the keys are equal and its
index is lower: the int64 ``entry = key << 32 | (index ^ INT32_MAX)`` (the low half is
``INT32_MAX - index``) orders entries as signed integers, and is unique within a row.
Every kernel keeps or places an entry by exact integer comparisons in that order, never
by float arithmetic, so ties (equal values, ``-0.0`` against ``+0.0``, NaNs) are resolved
exactly as the reference does. Values are never reconstructed from keys: the output
kernel loads ``x[row, index]``, so each value is the input element bit for bit.

Fast path (width <= ``FAST_PATH_MAX_K``), ``SLOTS = fast_path_slots(width)`` (64 or 256):

1. :func:`_select_values_kernel`, grid ``(B, cdiv(V, TILE))``: each program keeps the
   top ``SLOTS`` entries of its ``TILE`` columns (:func:`_keep_top`: a bisection on the
   key for the ``SLOTS``-th largest key ``T``, then the entries tied at ``T`` with the
   lowest indices) and writes them, in index order, to ``SLOTS`` candidate slots.
2. :func:`_select_candidates_kernel`: the same selection over ``TILE`` candidate slots at
   a time, repeated until one group of ``SLOTS`` candidates is left per row. The union of
   the groups' top sets contains the row's top set, so every level is exact.
3. :func:`_rank_candidates_kernel`, grid ``(B,)``: each candidate's output place is the
   number of candidates ahead of it.

General path (width > ``FAST_PATH_MAX_K``, any width up to V): a merge sort truncated to
the width. :func:`_entries_kernel` writes every column's entry, :func:`_sort_runs_kernel`
sorts runs of ``RUN`` entries by counting ranks, and :func:`_merge_kernel` merges pairs
of runs, placing each entry at its place in its own run plus its rank in the partner run
(a binary search) and dropping places at or beyond the width, until one run is left.

Both paths end with :func:`_write_kernel`, which writes the first ``clip(k[b], 0, width)``
indices of row ``b`` and their values, and ``FILL_INDEX`` / ``-inf`` past them.

Sums and prefix sums inside loops use ``tl.reduce`` / ``tl.associative_scan`` with
Triton's own ``_sum_combine`` (what ``tl.sum`` and ``tl.cumsum`` expand to natively): the
Triton interpreter runs each call of a ``@triton.jit`` helper such as ``tl.sum`` at a cost
of about 0.3 ms, which would dominate the interpreted bisection.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from tops.gpu.exact import upcast
from tops.spec.topk import FAST_PATH_MAX_K, FILL_INDEX

PAD_KEY = -(2**31)
NAN_KEY = PAD_KEY + 1
INT32_MAX = 2**31 - 1
_PAD_KEY = tl.constexpr(PAD_KEY)
_NAN_KEY = tl.constexpr(NAN_KEY)
_INT32_MAX = tl.constexpr(INT32_MAX)
PAD_ENTRY = -(2**63)  # below every entry
_PAD_ENTRY = tl.constexpr(PAD_ENTRY)
_FILL_INDEX = tl.constexpr(FILL_INDEX)

# Columns (or candidate slots) one selection program reads. 8 warps hold 16 keys a thread;
# each bisection step is one compare and one block-wide sum over the tile. A larger tile
# costs registers and programs for B = 1; a smaller one more candidates per row (TILE /
# SLOTS is the reduction per level: 16 at SLOTS = 256, 64 at SLOTS = 64).
TILE = 4096
SELECT_WARPS = 8
# Candidate groups of the fast path: 64 for width <= 64 (greedy and the usual sampling
# top-k), else 256. Each is a separate compiled configuration of three kernels.
SLOT_SIZES = (64, 256)
# Entries compared at once against every entry of a rank kernel: [SLOTS, RANK_CHUNK]
# comparison blocks, 32 a thread (ptxas for sm_90: 127 registers at 16 warps for 256 x 64,
# no spills; 190 at 8 warps).
RANK_CHUNK = 64
# Initial run length of the general path, sorted by counting in [RUN, RUN_CHUNK] blocks,
# 32 a thread at 8 warps.
RUN = 256
RUN_CHUNK = 32
RUN_WARPS = 8
# Columns per program of the (memory-bound) entries kernel: 16 a thread at 8 warps.
ENTRY_BLOCK = 4096
ENTRY_WARPS = 8
# Entries one merge program places: 8 a thread at 8 warps, each a binary search of
# ``bit_length(run_length)`` dependent loads (mostly L1/L2 hits), several in flight per
# thread while leaving registers for more than one program per SM.
MERGE_BLOCK = 2048
MERGE_WARPS = 8
WRITE_BLOCK = 1024
WRITE_WARPS = 4
# Largest workspace (candidates or runs) allocated for one group of rows; larger batches
# are processed in groups of rows that fit.
WORKSPACE_BYTES = 256 * 2**20


def fast_path_slots(width: int) -> int:
    """Candidate slots per group on the fast path for an output ``width``."""
    return next(slots for slots in SLOT_SIZES if width <= slots)


def rank_warps(slots: int) -> int:
    """Warps of the rank kernel for ``slots`` candidates (``[slots, RANK_CHUNK]`` blocks)."""
    return 4 if slots <= 64 else 16


@triton.jit
def order_key(value, valid):
    """The int32 order key of float32 ``value`` (its bits, magnitude bits flipped when
    negative, NaN to ``NAN_KEY``), ``PAD_KEY`` where not ``valid``."""
    bits = value.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, _NAN_KEY, key)
    return tl.where(valid, key, _PAD_KEY)


@triton.jit
def _load_keys(row_ptr, column, V):
    """Order keys of ``row_ptr[column]`` (bf16/f16/f32, upcast exactly to f32);
    ``PAD_KEY`` at columns ``>= V``."""
    valid = column < V
    return order_key(upcast(tl.load(row_ptr + column, mask=valid, other=0.0)), valid)


@triton.jit
def order_entry(key, index):
    """The int64 ``key << 32 | (INT32_MAX - index)`` (``index >= 0``): entries compare as
    ``(key, -index)``, the top-k order."""
    return (key.to(tl.int64) << 32) | (index ^ _INT32_MAX).to(tl.int64)


@triton.jit
def entry_index(entry):
    """The index of an :func:`order_entry`."""
    return ((entry & _INT32_MAX) ^ _INT32_MAX).to(tl.int32)


@triton.jit
def _keep_top(key, valid, SLOTS: tl.constexpr):
    """The ``min(SLOTS, count(valid))`` top entries of a tile whose valid entries appear
    in ascending index order.

    Bisection on the key for ``T``, the largest key with ``count(key >= T) >= kept``
    (``lo`` always satisfies it; at most 32 steps, none when all valid keys are equal).
    Every entry above ``T`` is kept, and of those equal to ``T`` the first
    ``kept - count(key > T)`` in tile order, which are those of lowest index.

    Returns ``(keep, kept)``: a mask over the tile and the number of entries it keeps.
    """
    n_valid = tl.reduce(valid.to(tl.int32), 0, _sum_combine)
    kept = tl.minimum(n_valid, SLOTS)
    lo = tl.min(tl.where(valid, key, _INT32_MAX), axis=0).to(tl.int64)
    hi = tl.max(tl.where(valid, key, _PAD_KEY), axis=0).to(tl.int64)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        count = tl.reduce((key >= mid.to(tl.int32)).to(tl.int32), 0, _sum_combine)
        enough = count >= kept
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    threshold = lo.to(tl.int32)
    above = valid & (key > threshold)
    tied = valid & (key == threshold)
    needed = kept - tl.reduce(above.to(tl.int32), 0, _sum_combine)
    keep = above | (tied & (tl.associative_scan(tied.to(tl.int32), 0, _sum_combine) <= needed))
    return keep, kept


@triton.jit
def _store_candidates(key_out, index_out, key, index, keep, kept, SLOTS: tl.constexpr):
    """Write the kept entries to slots ``0 .. kept-1`` in tile order (so in index order)
    and ``PAD_KEY`` / ``INT32_MAX`` to slots ``kept .. SLOTS-1``."""
    slot = tl.associative_scan(keep.to(tl.int32), 0, _sum_combine) - 1
    tl.store(key_out + slot, key, mask=keep)
    tl.store(index_out + slot, index, mask=keep)
    empty = tl.arange(0, SLOTS)
    fill = empty >= kept
    tl.store(key_out + empty, tl.full([SLOTS], _PAD_KEY, tl.int32), mask=fill)
    tl.store(index_out + empty, tl.full([SLOTS], _INT32_MAX, tl.int32), mask=fill)


@triton.jit
def _select_values_kernel(
    x_ptr,
    key_out_ptr,
    index_out_ptr,
    V,
    x_row_stride,
    out_row_stride,
    TILE: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """First fast-path level. Grid ``(B, cdiv(V, TILE))``: program ``(r, t)`` reads
    columns ``[t*TILE, (t+1)*TILE)`` of row ``r``.

    Blocks touched per program:
      ``x_ptr``: ``[TILE]`` of row ``r`` (bf16/f16/f32, masked to ``V``), read once.
      ``key_out_ptr``, ``index_out_ptr``: ``[SLOTS]`` int32 slots ``[t*SLOTS, (t+1)*SLOTS)``
      of row ``r``: the tile's top ``min(SLOTS, valid columns)`` keys and column indices
      in index order, then ``PAD_KEY`` / ``INT32_MAX``.
    """
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    column = tile * TILE + tl.arange(0, TILE)
    key = _load_keys(x_ptr + row * x_row_stride, column, V)
    keep, kept = _keep_top(key, column < V, SLOTS)
    out = row * out_row_stride + tile * SLOTS
    _store_candidates(key_out_ptr + out, index_out_ptr + out, key, column, keep, kept, SLOTS)


@triton.jit
def _select_candidates_kernel(
    key_ptr,
    index_ptr,
    key_out_ptr,
    index_out_ptr,
    n_slots,
    row_stride,
    out_row_stride,
    TILE: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """Further fast-path levels. Grid ``(B, cdiv(n_slots, TILE))``: program ``(r, t)``
    reads candidate slots ``[t*TILE, (t+1)*TILE)`` of row ``r``, whose real entries (key
    above ``PAD_KEY``) are in index order: every level writes its groups in index order,
    group after group.

    Blocks touched per program:
      ``key_ptr``, ``index_ptr``: ``[TILE]`` int32 of row ``r`` (masked to ``n_slots``).
      ``key_out_ptr``, ``index_out_ptr``: ``[SLOTS]`` int32 slots ``[t*SLOTS, (t+1)*SLOTS)``
      of row ``r``, as in :func:`_select_values_kernel`.
    """
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    slot = tile * TILE + tl.arange(0, TILE)
    in_range = slot < n_slots
    key = tl.load(key_ptr + row * row_stride + slot, mask=in_range, other=_PAD_KEY)
    index = tl.load(index_ptr + row * row_stride + slot, mask=in_range, other=_INT32_MAX)
    keep, kept = _keep_top(key, key != _PAD_KEY, SLOTS)
    out = row * out_row_stride + tile * SLOTS
    _store_candidates(key_out_ptr + out, index_out_ptr + out, key, index, keep, kept, SLOTS)


@triton.jit
def _rank_candidates_kernel(
    key_ptr,
    index_ptr,
    order_ptr,
    row_stride,
    order_row_stride,
    SLOTS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Last fast-path step. Grid ``(B,)``: program ``r`` sorts the ``SLOTS`` candidates of
    row ``r``: each one's place is the number of candidates ahead of it, counted in
    ``[SLOTS, CHUNK]`` comparison blocks. Empty slots (all ``PAD_KEY`` / ``INT32_MAX``,
    so equal entries) are ordered by slot, so the places are a permutation.

    Blocks touched per program:
      ``key_ptr``, ``index_ptr``: ``[SLOTS]`` int32 of row ``r``, then ``[CHUNK]`` slices
      of them again (L1 hits).
      ``order_ptr``: ``[SLOTS]`` int64 of row ``r``: the entries in output order.
    """
    row = tl.program_id(0).to(tl.int64)
    key_row = key_ptr + row * row_stride
    index_row = index_ptr + row * row_stride
    slot = tl.arange(0, SLOTS)
    mine = order_entry(tl.load(key_row + slot), tl.load(index_row + slot))
    rank = tl.zeros([SLOTS], tl.int32)
    for start in tl.static_range(0, SLOTS, CHUNK):
        other = start + tl.arange(0, CHUNK)
        theirs = order_entry(tl.load(key_row + other), tl.load(index_row + other))
        ahead = (theirs[None, :] > mine[:, None]) | (
            (theirs[None, :] == mine[:, None]) & (other[None, :] < slot[:, None])
        )
        rank += tl.reduce(ahead.to(tl.int32), 1, _sum_combine)
    tl.store(order_ptr + row * order_row_stride + rank, mine)


@triton.jit
def _entries_kernel(
    x_ptr,
    entries_ptr,
    V,
    n_columns,
    x_row_stride,
    entries_row_stride,
    BLOCK: tl.constexpr,
):
    """First general-path step. Grid ``(B, cdiv(n_columns, BLOCK))``: program ``(r, c)``
    writes the entries of columns ``[c*BLOCK, (c+1)*BLOCK)`` of row ``r``, up to
    ``n_columns`` (``V`` rounded up to whole runs). Columns at or beyond ``V`` get
    ``PAD_KEY``; their entries stay distinct by column.

    Blocks touched per program:
      ``x_ptr``: ``[BLOCK]`` of row ``r`` (bf16/f16/f32, masked to ``V``).
      ``entries_ptr``: ``[BLOCK]`` int64 of row ``r`` (masked to ``n_columns``).
    """
    row = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    entry = order_entry(_load_keys(x_ptr + row * x_row_stride, column, V), column)
    tl.store(entries_ptr + row * entries_row_stride + column, entry, mask=column < n_columns)


@triton.jit
def _sort_runs_kernel(
    entries_ptr,
    order_ptr,
    row_stride,
    RUN: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Second general-path step. Grid ``(B, n_runs)``: program ``(r, s)`` sorts the
    (distinct) entries ``[s*RUN, (s+1)*RUN)`` of row ``r``: each one's place is the number
    of entries of the run above it, counted in ``[RUN, CHUNK]`` comparison blocks.

    Blocks touched per program:
      ``entries_ptr``: ``[RUN]`` int64 of row ``r``, then ``[CHUNK]`` slices of it again
      (L1 hits).
      ``order_ptr``: ``[RUN]`` int64 at the same places of row ``r``: the run in order.
    """
    # int64 offsets and counts: the interpreter checks every int32 addition for overflow.
    run_start = tl.program_id(0).to(tl.int64) * row_stride + tl.program_id(1).to(tl.int64) * RUN
    mine = tl.load(entries_ptr + run_start + tl.arange(0, RUN))
    rank = tl.zeros([RUN], tl.int64)
    for start in tl.static_range(0, RUN, CHUNK):
        theirs = tl.load(entries_ptr + (run_start + start) + tl.arange(0, CHUNK))
        rank += tl.reduce((theirs[None, :] > mine[:, None]).to(tl.int64), 1, _sum_combine)
    tl.store(order_ptr + run_start + rank, mine)


@triton.jit
def _merge_kernel(
    order_ptr,
    order_out_ptr,
    row_stride,
    run_length,
    n_runs,
    out_length,
    search_steps,
    BLOCK: tl.constexpr,
):
    """One general-path merge pass over runs of ``run_length`` entries, run ``s`` at
    ``[s*run_length, (s+1)*run_length)`` of each row. Grid
    ``(B, cdiv(2*cdiv(n_runs, 2)*run_length, BLOCK))``: program ``(r, q)`` takes places
    ``[q*BLOCK, (q+1)*BLOCK)`` of row ``r``'s runs, with a run ``n_runs`` of ``PAD_ENTRY``
    (the lowest int64) appended when ``n_runs`` is odd. Runs ``2p`` (A) and ``2p+1`` (B)
    merge into output run ``p`` at ``[p*out_length, (p+1)*out_length)``.

    An entry at place ``i`` of its run goes to ``i + c``, where ``c`` counts the partner
    run's entries above it (for an entry of A) or at least equal to it (for an entry of
    B): a stable merge, so the places of a pair are a permutation of ``0 .. 2*run_length-1``
    even where entries repeat (only ``PAD_ENTRY`` does). ``c`` comes from a binary search
    of ``search_steps = bit_length(run_length)`` steps over its bits, high to low. Places
    at or beyond ``out_length = min(2*run_length, width)`` are dropped: places only grow in
    later passes, so nothing there can reach the first ``width`` places.

    Blocks touched per program:
      ``order_ptr``: ``[BLOCK]`` int64 of row ``r`` (masked to existing runs), then
      ``search_steps`` gathers of ``[BLOCK]`` from the partner runs.
      ``order_out_ptr``: ``[BLOCK]`` int64 scattered into the output runs of row ``r``.
    """
    row = tl.program_id(0).to(tl.int64)
    offset = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    run = offset // run_length
    place = offset - run * run_length
    pair = run // 2
    in_b = (run % 2) == 1
    active = (pair < (n_runs + 1) // 2) & (place < out_length)
    row_ptr = order_ptr + row * row_stride
    mine = tl.load(row_ptr + offset, mask=active & (run < n_runs), other=_PAD_ENTRY)
    partner = tl.where(in_b, run - 1, run + 1)
    readable = tl.where(partner < n_runs, run_length, 0)
    # probe_ptr + c is the partner run's entry c - 1.
    probe_ptr = row_ptr + partner * run_length - 1
    count = tl.zeros([BLOCK], tl.int32)
    top_step = 1 << (search_steps - 1)
    for step_bit in range(search_steps):
        candidate = count | (top_step >> step_bit)
        probing = active & (candidate <= readable)
        probe = tl.load(probe_ptr + candidate, mask=probing, other=_PAD_ENTRY)
        counted = (probe > mine) | (in_b & (probe == mine))
        count = tl.where(probing & counted, candidate, count)
    placed = place + count
    out = row * row_stride + pair * out_length + placed
    tl.store(order_out_ptr + out, mine, mask=active & (placed < out_length))


@triton.jit
def _write_kernel(
    x_ptr,
    order_ptr,
    kept_ptr,
    values_ptr,
    indices_ptr,
    x_row_stride,
    order_row_stride,
    out_row_stride,
    width,
    BLOCK: tl.constexpr,
):
    """Outputs. Grid ``(B, cdiv(width, BLOCK))``: program ``(r, j)`` writes places
    ``[j*BLOCK, (j+1)*BLOCK)`` of row ``r``: before ``kept[r]``, the index of the entry in
    ``order`` and the value ``x[r, index]`` (a load and store in the input dtype, bit for
    bit); from ``kept[r]`` on, ``FILL_INDEX`` and ``-inf``.

    Blocks touched per program:
      ``order_ptr``: ``[BLOCK]`` int64 of row ``r`` (masked to ``kept[r]``).
      ``kept_ptr``: ``[]`` int32 ``kept[r] = clip(k[r], 0, width)``.
      ``x_ptr``: ``[BLOCK]`` gathered elements of row ``r`` (bf16/f16/f32).
      ``values_ptr``, ``indices_ptr``: ``[BLOCK]`` of row ``r`` (x dtype, int32), masked to
      ``width``.
    """
    row = tl.program_id(0).to(tl.int64)
    place = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = place < tl.load(kept_ptr + row)
    entry = tl.load(order_ptr + row * order_row_stride + place, mask=live, other=0)
    index = tl.where(live, entry_index(entry), _FILL_INDEX)
    value = tl.load(x_ptr + row * x_row_stride + index, mask=live, other=float("-inf"))
    in_width = place < width
    tl.store(values_ptr + row * out_row_stride + place, value, mask=in_width)
    tl.store(indices_ptr + row * out_row_stride + place, index, mask=in_width)


def launch(x: torch.Tensor, kept: torch.Tensor, values: torch.Tensor, indices: torch.Tensor):
    """Write the top ``width = values.shape[1]`` entries of each row of ``x``.

    Args:
      x: ``[B, V]`` bf16/f16/f32, ``B >= 1``, last dim contiguous (any row stride).
      kept: ``int32[B]``, ``clip(k, 0, width)`` per row, on the device of ``x``.
      values: ``[B, width]`` of the dtype of ``x``, contiguous.
      indices: ``int32[B, width]``, contiguous (the same row stride as ``values``).
    """
    batch, vocab = x.shape
    width = values.shape[1]
    fast = width <= FAST_PATH_MAX_K
    if fast:
        row_bytes = _fast_path_row_bytes(vocab, width)
    else:
        row_bytes = _general_path_row_bytes(vocab, width)
    group = max(1, WORKSPACE_BYTES // row_bytes)
    for start in range(0, batch, group):
        rows = slice(start, start + group)
        x_rows = x[rows]
        order = _fast_path_order(x_rows, width) if fast else _general_path_order(x_rows, width)
        _write_kernel[(x_rows.shape[0], triton.cdiv(width, WRITE_BLOCK))](
            x_rows,
            order,
            kept[rows],
            values[rows],
            indices[rows],
            x_rows.stride(0),
            order.stride(0),
            values.stride(0),
            width,
            BLOCK=WRITE_BLOCK,
            num_warps=WRITE_WARPS,
        )


def _fast_path_row_bytes(vocab: int, width: int) -> int:
    """Workspace bytes per row of the fast path: int32 keys and indices of the first
    level's candidates and of the second level's (no more than the first's)."""
    return 2 * 2 * 4 * triton.cdiv(vocab, TILE) * fast_path_slots(width)


def _general_path_row_bytes(vocab: int, width: int) -> int:
    """Workspace bytes per row of the general path: two int64 run buffers."""
    return 2 * 8 * _general_path_capacity(vocab, width)


def _general_path_capacity(vocab: int, width: int) -> int:
    """Entries per row that hold every pass's runs: the largest ``n_runs * run_length``
    over the passes (``n_runs`` rounded up to even from the second pass on, for the
    output run of a lone last run)."""
    n_runs, run_length = triton.cdiv(vocab, RUN), RUN
    capacity = n_runs * run_length
    while n_runs > 1:
        n_runs, run_length = triton.cdiv(n_runs, 2), min(2 * run_length, width)
        capacity = max(capacity, n_runs * run_length)
    return capacity


def _fast_path_order(x: torch.Tensor, width: int) -> torch.Tensor:
    """``int64[B, SLOTS]`` (``SLOTS >= width``): each row's top entries in order."""
    batch, vocab = x.shape
    slots = fast_path_slots(width)
    tiles = triton.cdiv(vocab, TILE)
    key = torch.empty((batch, tiles * slots), dtype=torch.int32, device=x.device)
    index = torch.empty_like(key)
    _select_values_kernel[(batch, tiles)](
        x,
        key,
        index,
        vocab,
        x.stride(0),
        key.stride(0),
        TILE=TILE,
        SLOTS=slots,
        num_warps=SELECT_WARPS,
    )
    n_slots = tiles * slots
    while n_slots > slots:
        tiles = triton.cdiv(n_slots, TILE)
        key_out = torch.empty((batch, tiles * slots), dtype=torch.int32, device=x.device)
        index_out = torch.empty_like(key_out)
        _select_candidates_kernel[(batch, tiles)](
            key,
            index,
            key_out,
            index_out,
            n_slots,
            key.stride(0),
            key_out.stride(0),
            TILE=TILE,
            SLOTS=slots,
            num_warps=SELECT_WARPS,
        )
        key, index, n_slots = key_out, index_out, tiles * slots
    order = torch.empty((batch, slots), dtype=torch.int64, device=x.device)
    _rank_candidates_kernel[(batch,)](
        key,
        index,
        order,
        key.stride(0),
        order.stride(0),
        SLOTS=slots,
        CHUNK=RANK_CHUNK,
        num_warps=rank_warps(slots),
    )
    return order


def _general_path_order(x: torch.Tensor, width: int) -> torch.Tensor:
    """``int64[B, >= width]``: each row's first ``width`` entries in order (merge sort)."""
    batch, vocab = x.shape
    capacity = _general_path_capacity(vocab, width)
    order = torch.empty((batch, capacity), dtype=torch.int64, device=x.device)
    n_runs = triton.cdiv(vocab, RUN)
    entries = torch.empty_like(order)
    _entries_kernel[(batch, triton.cdiv(n_runs * RUN, ENTRY_BLOCK))](
        x,
        entries,
        vocab,
        n_runs * RUN,
        x.stride(0),
        entries.stride(0),
        BLOCK=ENTRY_BLOCK,
        num_warps=ENTRY_WARPS,
    )
    _sort_runs_kernel[(batch, n_runs)](
        entries,
        order,
        order.stride(0),
        RUN=RUN,
        CHUNK=RUN_CHUNK,
        num_warps=RUN_WARPS,
    )
    merged = entries
    run_length = RUN
    while n_runs > 1:
        pairs = triton.cdiv(n_runs, 2)
        out_length = min(2 * run_length, width)
        _merge_kernel[(batch, triton.cdiv(2 * pairs * run_length, MERGE_BLOCK))](
            order,
            merged,
            order.stride(0),
            run_length,
            n_runs,
            out_length,
            run_length.bit_length(),
            BLOCK=MERGE_BLOCK,
            num_warps=MERGE_WARPS,
        )
        order, merged = merged, order
        n_runs, run_length = pairs, out_length
    return order


def compile_configs() -> list[dict]:
    """Every shipped kernel configuration, for the compile-only checks.

    Per input dtype (bf16, f16, f32): :func:`_select_values_kernel` at each of
    ``SLOT_SIZES``, :func:`_entries_kernel` and :func:`_write_kernel`. Dtype-free:
    :func:`_select_candidates_kernel` and :func:`_rank_candidates_kernel` at each of
    ``SLOT_SIZES``, :func:`_sort_runs_kernel` and :func:`_merge_kernel`. Each with the
    warps it launches with. Entries: ``{"name", "kernel", "signature", "constexprs", "num_warps"}``.
    """
    configs = []

    def add(kernel, suffix, pointers, integers, constexprs, num_warps):
        signature = {**pointers, **dict.fromkeys(integers, "i32")}
        configs.append(
            {
                "name": f"{kernel.__name__.strip('_')}_{suffix}",
                "kernel": kernel,
                "signature": {**signature, **dict.fromkeys(constexprs, "constexpr")},
                "constexprs": constexprs,
                "num_warps": num_warps,
            }
        )

    for dtype in ("bf16", "fp16", "fp32"):
        x = f"*{dtype}"
        for slots in SLOT_SIZES:
            add(
                _select_values_kernel,
                f"{dtype}_SLOTS{slots}",
                {"x_ptr": x, "key_out_ptr": "*i32", "index_out_ptr": "*i32"},
                ("V", "x_row_stride", "out_row_stride"),
                {"TILE": TILE, "SLOTS": slots},
                SELECT_WARPS,
            )
        add(
            _entries_kernel,
            f"{dtype}_BLOCK{ENTRY_BLOCK}",
            {"x_ptr": x, "entries_ptr": "*i64"},
            ("V", "n_columns", "x_row_stride", "entries_row_stride"),
            {"BLOCK": ENTRY_BLOCK},
            ENTRY_WARPS,
        )
        add(
            _write_kernel,
            f"{dtype}_BLOCK{WRITE_BLOCK}",
            {
                "x_ptr": x,
                "order_ptr": "*i64",
                "kept_ptr": "*i32",
                "values_ptr": x,
                "indices_ptr": "*i32",
            },
            ("x_row_stride", "order_row_stride", "out_row_stride", "width"),
            {"BLOCK": WRITE_BLOCK},
            WRITE_WARPS,
        )
    for slots in SLOT_SIZES:
        add(
            _select_candidates_kernel,
            f"SLOTS{slots}",
            {
                "key_ptr": "*i32",
                "index_ptr": "*i32",
                "key_out_ptr": "*i32",
                "index_out_ptr": "*i32",
            },
            ("n_slots", "row_stride", "out_row_stride"),
            {"TILE": TILE, "SLOTS": slots},
            SELECT_WARPS,
        )
        add(
            _rank_candidates_kernel,
            f"SLOTS{slots}",
            {"key_ptr": "*i32", "index_ptr": "*i32", "order_ptr": "*i64"},
            ("row_stride", "order_row_stride"),
            {"SLOTS": slots, "CHUNK": RANK_CHUNK},
            rank_warps(slots),
        )
    add(
        _sort_runs_kernel,
        f"RUN{RUN}",
        {"entries_ptr": "*i64", "order_ptr": "*i64"},
        ("row_stride",),
        {"RUN": RUN, "CHUNK": RUN_CHUNK},
        RUN_WARPS,
    )
    add(
        _merge_kernel,
        f"BLOCK{MERGE_BLOCK}",
        {"order_ptr": "*i64", "order_out_ptr": "*i64"},
        ("row_stride", "run_length", "n_runs", "out_length", "search_steps"),
        {"BLOCK": MERGE_BLOCK},
        MERGE_WARPS,
    )
    return configs
