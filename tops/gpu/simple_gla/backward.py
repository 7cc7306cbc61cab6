"""Triton kernels of the chunked simple GLA backward (flash-linear-attention's
``chunk_simple_gla`` backward), and their launcher :func:`backward`. Chunks, grids and
masks as in :mod:`tops.gpu.simple_gla.kernel`, whose ``states`` it reuses.

* :func:`chunk_dh_kernel`, grid ``(N * H, cdiv(K, BK), cdiv(V, BV))``: the ``[BK, BV]``
  block of one sequence's state gradient, carried in f32 through its chunks last to first.
  Per chunk it loads ``q [BK, BT]`` (transposed), ``do [BT, BV]``, ``g [BT]`` and stores
  ``dh [BK, BV]``; once, ``dht [BK, BV]`` in and ``dh0 [BK, BV]`` out.
* :func:`chunk_dqkg_kernel`, grid ``(NC_grid, cdiv(K, BK), H)``: ``dq, dk [BT, BK]`` and
  ``dg [BT]`` of one chunk. Per value block it loads ``v, do [BT, BV]`` and ``states, dh
  [BK, BV]``; once, ``q, k [BT, BK]`` and ``g [BT]``.
* :func:`chunk_dv_kernel`, grid ``(NC_grid, cdiv(V, BV), H)``: ``dv [BT, BV]`` of one
  chunk. Per key block it loads ``k [BT, BK]``, ``q [BK, BT]`` (transposed) and ``dh
  [BK, BV]``; once, ``g [BT]`` and ``do [BT, BV]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.arith import dot, exp, pairwise_sum
from tops.gpu.simple_gla.common import (
    BLOCKS,
    KernelName,
    SignatureDtype,
    chunk_gates,
    chunk_layout,
    chunk_rows,
    chunk_tokens,
    gate_configurations,
    head_gamma,
    kernel_flags,
    load_rows,
    load_rows_t,
    load_state_block,
    sequence_block,
    shipped_config,
    signature_types,
    store_rows,
)

# Notation of the kernels' docstrings, per chunk: G_i the f32 cumulative log decay from
# the chunk start to row i (:func:`chunk_gates`), S the state entering the chunk, L its
# last valid row, dS' the gradient w.r.t. the state leaving it. Every exp factor is the
# cut decay (0 across a -inf gate), so the equations hold with the cut terms vanishing.


@triton.jit
def chunk_dh_kernel(
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
    """``dS = exp(G_L) dS' + scale sum_i exp(G_i) q_i^T do_i`` chunk by chunk from the last
    (``dS'`` of the last chunk: ``dht``, or zeros): stores ``dS'`` of every chunk (``dh``,
    in the dtype of ``states``) and ``dS`` of the first (``dh0``)."""
    i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs, rows = sequence_block(
        cu_seqlens_ptr, chunk_offsets_ptr, H, K, V, BT, BK, BV
    )

    dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        dh = tl.load(dht_ptr + i_nh.to(tl.int64) * K * V + kv_offs, mask=mask_kv, other=0.0)
    gamma = head_gamma(gamma_ptr, i_h, USE_GAMMA)

    num_chunks = tl.cdiv(seq_len, BT)
    for i_r in range(0, num_chunks):
        i_t = num_chunks - 1 - i_r
        dh_offs = ((chunk0 + i_t).to(tl.int64) * H + i_h) * K * V + kv_offs
        tl.store(dh_ptr + dh_offs, dh.to(dh_ptr.dtype.element_ty), mask=mask_kv)

        row_valid, tokens = chunk_tokens(token0, i_t * BT, seq_len, rows)
        q_t = load_rows_t(q_ptr, tokens, row_valid, i_h, H, K, offs_k, offs_k < K)
        do_c = load_rows(do_ptr, tokens, row_valid, i_h, H, V, offs_v, offs_v < V)
        if USE_G or USE_GAMMA:
            _, _, _, from_start, _, whole = chunk_gates(
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
def chunk_dqkg_kernel(
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
    """For the rows of global chunk ``c`` and key block ``i_k``, with
    ``ds_ij = scale exp(G_i - G_j) (do_i . v_j)`` (``i >= j``, else 0)::

        dq_i = scale exp(G_i) do_i S^T + sum_{j <= i} ds_ij k_j
        dk_j = exp(G_L - G_j) v_j dS'^T + sum_{i >= j} ds_ij q_i
        dG_i = q_i . dq_i - k_i . dk_i  (+ exp(G_L) <S, dS'> + sum_j k_j . dk_j^state at L)

    and the key block's share of ``dg_total_t = sum_{i >= t} dG_i`` (the reverse cumsum;
    exactly 0 at a reset), stored to ``dg[i_k, tokens, h]`` of the ``[NK, TOKENS, H]`` f32
    partials that the launcher sums. Spare chunks mask every load and store. In registers:
    ``ds`` and ``q k^T`` ``[BT, BT]`` f32, ``dq``, ``dk`` ``[BT, BK]`` f32."""
    i_c = tl.program_id(0)
    i_k = tl.program_id(1)
    i_h = tl.program_id(2)
    token0, seq_len, row0, rows, row_valid, tokens, state_k = chunk_rows(
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
        # One offset tile for v and do, one for states and dh (as for q, k, dq, dk below):
        # computed once, where a helper per tensor compiles to more address arithmetic.
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
        gamma = head_gamma(gamma_ptr, i_h, USE_GAMMA)
        G, R, reset, from_start, to_end, whole = chunk_gates(
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
def chunk_dv_kernel(
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
    """``dv_j = exp(G_L - G_j) k_j dS' + scale sum_{i >= j} exp(G_i - G_j) (q_i . k_j) do_i``
    for the rows of global chunk ``c`` and value block ``i_v``. In registers: the
    ``[BT, BT]`` f32 matrix ``k q^T`` and the ``[BT, BV]`` f32 ``dv``."""
    i_c = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    token0, seq_len, row0, rows, row_valid, tokens, state_k = chunk_rows(
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
        k_c = load_rows(k_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        q_t = load_rows_t(q_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        dh = load_state_block(dh_base, offs_k, offs_v, V, state_k, mask_v)
        dv += dot(k_c, dh, TF32)
        A += dot(k_c, q_t, TF32)

    # [j, i]: i >= j
    anticausal = (rows[:, None] <= rows[None, :]) & row_valid[:, None] & row_valid[None, :]
    if USE_G or USE_GAMMA:
        gamma = head_gamma(gamma_ptr, i_h, USE_GAMMA)
        G, R, _, _, to_end, _ = chunk_gates(
            g_ptr, gamma, token0, row0, seq_len, H, i_h, BT, USE_G, USE_GAMMA
        )
        anticausal = anticausal & (R[:, None] == R[None, :])  # no decay crosses a reset
        dv = dv * exp(to_end)[:, None]
        A = A * exp(tl.where(anticausal, G[None, :] - G[:, None], 0.0))
    A = tl.where(anticausal, A * scale, 0.0)

    do_c = load_rows(do_ptr, tokens, row_valid, i_h, H, V, offs_v, mask_v)
    dv += dot(A.to(do_ptr.dtype.element_ty), do_c, TF32)
    store_rows(dv_ptr, dv, tokens, row_valid, i_h, H, V, offs_v, mask_v)


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
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor,
]:
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
    layout = chunk_layout(batch, seq_len, cu_seqlens, chunk_size, device)
    gated = g is not None or g_gamma is not None

    dh = torch.empty(states.shape, dtype=states.dtype, device=device)
    dh0 = torch.empty(
        (layout.num_seqs, heads, key_dim, value_dim), dtype=torch.float32, device=device
    )
    num_k = triton.cdiv(key_dim, BLOCKS.block_k)
    num_v = triton.cdiv(value_dim, BLOCKS.block_v)
    flags = kernel_flags(chunk_size, g is not None, g_gamma is not None, q.dtype == torch.float32)
    chunk_dh_kernel[(layout.num_seqs * heads, num_k, num_v)](
        q,
        do,
        g,
        g_gamma,
        dht,
        dh,
        dh0,
        layout.cu_seqlens,
        layout.chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        USE_FINAL_STATE_GRADIENT=dht is not None,
        num_warps=BLOCKS.num_warps("dh", chunk_size),
        **flags,
    )

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    tokens = batch * seq_len
    dg_partial = (
        torch.empty((num_k, tokens, heads), dtype=torch.float32, device=device) if gated else None
    )
    loop_stages = BLOCKS.loop_stages(chunk_size, flags["TF32"])
    chunk_dqkg_kernel[(layout.grid_chunks, num_k, heads)](
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
        layout.cu_seqlens,
        layout.chunk_seq,
        layout.chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        tokens,
        LOOP_STAGES=loop_stages,
        num_warps=BLOCKS.num_warps("dqkg", chunk_size),
        **flags,
    )
    chunk_dv_kernel[(layout.grid_chunks, num_v, heads)](
        q,
        k,
        g,
        g_gamma,
        dh,
        do,
        dv,
        layout.cu_seqlens,
        layout.chunk_seq,
        layout.chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        LOOP_STAGES=loop_stages,
        num_warps=BLOCKS.num_warps("dv", chunk_size),
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


_KERNELS = {"dh": chunk_dh_kernel, "dqkg": chunk_dqkg_kernel, "dv": chunk_dv_kernel}


def _signature(kernel_name: KernelName, dtype: SignatureDtype, flags: dict) -> dict[str, str]:
    """The signature of one configuration of the ``"dh"``, ``"dqkg"`` or ``"dv"`` kernel:
    an absent gate or final-state gradient is a ``None`` constexpr, as the launcher's
    ``None`` argument specialises it."""
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


def _config(
    kernel_name: KernelName,
    chunk_size: int,
    dtype: SignatureDtype,
    variant: str,
    flags: dict,
    nones: dict,
) -> TritonConfig:
    """:func:`~tops.gpu.simple_gla.common.shipped_config` of this module's kernel: constexprs
    ``flags`` and the ``None`` pointers ``nones``."""
    signature = _signature(kernel_name, dtype, flags)
    kernel = _KERNELS[kernel_name]
    return shipped_config(kernel_name, kernel, signature, chunk_size, dtype, variant, flags | nones)


def shipped_configs() -> list[TritonConfig]:
    """The three kernels for each chunk size, input dtype and gate combination
    (:func:`~tops.gpu.simple_gla.common.gate_configurations`), the dh kernel with and
    without a final-state gradient."""
    configs = []
    for chunk_size, dtype, gate_name, common, nones in gate_configurations():
        for use_dht in (False, True):
            flags = {**common, "USE_FINAL_STATE_GRADIENT": use_dht}
            no_dht = {} if use_dht else {"dht_ptr": None}
            variant = f"{gate_name}_dht{int(use_dht)}"
            configs.append(_config("dh", chunk_size, dtype, variant, flags, nones | no_dht))
        gated = common["USE_G"] or common["USE_GAMMA"]
        flags = {**common, "LOOP_STAGES": BLOCKS.loop_stages(chunk_size, dtype == "fp32")}
        no_dg = {} if gated else {"dg_ptr": None}
        configs.append(_config("dqkg", chunk_size, dtype, gate_name, flags, nones | no_dg))
        configs.append(_config("dv", chunk_size, dtype, gate_name, flags, nones))
    return configs
