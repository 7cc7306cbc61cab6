"""Pallas TPU kernel for the chunked simple GLA backward, beside its launcher.

One fused kernel on the grid ``(B, H, Vp / BV, S)`` of ``common.py``, the segments
visited in *reverse*, the float32 ``(Kp, BV)`` state gradient ``dS`` (the cotangent of
the state after the segment) in VMEM scratch across them. Blocks: ``q, k, dq, dk``
``(C, Kp)``, ``v, do, dv`` ``(C, BV)``; ``g, da`` ``(8, 128)`` float32; ``g_gamma``
``(H,)`` in SMEM; saved state, ``dht``, ``dh0`` ``(Kp, BV)`` float32. Per segment, with
the forward's log decays ``D``, ``M_ij = [j <= i] exp(D_i - D_j)``, the saved state
``S`` *before* the segment and ``dS`` after it::

    A  = M * (q k^T)                      B = M * (do v^T)
    dq = scale (exp(D) do S^T + B k)
    dk = scale B^T q + exp(D_tot - D) v dS^T
    dv = scale A^T do + exp(D_tot - D) k dS
    dS <- exp(D_tot) dS + scale (exp(D) q)^T do

The gradient of the total log decay ``a_t = g_t + gamma`` of window row ``t`` is
``exp(a_t) <dh_t, h_{t-1}>``, expanded over the segment into four terms none of which
cancels another (``sum_{s >= t} (q_s . dq_s - k_s . dk_s)`` is the same number as a
difference of near-equal sums under strong decays)::

    da_t = exp(D_tot) <dS, S>                              (state to state)
         + sum_{j < t}  k_j . [exp(D_tot - D_j) v_j dS^T]  (keys before t to dS)
         + sum_{i >= t} q_i . [scale exp(D_i) do_i S^T]    (S to queries from t on)
         + scale sum_{i >= t > j} A_ij (do_i . v_j)         (keys before t to queries after)

With the decays cut at resets every term crosses a ``-inf`` gate, so ``da`` is exactly 0
there. ``d g_gamma[h]`` sums ``da`` over the head's tokens (:func:`sum_tokens`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from tops.ops.double_float import add_dd
from tops.ops.simple_gla.common import (
    GATE_ROWS,
    LANES,
    Interpret,
    Launch,
    causal_mask,
    dot,
    gate_block_selection,
    gate_layout_inverse,
    load_window,
    segment,
    segment_decays,
    store_window,
    window_rows,
)


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
    """One segment of one ``(batch, head, value tile)``, grid step ``s`` on segment
    ``S - 1 - s``. Refs, in order:

    * scalar prefetch (only with ``cu_seqlens``): ``chunk[S]``, ``seq[S]`` int32 and
      ``cu_seqlens[N + 1]`` (``common.segment_tables``);
    * ``q_ref``, ``k_ref`` ``(C, Kp)`` and ``v_ref``, ``do_ref`` ``(C, BV)``;
    * ``g_ref`` ``(8, 128)`` (with ``g``); ``gamma_ref`` ``(H,)`` in SMEM (with ``g_gamma``);
    * ``state_ref`` ``(Kp, BV)``: the state before the segment (saved by the forward);
    * ``dht_ref`` ``(Kp, BV)`` (with a final-state cotangent): the sequence's;
    * ``dq_ref``, ``dk_ref`` ``(C, Kp)``: the input dtype with one value tile, else
      float32 partial sums (one column block per value tile);
    * ``dv_ref`` ``(C, BV)``;
    * ``da_ref`` ``(8, 128)`` (with ``g`` or ``g_gamma``): the gradient of each token's
      total log decay, in the gate layout, one partial per value tile;
    * ``dh0_ref`` ``(Kp, BV)`` (with an initial state): written by the sequence's first
      segment;
    * scratch ``dstate_ref`` ``(Kp, BV)``: ``dS``, carried along the segment axis.
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

    chunk_row, lo, hi, first, last = segment(
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

    window = window_rows(lo, hi, chunk)
    q, k, v, do = (load_window(ref, window) for ref in (q_ref, k_ref, v_ref, do_ref))
    decay_ij, decay_in, decay_tot, decay_out = segment_decays(
        g_ref, gamma_ref, chunk_row=chunk_row, lo=lo, hi=hi, chunk=chunk
    )
    causal = causal_mask(window, chunk)
    weights = jnp.where(causal, jnp.exp(jnp.where(causal, decay_ij, 0.0)), 0.0)  # M
    to_row = jnp.exp(jnp.where(window, decay_in, 0.0))  # exp(D_i), (C, 1)
    to_end = jnp.exp(jnp.where(window, decay_out, 0.0))  # exp(D_tot - D_j), (C, 1)
    whole = jnp.exp(decay_tot)  # exp(D_tot)

    # Masked with where, not only by the zero weights: 0 * NaN would carry a non-finite
    # q_i or v_j into the rows the causal mask excludes (the contract's NaN mask).
    attention = jnp.where(causal, weights * dot(q, k, ((1,), (1,))), 0.0)  # A (C, C)
    do_v = dot(do, v, ((1,), (1,)))  # do v^T (C, C)
    d_attention = jnp.where(causal, weights * do_v, 0.0)  # B
    dq_state = scale * dot(do * to_row, state, ((1,), (1,)))  # (C, Kp)
    dq = dq_state + scale * dot(d_attention, k, ((1,), (0,)))
    dk_state = dot(v * to_end, dstate, ((1,), (1,)))  # (C, Kp)
    dk = scale * dot(d_attention, q, ((0,), (0,))) + dk_state
    dv = scale * dot(attention, do, ((0,), (0,))) + dot(k * to_end, dstate, ((1,), (0,)))
    store_window(dq_ref, window, dq)
    store_window(dk_ref, window, dk)
    store_window(dv_ref, window, dv)

    if need_da:
        keys_before = jnp.sum(k * dk_state, axis=1, keepdims=True)  # (C, 1), j < t
        queries_after = jnp.sum(q * dq_state, axis=1, keepdims=True)  # (C, 1), i >= t
        sub_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 0)  # j or i
        lane_wide = lax.broadcasted_iota(jnp.int32, (chunk, LANES), 1)  # t
        before = sub_wide < lane_wide
        # crossing[i, t] = sum_{j < t} A_ij (do_i . v_j): one (C, C) x (C, 128) matmul
        # with the 0/1 matrix [j < t].
        products = jnp.where(causal, attention * do_v, 0.0)
        crossing = dot(products, before.astype(jnp.float32), ((1,), (0,)))
        terms = jnp.where(before, keys_before, queries_after + scale * crossing)
        states_term = whole * jnp.sum(dstate * state, keepdims=True)  # (1, 1)
        da = jnp.sum(terms, axis=0, keepdims=True) + states_term  # (1, 128), lane t
        selected = gate_block_selection(da_ref.shape, chunk_row, lo, hi)
        da_ref[...] = jnp.where(selected, da, da_ref[...])

    dstate = whole * dstate + scale * dot(q * to_row, do, ((0,), (0,)))
    dstate_ref[...] = dstate
    if has_h0:

        @pl.when(first)
        def _initial():
            dh0_ref[...] = dstate


def backward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array | None,
    g_gamma: jax.Array | None,
    cu_seqlens: jax.Array | None,
    states: jax.Array,
    do: jax.Array,
    dht: jax.Array | None,
    *,
    has_h0: bool,
    scale: float,
    chunk_size: int,
    interpret: Interpret,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Launch the backward kernel on validated inputs with ``B >= 1``.

    Args:
      q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (bf16 or f32): the forward's inputs.
      g: None or float32 ``[B, T, H]``; g_gamma: None or float32 ``[H]``.
      cu_seqlens: None or int32 or int64 ``[N + 1]`` (``B == 1``), possibly traced; run
        on ``common.repair_cu_seqlens`` of it (any entries are safe).
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
    launch = Launch.of(q, v, cu_seqlens, chunk=chunk_size)
    batch, seq_len, heads = launch.batch, launch.seq_len, launch.heads
    kp, vp, bv, chunk = launch.kp, launch.vp, launch.bv, launch.chunk
    value_tiles = launch.value_tiles
    need_da = g is not None or g_gamma is not None
    maps = launch.index_maps(reverse=True)
    do = do.astype(v.dtype) if do.dtype != v.dtype else do
    inputs, in_specs = launch.operands(maps, [q, k], [v, do], g, g_gamma)
    # The forward's saved states: recomputing them here would read k, v, g again and
    # write the same states, about 520 bytes per token and head more at K = V = 128.
    inputs.append(states)
    in_specs.append(pl.BlockSpec((None, None, None, kp, bv), maps.saved))
    state_spec = pl.BlockSpec((None, None, kp, bv), maps.state)
    if dht is not None:
        inputs.append(launch.padded_state(dht.astype(jnp.float32)))
        in_specs.append(state_spec)

    # dq, dk: final in the input dtype with one value tile, else float32 partials.
    key_dtype = q.dtype if value_tiles == 1 else jnp.float32
    key_shape = jax.ShapeDtypeStruct((batch, seq_len, value_tiles * heads * kp), key_dtype)
    out_shape = [key_shape, key_shape]
    out_specs = [pl.BlockSpec((None, chunk, kp), maps.key_tile)] * 2
    out_shape.append(jax.ShapeDtypeStruct((batch, seq_len, heads * vp), v.dtype))
    out_specs.append(pl.BlockSpec((None, chunk, bv), maps.value))
    if need_da:
        gate_rows = pl.cdiv(launch.num_chunks, GATE_ROWS) * GATE_ROWS
        out_shape.append(
            jax.ShapeDtypeStruct((value_tiles, batch, heads, gate_rows, LANES), jnp.float32)
        )
        out_specs.append(pl.BlockSpec((None, None, None, GATE_ROWS, LANES), maps.gate_tile))
    if has_h0:
        out_shape.append(jax.ShapeDtypeStruct((launch.num_states, heads, kp, vp), jnp.float32))
        out_specs.append(state_spec)

    outputs = launch.call(
        _backward_kernel, cu_seqlens, inputs, in_specs, out_shape, out_specs,
        interpret=interpret, num_segments=launch.num_segments, scale=scale,
        has_g=g is not None, has_gamma=g_gamma is not None, has_dht=dht is not None,
        has_h0=has_h0, need_da=need_da,
    )  # fmt: skip
    key_dim, value_dim = launch.key_dim, launch.value_dim

    def keys(x):
        x = x.reshape(batch, seq_len, value_tiles, heads, kp)
        x = jnp.sum(x, axis=2).astype(q.dtype) if value_tiles > 1 else x[:, :, 0]
        return x[..., :key_dim]

    dq, dk = keys(outputs.pop(0)), keys(outputs.pop(0))
    dv = outputs.pop(0).reshape(batch, seq_len, heads, vp)[..., :value_dim]
    da = None
    if need_da:
        da = gate_layout_inverse(jnp.sum(outputs.pop(0), axis=0), chunk=chunk, seq_len=seq_len)
    dh0 = outputs.pop(0)[:, :, :key_dim, :value_dim] if has_h0 else None
    return dq, dk, dv, da, dh0


def sum_tokens(da: jax.Array) -> jax.Array:
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
