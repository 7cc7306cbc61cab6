"""Triton kernels for exact top-k. Each element becomes an int32 order key and an int64
entry (:func:`order_key`, :func:`order_entry`); kernels keep and place entries by integer
comparisons only, and the output kernel loads each value from ``x``, bit for bit.

Fast path (width <= ``FAST_PATH_MAX_K``; ``SLOTS = BLOCKS.fast_path_slots(width)``):

* :func:`_select_values_kernel`, grid ``(B, cdiv(V, TILE))``: ``[TILE]`` columns of a row
  to its ``[SLOTS]`` top candidates;
* :func:`_select_candidates_kernel`, grid ``(B, cdiv(n_slots, TILE))``: ``[TILE]``
  candidates to ``[SLOTS]``, level after level until ``SLOTS`` are left;
* :func:`_rank_candidates_kernel`, grid ``(B,)``: ``[SLOTS]`` candidates ranked in
  ``[SLOTS, CHUNK]`` comparison blocks.

General path (a merge sort truncated to the width): :func:`_entries_kernel`, grid
``(B, cdiv(n_columns, BLOCK))``, ``[BLOCK]`` columns; :func:`_sort_runs_kernel`, grid
``(B, n_runs)``, ``[RUN]`` entries in ``[RUN, CHUNK]`` blocks; :func:`_merge_kernel`, grid
``(B, cdiv(2 * cdiv(n_runs, 2) * run_length, BLOCK))``, ``[BLOCK]`` places.

Both end with :func:`_write_kernel`, grid ``(B, cdiv(width, BLOCK))``, ``[BLOCK]`` places.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.exact import upcast
from tops.gpu.reduce import add_combine
from tops.spec.topk import FAST_PATH_MAX_K, FILL_INDEX

PAD_KEY = -(2**31)  # empty slots: below every key
NAN_KEY = PAD_KEY + 1  # every NaN: below -inf's key 0x807FFFFF
INT32_MAX = 2**31 - 1
_PAD_KEY = tl.constexpr(PAD_KEY)
_NAN_KEY = tl.constexpr(NAN_KEY)
_INT32_MAX = tl.constexpr(INT32_MAX)
PAD_ENTRY = -(2**63)  # below every entry
_PAD_ENTRY = tl.constexpr(PAD_ENTRY)
_FILL_INDEX = tl.constexpr(FILL_INDEX)


@dataclasses.dataclass(frozen=True)
class SelectionBlocks:
    """Launch constants of the top-k kernels (8 warps: 256 threads a program)."""

    # Columns (or candidate slots) one selection program reads: 16 keys a thread. Each
    # bisection step is one compare and one block-wide sum over the tile; a larger tile
    # costs registers and programs for B = 1, a smaller one more candidates per row
    # (tile / slots is the reduction per level: 16 at 256 slots, 64 at 64).
    tile: int = 4096
    select_warps: int = 8
    # Candidate groups of the fast path: 64 for width <= 64 (greedy and the usual sampling
    # top-k), else 256; each a separate compiled configuration of three kernels.
    slot_sizes: tuple[int, ...] = (64, 256)
    # Entries compared at once in the rank kernel: [slots, rank_chunk] blocks, 32 a thread
    # (ptxas for sm_90: 127 registers at 16 warps for 256 x 64, no spills; 190 at 8 warps).
    rank_chunk: int = 64
    # Initial run of the general path, sorted by counting in [run, run_chunk] blocks.
    run: int = 256
    run_chunk: int = 32
    run_warps: int = 8
    # Columns per program of the (memory-bound) entries kernel.
    entry_block: int = 4096
    entry_warps: int = 8
    # Entries one merge program places: 8 a thread, each a binary search of
    # bit_length(run_length) dependent loads (mostly L1/L2 hits), several in flight per
    # thread while leaving registers for more than one program per SM.
    merge_block: int = 2048
    merge_warps: int = 8
    write_block: int = 1024
    write_warps: int = 4
    # Largest workspace (candidates or runs) for one group of rows; larger batches are
    # processed in groups of rows that fit.
    workspace_bytes: int = 256 * 2**20

    def fast_path_slots(self, width: int) -> int:
        """Candidate slots per group on the fast path for an output ``width``."""
        return next(slots for slots in self.slot_sizes if width <= slots)

    def rank_warps(self, slots: int) -> int:
        """Warps of the rank kernel for ``slots`` candidates."""
        return 4 if slots <= 64 else 16


BLOCKS = SelectionBlocks()


@triton.jit
def order_key(value, valid):
    """The int32 order key of float32 ``value``, ``PAD_KEY`` where not ``valid``: its bits
    ``b``, or ``b ^ 0x7FFFFFFF`` when negative, whose signed order is IEEE total order
    (``+0.0`` above ``-0.0``), and ``NAN_KEY`` for every NaN: the order of
    ``tops.spec.topk``, so ties resolve as in the reference, by integers alone."""
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
    ``(key, -index)``, the top-k order, and are unique within a row."""
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
    n_valid = tl.reduce(valid.to(tl.int32), 0, add_combine)
    kept = tl.minimum(n_valid, SLOTS)
    lo = tl.min(tl.where(valid, key, _INT32_MAX), axis=0).to(tl.int64)
    hi = tl.max(tl.where(valid, key, _PAD_KEY), axis=0).to(tl.int64)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        count = tl.reduce((key >= mid.to(tl.int32)).to(tl.int32), 0, add_combine)
        enough = count >= kept
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    threshold = lo.to(tl.int32)
    above = valid & (key > threshold)
    tied = valid & (key == threshold)
    needed = kept - tl.reduce(above.to(tl.int32), 0, add_combine)
    keep = above | (tied & (tl.associative_scan(tied.to(tl.int32), 0, add_combine) <= needed))
    return keep, kept


@triton.jit
def _store_candidates(key_out, index_out, key, index, keep, kept, SLOTS: tl.constexpr):
    """Write the kept entries to slots ``0 .. kept-1`` in tile order (so in index order)
    and ``PAD_KEY`` / ``INT32_MAX`` to slots ``kept .. SLOTS-1``."""
    slot = tl.associative_scan(keep.to(tl.int32), 0, add_combine) - 1
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
        rank += tl.reduce(ahead.to(tl.int32), 1, add_combine)
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
        rank += tl.reduce((theirs[None, :] > mine[:, None]).to(tl.int64), 1, add_combine)
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


def launch(
    x: torch.Tensor, kept: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> None:
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
    group = max(1, BLOCKS.workspace_bytes // row_bytes)
    for start in range(0, batch, group):
        rows = slice(start, start + group)
        x_rows = x[rows]
        order = _fast_path_order(x_rows, width) if fast else _general_path_order(x_rows, width)
        _write_kernel[(x_rows.shape[0], triton.cdiv(width, BLOCKS.write_block))](
            x_rows,
            order,
            kept[rows],
            values[rows],
            indices[rows],
            x_rows.stride(0),
            order.stride(0),
            values.stride(0),
            width,
            BLOCK=BLOCKS.write_block,
            num_warps=BLOCKS.write_warps,
        )


def _fast_path_row_bytes(vocab: int, width: int) -> int:
    """Workspace bytes per row of the fast path: int32 keys and indices of the first
    level's candidates and of the second level's (no more than the first's)."""
    return 2 * 2 * 4 * triton.cdiv(vocab, BLOCKS.tile) * BLOCKS.fast_path_slots(width)


def _general_path_row_bytes(vocab: int, width: int) -> int:
    """Workspace bytes per row of the general path: two int64 run buffers."""
    return 2 * 8 * _general_path_capacity(vocab, width)


def _general_path_capacity(vocab: int, width: int) -> int:
    """Entries per row that hold every pass's runs: the largest ``n_runs * run_length``
    over the passes (``n_runs`` rounded up to even from the second pass on, for the
    output run of a lone last run)."""
    n_runs, run_length = triton.cdiv(vocab, BLOCKS.run), BLOCKS.run
    capacity = n_runs * run_length
    while n_runs > 1:
        n_runs, run_length = triton.cdiv(n_runs, 2), min(2 * run_length, width)
        capacity = max(capacity, n_runs * run_length)
    return capacity


def _fast_path_order(x: torch.Tensor, width: int) -> torch.Tensor:
    """``int64[B, SLOTS]`` (``SLOTS >= width``): each row's top entries in order."""
    batch, vocab = x.shape
    slots = BLOCKS.fast_path_slots(width)
    select = {"TILE": BLOCKS.tile, "SLOTS": slots, "num_warps": BLOCKS.select_warps}
    key = index = None
    n_slots = vocab
    while key is None or n_slots > slots:
        tiles = triton.cdiv(n_slots, BLOCKS.tile)
        key_out = torch.empty((batch, tiles * slots), dtype=torch.int32, device=x.device)
        index_out = torch.empty_like(key_out)
        # Every level keeps each tile's top SLOTS: their union holds the row's top set.
        if key is None:  # the first level reads the logits
            _select_values_kernel[(batch, tiles)](
                x, key_out, index_out, vocab, x.stride(0), key_out.stride(0), **select
            )
        else:
            _select_candidates_kernel[(batch, tiles)](
                key, index, key_out, index_out, n_slots, key.stride(0), key_out.stride(0), **select
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
        CHUNK=BLOCKS.rank_chunk,
        num_warps=BLOCKS.rank_warps(slots),
    )
    return order


def _general_path_order(x: torch.Tensor, width: int) -> torch.Tensor:
    """``int64[B, >= width]``: each row's first ``width`` entries in order (merge sort)."""
    batch, vocab = x.shape
    capacity = _general_path_capacity(vocab, width)
    order = torch.empty((batch, capacity), dtype=torch.int64, device=x.device)
    run = BLOCKS.run
    n_runs = triton.cdiv(vocab, run)
    entries = torch.empty_like(order)
    _entries_kernel[(batch, triton.cdiv(n_runs * run, BLOCKS.entry_block))](
        x,
        entries,
        vocab,
        n_runs * run,
        x.stride(0),
        entries.stride(0),
        BLOCK=BLOCKS.entry_block,
        num_warps=BLOCKS.entry_warps,
    )
    _sort_runs_kernel[(batch, n_runs)](
        entries,
        order,
        order.stride(0),
        RUN=run,
        CHUNK=BLOCKS.run_chunk,
        num_warps=BLOCKS.run_warps,
    )
    merged = entries
    run_length = run
    while n_runs > 1:
        pairs = triton.cdiv(n_runs, 2)
        out_length = min(2 * run_length, width)
        _merge_kernel[(batch, triton.cdiv(2 * pairs * run_length, BLOCKS.merge_block))](
            order,
            merged,
            order.stride(0),
            run_length,
            n_runs,
            out_length,
            run_length.bit_length(),
            BLOCK=BLOCKS.merge_block,
            num_warps=BLOCKS.merge_warps,
        )
        order, merged = merged, order
        n_runs, run_length = pairs, out_length
    return order


def shipped_configs() -> list[TritonConfig]:
    """Every shipped kernel configuration at the warps it launches with: per input dtype,
    :func:`_select_values_kernel` at each of ``BLOCKS.slot_sizes``, :func:`_entries_kernel`
    and :func:`_write_kernel`; dtype-free, :func:`_select_candidates_kernel` and
    :func:`_rank_candidates_kernel` at each slot size, :func:`_sort_runs_kernel` and
    :func:`_merge_kernel`."""
    configs = []
    for dtype in ("bf16", "fp16", "fp32"):
        x = f"*{dtype}"
        configs += [
            TritonConfig.build(
                f"select_values_kernel_{dtype}_SLOTS{slots}",
                _select_values_kernel,
                pointers={"x_ptr": x, "key_out_ptr": "*i32", "index_out_ptr": "*i32"},
                integers=("V", "x_row_stride", "out_row_stride"),
                constexprs={"TILE": BLOCKS.tile, "SLOTS": slots},
                num_warps=BLOCKS.select_warps,
            )
            for slots in BLOCKS.slot_sizes
        ]
        configs.append(
            TritonConfig.build(
                f"entries_kernel_{dtype}_BLOCK{BLOCKS.entry_block}",
                _entries_kernel,
                pointers={"x_ptr": x, "entries_ptr": "*i64"},
                integers=("V", "n_columns", "x_row_stride", "entries_row_stride"),
                constexprs={"BLOCK": BLOCKS.entry_block},
                num_warps=BLOCKS.entry_warps,
            )
        )
        configs.append(
            TritonConfig.build(
                f"write_kernel_{dtype}_BLOCK{BLOCKS.write_block}",
                _write_kernel,
                pointers={
                    "x_ptr": x,
                    "order_ptr": "*i64",
                    "kept_ptr": "*i32",
                    "values_ptr": x,
                    "indices_ptr": "*i32",
                },
                integers=("x_row_stride", "order_row_stride", "out_row_stride", "width"),
                constexprs={"BLOCK": BLOCKS.write_block},
                num_warps=BLOCKS.write_warps,
            )
        )
    candidates = {"key_ptr": "*i32", "index_ptr": "*i32"}
    for slots in BLOCKS.slot_sizes:
        configs.append(
            TritonConfig.build(
                f"select_candidates_kernel_SLOTS{slots}",
                _select_candidates_kernel,
                pointers={**candidates, "key_out_ptr": "*i32", "index_out_ptr": "*i32"},
                integers=("n_slots", "row_stride", "out_row_stride"),
                constexprs={"TILE": BLOCKS.tile, "SLOTS": slots},
                num_warps=BLOCKS.select_warps,
            )
        )
        configs.append(
            TritonConfig.build(
                f"rank_candidates_kernel_SLOTS{slots}",
                _rank_candidates_kernel,
                pointers={**candidates, "order_ptr": "*i64"},
                integers=("row_stride", "order_row_stride"),
                constexprs={"SLOTS": slots, "CHUNK": BLOCKS.rank_chunk},
                num_warps=BLOCKS.rank_warps(slots),
            )
        )
    configs.append(
        TritonConfig.build(
            f"sort_runs_kernel_RUN{BLOCKS.run}",
            _sort_runs_kernel,
            pointers={"entries_ptr": "*i64", "order_ptr": "*i64"},
            integers=("row_stride",),
            constexprs={"RUN": BLOCKS.run, "CHUNK": BLOCKS.run_chunk},
            num_warps=BLOCKS.run_warps,
        )
    )
    configs.append(
        TritonConfig.build(
            f"merge_kernel_BLOCK{BLOCKS.merge_block}",
            _merge_kernel,
            pointers={"order_ptr": "*i64", "order_out_ptr": "*i64"},
            integers=("row_stride", "run_length", "n_runs", "out_length", "search_steps"),
            constexprs={"BLOCK": BLOCKS.merge_block},
            num_warps=BLOCKS.merge_warps,
        )
    )
    return configs
