"""Pallas TPU kernel for the chunked simple GLA forward, beside its launcher.

One fused kernel: the grid walks, per ``(batch, head, value tile)``, the *segments* of
the sequence in order (sequential axis), and the ``[K, BV]`` state tile lives in a
float32 VMEM scratch across them (``BV = value_block(Vp)``: one tile up to 256 lanes;
value columns of the recurrence are independent, wider V only re-reads q, k, g). A
segment is the intersection of one aligned chunk of ``C`` tokens with one sequence;
rows of the chunk outside the segment's window ``[lo, hi)`` are masked (with ``where``,
so garbage or NaN in a partial block never leaks). Without ``cu_seqlens`` segment ``s``
is chunk ``s`` of batch row ``b`` (window ``[0, min(C, T - sC))``). With ``cu_seqlens``
(``B == 1``) the segments come from run-time tables (scalar prefetch): ``chunk[s]``,
``seq[s]`` and ``cu_seqlens`` itself, at most ``ceil(T / C) + N`` of them.
Consecutive segments of one chunk map to the same ``q, k, v, o`` blocks, so Pallas keeps
those blocks resident: q, k, v and g are read once and o is written once, each segment
writing only its window's rows of the resident output block.

Arithmetic (the precision-first contract): q, k, v are upcast to float32 (exact for
bf16) and every matmul is float32 x float32 with ``precision=HIGHEST`` and float32
accumulation. Per segment, the window's ``g`` is summed by a log-step scan of
error-free additions into double-float prefix sums ``Gg = Gg_hi + Gg_lo``, and with
``n_i`` the number of window rows up to ``i`` the log decay from the segment start to
row ``i`` is ``D_i = Gg_i + gamma * n_i`` (the constant gate enters through one
multiply, not a sum of ``n`` roundings)::

    o_i   = scale * (exp(D_i) q_i S + sum_{j <= i} exp(D_i - D_j) (q_i . k_j) v_j)
    S_new = exp(D_tot) S + sum_j exp(D_tot - D_j) k_j^T v_j

Differences are taken on the double-floats, ``D_i - D_j = ((hi_i - hi_j) + (lo_i -
lo_j)) + gamma * (i - j)``, so an exponent is accurate to about ulp(D_i - D_j) rather
than ulp(D_i): a float32 cumulative sum would put errors of |D| 2**-24 on the weights of
the nearby tokens that dominate each output. Every exponent is masked before ``exp``
(``exp(where(mask, x, 0))``), so exponents a mask discards (for ALiBi decays at chunk
128 they exceed the float32 range) never reach ``exp``. A ``-inf`` gate (an exact
reset) is summed as 0 and counted instead; every decay that crosses a reset is set to
``-inf`` (``exp`` gives exactly 0), so ``-inf - (-inf)`` never forms
(:func:`_segment_decays`).

Layout: the wrapper views ``q, k [B, T, H, K]`` as ``[B, T, H * Kp]`` (a free reshape
when ``K`` is a multiple of 128, otherwise one zero-padding copy to ``Kp``; zero columns
add nothing), likewise ``v`` and ``o`` with ``Vp``, so a head's ``(C, Kp)`` block is
lane-dense without a transpose; a partial last chunk is a partial block, masked by the
window. ``g [B, T, H]`` is transposed and zero-padded to ``[B, H, NT8, 128]`` (``NT8``:
chunks rounded up to 8; one chunk per 128-lane row, the lanes past ``C`` zero) and read
in ``(8, 128)`` blocks: the wrapper moves 8 bytes per token and head (C = 128) or 12
(C = 64), the kernel reads 4 or 8, against 1028 for q, k, v, o in bf16 at
``K = V = 128``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.typing import ArrayLike

from tops.ops.double_float import add_dd

LANES = 128
# Chunks per gate block: the gate array's second-minor block dimension (float32 sublanes).
GATE_ROWS = 8
# Index arithmetic is int32 (Mosaic has no 64-bit scalars). JAX reads a Python int passed
# to lax, to pltpu.roll or returned by an index map as the default integer, int64 under
# jax_enable_x64, so those constants enter typed.
_GATE_ROWS_I32 = np.int32(GATE_ROWS)
_ZERO_I32 = np.int32(0)
# Widest value tile: the state is ``(Kp, BV)`` per grid step, BV <= 256 lanes (256 KiB of
# float32 state at K = 256, double-buffered initial and final state blocks included
# about 1.3 MiB). Value columns of the recurrence are independent, so tiles are parallel.
MAX_VALUE_BLOCK = 256
_HIGHEST = lax.Precision.HIGHEST


def padded(size: int) -> int:
    """``size`` rounded up to the 128 lanes."""
    return pl.cdiv(size, LANES) * LANES


def value_block(vp: int) -> int:
    """The value tile ``BV``: all of ``Vp`` up to ``MAX_VALUE_BLOCK``, else the widest
    multiple of 128 up to it that divides ``Vp``."""
    if vp <= MAX_VALUE_BLOCK:
        return vp
    return next(b for b in range(MAX_VALUE_BLOCK, 0, -LANES) if vp % b == 0)


def _dot(a, b, contract):
    """float32 x float32 matmul at ``HIGHEST`` precision with float32 accumulation."""
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _inclusive_scan_dd(x, length):
    """Inclusive prefix sums along the 128 lanes of ``x`` (the first ``length`` matter)
    as double-floats ``(hi, lo)``: a log-step scan of error-free additions, so each sum
    is exact to about 2**-44 of the partial sums' magnitude."""
    lanes = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    hi, lo = x, jnp.zeros_like(x)
    shift = 1
    while shift < length:
        keep = lanes >= shift  # pltpu.roll is jnp.roll: lane i receives lane i - shift
        amount = np.int32(shift)
        hi, lo = add_dd(
            hi,
            lo,
            jnp.where(keep, pltpu.roll(hi, amount, 1), 0.0),
            jnp.where(keep, pltpu.roll(lo, amount, 1), 0.0),
        )
        shift *= 2
    return hi, lo


# ---------------------------------------------------------------------------------------
# The kernel.


def _segment(prefetch, *, chunk, seq_len, varlen, num_segments=None, reverse=False):
    """``(chunk_row, lo, hi, first, last)`` of the current segment.

    ``chunk_row`` is the chunk's row in its ``(8, 128)`` gate block, ``[lo, hi)`` the
    window within the chunk, ``first`` whether the segment starts its sequence (the
    forward then resets the state to the initial state) and ``last`` whether it ends it
    (the backward, which visits the segments in reverse, ``reverse=True``, then resets
    the state gradient to the final state's cotangent; it needs ``num_segments``). The
    segment is ``s = program_id(3)``, or ``S - 1 - program_id(3)`` in reverse. The
    launchers pass repaired ``cu_seqlens`` (:func:`repair_cu_seqlens`), and windows are
    clipped to ``[0, T)`` besides.
    """
    s = segment_id(num_segments, reverse=reverse)
    if not varlen:
        last = True if num_segments is None else s == num_segments - 1
        return lax.rem(s, _GATE_ROWS_I32), 0, jnp.minimum(chunk, seq_len - s * chunk), s == 0, last
    chunk_ref, seq_ref, cu_ref = prefetch
    c = chunk_ref[s]  # the sentinel num_chunks marks a no-op segment: its window is empty
    n = seq_ref[s]
    base = c * chunk
    rows = jnp.clip(seq_len - base, 0, chunk)  # rows of the chunk inside [0, T)
    lo = jnp.clip(cu_ref[n] - base, 0, rows)
    hi = jnp.clip(cu_ref[n + 1] - base, lo, rows)
    first = (s == 0) | (n != seq_ref[jnp.maximum(s - 1, 0)])
    if num_segments is None:
        last = True
    else:
        last = (s == num_segments - 1) | (n != seq_ref[jnp.minimum(s + 1, num_segments - 1)])
    num_chunks = pl.cdiv(seq_len, chunk)
    return lax.rem(jnp.minimum(c, num_chunks - 1), _GATE_ROWS_I32), lo, hi, first, last


def segment_id(num_segments, *, reverse):
    """The segment of the current grid step: ``program_id(3)``, or counted from the end
    when ``reverse`` (then ``num_segments`` is required)."""
    s = pl.program_id(3)
    return num_segments - 1 - s if reverse else s


def _segment_decays(g_ref, gamma, *, chunk_row, lo, hi, chunk, has_g, has_gamma):
    """Log decays of the segment's window, as in the module docstring, with resets cut.

    Returns ``(decay_ij (C, C), decay_in (C, 1), decay_tot (1, 1) or scalar,
    decay_out (C, 1))``: ``D_i - D_j``, ``D_i``, ``D_tot`` and ``D_tot - D_i`` for window
    rows (entries outside the window or above the diagonal are garbage the callers mask
    before ``exp``). ``g_ref`` is the ``(8, 128)`` gate block (with ``has_g``), ``gamma``
    the head's constant log decay (with ``has_gamma``; else 0.0).

    A ``-inf`` gate (or ``gamma = -inf``: every row) is a reset. The sums run over the
    finite gates (a ``-inf`` counts 0, and ``gamma = -inf`` enters ``gamma * n`` as 0), so
    no ``-inf - (-inf)`` is formed, and ``R_i``, the number of resets in the window up to
    row ``i`` (exact small integers in float32), cuts every decay that crosses a reset
    to ``-inf`` (``exp`` gives exactly 0): ``D_i - D_j`` unless ``R_i == R_j``, ``D_i``
    unless ``R_i == 0``, ``D_tot`` unless ``R_tot == 0``, ``D_tot - D_j`` unless ``R_j ==
    R_tot``. ``R`` rides in the gate block's next sublane row, so the one scan of the
    ``(8, 128)`` vreg sums both.
    """
    rows = lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    sub = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)  # i
    lane = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)  # j
    count = (rows - lo + 1).astype(jnp.float32)  # n_i for window rows
    length = (hi - lo).astype(jnp.float32)
    # 1.0 where gamma = -inf (every row resets), else 0.0; gamma itself then counts 0.
    # (Typed constants: a float64 value, from untyped ones under x64, does not lower.)
    one, zero = np.float32(1), np.float32(0)
    gamma_reset = jnp.where(gamma == -jnp.inf, one, zero) if has_gamma else zero
    if has_gamma:
        gamma = jnp.where(gamma == -jnp.inf, 0.0, gamma)
    decay_ij = gamma * (sub - lane).astype(jnp.float32)
    decay_in = gamma * count  # D_i
    decay_tot = gamma * length  # D_tot
    decay_out = gamma * (length - count)  # D_tot - D_j
    if has_g:
        g_block = g_ref[...]  # (8, 128): row chunk_row holds the chunk, lanes >= C are 0
        block_rows = lax.broadcasted_iota(jnp.int32, g_block.shape, 0)
        block_lanes = lax.broadcasted_iota(jnp.int32, g_block.shape, 1)
        selected = (block_rows == chunk_row) & (block_lanes >= lo) & (block_lanes < hi)
        reset = g_block == -jnp.inf
        resets = jnp.where(selected, jnp.maximum(jnp.where(reset, one, zero), gamma_reset), 0.0)
        # The finite gates in row chunk_row, the reset indicator one sublane down (rows
        # are independent in the lane scan): both prefix sums from one scan.
        gates = jnp.where(selected & ~reset, g_block, 0.0)
        gates = gates + pltpu.roll(resets, np.int32(1), 0)
        cum_hi, cum_lo = _inclusive_scan_dd(gates, chunk)
        # Selecting one block row and summing the sublanes is exact: (1, 128) rows.
        own = block_rows == chunk_row
        cum_hi, cum_lo, cum_r = (
            jnp.sum(jnp.where(own, x, 0.0), axis=0, keepdims=True)
            for x in (cum_hi, cum_lo, pltpu.roll(cum_hi, np.int32(GATE_ROWS - 1), 0))
        )
        # The same values as (C, 1) columns, by an exact selection.
        sub_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 0)
        lane_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 1)
        diagonal = lane_wide == sub_wide
        col_hi, col_lo, col_r = (
            jnp.sum(jnp.where(diagonal, x, 0.0), axis=1, keepdims=True)
            for x in (cum_hi, cum_lo, cum_r)
        )
        row_hi, row_lo, row_r = cum_hi[:, :chunk], cum_lo[:, :chunk], cum_r[:, :chunk]
        tot_hi, tot_lo = cum_hi[:, chunk - 1 : chunk], cum_lo[:, chunk - 1 : chunk]
        tot_r = cum_r[:, chunk - 1 : chunk]
        # Differences of double-floats: accurate to about ulp(G_i - G_j), not ulp(G_i).
        decay_ij = ((col_hi - row_hi) + (col_lo - row_lo)) + decay_ij
        decay_in = (col_hi + col_lo) + decay_in
        decay_tot = (tot_hi + tot_lo) + decay_tot
        decay_out = ((tot_hi - col_hi) + (tot_lo - col_lo)) + decay_out
    elif has_gamma:  # R_i = n_i when gamma = -inf, else 0
        col_r = gamma_reset * count
        lanes = lax.broadcasted_iota(jnp.int32, (1, chunk), 1)
        row_r = gamma_reset * (lanes - lo + 1).astype(jnp.float32)
        tot_r = gamma_reset * length
    else:
        return decay_ij, decay_in, decay_tot, decay_out
    cut = -jnp.inf
    decay_ij = jnp.where(col_r == row_r, decay_ij, cut)
    decay_in = jnp.where(col_r == 0.0, decay_in, cut)
    decay_tot = jnp.where(tot_r == 0.0, decay_tot, cut)
    decay_out = jnp.where(col_r == tot_r, decay_out, cut)
    return decay_ij, decay_in, decay_tot, decay_out


def _gla_kernel(
    *refs,
    chunk,
    seq_len,
    scale,
    varlen,
    has_g,
    has_gamma,
    has_h0,
    has_ht,
    save_states,
):
    """One segment of one ``(batch, head)``: output rows of its window, state update.

    Grid ``(B, H, Vp / BV, S)``, the segment axis last and sequential (``S = ceil(T / C)``,
    or ``ceil(T / C) + N`` with ``cu_seqlens``); the value tiles are independent. Refs,
    in order:

    * scalar prefetch (only with ``cu_seqlens``): ``chunk[S]``, ``seq[S]`` int32 and
      ``cu_seqlens[N + 1]``;
    * ``q_ref``, ``k_ref`` ``(C, Kp)``, ``v_ref`` ``(C, BV)`` in the input dtype: the
      segment's chunk of one head (one value tile of ``v``);
    * ``g_ref`` ``(8, 128)`` float32 (with ``g``): gates of 8 consecutive chunks of the
      head, one chunk per row (lanes past ``C`` zero), the segment's chunk among them;
    * ``gamma_ref`` ``(H,)`` float32 in SMEM (with ``g_gamma``);
    * ``h0_ref`` ``(Kp, BV)`` float32 (with an initial state): the sequence's state;
    * ``o_ref`` ``(C, BV)`` in the input dtype;
    * ``ht_ref`` ``(Kp, BV)`` float32 (with ``output_final_state``): the state after
      the segment, so after the sequence's last segment its final state;
    * ``states_ref`` ``(Kp, BV)`` float32 (with ``save_states``): the state before the
      segment;
    * scratch ``state_ref`` ``(Kp, BV)`` float32, carried along the segment axis.
    """
    refs = list(refs)
    prefetch = [refs.pop(0) for _ in range(3)] if varlen else []
    q_ref, k_ref, v_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    g_ref = refs.pop(0) if has_g else None
    gamma_ref = refs.pop(0) if has_gamma else None
    h0_ref = refs.pop(0) if has_h0 else None
    o_ref = refs.pop(0)
    ht_ref = refs.pop(0) if has_ht else None
    states_ref = refs.pop(0) if save_states else None
    (state_ref,) = refs

    chunk_row, lo, hi, first, _ = _segment(prefetch, chunk=chunk, seq_len=seq_len, varlen=varlen)

    @pl.when(first)
    def _reset():
        if has_h0:
            state_ref[...] = h0_ref[...]
        else:
            state_ref[...] = jnp.zeros(state_ref.shape, jnp.float32)

    state = state_ref[...]
    if save_states:
        states_ref[...] = state

    rows = lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    window = (rows >= lo) & (rows < hi)  # (C, 1)
    q = jnp.where(window, q_ref[...].astype(jnp.float32), 0.0)
    k = jnp.where(window, k_ref[...].astype(jnp.float32), 0.0)
    v = jnp.where(window, v_ref[...].astype(jnp.float32), 0.0)

    sub = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)  # i
    lane = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)  # j
    gamma = gamma_ref[pl.program_id(1)] if has_gamma else 0.0
    decay_ij, decay_in, decay_tot, decay_out = _segment_decays(
        g_ref,
        gamma,
        chunk_row=chunk_row,
        lo=lo,
        hi=hi,
        chunk=chunk,
        has_g=has_g,
        has_gamma=has_gamma,
    )
    causal = (lane <= sub) & window

    scores = _dot(q, k, ((1,), (1,)))  # (C, C) = q k^T
    attention = jnp.where(causal, scores * jnp.exp(jnp.where(causal, decay_ij, 0.0)), 0.0)
    from_state = _dot(q * jnp.exp(jnp.where(window, decay_in, 0.0)), state, ((1,), (0,)))
    within = _dot(attention, v, ((1,), (0,)))
    out = scale * (from_state + within)
    o_ref[...] = jnp.where(window, out, o_ref[...].astype(jnp.float32)).astype(o_ref.dtype)

    k_out = k * jnp.exp(jnp.where(window, decay_out, 0.0))
    state = jnp.exp(decay_tot) * state + _dot(k_out, v, ((0,), (0,)))
    state_ref[...] = state
    if has_ht:
        ht_ref[...] = state


# ---------------------------------------------------------------------------------------
# Run-time segment tables and the launcher.


def repair_cu_seqlens(cu_seqlens: ArrayLike, seq_len: int) -> jax.Array:
    """The offsets the kernels run on: the jnp mirror of
    ``tops.spec.simple_gla.repaired_cu_seqlens``, int32 ``[N + 1]``.

    ``cu'[0] = 0``, ``cu'[N] = T`` and ``cu'[n] = min(T, max(0, cu[0], ..., cu[n]))``;
    valid offsets come back unchanged. The clip happens in the input's integer dtype, so
    int64 entries past int32 (under ``jax_enable_x64``) clip rather than wrap; a NumPy
    array is clipped on the host first, before JAX may narrow it. Traceable; whatever the
    entries, the segments built from the result stay inside ``[0, T)``.
    """
    if isinstance(cu_seqlens, np.ndarray):
        cu_seqlens = np.clip(cu_seqlens, 0, seq_len)
    cu = jnp.asarray(cu_seqlens)
    cu = lax.cummax(jnp.clip(cu, 0, seq_len), axis=0)
    return cu.at[0].set(0).at[-1].set(seq_len).astype(jnp.int32)


def segment_tables(cu_seqlens, *, seq_len: int, chunk: int):
    """``(chunk[S], seq[S])`` int32 for ``cu_seqlens [N + 1]``, ``S = ceil(T / C) + N``.

    Segments are listed in token order: for each sequence the chunks it touches, and one
    empty segment for an empty sequence (which still hands its initial state on as its
    final state). Unused trailing entries get the sentinel chunk ``ceil(T / C)`` (an
    empty window that maps to the last chunk's blocks) and the last sequence. A sequence
    and the next share at most one chunk, so ``S`` entries always suffice.
    """
    num_chunks = pl.cdiv(seq_len, chunk)
    num_seqs = cu_seqlens.shape[0] - 1
    starts, ends = cu_seqlens[:-1], cu_seqlens[1:]
    first_chunk = jnp.clip(starts // chunk, 0, num_chunks - 1)
    last_chunk = jnp.where(ends > starts, (ends - 1) // chunk, first_chunk)
    last_chunk = jnp.clip(last_chunk, first_chunk, num_chunks - 1)
    counts = last_chunk - first_chunk + 1
    ends_at = jnp.cumsum(counts)
    slots = jnp.arange(num_chunks + num_seqs, dtype=jnp.int32)
    seq = jnp.minimum(jnp.searchsorted(ends_at, slots, side="right"), num_seqs - 1)
    chunk_index = first_chunk[seq] + slots - (ends_at - counts)[seq]
    chunk_index = jnp.where(slots < ends_at[-1], chunk_index, num_chunks)
    return chunk_index.astype(jnp.int32), seq.astype(jnp.int32)


def lane_view(x, width: int):
    """``[B, T, H, D]`` as ``[B, T, H * width]``: a free reshape when ``D == width``,
    else one copy zero-padding ``D`` to ``width``."""
    batch, seq_len, heads, size = x.shape
    if width != size:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - size)))
    return x.reshape(batch, seq_len, heads * width)


def gate_layout(g, *, chunk: int):
    """``g [B, T, H]`` as ``[B, H, NT8, 128]``: one chunk per 128-lane row (lanes past
    ``C`` zero), ``NT8`` the chunks rounded up to ``GATE_ROWS``, zero-padded."""
    batch, seq_len, heads = g.shape
    gate_rows = pl.cdiv(pl.cdiv(seq_len, chunk), GATE_ROWS) * GATE_ROWS
    g_t = jnp.pad(
        jnp.transpose(g, (0, 2, 1)), ((0, 0), (0, 0), (0, gate_rows * chunk - seq_len))
    ).reshape(batch, heads, gate_rows, chunk)
    return jnp.pad(g_t, ((0, 0), (0, 0), (0, 0), (0, LANES - chunk)))


def gate_layout_inverse(g_t, *, chunk: int, seq_len: int):
    """The inverse of :func:`gate_layout`: ``[..., B, H, NT8, 128]`` -> ``[..., B, T, H]``."""
    g_t = g_t[..., :chunk]
    g_t = g_t.reshape(*g_t.shape[:-2], -1)[..., :seq_len]
    return jnp.swapaxes(g_t, -1, -2)


class IndexMaps:
    """Block index maps of the grid ``(B, H, Vp / BV, S)`` shared by the forward and the
    backward. ``reverse`` visits the segments from the last (the index maps then take
    segment ``S - 1 - s`` at grid step ``s``). With ``cu_seqlens`` the maps receive the
    scalar-prefetched tables ``(chunk, seq, cu_seqlens)``."""

    def __init__(self, *, varlen, heads, num_chunks, num_segments, value_tiles, reverse=False):
        self.varlen, self.heads, self.num_chunks = varlen, heads, num_chunks
        self.num_segments, self.value_tiles, self.reverse = num_segments, value_tiles, reverse

    def segment(self, s):
        return self.num_segments - 1 - s if self.reverse else s

    def chunk(self, s, tables):
        s = self.segment(s)
        return jnp.minimum(tables[0][s], self.num_chunks - 1) if self.varlen else s

    def gamma(self, b, h, iv, s, *tables):
        """``g_gamma [H]`` whole, in SMEM (Pallas's default map returns int64 under x64)."""
        return (_ZERO_I32,)

    def key(self, b, h, iv, s, *tables):
        """``[B, T, H * Kp]`` in ``(C, Kp)`` blocks."""
        return (b, self.chunk(s, tables), h)

    def key_tile(self, b, h, iv, s, *tables):
        """``[B, T, (Vp / BV) * H * Kp]`` in ``(C, Kp)`` blocks: one per value tile."""
        return (b, self.chunk(s, tables), iv * self.heads + h)

    def value(self, b, h, iv, s, *tables):
        """``[B, T, H * Vp]`` in ``(C, BV)`` blocks."""
        return (b, self.chunk(s, tables), h * self.value_tiles + iv)

    def gate(self, b, h, iv, s, *tables):
        """``[B, H, NT8, 128]`` in ``(8, 128)`` blocks."""
        return (b, h, lax.div(self.chunk(s, tables), _GATE_ROWS_I32), _ZERO_I32)

    def gate_tile(self, b, h, iv, s, *tables):
        """``[Vp / BV, B, H, NT8, 128]`` in ``(8, 128)`` blocks."""
        return (iv, b, h, lax.div(self.chunk(s, tables), _GATE_ROWS_I32), _ZERO_I32)

    def state(self, b, h, iv, s, *tables):
        """``[N, H, Kp, Vp]`` in ``(Kp, BV)`` blocks: the segment's sequence."""
        n = tables[1][self.segment(s)] if self.varlen else b
        return (n, h, _ZERO_I32, iv)

    def saved(self, b, h, iv, s, *tables):
        """``[B, H, S, Kp, Vp]`` in ``(Kp, BV)`` blocks: the segment's own."""
        return (b, h, self.segment(s), _ZERO_I32, iv)


def forward(
    q,
    k,
    v,
    g,
    g_gamma,
    initial_state,
    cu_seqlens,
    *,
    scale: float,
    chunk_size: int,
    output_final_state: bool,
    save_states: bool,
    interpret,
    padded_states: bool = False,
):
    """Launch the kernel on validated inputs with ``B >= 1``.

    Args:
      q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (bf16 or f32).
      g: None or float32 ``[B, T, H]``; g_gamma: None or float32 ``[H]``.
      initial_state: None or float32 ``[N, H, K, V]``.
      cu_seqlens: None or int32 or int64 ``[N + 1]`` (``B == 1``), possibly traced; run
        on :func:`repair_cu_seqlens` of it (any entries are safe).
      scale: the resolved scale; chunk_size: 64 or 128.
      output_final_state: whether to return the final states.
      save_states: also return the state before every segment (for the backward).
      interpret: ``pl.pallas_call``'s (``tops.backends.pallas_interpret()``).
      padded_states: return the saved states with ``K, V`` padded to ``Kp, Vp`` (the
        backward's layout; zero in the padding).

    Returns:
      ``(o, final_state, states)``: ``o [B, T, H, V]`` in the dtype of ``v``;
      ``final_state`` float32 ``[N, H, K, V]`` (None unless ``output_final_state``);
      ``states`` float32 ``[B, H, S, K, V]`` (None unless ``save_states``), the state
      before each segment (chunk ``s`` of each batch row; with ``cu_seqlens``, segment
      ``s`` of :func:`segment_tables`).
    """
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    kp, vp = padded(key_dim), padded(value_dim)
    bv = value_block(vp)
    value_tiles = vp // bv
    chunk = chunk_size
    num_chunks = pl.cdiv(seq_len, chunk)
    varlen = cu_seqlens is not None
    num_states = cu_seqlens.shape[0] - 1 if varlen else batch
    num_segments = num_chunks + num_states if varlen else num_chunks
    maps = IndexMaps(
        varlen=varlen,
        heads=heads,
        num_chunks=num_chunks,
        num_segments=num_segments,
        value_tiles=value_tiles,
    )
    prefetch = ()
    if varlen:
        # Repaired here too, so that the launcher is in bounds whatever the entries.
        cu_seqlens = repair_cu_seqlens(cu_seqlens, seq_len)
        prefetch = (*segment_tables(cu_seqlens, seq_len=seq_len, chunk=chunk), cu_seqlens)

    inputs = [lane_view(q, kp), lane_view(k, kp), lane_view(v, vp)]
    in_specs = [
        pl.BlockSpec((None, chunk, kp), maps.key),
        pl.BlockSpec((None, chunk, kp), maps.key),
        pl.BlockSpec((None, chunk, bv), maps.value),
    ]
    if g is not None:
        inputs.append(gate_layout(g, chunk=chunk))
        in_specs.append(pl.BlockSpec((None, None, GATE_ROWS, LANES), maps.gate))
    if g_gamma is not None:
        inputs.append(g_gamma)
        in_specs.append(pl.BlockSpec((heads,), maps.gamma, memory_space=pltpu.SMEM))
    state_spec = pl.BlockSpec((None, None, kp, bv), maps.state)
    if initial_state is not None:
        pad = ((0, 0), (0, 0), (0, kp - key_dim), (0, vp - value_dim))
        inputs.append(jnp.pad(initial_state, pad))
        in_specs.append(state_spec)

    out_shape = [jax.ShapeDtypeStruct((batch, seq_len, heads * vp), v.dtype)]
    out_specs = [pl.BlockSpec((None, chunk, bv), maps.value)]
    if output_final_state:
        out_shape.append(jax.ShapeDtypeStruct((num_states, heads, kp, vp), jnp.float32))
        out_specs.append(state_spec)
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((batch, heads, num_segments, kp, vp), jnp.float32))
        out_specs.append(pl.BlockSpec((None, None, None, kp, bv), maps.saved))

    outputs = pl.pallas_call(
        functools.partial(
            _gla_kernel,
            chunk=chunk,
            seq_len=seq_len,
            scale=scale,
            varlen=varlen,
            has_g=g is not None,
            has_gamma=g_gamma is not None,
            has_h0=initial_state is not None,
            has_ht=output_final_state,
            save_states=save_states,
        ),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(prefetch),
            grid=(batch, heads, value_tiles, num_segments),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[pltpu.VMEM((kp, bv), jnp.float32)],
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
    )(*prefetch, *inputs)
    outputs = list(outputs)
    o = outputs.pop(0).reshape(batch, seq_len, heads, vp)[..., :value_dim]
    final_state = outputs.pop(0)[:, :, :key_dim, :value_dim] if output_final_state else None
    states = None
    if save_states:
        states = outputs.pop(0)
        if not padded_states:
            states = states[..., :key_dim, :value_dim]
    return o, final_state, states


def tpu_configs() -> list[tuple[str, object, tuple]]:
    """Every shipped configuration as ``(name, fn, shape_structs)`` for the TPU compile
    check, through the public wrapper: chunk 64 and 128, bf16 and f32, each gate
    combination, with and without initial and final states, varlen, and K/V that need
    padding or several value tiles (V = 512: two of 256 lanes, V = 600: five of 128);
    ``T = 100`` leaves a partial last chunk, ``T = 1`` is decoding. Each configuration
    also appears as ``<name>_grad``: ``jax.vjp`` through the wrapper with cotangents for
    ``o`` (and the final state), which compiles the saving forward and the backward kernel
    (``backward.py``; V = 600 and V = 512 give partial ``dq, dk`` per value tile)."""
    configs = []
    for dtype in ("bfloat16", "float32"):
        for chunk in (64, 128):
            for gate in ("g", "g_gamma", "both", "none"):
                configs += _config(
                    f"{dtype}_C{chunk}_{gate}_T100_K128_V128_h0_hT",
                    dtype=dtype, batch=2, seq_len=100, key_dim=128, value_dim=128,
                    chunk=chunk, gate=gate, h0=True, ht=True,
                )  # fmt: skip
            configs += _config(
                f"{dtype}_C{chunk}_both_T300_K100_V64_varlen4_h0_hT",
                dtype=dtype, batch=1, seq_len=300, key_dim=100, value_dim=64,
                chunk=chunk, gate="both", h0=True, ht=True, cu=5,
            )  # fmt: skip
            configs += _config(
                f"{dtype}_C{chunk}_g_T1_K64_V600_h0_hT",
                dtype=dtype, batch=3, seq_len=1, key_dim=64, value_dim=600,
                chunk=chunk, gate="g", h0=True, ht=True,
            )  # fmt: skip
            configs += _config(
                f"{dtype}_C{chunk}_g_gamma_T256_K256_V512_o_only",
                dtype=dtype, batch=1, seq_len=256, key_dim=256, value_dim=512,
                chunk=chunk, gate="g_gamma", h0=False, ht=False,
            )  # fmt: skip
            configs += _config(
                f"{dtype}_C{chunk}_none_T129_K128_V100_varlen2_o_only",
                dtype=dtype, batch=1, seq_len=129, key_dim=128, value_dim=100,
                chunk=chunk, gate="none", h0=False, ht=False, cu=3,
            )  # fmt: skip
            configs += _saved_states_configs(dtype, chunk)
    return configs


def tpu_production_configs() -> list[tuple[str, object, tuple]]:
    """The production shapes, forward and ``_grad``, bf16, gate ``g``, chunk 64 and 128:
    ``(B, T, H, K = V)`` = (1, 8192, 16, 128), (4, 4096, 32, 128), (8, 2048, 32, 256),
    and varlen: four sequences packed in (1, 8192, 16, 128)."""
    configs = []
    for chunk in (64, 128):
        for batch, seq_len, heads, dim, cu in (
            (1, 8192, 16, 128, None),
            (4, 4096, 32, 128, None),
            (8, 2048, 32, 256, None),
            (1, 8192, 16, 128, 5),
        ):
            varlen = "" if cu is None else f"_varlen{cu - 1}"
            configs += _config(
                f"bfloat16_C{chunk}_g_B{batch}_T{seq_len}_H{heads}_K{dim}_V{dim}{varlen}",
                dtype="bfloat16", batch=batch, seq_len=seq_len, heads=heads, key_dim=dim,
                value_dim=dim, chunk=chunk, gate="g", h0=False, ht=True, cu=cu,
            )  # fmt: skip
    return configs


def _config(
    name, *, dtype, batch, seq_len, key_dim, value_dim, chunk, gate, h0, ht, cu=None, heads=2
):
    """The forward ``name`` and its ``name_grad`` (``jax.vjp`` with cotangents for ``o``
    and, with ``ht``, the final state) through ``chunk_simple_gla``."""
    from tops.ops.simple_gla import chunk_simple_gla

    def struct(shape, dtype):
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

    num_states = batch if cu is None else cu - 1
    names = ["q", "k", "v"]
    shapes = [
        struct((batch, seq_len, heads, key_dim), dtype),
        struct((batch, seq_len, heads, key_dim), dtype),
        struct((batch, seq_len, heads, value_dim), dtype),
    ]
    if gate in ("g", "both"):
        names.append("g")
        shapes.append(struct((batch, seq_len, heads), "float32"))
    if gate in ("g_gamma", "both"):
        names.append("g_gamma")
        shapes.append(struct((heads,), "float32"))
    if h0:
        names.append("initial_state")
        shapes.append(struct((num_states, heads, key_dim, value_dim), "float32"))
    if cu is not None:
        names.append("cu_seqlens")
        shapes.append(struct((cu,), "int32"))

    def fn(q, k, v, *rest):
        arrays = dict(zip(names[3:], rest, strict=True))
        return chunk_simple_gla(q, k, v, **arrays, output_final_state=ht, chunk_size=chunk)

    def grad_fn(*args):
        primals, cotangents = args[: len(names)], args[len(names) :]
        cu_seqlens = primals[-1] if cu is not None else None
        differentiable = primals[:-1] if cu is not None else primals

        def primal(*xs):
            arrays = dict(zip(names, xs, strict=False))
            return chunk_simple_gla(
                **arrays, cu_seqlens=cu_seqlens, output_final_state=ht, chunk_size=chunk
            )

        _, pullback = jax.vjp(primal, *differentiable)
        return pullback((cotangents[0], cotangents[1] if ht else None))

    cotangent_shapes = [struct((batch, seq_len, heads, value_dim), dtype)]
    if ht:
        cotangent_shapes.append(struct((num_states, heads, key_dim, value_dim), "float32"))
    return [(name, fn, tuple(shapes)), (name + "_grad", grad_fn, (*shapes, *cotangent_shapes))]


def _saved_states_configs(dtype, chunk) -> list[tuple[str, object, tuple]]:
    """The launcher with ``save_states=True`` (the backward's entry), batched and varlen."""
    from tops.backends import pallas_interpret

    def fn(q, k, v, g, cu_seqlens=None):
        return forward(
            q, k, v, g, None, None, cu_seqlens,
            scale=1.0, chunk_size=chunk, output_final_state=True, save_states=True,
            interpret=pallas_interpret(),
        )  # fmt: skip

    configs = []
    for batch, cu in ((2, None), (1, 4)):
        shapes = [
            jax.ShapeDtypeStruct((batch, 200, 2, 64), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2, 64), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2, 128), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2), jnp.float32),
        ]
        name = f"{dtype}_C{chunk}_g_T200_K64_V128_saved_states"
        if cu is not None:
            shapes.append(jax.ShapeDtypeStruct((cu,), jnp.int32))
            name += "_varlen3"
        configs.append((name, fn, tuple(shapes)))
    return configs
