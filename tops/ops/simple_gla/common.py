"""What the simple GLA forward (``kernel.py``) and backward (``backward.py``) share.

Both run the grid ``(B, H, Vp / BV, S)``: per batch row, head and value tile, the
segments of the sequence along the last, sequential axis. A segment is one aligned chunk
of ``C`` tokens cut to one sequence's window ``[lo, hi)``; with ``cu_seqlens`` the
segments come from scalar-prefetched tables. Blocks: ``q, k`` ``(C, Kp)``, ``v``
``(C, BV)``, gates ``(8, 128)`` (one chunk per row), ``g_gamma`` ``(H,)`` in SMEM, states
``(Kp, BV)`` float32. Here: the launch sizes and index maps, the host-side layouts and
segment tables, and the in-kernel window, decay and matmul helpers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

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
# ``pl.pallas_call``'s ``interpret=`` (``tops.backends.pallas_interpret()``).
Interpret = bool | pltpu.InterpretParams


@dataclasses.dataclass(frozen=True)
class SimpleGlaBlocks:
    """Launch constants of the simple GLA kernels (the chunk ``C`` is an argument)."""

    # Widest value tile BV: 256 KiB of float32 state at K = 256, about 1.3 MiB with the
    # double-buffered initial and final state blocks. Value columns of the recurrence
    # are independent, so wider V runs several parallel tiles.
    max_value_block: int = 256


BLOCKS = SimpleGlaBlocks()


def padded(size: int) -> int:
    """``size`` rounded up to the 128 lanes."""
    return pl.cdiv(size, LANES) * LANES


def value_block(vp: int) -> int:
    """The value tile ``BV``: all of ``Vp`` up to ``BLOCKS.max_value_block``, else the
    widest multiple of 128 up to it that divides ``Vp``."""
    if vp <= BLOCKS.max_value_block:
        return vp
    return next(b for b in range(BLOCKS.max_value_block, 0, -LANES) if vp % b == 0)


# ---------------------------------------------------------------------------------------
# Launch sizes, index maps and the shared pallas_call.


class IndexMaps:
    """Block index maps of the grid ``(B, H, Vp / BV, S)``. ``reverse`` visits the
    segments from the last (the maps then take segment ``S - 1 - s`` at grid step ``s``).
    With ``cu_seqlens`` the maps receive the scalar-prefetched tables
    ``(chunk, seq, cu_seqlens)``."""

    def __init__(
        self,
        *,
        varlen: bool,
        heads: int,
        num_chunks: int,
        num_segments: int,
        value_tiles: int,
        reverse: bool = False,
    ):
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


@dataclasses.dataclass(frozen=True)
class Launch:
    """The sizes of one launch on ``q, k [B, T, H, K]``, ``v [B, T, H, V]``: padded
    widths ``Kp, Vp``, value tile ``BV``, ``num_chunks = ceil(T / C)``, ``num_states``
    (``N`` with ``cu_seqlens``, else ``B``) and ``num_segments`` (``S``)."""

    batch: int
    seq_len: int
    heads: int
    key_dim: int
    value_dim: int
    chunk: int
    varlen: bool
    num_states: int

    @classmethod
    def of(cls, q: jax.Array, v: jax.Array, cu_seqlens, *, chunk: int) -> Launch:
        batch, seq_len, heads, key_dim = q.shape
        varlen = cu_seqlens is not None
        num_states = cu_seqlens.shape[0] - 1 if varlen else batch
        return cls(batch, seq_len, heads, key_dim, v.shape[-1], chunk, varlen, num_states)

    @property
    def kp(self) -> int:
        return padded(self.key_dim)

    @property
    def vp(self) -> int:
        return padded(self.value_dim)

    @property
    def bv(self) -> int:
        return value_block(self.vp)

    @property
    def value_tiles(self) -> int:
        return self.vp // self.bv

    @property
    def num_chunks(self) -> int:
        return pl.cdiv(self.seq_len, self.chunk)

    @property
    def num_segments(self) -> int:
        return self.num_chunks + self.num_states if self.varlen else self.num_chunks

    def index_maps(self, *, reverse: bool = False) -> IndexMaps:
        return IndexMaps(
            varlen=self.varlen,
            heads=self.heads,
            num_chunks=self.num_chunks,
            num_segments=self.num_segments,
            value_tiles=self.value_tiles,
            reverse=reverse,
        )

    def prefetch(self, cu_seqlens) -> tuple[jax.Array, ...]:
        """The scalar-prefetched ``(chunk[S], seq[S], cu_seqlens)`` (none without
        ``cu_seqlens``), from the repaired offsets, so that the kernels stay in bounds
        whatever the entries."""
        if not self.varlen:
            return ()
        cu_seqlens = repair_cu_seqlens(cu_seqlens, self.seq_len)
        return (*segment_tables(cu_seqlens, seq_len=self.seq_len, chunk=self.chunk), cu_seqlens)

    def padded_state(self, state: jax.Array) -> jax.Array:
        """``[N, H, K, V]`` zero-padded to ``[N, H, Kp, Vp]``."""
        pad = ((0, 0), (0, 0), (0, self.kp - self.key_dim), (0, self.vp - self.value_dim))
        return jnp.pad(state, pad)

    def operands(
        self, maps: IndexMaps, keys: list[jax.Array], values: list[jax.Array], g, g_gamma
    ) -> tuple[list, list]:
        """The inputs and block specs of ``keys`` (``[B, T, H, K]``: ``(C, Kp)`` blocks),
        ``values`` (``[B, T, H, V]``: ``(C, BV)`` blocks), ``g`` (gate layout) and
        ``g_gamma`` (SMEM), the last two only when given."""
        inputs = [lane_view(x, self.kp) for x in keys] + [lane_view(x, self.vp) for x in values]
        specs = [pl.BlockSpec((None, self.chunk, self.kp), maps.key)] * len(keys)
        specs += [pl.BlockSpec((None, self.chunk, self.bv), maps.value)] * len(values)
        if g is not None:
            inputs.append(gate_layout(g, chunk=self.chunk))
            specs.append(pl.BlockSpec((None, None, GATE_ROWS, LANES), maps.gate))
        if g_gamma is not None:
            inputs.append(g_gamma)
            specs.append(pl.BlockSpec((self.heads,), maps.gamma, memory_space=pltpu.SMEM))
        return inputs, specs

    def call(
        self,
        kernel: Callable[..., None],
        cu_seqlens,
        inputs: list,
        in_specs: list,
        out_shape: list,
        out_specs: list,
        *,
        interpret: Interpret,
        **static: bool | float | int,
    ) -> list[jax.Array]:
        """``pallas_call`` of ``kernel`` (given ``chunk``, ``seq_len``, ``varlen`` and
        ``static``) on the grid ``(B, H, Vp / BV, S)``, the segment axis sequential, with
        the segment tables of ``cu_seqlens`` prefetched and one ``(Kp, BV)`` float32
        scratch carried along the segment axis."""
        prefetch = self.prefetch(cu_seqlens)
        kernel = functools.partial(
            kernel, chunk=self.chunk, seq_len=self.seq_len, varlen=self.varlen, **static
        )
        outputs = pl.pallas_call(
            kernel,
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=len(prefetch),
                grid=(self.batch, self.heads, self.value_tiles, self.num_segments),
                in_specs=in_specs,
                out_specs=out_specs,
                scratch_shapes=[pltpu.VMEM((self.kp, self.bv), jnp.float32)],
            ),
            out_shape=out_shape,
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
            ),
            interpret=interpret,
        )(*prefetch, *inputs)
        return list(outputs)


# ---------------------------------------------------------------------------------------
# Host-side layouts and segment tables.


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


def segment_tables(cu_seqlens: jax.Array, *, seq_len: int, chunk: int):
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


def lane_view(x: jax.Array, width: int) -> jax.Array:
    """``[B, T, H, D]`` as ``[B, T, H * width]``: a free reshape when ``D == width``,
    else one copy zero-padding ``D`` to ``width`` (zero columns add nothing), so a head's
    ``(C, width)`` block is lane-dense without a transpose."""
    batch, seq_len, heads, size = x.shape
    if width != size:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - size)))
    return x.reshape(batch, seq_len, heads * width)


def gate_layout(g: jax.Array, *, chunk: int) -> jax.Array:
    """``g [B, T, H]`` as ``[B, H, NT8, 128]``: one chunk per 128-lane row (lanes past
    ``C`` zero), ``NT8`` the chunks rounded up to ``GATE_ROWS``, zero-padded."""
    batch, seq_len, heads = g.shape
    gate_rows = pl.cdiv(pl.cdiv(seq_len, chunk), GATE_ROWS) * GATE_ROWS
    g_t = jnp.pad(
        jnp.transpose(g, (0, 2, 1)), ((0, 0), (0, 0), (0, gate_rows * chunk - seq_len))
    ).reshape(batch, heads, gate_rows, chunk)
    return jnp.pad(g_t, ((0, 0), (0, 0), (0, 0), (0, LANES - chunk)))


def gate_layout_inverse(g_t: jax.Array, *, chunk: int, seq_len: int) -> jax.Array:
    """The inverse of :func:`gate_layout`: ``[..., B, H, NT8, 128]`` -> ``[..., B, T, H]``."""
    g_t = g_t[..., :chunk]
    g_t = g_t.reshape(*g_t.shape[:-2], -1)[..., :seq_len]
    return jnp.swapaxes(g_t, -1, -2)


# ---------------------------------------------------------------------------------------
# In-kernel helpers.


def dot(a: jax.Array, b: jax.Array, contract: tuple[tuple[int], tuple[int]]) -> jax.Array:
    """float32 x float32 matmul at ``HIGHEST`` precision with float32 accumulation."""
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def segment_id(num_segments: int | None, *, reverse: bool):
    """The segment of the current grid step: ``program_id(3)``, or counted from the end
    when ``reverse`` (then ``num_segments`` is required)."""
    s = pl.program_id(3)
    return num_segments - 1 - s if reverse else s


def segment(prefetch, *, chunk: int, seq_len: int, varlen: bool, num_segments=None, reverse=False):
    """``(chunk_row, lo, hi, first, last)`` of the current segment.

    ``chunk_row`` is the chunk's row in its ``(8, 128)`` gate block, ``[lo, hi)`` the
    window within the chunk, ``first`` whether the segment starts its sequence (the
    forward then resets the state to the initial state) and ``last`` whether it ends it
    (the backward, which visits the segments in reverse, ``reverse=True``, then resets
    the state gradient to the final state's cotangent; it needs ``num_segments``). The
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


def window_rows(lo, hi, chunk: int) -> jax.Array:
    """``(C, 1)`` bool: the rows of the chunk inside the segment's window ``[lo, hi)``."""
    rows = lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    return (rows >= lo) & (rows < hi)


def load_window(ref, window: jax.Array) -> jax.Array:
    """A ``(C, D)`` block as float32, zero outside the window: ``where``, not a product,
    so garbage or NaN in a partial block never leaks."""
    return jnp.where(window, ref[...].astype(jnp.float32), 0.0)


def store_window(ref, window: jax.Array, value: jax.Array) -> None:
    """Write the window's rows of ``value`` into the resident block ``ref``: consecutive
    segments of one chunk share the block, each writing only its own rows."""
    ref[...] = jnp.where(window, value, ref[...].astype(jnp.float32)).astype(ref.dtype)


def causal_mask(window: jax.Array, chunk: int) -> jax.Array:
    """``(C, C)`` bool: ``j <= i`` with row ``i`` in the window."""
    sub = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)  # i
    lane = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)  # j
    return (lane <= sub) & window


def gate_block_selection(shape: tuple[int, int], chunk_row, lo, hi) -> jax.Array:
    """Of an ``(8, 128)`` gate block, the segment's entries: row ``chunk_row``, lanes
    ``[lo, hi)``."""
    block_rows = lax.broadcasted_iota(jnp.int32, shape, 0)
    block_lanes = lax.broadcasted_iota(jnp.int32, shape, 1)
    return (block_rows == chunk_row) & (block_lanes >= lo) & (block_lanes < hi)


def inclusive_scan_dd(x: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
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


def segment_decays(g_ref, gamma_ref, *, chunk_row, lo, hi, chunk: int):
    """Log decays of the segment's window, with resets cut.

    With ``n_i`` the window rows up to row ``i`` and ``Gg`` the window's gates summed by
    :func:`inclusive_scan_dd` into double-floats, ``D_i = Gg_i + gamma * n_i`` (the
    constant gate enters through one multiply, not a sum of ``n`` roundings). Returns
    ``(decay_ij (C, C), decay_in (C, 1), decay_tot (1, 1) or scalar, decay_out (C, 1))``:
    ``D_i - D_j``, ``D_i``, ``D_tot`` and ``D_tot - D_i`` for window rows (entries
    outside the window or above the diagonal are garbage the callers mask before
    ``exp``). Differences are taken on the double-floats, so an exponent is accurate to
    about ulp(D_i - D_j), not ulp(D_i). ``g_ref`` is the ``(8, 128)`` gate block and
    ``gamma_ref`` the ``(H,)`` constant log decays in SMEM, each None when absent.

    A ``-inf`` gate (or ``gamma = -inf``: every row) is a reset. The sums run over the
    finite gates (a ``-inf`` counts 0, and ``gamma = -inf`` enters ``gamma * n`` as 0), so
    no ``-inf - (-inf)`` is formed, and ``R_i``, the number of resets in the window up to
    row ``i`` (exact small integers in float32), cuts every decay that crosses a reset
    to ``-inf`` (``exp`` gives exactly 0): ``D_i - D_j`` unless ``R_i == R_j``, ``D_i``
    unless ``R_i == 0``, ``D_tot`` unless ``R_tot == 0``, ``D_tot - D_j`` unless ``R_j ==
    R_tot``. ``R`` rides in the gate block's next sublane row, so the one scan of the
    ``(8, 128)`` vreg sums both.
    """
    has_g, has_gamma = g_ref is not None, gamma_ref is not None
    gamma = gamma_ref[pl.program_id(1)] if has_gamma else 0.0
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
        selected = gate_block_selection(g_block.shape, chunk_row, lo, hi)
        reset = g_block == -jnp.inf
        resets = jnp.where(selected, jnp.maximum(jnp.where(reset, one, zero), gamma_reset), 0.0)
        # The finite gates in row chunk_row, the reset indicator one sublane down (rows
        # are independent in the lane scan): both prefix sums from one scan.
        gates = jnp.where(selected & ~reset, g_block, 0.0)
        gates = gates + pltpu.roll(resets, np.int32(1), 0)
        cum_hi, cum_lo = inclusive_scan_dd(gates, chunk)
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
