"""Pallas TPU kernel for exact top-k (``k <= FAST_PATH_MAX_K``), its launcher, the depth
schedule, and the XLA sort path for the rest.

Elements are ranked by ``(sortable_key, -index)``, a strict total order whose first ``k``
elements are the contract's top-k (``tops.spec.topk``). ``_topk_kernel``: grid
``(cdiv(B, R),)``, ``R = half.rows_per_block``; blocks ``x`` ``(R, Vp)`` whole rows
(``Vp = roundup(V, 128)``), indices ``(R, roundup(k, 128))`` int32, optional depth
``(R, 128)`` int32; scratch: two ``(levels, R, 128)`` int32 per-lane sorted lists. Passes
over the VMEM-resident rows deepen the lists until the top-k are provably listed, then
``k`` extract-max steps write the indices; the wrapper gathers the values, so they are
the input elements bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.compile_only import PallasConfig
from tops.ops.half import kernel_operand, rows_per_block, to_float32
from tops.spec.topk import FAST_PATH_MAX_K

LANES = 128
EMPTY_KEY = np.iinfo(np.int32).min  # padding columns, dropped elements, unfilled levels
NAN_KEY = EMPTY_KEY + 1  # below -inf's key (-2**31 + 2**23 - 1), above EMPTY_KEY
ABSENT_INDEX = np.iinfo(np.int32).max  # index of an unfilled level
_MAGNITUDE_BITS = 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class SelectionBlocks:
    """Launch constants of the binned top-k kernel."""

    # Whole rows stay in VMEM up to this width: 16 MiB per block (8 float32 or 16 bf16
    # rows), 32 MiB double-buffered, inside v5p's 64 MiB, the smallest supported VMEM
    # (tops.compile_only.TPU_CHIPS); wider rows take the sort path.
    fast_path_max_v: int = 2**19
    # Levels added by each pass after the first.
    pass_width: int = 8
    # Cost of streaming the row once (load, key conversion, masking, filter) in units of
    # one level: a count of the code, not a measurement.
    pass_overhead: int = 2
    # Levels read per VMEM access when shifting a lane or counting entries above the pivot.
    level_chunk: int = 8
    # Below this block failure probability a deeper first pass cannot pay for itself.
    negligible_failure: float = 1e-9
    # VMEM headroom above the double-buffered rows and the list scratch.
    vmem_headroom_bytes: int = 8 * 2**20


BLOCKS = SelectionBlocks()


def row_width(vocab: int) -> int:
    """Columns of a whole-row block: ``V`` rounded up to the 128 lanes."""
    return pl.cdiv(vocab, LANES) * LANES


def uses_fast_path(vocab: int, k: int) -> bool:
    """Whether ``topk`` of width ``k`` over ``vocab`` columns runs the Pallas kernel."""
    return k <= FAST_PATH_MAX_K and row_width(vocab) <= BLOCKS.fast_path_max_v


def sortable_key(x: jax.Array) -> jax.Array:
    """int32 keys whose integer order is the contract's value order (ties aside).

    bf16/f16 (and float16 bits, ``tops.ops.half``) widen exactly to float32. Non-negative
    floats keep their bits; negative ones flip the 31 magnitude bits, so ``-0.0`` maps to
    ``-1`` just below ``+0.0``'s ``0`` and ``-inf`` to ``-2**31 + 2**23 - 1``. Every NaN
    maps to ``NAN_KEY``.
    """
    x = to_float32(x)
    bits = lax.bitcast_convert_type(x, jnp.int32)
    key = bits ^ ((bits >> 31) & _MAGNITUDE_BITS)
    return jnp.where(jnp.isnan(x), NAN_KEY, key)


# ---------------------------------------------------------------------------------------
# The order. Module-level so that tests can swap in a wrong rule and see it caught.


def _displaces(new_key, kept_key):
    """Whether an element arriving in a lane (with a higher index than every listed one)
    ranks above a listed entry. Strict: on equal keys the listed entry stays above."""
    return new_key > kept_key


def _ranks_above(key, index, pivot_key, pivot_index):
    """Whether ``(key, index)`` ranks strictly above the pivot: larger key, or equal key
    and lower index."""
    return (key > pivot_key) | ((key == pivot_key) & (index < pivot_index))


# ---------------------------------------------------------------------------------------
# Depth schedule.


@functools.cache
def row_failure_probability(k: int, depth: int) -> float:
    """P(some lane holds ``depth`` or more of ``k`` top elements) for a row of i.i.d.
    values: the top-k positions fall into the 128 lanes as ``k`` balls thrown uniformly
    and independently (the multinomial model of a long row; ``V / 128`` columns per lane
    caps a lane's count, which only lowers the probability).

    Dynamic programme over the lanes: ``placed[t]`` is the probability that the lanes
    seen so far hold ``t`` balls, none ``depth`` or more; the next of ``m`` remaining
    lanes gets ``Binomial(k - t, 1 / m)`` of the rest.
    """
    if depth > k:
        return 0.0
    balls = np.arange(k + 1)
    # comb[r, j] = C(r, j) for r <= k, j < depth.
    comb = np.array([[math.comb(r, j) for j in range(depth)] for r in balls], np.float64)
    placed = np.zeros(k + 1)
    placed[0] = 1.0
    for lane in range(LANES):
        q = 1.0 / (LANES - lane)
        nxt = np.zeros(k + 1)
        for j in range(depth):
            t = balls[: k + 1 - j]
            rest = k - t
            nxt[t + j] += placed[t] * comb[rest, j] * q**j * (1.0 - q) ** (rest - j)
        placed = nxt
    return max(0.0, 1.0 - placed[k])


@functools.cache
def depth_schedule(k: int, vocab: int, rows: int) -> tuple[int, int]:
    """``(first_depth, final_depth)`` for rows of ``vocab`` columns in blocks of ``rows``.

    ``final_depth = min(k, cdiv(V, 128))`` is exact by construction. ``first_depth``
    minimises ``overhead + d + f(d) * (overhead + width)`` (``BLOCKS.pass_overhead``,
    ``BLOCKS.pass_width``) with ``f(d) = 1 - (1 - row_failure_probability(k, d)) ** rows``
    (``f(final_depth) = 0``), the expected cost per element, in levels, of the first pass
    and of a second one when a block fails. Later passes add ``width`` levels each, so
    adversarial rows (all the top-k in one lane) reach depth ``k`` at bounded register
    pressure. The schedule only decides speed, never the result.
    """
    final = min(k, pl.cdiv(vocab, LANES))
    first, best = final, BLOCKS.pass_overhead + final
    for depth in range(1, final):
        fail = 1.0 - (1.0 - row_failure_probability(k, depth)) ** rows
        cost = BLOCKS.pass_overhead + depth + fail * (BLOCKS.pass_overhead + BLOCKS.pass_width)
        if cost < best:
            first, best = depth, cost
        if fail < BLOCKS.negligible_failure:  # deeper first passes only cost more
            break
    return first, final


def level_capacity(first: int, final: int) -> int:
    """Levels of the list scratch: the deepest pass end, plus ``BLOCKS.level_chunk + 1``
    levels of empty entries read past it by the chunked shifts."""
    deepest = first + pl.cdiv(max(final - first, 0), BLOCKS.pass_width) * BLOCKS.pass_width
    return deepest + BLOCKS.level_chunk + 1


# ---------------------------------------------------------------------------------------
# Kernel pieces.


def _empty_levels(width, rows):
    shape = (rows, LANES)
    return (
        [jnp.full(shape, EMPTY_KEY, jnp.int32) for _ in range(width)],
        [jnp.full(shape, ABSENT_INDEX, jnp.int32) for _ in range(width)],
    )


def _deepen(x_ref, keys_ref, index_ref, start, width, vocab):
    """One pass: fill levels ``[start, start + width)`` of every lane's list.

    Lane ``l`` (columns ``l, l + 128, ...``) keeps a sorted list, level ``j`` holding its
    ``(j + 1)``-th largest element (key and index), built by a sinking sort over the
    row's 128-lane slices. Slices arrive in increasing index order, so the strict
    comparison keeps the lower index above an equal key: the ``(key, -index)`` order.
    ``start`` is 0 (a Python int: nothing listed yet) or a traced depth ``>= 1``, in
    which case elements ranking at or above level ``start - 1`` are already listed and
    are dropped before sinking through the ``width`` new levels held in registers."""
    rows, row_cols = x_ref.shape
    lane = lax.broadcasted_iota(jnp.int32, (rows, LANES), 1)
    filtered = not (isinstance(start, int) and start == 0)
    if filtered:
        floor_key = keys_ref[start - 1]
        floor_index = index_ref[start - 1]

    def body(step, levels):
        level_keys, level_index = levels
        col0 = pl.multiple_of(step * LANES, LANES)
        index = col0 + lane
        key = jnp.where(index < vocab, sortable_key(x_ref[:, pl.ds(col0, LANES)]), EMPTY_KEY)
        if filtered:
            listed = ~_ranks_above(floor_key, floor_index, key, index)
            key = jnp.where(listed, EMPTY_KEY, key)
        # Insertion into the sorted levels: the levels the new element outranks (a
        # suffix, since the levels are sorted) each take the entry above them, the first
        # of them the new element. Comparing the new element, not the carried entry,
        # matters: a carried entry has a lower index than an equal key below it.
        carry_key, carry_index = key, index
        new_keys, new_index = [], []
        for kept_key, kept_index in zip(level_keys, level_index, strict=True):
            shift = _displaces(key, kept_key)
            new_keys.append(jnp.where(shift, carry_key, kept_key))
            new_index.append(jnp.where(shift, carry_index, kept_index))
            carry_key = jnp.where(shift, kept_key, carry_key)
            carry_index = jnp.where(shift, kept_index, carry_index)
        return new_keys, new_index

    level_keys, level_index = lax.fori_loop(0, row_cols // LANES, body, _empty_levels(width, rows))
    keys_ref[pl.ds(start, width)] = jnp.stack(level_keys)
    index_ref[pl.ds(start, width)] = jnp.stack(level_index)


def _chunk_count(depth):
    """``cdiv(depth, BLOCKS.level_chunk)`` for a Python or traced non-negative depth
    (``lax.div`` truncates; ``//`` on a traced value would need a sign, which Mosaic
    lowers only for a known TPU generation)."""
    return lax.div(depth + BLOCKS.level_chunk - 1, BLOCKS.level_chunk)


def _top_k_is_listed(keys_ref, index_ref, depth, k, done_row):
    """The stopping criterion for each row, ``(R, 1)`` bool, with ``depth >= 1`` levels
    listed: at least ``k`` entries of levels ``< depth - 1`` rank strictly above the
    largest level ``depth - 1`` entry (the pivot ``p``). Rows in ``done_row`` count as
    satisfied.

    Sound: an element missing from lane ``l``'s list ranks below that lane's level
    ``depth - 1`` entry, hence below ``p``, hence below ``k`` listed entries, so it is not
    in the top-k; a listed entry at or below ``p`` is below the same ``k``. ``(key,
    -index)`` has no ties, so a value-only ``>=`` (which would count entries equal to
    ``p`` but later in index and stop too early on tie-dense rows) is not used."""
    rows = keys_ref.shape[1]
    last_key = keys_ref[depth - 1]
    last_index = index_ref[depth - 1]
    pivot_key = jnp.max(last_key, axis=1, keepdims=True)
    pivot_index = jnp.min(
        jnp.where(last_key == pivot_key, last_index, ABSENT_INDEX), axis=1, keepdims=True
    )
    level = lax.broadcasted_iota(jnp.int32, (BLOCKS.level_chunk, rows, LANES), 0)

    def body(chunk, count):
        first = chunk * BLOCKS.level_chunk
        keys = keys_ref[pl.ds(first, BLOCKS.level_chunk)]
        index = index_ref[pl.ds(first, BLOCKS.level_chunk)]
        above = _ranks_above(keys, index, pivot_key[None], pivot_index[None])
        above &= first + level < depth - 1
        return count + jnp.sum(above.astype(jnp.int32), axis=0)

    count = lax.fori_loop(0, _chunk_count(depth - 1), body, jnp.zeros((rows, LANES), jnp.int32))
    return (jnp.sum(count, axis=1, keepdims=True) >= k) | done_row


def _all(flags):
    """Scalar: whether every entry of an ``(R, 1)`` bool is true."""
    return jnp.min(flags.astype(jnp.int32)) > 0


def _pop(keys_ref, index_ref, depth, remaining):
    """Remove each row's largest listed entry and return its index, ``(R, 1)``: the
    largest lane head by key, then lower index; its lane moves up one level.

    Only the first ``min(depth, remaining)`` levels move (rounded up to whole chunks):
    with ``remaining - 1`` pops left after this one, no deeper level can reach the head,
    and each later pop bounds its own shift the same way."""
    head_key = keys_ref[0]
    head_index = index_ref[0]
    top_key = jnp.max(head_key, axis=1, keepdims=True)
    top_index = jnp.min(
        jnp.where(head_key == top_key, head_index, ABSENT_INDEX), axis=1, keepdims=True
    )
    won = (head_index == top_index)[None]

    def shift(chunk, carry):
        first = chunk * BLOCKS.level_chunk
        for ref in (keys_ref, index_ref):
            levels = ref[pl.ds(first, BLOCKS.level_chunk + 1)]
            ref[pl.ds(first, BLOCKS.level_chunk)] = jnp.where(won, levels[1:], levels[:-1])
        return carry

    lax.fori_loop(0, _chunk_count(jnp.minimum(depth, remaining)), shift, 0)
    return top_index


def _topk_kernel(
    x_ref, out_index_ref, *rest, batch, vocab, k, first_depth, final_depth, with_depth
):
    """Indices of the top-k of ``R`` whole rows.

    Grid ``(cdiv(B, R),)``. Blocks: ``x_ref`` ``(R, Vp)`` input rows, ``Vp =
    roundup(V, 128)`` (columns past ``V`` are masked to ``EMPTY_KEY``, rows past ``B``
    of a partial block are treated as satisfied); ``out_index_ref`` ``(R, Kp)`` int32,
    ``Kp = roundup(k, 128)``, columns past ``k`` dropped by the partial block; with
    ``with_depth``, ``depth_ref`` ``(R, 128)`` int32, the block's final depth in every
    entry. Scratch: ``keys_ref`` and ``index_ref``, ``(level_capacity, R, 128)`` int32,
    the per-lane sorted lists (level, row, lane).
    """
    if with_depth:
        depth_ref, keys_ref, index_ref = rest
    else:
        keys_ref, index_ref = rest
    rows = x_ref.shape[0]
    row = pl.program_id(0) * rows + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    padding_row = row >= batch

    _deepen(x_ref, keys_ref, index_ref, 0, first_depth, vocab)

    def unfinished(carry):
        depth, done = carry
        return ~done & (depth < final_depth)

    def next_pass(carry):
        depth, _ = carry
        _deepen(x_ref, keys_ref, index_ref, depth, BLOCKS.pass_width, vocab)
        depth = depth + BLOCKS.pass_width
        return depth, _all(_top_k_is_listed(keys_ref, index_ref, depth, k, padding_row))

    if first_depth < final_depth:
        done = _all(_top_k_is_listed(keys_ref, index_ref, first_depth, k, padding_row))
        depth, _ = lax.while_loop(unfinished, next_pass, (jnp.int32(first_depth), done))
    else:
        depth = first_depth
    # Levels the chunked shifts read past the last pass: empty.
    empty_keys, empty_index = _empty_levels(BLOCKS.level_chunk + 1, rows)
    keys_ref[pl.ds(depth, BLOCKS.level_chunk + 1)] = jnp.stack(empty_keys)
    index_ref[pl.ds(depth, BLOCKS.level_chunk + 1)] = jnp.stack(empty_index)

    lane = lax.broadcasted_iota(jnp.int32, (rows, LANES), 1)

    def pop_into(col0):
        def step(t, out):
            return jnp.where(lane == t, _pop(keys_ref, index_ref, depth, k - col0 - t), out)

        return step

    for col0 in range(0, k, LANES):
        out = jnp.zeros((rows, LANES), jnp.int32)
        out_index_ref[:, col0 : col0 + LANES] = lax.fori_loop(
            0, min(LANES, k - col0), pop_into(col0), out
        )
    if with_depth:
        depth_ref[...] = jnp.full((rows, LANES), depth, jnp.int32)


def fast_topk_indices(x, k, *, interpret, with_depth=False):
    """Launch the binned top-k kernel: ``x [B >= 1, V]``, ``k <= FAST_PATH_MAX_K``,
    ``row_width(V) <= BLOCKS.fast_path_max_v``. Returns int32 indices ``[B, k]`` (and, with
    ``with_depth``, an int32 ``[B, 128]`` array holding each row block's final depth).
    ``interpret`` is ``pl.pallas_call``'s (``tops.backends.pallas_interpret()``)."""
    batch, vocab = x.shape
    rows = rows_per_block(x.dtype)
    first, final = depth_schedule(k, vocab, rows)
    levels = level_capacity(first, final)
    width = row_width(vocab)
    out_cols = pl.cdiv(k, LANES) * LANES
    block_bytes = rows * width * x.dtype.itemsize
    scratch_bytes = 2 * levels * rows * LANES * 4
    out_shape = [jax.ShapeDtypeStruct((batch, k), jnp.int32)]
    out_specs = [pl.BlockSpec((rows, out_cols), lambda i: (i, 0))]
    if with_depth:
        out_shape.append(jax.ShapeDtypeStruct((batch, LANES), jnp.int32))
        out_specs.append(pl.BlockSpec((rows, LANES), lambda i: (i, 0)))
    outs = pl.pallas_call(
        functools.partial(
            _topk_kernel,
            batch=batch,
            vocab=vocab,
            k=k,
            first_depth=first,
            final_depth=final,
            with_depth=with_depth,
        ),
        grid=(pl.cdiv(batch, rows),),
        in_specs=[pl.BlockSpec((rows, width), lambda i: (i, 0))],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((levels, rows, LANES), jnp.int32)] * 2,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",),
            vmem_limit_bytes=2 * block_bytes + scratch_bytes + BLOCKS.vmem_headroom_bytes,
        ),
        interpret=interpret,
    )(kernel_operand(x))
    return tuple(outs) if with_depth else outs[0]


def sort_topk_indices(x, k):
    """Top-k indices ``[B, k]`` int32 by an XLA sort of each row on ``(~key, index)``:
    ``~key`` reverses the key order without overflow, and the index breaks every tie,
    so the result does not depend on the sort's stability."""
    index = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    _, order = lax.sort((~sortable_key(x), index), dimension=1, num_keys=2)
    return order[:, :k]


@functools.partial(jax.jit, static_argnames=("k", "interpret"))
def _final_depths(x, *, k, interpret):
    _, depth = fast_topk_indices(x, k, interpret=interpret, with_depth=True)
    return depth[:: rows_per_block(x.dtype), 0]


def termination_stats(x, k: int) -> dict:
    """How far the binned kernel went on ``x [B >= 1, V]`` for an int ``k``.

    Returns a dict: ``path`` (``"fast"`` or ``"sort"``, see ``uses_fast_path``); for the
    fast path also ``rows_per_block`` ``R``; ``schedule`` ``(first_depth, width,
    final_depth)`` (``width = BLOCKS.pass_width``); ``depth`` (int64 NumPy ``[cdiv(B, R)]``,
    the list depth each row block reached: ``first_depth + width * (passes - 1)``);
    ``passes`` (same shape, passes over the VMEM-resident rows); ``hbm_bytes`` (the
    kernel's HBM traffic: ``x`` read once, the int32 indices written once; the wrapper's
    value gather adds ``B * k * itemsize``); ``vmem_bytes`` (the row bytes all passes
    streamed from VMEM, ``sum over blocks of passes * R * roundup(V, 128) * itemsize``).
    For the sort path these fields are None. Runs in the current TPU mode
    (``tops.backends.pallas_interpret()``).
    """
    from tops.backends import pallas_interpret

    x = jnp.asarray(x)
    batch, vocab = x.shape
    if not uses_fast_path(vocab, k):
        fields = ("rows_per_block", "schedule", "depth", "passes", "hbm_bytes", "vmem_bytes")
        return {"path": "sort", **dict.fromkeys(fields)}
    rows = rows_per_block(x.dtype)
    first, final = depth_schedule(k, vocab, rows)
    depth = np.asarray(_final_depths(x, k=k, interpret=pallas_interpret())).astype(np.int64)
    passes = 1 + (depth - first) // BLOCKS.pass_width
    itemsize = x.dtype.itemsize
    return {
        "path": "fast",
        "rows_per_block": rows,
        "schedule": (first, BLOCKS.pass_width, final),
        "depth": depth,
        "passes": passes,
        "hbm_bytes": batch * vocab * itemsize + batch * k * 4,
        "vmem_bytes": int(passes.sum()) * rows * row_width(vocab) * itemsize,
    }


def shipped_configs() -> list[PallasConfig]:
    """Every shipped Pallas configuration for the TPU compile check, through the public wrapper:
    each dtype; ``k = 1, 64, 256`` over ``V = 50257`` (a partial last slice; ``k = 256`` is the
    deepest list); ``k = 256`` over ``V = 1000`` (one pass at the full depth); ``V = 1``; the
    widest fast-path row; per-row ``k``. ``B = 13`` leaves a partial row block. The XLA sort
    path (``k > FAST_PATH_MAX_K`` or wider rows) has no Pallas kernel and is not listed."""
    from tops.ops.selection import topk

    def fixed(k):
        return lambda x: topk(x, k)

    def per_row(max_k):
        return lambda x, row_k: topk(x, row_k, max_k=max_k)

    configs = []
    for dtype in ("bfloat16", "float16", "float32"):
        for vocab, k in ((1, 1), (1000, 256), (50257, 1), (50257, 64), (50257, 256)):
            x = jax.ShapeDtypeStruct((13, vocab), jnp.dtype(dtype))
            configs.append(PallasConfig(f"{dtype}_V{vocab}_k{k}", fixed(k), (x,)))
        widest = jax.ShapeDtypeStruct((13, BLOCKS.fast_path_max_v), jnp.dtype(dtype))
        configs.append(PallasConfig(f"{dtype}_V{BLOCKS.fast_path_max_v}_k64", fixed(64), (widest,)))
        x = jax.ShapeDtypeStruct((13, 50257), jnp.dtype(dtype))
        row_k = jax.ShapeDtypeStruct((13,), jnp.int32)
        configs.append(PallasConfig(f"{dtype}_V50257_per_row_max_k64", per_row(64), (x, row_k)))
    return configs


def production_configs() -> list[PallasConfig]:
    """The production shapes: ``B`` in {1, 32, 256} x ``V`` in {128256, 151936, 201088,
    262144}, bf16 and f32, ``k = 64`` and the deepest ``k = 256``."""
    from tops.ops.selection import topk

    configs = []
    for batch in (1, 32, 256):
        for vocab in (128256, 151936, 201088, 262144):
            for dtype in ("bfloat16", "float32"):
                x = jax.ShapeDtypeStruct((batch, vocab), jnp.dtype(dtype))
                for k in (64, 256):
                    name = f"{dtype}_B{batch}_V{vocab}_k{k}"
                    configs.append(PallasConfig(name, functools.partial(topk, k=k), (x,)))
    return configs
