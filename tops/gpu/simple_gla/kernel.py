"""Triton kernels of the chunked simple GLA forward (flash-linear-attention's ``chunk_fwd_h``
and ``chunk_fwd_o``), and their launcher :func:`forward`. Chunks of ``BT`` tokens, ``NC``
over all sequences (sequence-major, in a grid of ``NC_grid >= NC`` whose spare programs
mask everything); every tile is masked to its sequence and to ``K``, ``V``.

* :func:`chunk_states_kernel`, grid ``(N * H, cdiv(K, BK), cdiv(V, BV))``: the ``[BK, BV]``
  block of one sequence's state, carried in f32 through its chunks in order. Per chunk it
  loads ``k [BK, BT]`` (transposed), ``v [BT, BV]``, ``g [BT]`` and stores ``states [BK, BV]``
  (the state entering the chunk); once, ``h0 [BK, BV]`` in and ``ht [BK, BV]`` out.
* :func:`chunk_output_kernel`, grid ``(NC_grid, cdiv(V, BV), H)``: the ``[BT, BV]`` output
  block of one chunk. Per key block it loads ``q [BT, BK]``, ``k [BK, BT]`` (transposed),
  ``states [BK, BV]``; once, ``g [BT]``, ``v [BT, BV]`` in and ``o [BT, BV]`` out.

Dots (bf16 or tf32 operands, f32 accumulation) and exponentials: :mod:`tops.gpu.arith`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.gpu.arith import dot, exp
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


@triton.jit
def chunk_states_kernel(
    k_ptr,
    v_ptr,
    g_ptr,
    gamma_ptr,
    h0_ptr,
    states_ptr,
    ht_ptr,
    cu_seqlens_ptr,
    chunk_offsets_ptr,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_GAMMA: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    TF32: tl.constexpr,
):
    """``S_out = exp(G_last) S + sum_j k_j^T (exp(G_last - G_j) v_j)`` chunk by chunk, with
    ``G`` the cumulative log decay from the chunk start (:func:`chunk_gates`): stores the
    state entering every chunk and the final state (always: one block per sequence and
    head is cheaper to write than a flag that doubles the compiled variants). Sequence
    ``n`` is tokens ``[cu_seqlens[n], cu_seqlens[n + 1])``, its first chunk global chunk
    ``chunk_offsets[n]``."""
    i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs, rows = sequence_block(
        cu_seqlens_ptr, chunk_offsets_ptr, H, K, V, BT, BK, BV
    )

    h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        h = tl.load(h0_ptr + i_nh.to(tl.int64) * K * V + kv_offs, mask=mask_kv, other=0.0)
    gamma = head_gamma(gamma_ptr, i_h, USE_GAMMA)

    for i_t in range(0, tl.cdiv(seq_len, BT)):
        state_offs = ((chunk0 + i_t).to(tl.int64) * H + i_h) * K * V + kv_offs
        tl.store(states_ptr + state_offs, h.to(states_ptr.dtype.element_ty), mask=mask_kv)

        row_valid, tokens = chunk_tokens(token0, i_t * BT, seq_len, rows)
        k_t = load_rows_t(k_ptr, tokens, row_valid, i_h, H, K, offs_k, offs_k < K)
        v_c = load_rows(v_ptr, tokens, row_valid, i_h, H, V, offs_v, offs_v < V)
        if USE_G or USE_GAMMA:
            _, _, _, _, to_end, whole = chunk_gates(
                g_ptr, gamma, token0, i_t * BT, seq_len, H, i_h, BT, USE_G, USE_GAMMA
            )
            # The decayed values feed the dot, so they are rounded to its operand dtype.
            v_c = (v_c * exp(to_end)[:, None]).to(v_ptr.dtype.element_ty)
            # A reset multiplies by exp(-inf) = 0 (a NaN or infinite state stays NaN).
            h = h * exp(whole)
        h += dot(k_t, v_c, TF32)

    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + kv_offs, h, mask=mask_kv)


@triton.jit
def chunk_output_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    gamma_ptr,
    states_ptr,
    o_ptr,
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
    """``o_i = scale (exp(G_i) q_i S + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j)`` for
    the rows of global chunk ``c`` (``S`` its entering state), rounded once to the dtype
    of ``v``. ``chunk_seq[c]`` is the chunk's sequence, ``-1`` for the grid's spare
    chunks, whose programs mask every load and store. The ``[BT, BT]`` f32 matrix
    ``q k^T`` and the ``[BT, BV]`` f32 output stay in registers."""
    i_c = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    token0, seq_len, row0, rows, row_valid, tokens, state_k = chunk_rows(
        cu_seqlens_ptr, chunk_seq_ptr, chunk_offsets_ptr, i_c, K, BT
    )
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_v = offs_v < V
    state_base = states_ptr + (i_c.to(tl.int64) * H + i_h) * K * V

    o = tl.zeros([BT, BV], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=LOOP_STAGES):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        q_c = load_rows(q_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        k_t = load_rows_t(k_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        s = load_state_block(state_base, offs_k, offs_v, V, state_k, mask_v)
        o += dot(q_c, s, TF32)
        A += dot(q_c, k_t, TF32)

    causal = (rows[:, None] >= rows[None, :]) & row_valid[:, None] & row_valid[None, :]
    if USE_G or USE_GAMMA:
        gamma = head_gamma(gamma_ptr, i_h, USE_GAMMA)
        G, R, _, from_start, _, _ = chunk_gates(
            g_ptr, gamma, token0, row0, seq_len, H, i_h, BT, USE_G, USE_GAMMA
        )
        # No decay crosses a reset: pairs (i, j) with a reset in j + 1 .. i are dropped.
        causal = causal & (R[:, None] == R[None, :])
        o = o * exp(from_start)[:, None]
        A = A * exp(tl.where(causal, G[:, None] - G[None, :], 0.0))
    A = tl.where(causal, A, 0.0)

    v_c = load_rows(v_ptr, tokens, row_valid, i_h, H, V, offs_v, mask_v)
    o = o * scale + dot(A.to(v_ptr.dtype.element_ty), v_c, TF32) * scale
    store_rows(o_ptr, o, tokens, row_valid, i_h, H, V, offs_v, mask_v)


# Two kernels rather than one program per (sequence, head, V block) walking the chunks: at
# B = 1 that fused kernel has only H * cdiv(V, BV) programs (32 for H = 16, V = 128) for
# 132 SMs, each doing all the chunk work serially. Here the serial pass does one
# [BK, BT] x [BT, BV] dot per chunk over H * cdiv(K, BK) * cdiv(V, BV) programs, and the
# output pass, which holds the q k^T work, runs every chunk in parallel. The price is
# bytes (2.5x the fused kernel's at K = V = 128, BT = 64; 2x at BT = 128), and the stored
# states are what the backward needs.
def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    g_gamma: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launch both kernels on validated, contiguous inputs with ``B >= 1``.

    Args: as :func:`tops.gpu.simple_gla.chunk_simple_gla`, ``scale`` resolved to a float.

    Returns:
      ``(o, final_state, states, chunk_offsets)``: ``o [B, T, H, V]`` (dtype of ``v``);
      ``final_state`` f32 ``[N, H, K, V]`` or None; ``states [NC, H, K, V]``, the state
      entering each global chunk (bf16 for bf16 inputs, f32 for f32; for the grid's spare
      chunks past the last real one the contents are unspecified); ``chunk_offsets
      [N + 1]`` int32, sequence ``n`` owning chunks ``[chunk_offsets[n],
      chunk_offsets[n + 1])``. ``states`` and ``chunk_offsets`` are what a backward pass
      needs to avoid recomputing the state recurrence.
    """
    batch, seq_len, heads, key_dim = q.shape
    value_dim = v.shape[3]
    device = q.device
    layout = chunk_layout(batch, seq_len, cu_seqlens, chunk_size, device)

    states_dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
    states = torch.empty(
        (layout.grid_chunks, heads, key_dim, value_dim), dtype=states_dtype, device=device
    )
    final_state = torch.empty(
        (layout.num_seqs, heads, key_dim, value_dim), dtype=torch.float32, device=device
    )
    o = torch.empty_like(v)
    flags = kernel_flags(chunk_size, g is not None, g_gamma is not None, q.dtype == torch.float32)
    num_k = triton.cdiv(key_dim, BLOCKS.block_k)
    num_v = triton.cdiv(value_dim, BLOCKS.block_v)
    chunk_states_kernel[(layout.num_seqs * heads, num_k, num_v)](
        k,
        v,
        g,
        g_gamma,
        initial_state,
        states,
        final_state,
        layout.cu_seqlens,
        layout.chunk_offsets,
        heads,
        key_dim,
        value_dim,
        USE_INITIAL_STATE=initial_state is not None,
        num_warps=BLOCKS.num_warps("states", chunk_size),
        **flags,
    )
    chunk_output_kernel[(layout.grid_chunks, num_v, heads)](
        q,
        k,
        v,
        g,
        g_gamma,
        states,
        o,
        layout.cu_seqlens,
        layout.chunk_seq,
        layout.chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        num_warps=BLOCKS.num_warps("out", chunk_size),
        LOOP_STAGES=BLOCKS.loop_stages(chunk_size, flags["TF32"]),
        **flags,
    )
    return o, (final_state if output_final_state else None), states, layout.chunk_offsets


_KERNELS = {"states": chunk_states_kernel, "out": chunk_output_kernel}


def _signature(kernel_name: KernelName, dtype: SignatureDtype, flags: dict) -> dict[str, str]:
    """The signature of one configuration of the ``"states"`` or ``"out"`` kernel: an
    absent gate or initial state is a ``None`` constexpr, as the launcher's ``None``
    argument specialises it."""
    qkv, states, gates = signature_types(dtype, flags)
    if kernel_name == "states":
        pointers = {
            "k_ptr": qkv,
            "v_ptr": qkv,
            **gates,
            "h0_ptr": "*fp32" if flags["USE_INITIAL_STATE"] else "constexpr",
            "states_ptr": states,
            "ht_ptr": "*fp32",
            "cu_seqlens_ptr": "*i32",
            "chunk_offsets_ptr": "*i32",
        }
        scalars = {"H": "i32", "K": "i32", "V": "i32"}
    else:
        pointers = {
            "q_ptr": qkv,
            "k_ptr": qkv,
            "v_ptr": qkv,
            **gates,
            "states_ptr": states,
            "o_ptr": qkv,
            "cu_seqlens_ptr": "*i32",
            "chunk_seq_ptr": "*i32",
            "chunk_offsets_ptr": "*i32",
        }
        scalars = {"scale": "fp32", "H": "i32", "K": "i32", "V": "i32"}
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
    """Both kernels for each chunk size, input dtype and gate combination
    (:func:`~tops.gpu.simple_gla.common.gate_configurations`), the state kernel with and
    without an initial state."""
    configs = []
    for chunk_size, dtype, gate_name, common, nones in gate_configurations():
        for use_h0 in (False, True):
            flags = {**common, "USE_INITIAL_STATE": use_h0}
            no_h0 = {} if use_h0 else {"h0_ptr": None}
            variant = f"{gate_name}_h0{int(use_h0)}"
            configs.append(_config("states", chunk_size, dtype, variant, flags, nones | no_h0))
        flags = {**common, "LOOP_STAGES": BLOCKS.loop_stages(chunk_size, dtype == "fp32")}
        configs.append(_config("out", chunk_size, dtype, gate_name, flags, nones))
    return configs
