"""Triton kernels for the chunked simple GLA backward: a reverse state-gradient pass, then
two per-chunk gradient passes.

Per sequence and head the forward is, chunk by chunk (``G_i`` the f32 cumulative log decay
from the chunk start to row ``i``, ``S`` the state entering the chunk, ``S'`` the state
leaving it, ``L`` the chunk's last valid row)::

    o_i = scale (exp(G_i) q_i S + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j)
    S'  = exp(G_L) S + sum_j exp(G_L - G_j) k_j^T v_j

With ``dS'`` the gradient w.r.t. the state leaving the chunk (``dht`` after the last
chunk, zeros when the final state has no cotangent) the chain rule gives::

    dS   = exp(G_L) dS' + scale sum_i exp(G_i) q_i^T do_i                  (dh pass)
    dv_j = exp(G_L - G_j) k_j dS' + scale sum_{i >= j} exp(G_i - G_j) (q_i . k_j) do_i
    dq_i = scale exp(G_i) do_i S^T + sum_{j <= i} ds_ij k_j
    dk_j = exp(G_L - G_j) v_j dS'^T + sum_{i >= j} ds_ij q_i
    ds_ij = scale exp(G_i - G_j) (do_i . v_j)   (i >= j, else 0)

and for the gates, ``dG_i`` (the gradient w.r.t. ``G_i``) is ``q_i . dq_i - k_i . dk_i``
(the exp(G_i) factors of ``o_i`` and the ``exp(-G_j)`` factors of the attention and state
update), plus at the last row ``L`` the derivative of the ``exp(G_L)`` factors of ``S'``:
``exp(G_L) <S, dS'> + sum_j k_j . dk_j^state``. ``G`` is the within-chunk inclusive cumsum
of the total gate ``g_t + gamma``, so its gradient ``dg_total_t = sum_{i >= t} dG_i`` is a
reverse cumsum within the chunk; ``dg = dg_total`` and ``dg_gamma[h] = sum_t dg_total_t``.
The initial state's gradient is ``dS`` of each sequence's first chunk (``dh0``).

Resets (``-inf`` gates): every ``exp`` factor above is the cut decay of
:func:`tops.gpu.simple_gla.kernel._chunk_gates` (0 where it crosses a reset; ``G`` sums
the finite gates), and each term carries its own factor, so the equations hold unchanged
with cut terms vanishing: they are the derivatives of the reset recurrence w.r.t. the
finite gates. At a reset token the terms of ``dg_total`` cancel up to rounding; the
kernel stores the contract's exact 0 there.

1. :func:`_chunk_dh_kernel` walks each sequence's chunks in reverse, stores ``dS'`` of
   every chunk (``dh [NC, H, K, V]``, indexed like the forward's ``states``) and ``dh0``.
2. :func:`_chunk_dqkg_kernel`: per chunk and key block, ``dq``, ``dk`` and the key block's
   share of ``dg_total`` (already reverse-cumsummed; linear, so the shares add): an
   ``[NK, B * T, H]`` f32 partial that the launcher sums over ``NK`` (and over tokens for
   ``dg_gamma``), a ``T H`` pass instead of a second pass over ``q, k, v``.
3. :func:`_chunk_dv_kernel`: per chunk and value block, ``dv``.

The forward's per-chunk states (:func:`tops.gpu.simple_gla.kernel.forward`) are reused,
not recomputed; the intra-chunk matrices are recomputed.

Arithmetic: the forward's (flash-linear-attention's ``chunk_simple_gla`` backward): every
``tl.dot`` takes operands in the inputs' precision class with f32 accumulation through
:func:`tops.gpu.arith.dot` (bf16 operands for bf16 inputs: the gated, scaled
queries of the dh pass, ``dh`` itself (stored bf16, like the forward's ``states``) and the
gated ``ds`` and attention matrices are rounded to bf16 before their dots; tf32 for f32
inputs, emulated in the interpreter by truncating the operands). The state gradient is
carried in f32 across chunks; gate terms, exponentials and the ``dg`` sums are f32. Every
exponent a mask discards is replaced before the exponential (:func:`tops.gpu.arith.exp`):
by 0 above/below the diagonal (the product is masked after), by ``-inf`` (an exact 0
factor) for rows past a sequence's end and decays across a reset.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.gpu.arith import dot, exp, pairwise_sum
from tops.gpu.simple_gla.kernel import (
    BLOCK_K,
    BLOCK_V,
    _chunk_gates,
    _chunk_layout,
    _chunk_rows,
    _load_rows,
    _load_rows_t,
    _load_state_block,
    _sequence_block,
    _store_rows,
    compile_config,
    gate_configurations,
    kernel_flags,
    loop_stages,
    signature_types,
)


def num_warps_for(kernel_name: str, chunk_size: int) -> int:
    """Warps per program of the ``"dh"``, ``"dqkg"`` or ``"dv"`` kernel: the per-chunk
    kernels hold ``[BT, BT]`` f32 matrices (two in ``dqkg``), so they get 8 warps at
    ``BT = 128``; the dh kernel's ``[64, 64]`` f32 state gradient fits 4 warps."""
    if kernel_name != "dh" and chunk_size == 128:
        return 8
    return 4


@triton.jit
def _chunk_dh_kernel(
    q_ptr,
    do_ptr,
    g_ptr,
    gamma_ptr,
    dht_ptr,
    dh_ptr,
    dh0_ptr,
    cu_seqlens_ptr,
    chunk_offsets_ptr,
    scale,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_GAMMA: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    TF32: tl.constexpr,
):
    """Reverse state-gradient recurrence. Grid ``(N * H, cdiv(K, BK), cdiv(V, BV))``:
    program ``(n * H + h, i_k, i_v)`` owns the ``[BK, BV]`` block ``(i_k, i_v)`` of the f32
    state gradient of sequence ``n``, head ``h`` (key and value blocks are independent)
    and walks that sequence's chunks last to first.

    Tokens and chunks as in :func:`tops.gpu.simple_gla.kernel._chunk_states_kernel`.

    Blocks touched per program, per chunk:
      ``q_ptr``: ``[BK, BT]`` (``q`` transposed; rows past the sequence and columns past
      ``K`` masked to 0). ``do_ptr``: ``[BT, BV]`` (masked likewise). ``g_ptr``: ``[BT]``
      f32 (``USE_G``). ``dh_ptr``: ``[BK, BV]`` written, the gradient w.r.t. the state
      leaving the chunk (in the dtype of ``dh``: bf16 for bf16 inputs, f32 for f32).
    Once per program: ``gamma_ptr`` ``[]`` f32 (``USE_GAMMA``); ``dht_ptr`` ``[BK, BV]``
    f32 read (``USE_FINAL_STATE_GRADIENT``); ``dh0_ptr`` ``[BK, BV]`` f32 written, always
    (the gradient w.r.t. the initial state); ``cu_seqlens_ptr`` (two) and
    ``chunk_offsets_ptr`` (one) int32 scalars.
    """
    i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs, rows = _sequence_block(
        cu_seqlens_ptr, chunk_offsets_ptr, H, K, V, BT, BK, BV
    )

    dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        dh = tl.load(dht_ptr + i_nh.to(tl.int64) * K * V + kv_offs, mask=mask_kv, other=0.0)
    gamma = 0.0
    if USE_GAMMA:
        gamma = tl.load(gamma_ptr + i_h)

    num_chunks = tl.cdiv(seq_len, BT)
    for i_r in range(0, num_chunks):
        i_t = num_chunks - 1 - i_r
        dh_offs = ((chunk0 + i_t).to(tl.int64) * H + i_h) * K * V + kv_offs
        tl.store(dh_ptr + dh_offs, dh.to(dh_ptr.dtype.element_ty), mask=mask_kv)

        row_valid = i_t * BT + rows < seq_len
        tokens = (token0 + i_t * BT + rows).to(tl.int64)
        q_t = _load_rows_t(q_ptr, tokens, row_valid, i_h, H, K, offs_k, offs_k < K)
        do_c = _load_rows(do_ptr, tokens, row_valid, i_h, H, V, offs_v, offs_v < V)
        if USE_G or USE_GAMMA:
            _, _, _, from_start, _, whole = _chunk_gates(
                g_ptr, gamma, token0, i_t * BT, seq_len, H, i_h, BT, USE_G, USE_GAMMA
            )
            q_gain = scale * exp(from_start)
            q_t = (q_t.to(tl.float32) * q_gain[None, :]).to(q_ptr.dtype.element_ty)
            dh = dh * exp(whole)
        else:
            # Upcast first: a bf16 tensor times an f32 scalar is typed bf16, and the
            # interpreter then multiplies the raw bf16 bit patterns (garbage).
            q_t = (q_t.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)
        dh += dot(q_t, do_c, TF32)

    tl.store(dh0_ptr + i_nh.to(tl.int64) * K * V + kv_offs, dh, mask=mask_kv)


@triton.jit
def _chunk_dqkg_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    gamma_ptr,
    states_ptr,
    dh_ptr,
    do_ptr,
    dq_ptr,
    dk_ptr,
    dg_ptr,
    cu_seqlens_ptr,
    chunk_seq_ptr,
    chunk_offsets_ptr,
    scale,
    H,
    K,
    V,
    TOKENS,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_GAMMA: tl.constexpr,
    TF32: tl.constexpr,
    LOOP_STAGES: tl.constexpr,
):
    """``dq``, ``dk`` and the key block's share of ``dg_total`` for one chunk. Grid
    ``(NC_grid, cdiv(K, BK), H)``: program ``(c, i_k, h)`` writes the ``[BT, BK]`` blocks
    ``i_k`` of ``dq`` and ``dk`` of global chunk ``c``, head ``h``, and (when a gate is
    used) the ``[BT]`` column ``dg[i_k, tokens, h]`` of the ``[NK, TOKENS, H]`` f32
    partials (``TOKENS = B * T``). Chunk table as in
    :func:`tops.gpu.simple_gla.kernel._chunk_output_kernel` (spare chunks, ``seq < 0``,
    mask every load and store).

    Blocks touched per program:
      per value block (``cdiv(V, BV)`` of them): ``v_ptr`` and ``do_ptr`` ``[BT, BV]``,
      ``states_ptr`` and ``dh_ptr`` ``[BK, BV]`` (the state entering and the gradient of
      the state leaving chunk ``c``), all masked to the sequence and to ``K``, ``V``;
      once: ``q_ptr``, ``k_ptr`` ``[BT, BK]`` read, ``dq_ptr``, ``dk_ptr`` ``[BT, BK]``
      written (dtype of ``q``), ``g_ptr`` ``[BT]`` f32 (``USE_G``), ``gamma_ptr`` ``[]``
      f32 (``USE_GAMMA``), ``dg_ptr`` ``[BT]`` f32 written (either gate), three int32
      scalars of the chunk table.
    In registers: ``ds = do v^T`` and ``q k^T``, ``[BT, BT]`` f32; ``dq``, ``dk``
    ``[BT, BK]`` f32.
    """
    i_c = tl.program_id(0)
    i_k = tl.program_id(1)
    i_h = tl.program_id(2)
    # A spare chunk reads no state (its rows of ``states`` and ``dh`` are never written).
    token0, seq_len, row0, rows, row_valid, tokens, state_k = _chunk_rows(
        cu_seqlens_ptr, chunk_seq_ptr, chunk_offsets_ptr, i_c, K, BT
    )
    offs_k = i_k * BK + tl.arange(0, BK)
    mask_k = offs_k < K
    state_offset = (i_c.to(tl.int64) * H + i_h) * K * V

    ds = tl.zeros([BT, BT], dtype=tl.float32)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    state_dot = tl.zeros([BK], dtype=tl.float32)  # row sums of S * dS' (this key block)
    for v0 in tl.range(0, V, BV, num_stages=LOOP_STAGES):
        offs_v = v0 + tl.arange(0, BV)
        mask_v = offs_v < V
        tv_mask = row_valid[:, None] & mask_v[None, :]
        tv_offs = (tokens[:, None] * H + i_h) * V + offs_v[None, :]
        v_c = tl.load(v_ptr + tv_offs, mask=tv_mask, other=0.0)
        do_c = tl.load(do_ptr + tv_offs, mask=tv_mask, other=0.0)
        kv_mask = (offs_k < state_k)[:, None] & mask_v[None, :]
        kv_offs = state_offset + offs_k[:, None].to(tl.int64) * V + offs_v[None, :]
        s = tl.load(states_ptr + kv_offs, mask=kv_mask, other=0.0)
        dh = tl.load(dh_ptr + kv_offs, mask=kv_mask, other=0.0)
        ds += dot(do_c, tl.trans(v_c), TF32)
        dq += dot(do_c, tl.trans(s), TF32)
        dk += dot(v_c, tl.trans(dh), TF32)
        if USE_G or USE_GAMMA:
            state_dot += tl.sum(s.to(tl.float32) * dh.to(tl.float32), axis=1)

    qk_mask = row_valid[:, None] & mask_k[None, :]
    qk_offs = (tokens[:, None] * H + i_h) * K + offs_k[None, :]
    q_c = tl.load(q_ptr + qk_offs, mask=qk_mask, other=0.0)
    k_c = tl.load(k_ptr + qk_offs, mask=qk_mask, other=0.0)
    causal = (rows[:, None] >= rows[None, :]) & row_valid[:, None] & row_valid[None, :]

    if USE_G or USE_GAMMA:
        gamma = 0.0
        if USE_GAMMA:
            gamma = tl.load(gamma_ptr + i_h)
        G, R, reset, from_start, to_end, whole = _chunk_gates(
            g_ptr, gamma, token0, row0, seq_len, H, i_h, BT, USE_G, USE_GAMMA
        )
        causal = causal & (R[:, None] == R[None, :])  # no decay crosses a reset
        dq = dq * (scale * exp(from_start))[:, None]
        dk = dk * exp(to_end)[:, None]
        q_f = q_c.to(tl.float32)
        k_f = k_c.to(tl.float32)
        k_dk_state = tl.sum(k_f * dk, axis=1)
        # Derivative w.r.t. G_L of the exp(G_L) factors of the state leaving the chunk.
        d_last = tl.sum(state_dot, axis=0) * exp(whole) + tl.sum(k_dk_state, axis=0)
        dG = tl.sum(q_f * dq, axis=1) - k_dk_state
        ds = ds * exp(tl.where(causal, G[:, None] - G[None, :], 0.0))
        ds = tl.where(causal, ds * scale, 0.0)
        # ds_ij (q_i . k_j): the intra-chunk terms, + for G_i and - for G_j. Masked with
        # where: a non-finite q_i or k_j must not reach the sums through 0 * inf.
        ds_qk = tl.where(causal, ds * dot(q_c, tl.trans(k_c), TF32), 0.0)
        dG += tl.sum(ds_qk, axis=1) - tl.sum(ds_qk, axis=0)
        dg_total = tl.cumsum(dG, axis=0, reverse=True) + d_last
        # At a reset the terms cancel to a rounding residue; the contract's value is 0.
        dg_total = tl.where(reset, 0.0, dg_total)
        tl.store(
            dg_ptr + (i_k.to(tl.int64) * TOKENS + tokens) * H + i_h,
            dg_total,
            mask=row_valid,
        )
    else:
        dq = dq * scale
        ds = tl.where(causal, ds * scale, 0.0)

    ds_op = ds.to(q_ptr.dtype.element_ty)
    dq += dot(ds_op, k_c, TF32)
    dk += dot(tl.trans(ds_op), q_c, TF32)
    tl.store(dq_ptr + qk_offs, dq.to(dq_ptr.dtype.element_ty), mask=qk_mask)
    tl.store(dk_ptr + qk_offs, dk.to(dk_ptr.dtype.element_ty), mask=qk_mask)


@triton.jit
def _chunk_dv_kernel(
    q_ptr,
    k_ptr,
    g_ptr,
    gamma_ptr,
    dh_ptr,
    do_ptr,
    dv_ptr,
    cu_seqlens_ptr,
    chunk_seq_ptr,
    chunk_offsets_ptr,
    scale,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_GAMMA: tl.constexpr,
    TF32: tl.constexpr,
    LOOP_STAGES: tl.constexpr,
):
    """``dv`` of one chunk. Grid ``(NC_grid, cdiv(V, BV), H)``: program ``(c, i_v, h)``
    writes the ``[BT, BV]`` block ``i_v`` of ``dv`` of global chunk ``c``, head ``h``.
    Chunk table as in :func:`_chunk_dqkg_kernel`.

    Blocks touched per program:
      per key block (``cdiv(K, BK)`` of them): ``k_ptr`` ``[BT, BK]``, ``q_ptr``
      ``[BK, BT]`` (transposed), ``dh_ptr`` ``[BK, BV]``, masked to the sequence and to
      ``K``, ``V``;
      once: ``do_ptr`` ``[BT, BV]`` read and ``dv_ptr`` ``[BT, BV]`` written (dtype of
      ``v``), ``g_ptr`` ``[BT]`` f32 (``USE_G``), ``gamma_ptr`` ``[]`` f32
      (``USE_GAMMA``), three int32 scalars of the chunk table.
    In registers: the ``[BT, BT]`` f32 matrix ``k q^T`` and the ``[BT, BV]`` f32 ``dv``.
    """
    i_c = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    token0, seq_len, row0, rows, row_valid, tokens, state_k = _chunk_rows(
        cu_seqlens_ptr, chunk_seq_ptr, chunk_offsets_ptr, i_c, K, BT
    )
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    dh_base = dh_ptr + (i_c.to(tl.int64) * H + i_h) * K * V

    dv = tl.zeros([BT, BV], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)  # A[j, i] = k_j . q_i
    for k0 in tl.range(0, K, BK, num_stages=LOOP_STAGES):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        k_c = _load_rows(k_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        q_t = _load_rows_t(q_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        dh = _load_state_block(dh_base, offs_k, offs_v, V, state_k, mask_v)
        dv += dot(k_c, dh, TF32)
        A += dot(k_c, q_t, TF32)

    # [j, i]: i >= j
    anticausal = (rows[:, None] <= rows[None, :]) & row_valid[:, None] & row_valid[None, :]
    if USE_G or USE_GAMMA:
        gamma = 0.0
        if USE_GAMMA:
            gamma = tl.load(gamma_ptr + i_h)
        G, R, _, _, to_end, _ = _chunk_gates(
            g_ptr, gamma, token0, row0, seq_len, H, i_h, BT, USE_G, USE_GAMMA
        )
        anticausal = anticausal & (R[:, None] == R[None, :])  # no decay crosses a reset
        dv = dv * exp(to_end)[:, None]
        A = A * exp(tl.where(anticausal, G[None, :] - G[:, None], 0.0))
    A = tl.where(anticausal, A * scale, 0.0)

    do_c = _load_rows(do_ptr, tokens, row_valid, i_h, H, V, offs_v, mask_v)
    dv += dot(A.to(do_ptr.dtype.element_ty), do_c, TF32)
    _store_rows(dv_ptr, dv, tokens, row_valid, i_h, H, V, offs_v, mask_v)


def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    g_gamma: torch.Tensor | None,
    scale: float,
    states: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    chunk_size: int,
):
    """Launch the three backward kernels on contiguous inputs with ``B >= 1``.

    Args:
      q, k, v, g, g_gamma, scale, cu_seqlens, chunk_size: as given to
        :func:`tops.gpu.simple_gla.kernel.forward` (``scale`` resolved).
      states: the ``states`` that forward returned (state entering every chunk).
      do: ``[B, T, H, V]`` cotangent of ``o``, in the dtype of ``v``.
      dht: None or f32 ``[N, H, K, V]`` cotangent of the final state.

    Returns:
      ``(dq, dk, dv, dg, dg_gamma, dh0)``: ``dq, dk`` in the dtype of ``q``, ``dv`` of
      ``v``; ``dg`` f32 ``[B, T, H]`` (None without ``g``), ``dg_gamma`` f32 ``[H]`` (None
      without ``g_gamma``), ``dh0`` f32 ``[N, H, K, V]``.
    """
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[3]
    device = q.device
    cu_seqlens, chunk_offsets, chunk_seq, grid_chunks = _chunk_layout(
        batch, seq_len, cu_seqlens, chunk_size, device
    )
    num_seqs = cu_seqlens.shape[0] - 1
    gated = g is not None or g_gamma is not None

    dh = torch.empty(states.shape, dtype=states.dtype, device=device)
    dh0 = torch.empty((num_seqs, heads, key_dim, value_dim), dtype=torch.float32, device=device)
    num_k = triton.cdiv(key_dim, BLOCK_K)
    num_v = triton.cdiv(value_dim, BLOCK_V)
    flags = kernel_flags(chunk_size, g is not None, g_gamma is not None, q.dtype == torch.float32)
    _chunk_dh_kernel[(num_seqs * heads, num_k, num_v)](
        q,
        do,
        g,
        g_gamma,
        dht,
        dh,
        dh0,
        cu_seqlens,
        chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        USE_FINAL_STATE_GRADIENT=dht is not None,
        num_warps=num_warps_for("dh", chunk_size),
        **flags,
    )

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    tokens = batch * seq_len
    dg_partial = (
        torch.empty((num_k, tokens, heads), dtype=torch.float32, device=device) if gated else None
    )
    _chunk_dqkg_kernel[(grid_chunks, num_k, heads)](
        q,
        k,
        v,
        g,
        g_gamma,
        states,
        dh,
        do,
        dq,
        dk,
        dg_partial,
        cu_seqlens,
        chunk_seq,
        chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        tokens,
        LOOP_STAGES=loop_stages(chunk_size, flags["TF32"]),
        num_warps=num_warps_for("dqkg", chunk_size),
        **flags,
    )
    _chunk_dv_kernel[(grid_chunks, num_v, heads)](
        q,
        k,
        g,
        g_gamma,
        dh,
        do,
        dv,
        cu_seqlens,
        chunk_seq,
        chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        LOOP_STAGES=loop_stages(chunk_size, flags["TF32"]),
        num_warps=num_warps_for("dv", chunk_size),
        **flags,
    )

    dg = dg_gamma = None
    if gated:
        dg_total = pairwise_sum(dg_partial)  # [B * T, H]
        if g is not None:
            dg = dg_total.view(batch, seq_len, heads)
        if g_gamma is not None:
            dg_gamma = pairwise_sum(dg_total)
    return dq, dk, dv, dg, dg_gamma, dh0


def _signature(kernel_name: str, dtype: str, flags: dict) -> dict:
    """The ``ASTSource`` signature of one configuration of the ``"dh"``, ``"dqkg"`` or
    ``"dv"`` kernel: an absent gate or final-state gradient is a ``None`` constexpr, as
    the launcher's ``None`` argument specialises it."""
    qkv, states, gates = signature_types(dtype, flags)
    gated = flags["USE_G"] or flags["USE_GAMMA"]
    table = {"cu_seqlens_ptr": "*i32", "chunk_seq_ptr": "*i32", "chunk_offsets_ptr": "*i32"}
    scalars = {"scale": "fp32", "H": "i32", "K": "i32", "V": "i32"}
    if kernel_name == "dh":
        pointers = {
            "q_ptr": qkv,
            "do_ptr": qkv,
            **gates,
            "dht_ptr": "*fp32" if flags["USE_FINAL_STATE_GRADIENT"] else "constexpr",
            "dh_ptr": states,
            "dh0_ptr": "*fp32",
            "cu_seqlens_ptr": "*i32",
            "chunk_offsets_ptr": "*i32",
        }
    elif kernel_name == "dqkg":
        pointers = {
            "q_ptr": qkv,
            "k_ptr": qkv,
            "v_ptr": qkv,
            **gates,
            "states_ptr": states,
            "dh_ptr": states,
            "do_ptr": qkv,
            "dq_ptr": qkv,
            "dk_ptr": qkv,
            "dg_ptr": "*fp32" if gated else "constexpr",
            **table,
        }
        scalars = {**scalars, "TOKENS": "i32"}
    else:
        pointers = {
            "q_ptr": qkv,
            "k_ptr": qkv,
            **gates,
            "dh_ptr": states,
            "do_ptr": qkv,
            "dv_ptr": qkv,
            **table,
        }
    return {**pointers, **scalars, **dict.fromkeys(flags, "constexpr")}


def compile_configs() -> list[dict]:
    """Every shipped backward kernel configuration, for the compile-only checks.

    The three kernels for each chunk size (64, 128), input dtype (bf16, f32 as tf32) and
    gate combination (``g``, ``g_gamma``, both, neither), the dh kernel also with and
    without a final-state gradient; blocks are always ``BLOCK_K x BLOCK_V``. Entries:
    ``{"name", "kernel", "signature", "constexprs", "num_warps"}`` as in
    :func:`tops.gpu.simple_gla.kernel.compile_configs`.
    """
    configs = []
    for chunk_size, dtype, gate_name, common, nones in gate_configurations():
        for use_dht in (False, True):
            flags = {**common, "USE_FINAL_STATE_GRADIENT": use_dht}
            dh_nones = dict(nones, **({} if use_dht else {"dht_ptr": None}))
            configs.append(
                compile_config(
                    f"dh_C{chunk_size}_{dtype}_{gate_name}_dht{int(use_dht)}",
                    _chunk_dh_kernel,
                    _signature("dh", dtype, flags),
                    {**flags, **dh_nones},
                    num_warps_for("dh", chunk_size),
                )
            )
        gated = common["USE_G"] or common["USE_GAMMA"]
        dqkg_nones = dict(nones, **({} if gated else {"dg_ptr": None}))
        for name, kernel, extra in (
            ("dqkg", _chunk_dqkg_kernel, dqkg_nones),
            ("dv", _chunk_dv_kernel, nones),
        ):
            flags = {**common, "LOOP_STAGES": loop_stages(chunk_size, dtype == "fp32")}
            configs.append(
                compile_config(
                    f"{name}_C{chunk_size}_{dtype}_{gate_name}",
                    kernel,
                    _signature(name, dtype, flags),
                    {**flags, **extra},
                    num_warps_for(name, chunk_size),
                )
            )
    return configs
