"""Triton kernels for the chunked simple GLA forward: a state pass, then an output pass.

Per sequence and head, ``h_t = exp(g_t + gamma) h_{t-1} + k_t^T v_t`` and
``o_t = scale q_t h_t``. The sequence is cut into chunks of ``BT`` tokens (64 or 128; each
sequence's last chunk is partial). Within a chunk, with ``G_i`` the cumulative log decay
from the chunk start to row ``i`` (``cumsum(g)_i + gamma (i + 1)``, f32) and ``S`` the
state entering the chunk::

    o_i   = scale (exp(G_i) q_i S + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j)
    S_out = exp(G_last) S + sum_j k_j^T (exp(G_last - G_j) v_j)

1. :func:`_chunk_states_kernel` walks the chunks of one sequence in order and stores the
   state entering every chunk (``states [NC, H, K, V]``, ``NC`` chunks over all sequences,
   sequence-major) and the final state. The state is carried in f32 registers.
2. :func:`_chunk_output_kernel` computes each chunk's output independently from
   ``states``: ``q S`` (inter-chunk) plus the causal, decayed ``q k^T`` matrix times ``v``
   (intra-chunk).

Why two kernels rather than one program per (sequence, head, V block) that walks the chunks
with the state in registers: at ``B = 1`` that fused kernel has only ``H * cdiv(V, BV)``
programs (32 for ``H = 16, V = 128``) on 132 SMs, each doing all the chunk work serially.
Here the serial pass does only one ``[BK, BT] x [BT, BV]`` dot per chunk, over ``H *
cdiv(K, BK) * cdiv(V, BV)`` programs (key blocks of the state are independent), and the
output pass, which holds the heavy ``q k^T`` work, runs every chunk in parallel. The price
is bytes: per chunk and head the states are written and read (``2 K V`` values) and ``k, v``
read twice (``BT (K + V)`` more), against ``BT (2 K + 2 V)`` for the fused kernel's one
pass over ``q, k, v, o``: 2.5x its bytes at ``K = V = 128, BT = 64``, 2x at ``BT = 128``.
The stored states are also exactly what a
backward pass needs (:func:`forward` returns them). Variable-length batches need no host
sync: the kernels read ``cu_seqlens`` and a chunk table built by torch ops on the device,
the output grid being the bound ``cdiv(T, BT) + N`` (spare programs mask everything).
Both launchers first pass ``cu_seqlens`` through :func:`repair_cu_seqlens` (on the device),
so malformed offsets cannot make a kernel read or write outside its arrays; valid ones are
unchanged.

Resets: a ``-inf`` gate (``g_t``, or ``g_gamma[h]`` for every token of head ``h``) zeroes
the decay across it. ``G`` sums only the finite gates and every decay that crosses a reset
gets the exponent ``-inf`` instead (:func:`_chunk_gates`), so ``exp`` gives an exact 0 and
no ``-inf - (-inf)`` (NaN) is ever formed.

Arithmetic (mirrors flash-linear-attention's ``chunk_fwd_h`` / ``chunk_fwd_o``, which is
what GPU users run):

* ``tl.dot`` operands are in the inputs' precision class, accumulation is f32
  (``out_dtype=tl.float32``). bf16 inputs: bf16 operands; the f32 intermediates that feed a
  dot are rounded to bf16 first: the decayed values ``exp(G_last - G_j) v_j``, the stored
  chunk states (``states`` is bf16) and the decayed attention matrix. f32 inputs: f32
  operands, ``input_precision="tf32"``; ``states`` is f32.
* tf32 on NVIDIA: Triton hands the f32 registers to ``mma``/``wgmma`` unchanged and the
  tensor core reads only the top 19 bits (sign, exponent, 10 mantissa bits): truncation
  toward zero, not ``cvt.rna`` rounding (triton-lang/triton#4574: Triton's tf32 ``tl.dot``
  only matched cuBLAS once ``cvt.rna.tf32.f32`` was applied to the operands by hand; #9295
  added rounding as an opt-in for TMA descriptors).
* Dots and exponentials go through :mod:`tops.gpu.arith` (``tl.dot``/``tl.exp`` on a GPU),
  which under the interpreter forms the tensor cores' exact bf16/tf32 products, sums them
  in a stated float32 order and evaluates ``exp`` the same way on every host.
* Exponentials: natural base throughout. Every exponent that is a gate
  difference is masked before the exponential, ``exp(where(mask, G_i - G_j, 0))``, or
  (past the end, across a reset) set to ``-inf``, so no masked-out (upper-triangle,
  past-the-end or reset-crossing) difference can overflow to ``inf`` and meet a zero
  (``inf * 0 = NaN``). ALiBi gates at chunk 128 reach ``G_i - G_j > 88.7`` above the
  diagonal, where ``exp`` overflows in f32.
* The state stays f32 across chunks; ``final_state`` is the f32 state, ``o`` is rounded
  once to the dtype of ``v``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tops.gpu.arith import dot, exp
from tops.spec.simple_gla import CHUNK_SIZES

# Blocks of the key and value dims: every K and V is covered by masked 64-wide blocks.
BLOCK_K = 64
BLOCK_V = 64


def num_warps_for(kernel_name: str, chunk_size: int) -> int:
    """Warps per program of the ``"states"`` or ``"out"`` kernel: the output kernel holds
    a ``[BT, BT]`` f32 matrix (16 K values at ``BT = 128``), so it gets 8 warps there; the
    state kernel's ``[64, 64]`` state fits 4 warps at either chunk size."""
    if kernel_name == "out" and chunk_size == 128:
        return 8
    return 4


def loop_stages(chunk_size: int, tf32: bool) -> int:
    """Software-pipelining depth (``LOOP_STAGES``) of the loops over key or value blocks
    in the per-chunk kernels (the forward's output kernel, the backward's ``dqkg`` and
    ``dv``). Triton's default, 3, keeps three copies of the loop's tiles in shared
    memory; with f32 tiles at ``BT = 128`` that needs more than the 227 KiB (232448 B) an
    sm_90 block may use (measured from the sm_90 compile: output 245760 B, ``dqkg``
    262656 B, ``dv`` 245760 B), so those configurations pipeline 2 deep; the others keep
    3. ``tests/ops/test_gpu_compile.py`` checks every configuration's shared memory."""
    if tf32 and chunk_size == 128:
        return 2
    return 3


def kernel_flags(chunk_size: int, use_g: bool, use_gamma: bool, tf32: bool) -> dict:
    """The constexprs every forward and backward kernel takes: chunk and block sizes,
    which gates are used, and whether the inputs are f32 (dots in tf32)."""
    return {
        "BT": chunk_size,
        "BK": BLOCK_K,
        "BV": BLOCK_V,
        "USE_G": use_g,
        "USE_GAMMA": use_gamma,
        "TF32": tf32,
    }


@triton.jit
def _chunk_gates(
    g_ptr,
    gamma,
    token0,
    row0,
    seq_len,
    H,
    i_h,
    BT: tl.constexpr,
    USE_G: tl.constexpr,
    USE_GAMMA: tl.constexpr,
):
    """The decays of the chunk whose first row is ``row0`` of a sequence of ``seq_len``
    tokens starting at token ``token0``, as exponents for :func:`tops.gpu.arith.exp`.

    A ``-inf`` gate (``g_t``, or ``gamma``: every row) is a reset. ``G [BT]`` (f32) is the
    cumulative log decay over the *finite* gates (a reset counts 0) and ``R [BT]`` (int32)
    the number of resets up to each row; a decay that crosses a reset is exactly 0, and
    no ``-inf - (-inf)`` is ever formed. Returns ``(G, R, reset, from_start, to_end,
    whole)``:

    * ``reset [BT]``: the rows whose gate is ``-inf``;
    * ``from_start [BT]``: ``G_i`` where no reset lies in rows ``0 .. i``, else ``-inf``
      (chunk start to row ``i``);
    * ``to_end [BT]``: ``G_last - G_j`` where no reset lies in rows ``j + 1 .. last``, else
      ``-inf`` (row ``j`` to the chunk's last valid row);
    * ``whole []``: ``G_last`` without a reset in the chunk, else ``-inf``.

    Rows past the end read ``g = 0`` and get ``-inf`` in ``from_start`` and ``to_end`` (an
    unmasked ``G_last - G_j`` there can overflow, and ``inf * 0`` is NaN). The pairwise
    decay ``exp(G_i - G_j)`` is the caller's, kept only where ``R_i == R_j``.
    """
    rows = tl.arange(0, BT)
    valid = row0 + rows < seq_len
    G = tl.zeros([BT], dtype=tl.float32)
    reset = rows < 0
    if USE_G:
        g_offs = (token0 + row0 + rows).to(tl.int64) * H + i_h
        g = tl.load(g_ptr + g_offs, mask=valid, other=0.0)
        reset = valid & (g == float("-inf"))
        G = tl.cumsum(tl.where(reset, 0.0, g), axis=0)
    if USE_GAMMA:
        # Rows past the end too count 0 for a -inf gamma: G stays finite on every row.
        gamma_reset = tl.full([BT], gamma, tl.float32) == float("-inf")
        G = G + tl.where(gamma_reset, 0.0, gamma) * (rows + 1).to(tl.float32)
        reset = reset | (valid & gamma_reset)
    R = tl.cumsum(reset.to(tl.int32), axis=0)
    last = tl.minimum(BT, seq_len - row0) - 1
    G_last = tl.sum(tl.where(rows == last, G, 0.0), axis=0)
    R_last = tl.sum(tl.where(rows == last, R, 0), axis=0)
    from_start = tl.where(valid & (R == 0), G, float("-inf"))
    to_end = tl.where(valid & (R_last == R), G_last - G, float("-inf"))
    whole = tl.where(R_last == 0, G_last, float("-inf"))
    return G, R, reset, from_start, to_end, whole


@triton.jit
def _sequence_block(
    cu_seqlens_ptr,
    chunk_offsets_ptr,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """The setup of a program of a kernel that walks one sequence's chunks (grid
    ``(N * H, cdiv(K, BK), cdiv(V, BV))``, program ``(n * H + h, i_k, i_v)``).

    Returns ``(i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs,
    rows)``: the sequence's first token, length and first global chunk; the key and
    value offsets of the program's ``[BK, BV]`` block, its mask and its offsets within
    a ``[K, V]`` state; and ``arange(BT)``.
    """
    i_nh = tl.program_id(0)
    i_k = tl.program_id(1)
    i_v = tl.program_id(2)
    i_n = i_nh // H
    i_h = i_nh % H
    token0 = tl.load(cu_seqlens_ptr + i_n)
    seq_len = tl.load(cu_seqlens_ptr + i_n + 1) - token0
    chunk0 = tl.load(chunk_offsets_ptr + i_n)

    offs_k = i_k * BK + tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_kv = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    kv_offs = offs_k[:, None].to(tl.int64) * V + offs_v[None, :]
    rows = tl.arange(0, BT)
    return i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs, rows


@triton.jit
def _chunk_rows(cu_seqlens_ptr, chunk_seq_ptr, chunk_offsets_ptr, i_c, K, BT: tl.constexpr):
    """Where global chunk ``i_c`` lies, from the chunk table (``chunk_seq[c]`` the
    sequence of chunk ``c``, ``-1`` for the grid's spare chunks; ``chunk_offsets[n]`` the
    first global chunk of sequence ``n``).

    Returns ``(token0, seq_len, row0, rows, row_valid, tokens, state_k)``: the sequence's
    first token and length (0 for a spare chunk, so every row is masked), the chunk's
    first row within the sequence, ``arange(BT)``, which rows lie in the sequence, their
    int64 token indices, and the key bound of the chunk's state reads (0 for a spare
    chunk, whose state rows are never written, so it reads none).
    """
    seq = tl.load(chunk_seq_ptr + i_c)
    i_n = tl.maximum(seq, 0)
    token0 = tl.load(cu_seqlens_ptr + i_n)
    seq_len = tl.where(seq >= 0, tl.load(cu_seqlens_ptr + i_n + 1) - token0, 0)
    row0 = (i_c - tl.load(chunk_offsets_ptr + i_n)) * BT

    rows = tl.arange(0, BT)
    row_valid = row0 + rows < seq_len
    tokens = (token0 + row0 + rows).to(tl.int64)
    state_k = tl.where(seq >= 0, K, 0)
    return token0, seq_len, row0, rows, row_valid, tokens, state_k


@triton.jit
def _load_rows(ptr, tokens, row_valid, i_h, H, D, offs, mask):
    """The ``[BT, BD]`` tile of a ``[B * T, H, D]`` tensor at rows ``tokens`` (int64),
    head ``i_h`` and columns ``offs``; rows outside the sequence (``row_valid``) and
    columns outside ``mask`` read 0."""
    return tl.load(
        ptr + (tokens[:, None] * H + i_h) * D + offs[None, :],
        mask=row_valid[:, None] & mask[None, :],
        other=0.0,
    )


@triton.jit
def _load_rows_t(ptr, tokens, row_valid, i_h, H, D, offs, mask):
    """:func:`_load_rows` transposed: the ``[BD, BT]`` tile."""
    return tl.load(
        ptr + (tokens[None, :] * H + i_h) * D + offs[:, None],
        mask=row_valid[None, :] & mask[:, None],
        other=0.0,
    )


@triton.jit
def _store_rows(ptr, value, tokens, row_valid, i_h, H, D, offs, mask):
    """Store ``value`` (``[BT, BD]``, cast to the dtype of ``ptr``) where
    :func:`_load_rows` reads."""
    tl.store(
        ptr + (tokens[:, None] * H + i_h) * D + offs[None, :],
        value.to(ptr.dtype.element_ty),
        mask=row_valid[:, None] & mask[None, :],
    )


@triton.jit
def _load_state_block(state_base, offs_k, offs_v, V, state_k, mask_v):
    """The ``[BK, BV]`` block ``(offs_k, offs_v)`` of the ``[K, V]`` chunk state at
    ``state_base``; keys from ``state_k`` on (all of them for a spare chunk) and values
    outside ``mask_v`` read 0."""
    return tl.load(
        state_base + offs_k[:, None].to(tl.int64) * V + offs_v[None, :],
        mask=(offs_k < state_k)[:, None] & mask_v[None, :],
        other=0.0,
    )


@triton.jit
def _chunk_states_kernel(
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
    """Chunk-start states and the final state. Grid ``(N * H, cdiv(K, BK), cdiv(V, BV))``:
    program ``(n * H + h, i_k, i_v)`` owns the ``[BK, BV]`` block ``(i_k, i_v)`` of the
    state of sequence ``n``, head ``h`` (key blocks evolve independently) and walks that
    sequence's ``cdiv(L_n, BT)`` chunks in order.

    Sequence ``n`` is tokens ``[cu_seqlens[n], cu_seqlens[n + 1])`` of the flattened
    ``[B * T]`` token axis (the launcher passes ``arange(B + 1) * T`` without varlen); its
    first chunk is global chunk ``chunk_offsets[n]``.

    Blocks touched per program, per chunk:
      ``k_ptr``: ``[BK, BT]`` (``k`` transposed; rows past the sequence and columns past
      ``K`` masked to 0). ``v_ptr``: ``[BT, BV]`` (masked likewise). ``g_ptr``: ``[BT]`` f32
      (when ``USE_G``). ``states_ptr``: ``[BK, BV]`` written (the state entering the chunk,
      in the dtype of ``states``).
    Once per program: ``gamma_ptr`` ``[]`` f32 (``USE_GAMMA``); ``h0_ptr`` ``[BK, BV]`` f32
    read (``USE_INITIAL_STATE``); ``ht_ptr`` ``[BK, BV]`` f32 written, always: one block
    per sequence and head, at most ``2 / NC`` of the chunk-state bytes, which is cheaper
    to write than to double the compiled variants with a flag; ``cu_seqlens_ptr`` (two)
    and ``chunk_offsets_ptr`` (one) int32 scalars.
    """
    i_nh, i_h, token0, seq_len, chunk0, offs_k, offs_v, mask_kv, kv_offs, rows = _sequence_block(
        cu_seqlens_ptr, chunk_offsets_ptr, H, K, V, BT, BK, BV
    )

    h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        h = tl.load(h0_ptr + i_nh.to(tl.int64) * K * V + kv_offs, mask=mask_kv, other=0.0)
    gamma = 0.0
    if USE_GAMMA:
        gamma = tl.load(gamma_ptr + i_h)

    for i_t in range(0, tl.cdiv(seq_len, BT)):
        state_offs = ((chunk0 + i_t).to(tl.int64) * H + i_h) * K * V + kv_offs
        tl.store(states_ptr + state_offs, h.to(states_ptr.dtype.element_ty), mask=mask_kv)

        row_valid = i_t * BT + rows < seq_len
        tokens = (token0 + i_t * BT + rows).to(tl.int64)
        k_t = _load_rows_t(k_ptr, tokens, row_valid, i_h, H, K, offs_k, offs_k < K)
        v_c = _load_rows(v_ptr, tokens, row_valid, i_h, H, V, offs_v, offs_v < V)
        if USE_G or USE_GAMMA:
            _, _, _, _, to_end, whole = _chunk_gates(
                g_ptr, gamma, token0, i_t * BT, seq_len, H, i_h, BT, USE_G, USE_GAMMA
            )
            v_c = (v_c * exp(to_end)[:, None]).to(v_ptr.dtype.element_ty)
            # A reset multiplies by exp(-inf) = 0 (a NaN or infinite state stays NaN).
            h = h * exp(whole)
        h += dot(k_t, v_c, TF32)

    tl.store(ht_ptr + i_nh.to(tl.int64) * K * V + kv_offs, h, mask=mask_kv)


@triton.jit
def _chunk_output_kernel(
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
    """Output of one chunk. Grid ``(NC_grid, cdiv(V, BV), H)``: program ``(c, i_v, h)``
    writes the ``[BT, BV]`` block ``i_v`` of global chunk ``c``, head ``h``.

    ``chunk_seq[c]`` is the sequence of chunk ``c`` (``-1`` for the grid's spare chunks
    past the last one, whose programs mask every load and store), ``chunk_offsets[n]`` the
    first global chunk of sequence ``n``; tokens as in :func:`_chunk_states_kernel`.

    Blocks touched per program:
      per key block (``cdiv(K, BK)`` of them): ``q_ptr`` ``[BT, BK]``, ``k_ptr``
      ``[BK, BT]`` (transposed), ``states_ptr`` ``[BK, BV]`` (the state entering chunk
      ``c``), all masked to the sequence and to ``K``, ``V``;
      once: ``g_ptr`` ``[BT]`` f32 (``USE_G``), ``gamma_ptr`` ``[]`` f32 (``USE_GAMMA``),
      ``v_ptr`` ``[BT, BV]`` read and ``o_ptr`` ``[BT, BV]`` written (dtype of ``v``),
      three int32 scalars of the chunk table.
    The ``[BT, BT]`` f32 matrix ``q k^T`` and the ``[BT, BV]`` f32 output stay in registers.
    """
    i_c = tl.program_id(0)
    i_v = tl.program_id(1)
    i_h = tl.program_id(2)
    token0, seq_len, row0, rows, row_valid, tokens, state_k = _chunk_rows(
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
        q_c = _load_rows(q_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        k_t = _load_rows_t(k_ptr, tokens, row_valid, i_h, H, K, offs_k, mask_k)
        s = _load_state_block(state_base, offs_k, offs_v, V, state_k, mask_v)
        o += dot(q_c, s, TF32)
        A += dot(q_c, k_t, TF32)

    causal = (rows[:, None] >= rows[None, :]) & row_valid[:, None] & row_valid[None, :]
    if USE_G or USE_GAMMA:
        gamma = 0.0
        if USE_GAMMA:
            gamma = tl.load(gamma_ptr + i_h)
        G, R, _, from_start, _, _ = _chunk_gates(
            g_ptr, gamma, token0, row0, seq_len, H, i_h, BT, USE_G, USE_GAMMA
        )
        # No decay crosses a reset: pairs (i, j) with a reset in j + 1 .. i are dropped.
        causal = causal & (R[:, None] == R[None, :])
        o = o * exp(from_start)[:, None]
        A = A * exp(tl.where(causal, G[:, None] - G[None, :], 0.0))
    A = tl.where(causal, A, 0.0)

    v_c = _load_rows(v_ptr, tokens, row_valid, i_h, H, V, offs_v, mask_v)
    o = o * scale + dot(A.to(v_ptr.dtype.element_ty), v_c, TF32) * scale
    _store_rows(o_ptr, o, tokens, row_valid, i_h, H, V, offs_v, mask_v)


def _chunk_table(cu_seqlens: torch.Tensor, seq_len: int, chunk_size: int):
    """Chunk bookkeeping on the device, without a host sync.

    Returns ``(chunk_offsets, chunk_seq, num_chunks_bound)``: ``chunk_offsets [N + 1]``
    int32, the first global chunk of each sequence (exclusive cumsum of
    ``cdiv(L_n, BT)``); ``chunk_seq [bound]`` int32, the sequence of each global chunk and
    ``-1`` past the last; ``bound = cdiv(T, BT) + N`` chunks, an upper bound on
    ``sum_n cdiv(L_n, BT)`` known without reading ``cu_seqlens`` on the host (for
    offsets that start at 0, never decrease and end at ``T``: repaired ones).
    """
    num_seqs = cu_seqlens.shape[0] - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    counts = torch.div(lengths + chunk_size - 1, chunk_size, rounding_mode="floor")
    chunk_offsets = torch.zeros(num_seqs + 1, dtype=torch.int64, device=cu_seqlens.device)
    chunk_offsets[1:] = torch.cumsum(counts, 0)
    bound = triton.cdiv(seq_len, chunk_size) + num_seqs
    chunks = torch.arange(bound, dtype=torch.int64, device=cu_seqlens.device)
    chunk_seq = torch.searchsorted(chunk_offsets, chunks, right=True) - 1
    chunk_seq = torch.where(chunk_seq < num_seqs, chunk_seq, -1)
    return chunk_offsets.to(torch.int32), chunk_seq.to(torch.int32), bound


def repair_cu_seqlens(cu_seqlens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The offsets the kernels run on, on ``cu_seqlens``'s device without a host sync: the
    torch twin of :func:`tops.spec.simple_gla.repaired_cu_seqlens`.

    Args:
      cu_seqlens: int32 or int64 ``[N + 1]``, ``N >= 1``, any values.
      seq_len: ``T``, the number of tokens.

    Returns:
      int32 ``[N + 1]``: in int64, the running maximum clipped to ``[0, T]``, with the
      first entry 0 and the last ``T`` (int64 entries past the int32 range clip rather
      than wrap). Valid offsets come back unchanged, as int32; the input is not modified.
    """
    bounds = torch.cummax(cu_seqlens.to(torch.int64), dim=0).values.clamp(0, seq_len)
    bounds[0] = 0
    bounds[-1] = seq_len
    return bounds.to(torch.int32)


def _chunk_layout(batch: int, seq_len: int, cu_seqlens, chunk_size: int, device):
    """``(cu_seqlens, chunk_offsets, chunk_seq, grid_chunks)``: the int32 sequence bounds
    (``arange(B + 1) * T`` without varlen; a given ``cu_seqlens`` through
    :func:`repair_cu_seqlens`), the chunk table of :func:`_chunk_table` and the number of
    global chunks the per-chunk grids cover. The forward numbers its chunks (the rows of
    ``states``) this way and the backward reads them the same way."""
    if cu_seqlens is None:
        cu_seqlens = torch.arange(batch + 1, dtype=torch.int32, device=device) * seq_len
        num_chunks = triton.cdiv(seq_len, chunk_size)
        chunk_offsets = torch.arange(batch + 1, dtype=torch.int32, device=device) * num_chunks
        grid_chunks = batch * num_chunks
        chunk_seq = torch.div(
            torch.arange(grid_chunks, dtype=torch.int32, device=device),
            num_chunks,
            rounding_mode="floor",
        )
        return cu_seqlens, chunk_offsets, chunk_seq, grid_chunks
    # Whatever the entries, the kernels then read and write only inside their arrays.
    cu_seqlens = repair_cu_seqlens(cu_seqlens, batch * seq_len)  # B == 1 with cu_seqlens
    chunk_offsets, chunk_seq, grid_chunks = _chunk_table(cu_seqlens, seq_len, chunk_size)
    return cu_seqlens, chunk_offsets, chunk_seq, grid_chunks


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
):
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
    cu_seqlens, chunk_offsets, chunk_seq, grid_chunks = _chunk_layout(
        batch, seq_len, cu_seqlens, chunk_size, device
    )
    num_seqs = cu_seqlens.shape[0] - 1

    states_dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
    states = torch.empty(
        (grid_chunks, heads, key_dim, value_dim), dtype=states_dtype, device=device
    )
    final_state = torch.empty(
        (num_seqs, heads, key_dim, value_dim), dtype=torch.float32, device=device
    )
    o = torch.empty_like(v)
    flags = kernel_flags(chunk_size, g is not None, g_gamma is not None, q.dtype == torch.float32)
    _chunk_states_kernel[
        (num_seqs * heads, triton.cdiv(key_dim, BLOCK_K), triton.cdiv(value_dim, BLOCK_V))
    ](
        k,
        v,
        g,
        g_gamma,
        initial_state,
        states,
        final_state,
        cu_seqlens,
        chunk_offsets,
        heads,
        key_dim,
        value_dim,
        USE_INITIAL_STATE=initial_state is not None,
        num_warps=num_warps_for("states", chunk_size),
        **flags,
    )
    _chunk_output_kernel[(grid_chunks, triton.cdiv(value_dim, BLOCK_V), heads)](
        q,
        k,
        v,
        g,
        g_gamma,
        states,
        o,
        cu_seqlens,
        chunk_seq,
        chunk_offsets,
        scale,
        heads,
        key_dim,
        value_dim,
        num_warps=num_warps_for("out", chunk_size),
        LOOP_STAGES=loop_stages(chunk_size, flags["TF32"]),
        **flags,
    )
    return o, (final_state if output_final_state else None), states, chunk_offsets


def signature_types(dtype: str, flags: dict) -> tuple[str, str, dict]:
    """``(qkv, states, gates)`` of an ``ASTSource`` signature, for inputs of ``dtype``
    (``"bf16"`` or ``"fp32"``): the pointer type of the inputs and outputs (``q, k, v,
    o`` and their gradients), of the chunk states (``states``, ``dh``: bf16 for bf16
    inputs, else f32) and of the two gate pointers, an unused gate (``flags["USE_G"]``,
    ``flags["USE_GAMMA"]``) being a ``None`` constexpr, as the launcher's ``None``
    argument specialises it."""
    gates = {
        "g_ptr": "*fp32" if flags["USE_G"] else "constexpr",
        "gamma_ptr": "*fp32" if flags["USE_GAMMA"] else "constexpr",
    }
    return f"*{dtype}", ("*bf16" if dtype == "bf16" else "*fp32"), gates


def _signature(kernel_name: str, dtype: str, flags: dict) -> dict:
    """The ``ASTSource`` signature of one configuration of the ``"states"`` or ``"out"``
    kernel: an absent gate or initial state is a ``None`` constexpr, as the launcher's
    ``None`` argument specialises it."""
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


def gate_configurations():
    """The shipped configurations shared by the forward and backward kernels, in the
    order the compile-only checks list them: each chunk size (64, 128), input dtype
    (bf16, f32 as tf32) and gate combination (neither, ``g_gamma``, ``g``, both).

    Yields ``(chunk_size, dtype, gate_name, common, none_pointers)``: ``dtype`` as a
    signature names it (``"bf16"``, ``"fp32"``), ``gate_name`` like ``"g1gamma0"``,
    ``common`` the constexprs of :func:`kernel_flags` and ``none_pointers`` the ``None``
    constexprs of the unused gate pointers (fresh dicts each time).
    """
    for chunk_size in CHUNK_SIZES:
        for dtype in ("bf16", "fp32"):
            for use_g in (False, True):
                for use_gamma in (False, True):
                    common = kernel_flags(chunk_size, use_g, use_gamma, dtype == "fp32")
                    none_pointers = {
                        name: None
                        for name, used in (("g_ptr", use_g), ("gamma_ptr", use_gamma))
                        if not used
                    }
                    gate_name = f"g{int(use_g)}gamma{int(use_gamma)}"
                    yield chunk_size, dtype, gate_name, common, none_pointers


def compile_config(name: str, kernel, signature: dict, constexprs: dict, num_warps: int) -> dict:
    """One entry of a ``compile_configs()`` list."""
    return {
        "name": name,
        "kernel": kernel,
        "signature": signature,
        "constexprs": constexprs,
        "num_warps": num_warps,
    }


def compile_configs() -> list[dict]:
    """Every shipped kernel configuration, for the compile-only checks.

    Both kernels for each chunk size (64, 128), input dtype (bf16, f32 as tf32) and gate
    combination (``g``, ``g_gamma``, both, neither), the state kernel also with and
    without an initial state; blocks are always ``BLOCK_K x BLOCK_V``. Entries:
    ``{"name", "kernel", "signature", "constexprs", "num_warps"}``.
    """
    configs = []
    for chunk_size, dtype, gate_name, common, none_pointers in gate_configurations():
        for use_h0 in (False, True):
            flags = {**common, "USE_INITIAL_STATE": use_h0}
            nones = dict(none_pointers, **({} if use_h0 else {"h0_ptr": None}))
            configs.append(
                compile_config(
                    f"states_C{chunk_size}_{dtype}_{gate_name}_h0{int(use_h0)}",
                    _chunk_states_kernel,
                    _signature("states", dtype, flags),
                    {**flags, **nones},
                    num_warps_for("states", chunk_size),
                )
            )
        out_flags = {**common, "LOOP_STAGES": loop_stages(chunk_size, dtype == "fp32")}
        configs.append(
            compile_config(
                f"out_C{chunk_size}_{dtype}_{gate_name}",
                _chunk_output_kernel,
                _signature("out", dtype, out_flags),
                {**out_flags, **none_pointers},
                num_warps_for("out", chunk_size),
            )
        )
    return configs
