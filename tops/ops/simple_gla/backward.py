"""Pallas TPU kernel for the chunked simple GLA backward, beside its launcher.

One fused kernel, the mirror of the forward (``kernel.py``): grid ``(B, H, Vp / BV, S)``
with the segment axis sequential and visited in *reverse*, the float32 ``[Kp, BV]`` state
gradient ``dS`` (the cotangent of the state after the current segment) in VMEM scratch
across it. A sequence's last segment (first visited) starts ``dS`` from the final
state's cotangent ``dht`` (zeros without one); its first segment (last visited) writes
the initial state's gradient. Segments, windows and varlen tables are the forward's
(``kernel._segment`` and ``kernel.segment_tables``, read from the end).

Per segment, with the window's log decays ``D_i`` (double-float sums, as in the
forward), ``M_ij = [j <= i] exp(D_i - D_j)``, the state ``S`` *before* the segment (saved
by the forward) and ``dS`` after it::

    A  = M * (q k^T)                      B = M * (do v^T)
    dq = scale (exp(D) do S^T + B k)
    dk = scale B^T q + exp(D_tot - D) v dS^T
    dv = scale A^T do + exp(D_tot - D) k dS
    dS <- exp(D_tot) dS + scale (exp(D) q)^T do

The gradient of the total log decay ``a_t = g_t + gamma`` of window row ``t`` is
``exp(a_t) <dh_t, h_{t-1}>``; expanding ``h_{t-1}`` and ``dh_t`` over the segment gives
four terms, none of which cancels another (the usual ``sum_{s >= t} (q_s . dq_s - k_s .
dk_s)`` is the same number as a difference of near-equal sums when decays are strong)::

    da_t = exp(D_tot) <dS, S>                              (state to state)
         + sum_{j < t}  k_j . [exp(D_tot - D_j) v_j dS^T]  (keys before t to dS)
         + sum_{i >= t} q_i . [scale exp(D_i) do_i S^T]    (S to queries from t on)
         + scale sum_{i >= t > j} A_ij (do_i . v_j)         (keys before t to queries after)

The last term is one ``(C, C) x (C, 128)`` matmul with the 0/1 matrix ``[j < t]``
followed by a masked column sum. The kernel writes ``da`` per token (``dg`` when ``g`` is
given); ``d g_gamma[h]`` is its sum over all tokens of the head, a double-float tree
sum in the wrapper (4 bytes per token and head). With the decays cut at resets
(``kernel._segment_decays``) the four terms stay exact for every token, and at a ``-inf``
gate each term crosses the reset, so ``da`` is exactly 0 there (the reset's ``exp(a_t)``).

Precision: as the forward, q, k, v, do upcast to float32 (exact), every matmul float32 x
float32 at ``HIGHEST`` with float32 accumulation, every exponent a mask discards zeroed
before ``exp``. With several value tiles (``Vp > 256``) each tile contributes a partial
``dq``, ``dk`` and ``da`` (sums over value columns), written in float32 and added in the
wrapper; with one tile ``dq, dk`` are written in the input dtype directly.

Bytes per token and head at ``K = V = 128``, bf16: reads q, k, v, do (1024), the saved
state (``K V 4 / C``: 1024 at ``C = 64``, 512 at ``C = 128``) and g (8 or 4); writes dq,
dk, dv (768) and da (8 or 4): 2832 at ``C = 64``, 2312 at ``C = 128``. Saved versus
recomputed states: saving costs the forward 1024 (512) of writes; recomputing them would
be a states-only forward pass in the backward reading k, v, g (520) and writing the same
states (1024 / 512) that the backward then reads, so saving moves about 520 bytes per
token and head less (forward + backward about 4890 against 5410 at ``C = 64``, 3850 against
4370 at ``C = 128``) and one launch less, at the price of keeping the float32 states
(1024 / 512 bytes per token and head, next to 768 for bf16 q, k, v) alive from the
forward to the backward. Several value tiles add the float32 partials of dq, dk (8 Kp
per tile, written and read once more).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tops.ops.double_float import add_dd
from tops.ops.simple_gla import kernel
from tops.ops.simple_gla.kernel import GATE_ROWS, LANES, IndexMaps, _dot


def _backward_kernel(
    *refs,
    chunk,
    seq_len,
    num_segments,
    scale,
    varlen,
    has_g,
    has_gamma,
    has_dht,
    has_h0,
    need_da,
):
    """One segment of one ``(batch, head, value tile)``, visited in reverse.

    Grid ``(B, H, Vp / BV, S)``, grid step ``s`` on segment ``S - 1 - s`` (``S =
    ceil(T / C)``, or ``ceil(T / C) + N`` with ``cu_seqlens``), the segment axis
    sequential. Refs, in order:

    * scalar prefetch (only with ``cu_seqlens``): ``chunk[S]``, ``seq[S]`` int32 and
      ``cu_seqlens[N + 1]`` (``kernel.segment_tables``);
    * ``q_ref``, ``k_ref`` ``(C, Kp)`` and ``v_ref``, ``do_ref`` ``(C, BV)`` in the input
      dtype: the segment's chunk of one head (one value tile of ``v`` and ``do``);
    * ``g_ref`` ``(8, 128)`` float32 (with ``g``): the gate block holding the chunk;
    * ``gamma_ref`` ``(H,)`` float32 in SMEM (with ``g_gamma``);
    * ``state_ref`` ``(Kp, BV)`` float32: the state before the segment (saved by the
      forward);
    * ``dht_ref`` ``(Kp, BV)`` float32 (with a final-state cotangent): the sequence's;
    * ``dq_ref``, ``dk_ref`` ``(C, Kp)``: the input dtype with one value tile, else
      float32 partial sums (one column block per value tile);
    * ``dv_ref`` ``(C, BV)`` in the input dtype;
    * ``da_ref`` ``(8, 128)`` float32 (with ``g`` or ``g_gamma``): the gradient of each
      token's total log decay, in the gate layout, one partial per value tile;
    * ``dh0_ref`` ``(Kp, BV)`` float32 (with an initial state): written by the
      sequence's first segment;
    * scratch ``dstate_ref`` ``(Kp, BV)`` float32: the cotangent of the state after the
      segment, carried along the segment axis.
    """
    refs = list(refs)
    prefetch = [refs.pop(0) for _ in range(3)] if varlen else []
    q_ref, k_ref, v_ref, do_ref = (refs.pop(0) for _ in range(4))
    g_ref = refs.pop(0) if has_g else None
    gamma_ref = refs.pop(0) if has_gamma else None
    state_ref = refs.pop(0)
    dht_ref = refs.pop(0) if has_dht else None
    dq_ref, dk_ref, dv_ref = (refs.pop(0) for _ in range(3))
    da_ref = refs.pop(0) if need_da else None
    dh0_ref = refs.pop(0) if has_h0 else None
    (dstate_ref,) = refs

    chunk_row, lo, hi, first, last = kernel._segment(
        prefetch,
        chunk=chunk,
        seq_len=seq_len,
        varlen=varlen,
        num_segments=num_segments,
        reverse=True,
    )

    @pl.when(last)
    def _reset():
        if has_dht:
            dstate_ref[...] = dht_ref[...]
        else:
            dstate_ref[...] = jnp.zeros(dstate_ref.shape, jnp.float32)

    dstate = dstate_ref[...]
    state = state_ref[...]

    rows = lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
    window = (rows >= lo) & (rows < hi)  # (C, 1)
    q = jnp.where(window, q_ref[...].astype(jnp.float32), 0.0)
    k = jnp.where(window, k_ref[...].astype(jnp.float32), 0.0)
    v = jnp.where(window, v_ref[...].astype(jnp.float32), 0.0)
    do = jnp.where(window, do_ref[...].astype(jnp.float32), 0.0)

    sub = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)  # i
    lane = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)  # j
    gamma = gamma_ref[pl.program_id(1)] if has_gamma else 0.0
    decay_ij, decay_in, decay_tot, decay_out = kernel._segment_decays(
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
    weights = jnp.where(causal, jnp.exp(jnp.where(causal, decay_ij, 0.0)), 0.0)  # M
    to_row = jnp.exp(jnp.where(window, decay_in, 0.0))  # exp(D_i), (C, 1)
    to_end = jnp.exp(jnp.where(window, decay_out, 0.0))  # exp(D_tot - D_j), (C, 1)
    whole = jnp.exp(decay_tot)  # exp(D_tot)

    # Masked with where, not only by the zero weights: 0 * NaN would carry a non-finite
    # q_i or v_j into the rows the causal mask excludes (the contract's NaN mask).
    attention = jnp.where(causal, weights * _dot(q, k, ((1,), (1,))), 0.0)  # A (C, C)
    do_v = _dot(do, v, ((1,), (1,)))  # do v^T (C, C)
    d_attention = jnp.where(causal, weights * do_v, 0.0)  # B
    dq_state = scale * _dot(do * to_row, state, ((1,), (1,)))  # (C, Kp)
    dq = dq_state + scale * _dot(d_attention, k, ((1,), (0,)))
    dk_state = _dot(v * to_end, dstate, ((1,), (1,)))  # (C, Kp)
    dk = scale * _dot(d_attention, q, ((0,), (0,))) + dk_state
    dv = scale * _dot(attention, do, ((0,), (0,))) + _dot(k * to_end, dstate, ((1,), (0,)))

    def put(ref, value):
        ref[...] = jnp.where(window, value, ref[...].astype(jnp.float32)).astype(ref.dtype)

    put(dq_ref, dq)
    put(dk_ref, dk)
    put(dv_ref, dv)

    if need_da:
        keys_before = jnp.sum(k * dk_state, axis=1, keepdims=True)  # (C, 1), j < t
        queries_after = jnp.sum(q * dq_state, axis=1, keepdims=True)  # (C, 1), i >= t
        sub_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 0)  # j or i
        lane_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 1)  # t
        before = sub_wide < lane_wide
        # crossing[i, t] = sum_{j < t} A_ij (do_i . v_j)
        products = jnp.where(causal, attention * do_v, 0.0)
        crossing = _dot(products, before.astype(jnp.float32), ((1,), (0,)))
        terms = jnp.where(before, keys_before, queries_after + scale * crossing)
        states_term = whole * jnp.sum(dstate * state, keepdims=True)  # (1, 1)
        da = jnp.sum(terms, axis=0, keepdims=True) + states_term  # (1, 128), lane t
        block = da_ref.shape
        block_rows = lax.broadcasted_iota(jnp.int32, block, 0)
        block_lanes = lax.broadcasted_iota(jnp.int32, block, 1)
        selected = (block_rows == chunk_row) & (block_lanes >= lo) & (block_lanes < hi)
        da_ref[...] = jnp.where(selected, da, da_ref[...])

    dstate = whole * dstate + scale * _dot(q * to_row, do, ((0,), (0,)))
    dstate_ref[...] = dstate
    if has_h0:

        @pl.when(first)
        def _initial():
            dh0_ref[...] = dstate


def backward(
    q,
    k,
    v,
    g,
    g_gamma,
    cu_seqlens,
    states,
    do,
    dht,
    *,
    has_h0: bool,
    scale: float,
    chunk_size: int,
    interpret,
):
    """Launch the backward kernel on validated inputs with ``B >= 1``.

    Args:
      q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (bf16 or f32): the forward's inputs.
      g: None or float32 ``[B, T, H]``; g_gamma: None or float32 ``[H]``.
      cu_seqlens: None or int32 or int64 ``[N + 1]`` (``B == 1``), possibly traced; run
        on ``kernel.repair_cu_seqlens`` of it (any entries are safe).
      states: float32 ``[B, H, S, Kp, Vp]``, the state before every segment
        (``kernel.forward(..., save_states=True, padded_states=True)``).
      do: ``[B, T, H, V]``, the cotangent of ``o`` (any float dtype).
      dht: None or float32 ``[N, H, K, V]``, the cotangent of the final state.
      has_h0: whether the forward had an initial state (its gradient is returned).
      scale: the resolved scale; chunk_size: 64 or 128.
      interpret: ``pl.pallas_call``'s (``tops.backends.pallas_interpret()``).

    Returns:
      ``(dq, dk, dv, da, dh0)``: ``dq, dk [B, T, H, K]`` and ``dv [B, T, H, V]`` in the
      dtype of ``q``; ``da`` float32 ``[B, T, H]``, the gradient of each token's total
      log decay ``g_t + gamma`` (None without ``g`` and ``g_gamma``); ``dh0`` float32
      ``[N, H, K, V]`` (None unless ``has_h0``).
    """
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    kp, vp = kernel.padded(key_dim), kernel.padded(value_dim)
    bv = kernel.value_block(vp)
    value_tiles = vp // bv
    chunk = chunk_size
    num_chunks = pl.cdiv(seq_len, chunk)
    varlen = cu_seqlens is not None
    num_states = cu_seqlens.shape[0] - 1 if varlen else batch
    num_segments = num_chunks + num_states if varlen else num_chunks
    need_da = g is not None or g_gamma is not None
    maps = IndexMaps(
        varlen=varlen,
        heads=heads,
        num_chunks=num_chunks,
        num_segments=num_segments,
        value_tiles=value_tiles,
        reverse=True,
    )
    prefetch = ()
    if varlen:
        cu_seqlens = kernel.repair_cu_seqlens(cu_seqlens, seq_len)  # in bounds whatever it is
        tables = kernel.segment_tables(cu_seqlens, seq_len=seq_len, chunk=chunk)
        prefetch = (*tables, cu_seqlens)

    inputs = [
        kernel.lane_view(q, kp),
        kernel.lane_view(k, kp),
        kernel.lane_view(v, vp),
        kernel.lane_view(do.astype(v.dtype) if do.dtype != v.dtype else do, vp),
    ]
    in_specs = [
        pl.BlockSpec((None, chunk, kp), maps.key),
        pl.BlockSpec((None, chunk, kp), maps.key),
        pl.BlockSpec((None, chunk, bv), maps.value),
        pl.BlockSpec((None, chunk, bv), maps.value),
    ]
    if g is not None:
        inputs.append(kernel.gate_layout(g, chunk=chunk))
        in_specs.append(pl.BlockSpec((None, None, GATE_ROWS, LANES), maps.gate))
    if g_gamma is not None:
        inputs.append(g_gamma)
        in_specs.append(pl.BlockSpec((heads,), maps.gamma, memory_space=pltpu.SMEM))
    inputs.append(states)
    in_specs.append(pl.BlockSpec((None, None, None, kp, bv), maps.saved))
    state_spec = pl.BlockSpec((None, None, kp, bv), maps.state)
    if dht is not None:
        pad = ((0, 0), (0, 0), (0, kp - key_dim), (0, vp - value_dim))
        inputs.append(jnp.pad(dht.astype(jnp.float32), pad))
        in_specs.append(state_spec)

    # dq, dk: final in the input dtype with one value tile, else float32 partials.
    key_dtype = q.dtype if value_tiles == 1 else jnp.float32
    key_shape = jax.ShapeDtypeStruct((batch, seq_len, value_tiles * heads * kp), key_dtype)
    out_shape = [key_shape, key_shape]
    out_specs = [pl.BlockSpec((None, chunk, kp), maps.key_tile)] * 2
    out_shape.append(jax.ShapeDtypeStruct((batch, seq_len, heads * vp), v.dtype))
    out_specs.append(pl.BlockSpec((None, chunk, bv), maps.value))
    if need_da:
        gate_rows = pl.cdiv(num_chunks, GATE_ROWS) * GATE_ROWS
        out_shape.append(
            jax.ShapeDtypeStruct((value_tiles, batch, heads, gate_rows, LANES), jnp.float32)
        )
        out_specs.append(pl.BlockSpec((None, None, None, GATE_ROWS, LANES), maps.gate_tile))
    if has_h0:
        out_shape.append(jax.ShapeDtypeStruct((num_states, heads, kp, vp), jnp.float32))
        out_specs.append(state_spec)

    outputs = pl.pallas_call(
        functools.partial(
            _backward_kernel,
            chunk=chunk,
            seq_len=seq_len,
            num_segments=num_segments,
            scale=scale,
            varlen=varlen,
            has_g=g is not None,
            has_gamma=g_gamma is not None,
            has_dht=dht is not None,
            has_h0=has_h0,
            need_da=need_da,
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

    def keys(x):
        x = x.reshape(batch, seq_len, value_tiles, heads, kp)
        x = jnp.sum(x, axis=2).astype(q.dtype) if value_tiles > 1 else x[:, :, 0]
        return x[..., :key_dim]

    dq, dk = keys(outputs.pop(0)), keys(outputs.pop(0))
    dv = outputs.pop(0).reshape(batch, seq_len, heads, vp)[..., :value_dim]
    da = None
    if need_da:
        da = kernel.gate_layout_inverse(
            jnp.sum(outputs.pop(0), axis=0), chunk=chunk, seq_len=seq_len
        )
    dh0 = outputs.pop(0)[:, :, :key_dim, :value_dim] if has_h0 else None
    return dq, dk, dv, da, dh0


def sum_tokens(da):
    """``d g_gamma [H]`` from ``da [B, T, H]``: the sum over ``B`` and ``T`` as a pairwise
    tree of double-float additions (error about 2**-44 of the sum of magnitudes, then
    one rounding), so the reduction adds nothing measurable to the per-token errors."""
    heads = da.shape[-1]
    hi = da.reshape(-1, heads)
    lo = jnp.zeros_like(hi)
    while hi.shape[0] > 1:
        if hi.shape[0] % 2:
            hi = jnp.pad(hi, ((0, 1), (0, 0)))
            lo = jnp.pad(lo, ((0, 1), (0, 0)))
        hi, lo = add_dd(hi[0::2], lo[0::2], hi[1::2], lo[1::2])
    if hi.shape[0] == 0:
        return jnp.zeros((heads,), jnp.float32)
    return (hi[0] + lo[0]).astype(jnp.float32)
