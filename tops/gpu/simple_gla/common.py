"""What the simple GLA forward (:mod:`.kernel`) and backward (:mod:`.backward`) kernels
share: the launch constants (:data:`BLOCKS`), the ``@triton.jit`` helpers that locate a
chunk, load its tiles and compute its decays, the chunk table the launchers build on the
device, and the pieces of the shipped configurations' signatures."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

import torch
import triton
import triton.language as tl

from tops.compile_only import TritonConfig
from tops.spec.simple_gla import CHUNK_SIZES

# Kernels that walk a sequence's chunks (the forward's states, the backward's dh) and
# kernels with one program per chunk (the forward's output, the backward's dqkg and dv).
KernelName = Literal["states", "dh", "out", "dqkg", "dv"]
SEQUENCE_KERNELS: tuple[KernelName, ...] = ("states", "dh")
# An input dtype as a Triton signature names it.
SignatureDtype = Literal["bf16", "fp32"]


@dataclasses.dataclass(frozen=True)
class SimpleGlaBlocks:
    """Launch constants of the forward and backward kernels; a tuple holds one value per
    chunk size of ``CHUNK_SIZES`` (64, 128)."""

    # Key and value blocks (BK, BV): every K and V is covered by masked 64-wide blocks.
    block_k: int = 64
    block_v: int = 64
    # Warps per program at BT = 64 and 128. A sequence kernel's [BK, BV] f32 state fits 4;
    # the per-chunk kernels hold [BT, BT] f32 matrices (two in dqkg), 16 K values each at
    # BT = 128.
    sequence_warps: tuple[int, int] = (4, 4)
    chunk_warps: tuple[int, int] = (4, 8)
    # Pipelining depth (LOOP_STAGES) of the per-chunk kernels' loops over key or value
    # blocks at BT = 64 and 128: Triton's default, 3 copies of the loop's tiles in shared
    # memory, except for f32 tiles at BT = 128, which would exceed the 232448 B an sm_90
    # block may use (output 245760 B, dqkg 262656 B, dv 245760 B; test_gpu_compile.py).
    bf16_loop_stages: tuple[int, int] = (3, 3)
    f32_loop_stages: tuple[int, int] = (3, 2)

    def num_warps(self, kernel: KernelName, chunk_size: int) -> int:
        """Warps per program of ``kernel`` at ``chunk_size``."""
        warps = self.sequence_warps if kernel in SEQUENCE_KERNELS else self.chunk_warps
        return warps[CHUNK_SIZES.index(chunk_size)]

    def loop_stages(self, chunk_size: int, tf32: bool) -> int:
        """``LOOP_STAGES`` of the per-chunk kernels at ``chunk_size``, for f32 inputs
        (``tf32``) or bf16 ones."""
        stages = self.f32_loop_stages if tf32 else self.bf16_loop_stages
        return stages[CHUNK_SIZES.index(chunk_size)]


BLOCKS = SimpleGlaBlocks()


def kernel_flags(chunk_size: int, use_g: bool, use_gamma: bool, tf32: bool) -> dict[str, int]:
    """The constexprs every forward and backward kernel takes: chunk and block sizes,
    which gates are used, and whether the inputs are f32 (dots in tf32)."""
    return {
        "BT": chunk_size,
        "BK": BLOCKS.block_k,
        "BV": BLOCKS.block_v,
        "USE_G": use_g,
        "USE_GAMMA": use_gamma,
        "TF32": tf32,
    }


@triton.jit
def head_gamma(gamma_ptr, i_h, USE_GAMMA: tl.constexpr):
    """``g_gamma[i_h]`` (f32), or 0 without ``g_gamma``."""
    gamma = 0.0
    if USE_GAMMA:
        gamma = tl.load(gamma_ptr + i_h)
    return gamma


@triton.jit
def chunk_gates(
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
    decay ``exp(G_i - G_j)`` is the caller's, kept only where ``R_i == R_j``: every
    exponent a mask discards is replaced before the exponential (ALiBi gates at
    ``BT = 128`` reach ``G_i - G_j > 88.7`` above the diagonal, where f32 ``exp``
    overflows).
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
def chunk_tokens(token0, row0, seq_len, rows):
    """``(row_valid, tokens)`` of the chunk whose first row is ``row0``: which of its rows
    ``rows`` lie in the sequence, and their int64 token indices."""
    return row0 + rows < seq_len, (token0 + row0 + rows).to(tl.int64)


@triton.jit
def sequence_block(
    cu_seqlens_ptr,
    chunk_offsets_ptr,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    """The setup of a program of a sequence kernel (grid ``(N * H, cdiv(K, BK),
    cdiv(V, BV))``, program ``(n * H + h, i_k, i_v)``).

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
def chunk_rows(cu_seqlens_ptr, chunk_seq_ptr, chunk_offsets_ptr, i_c, K, BT: tl.constexpr):
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
    row_valid, tokens = chunk_tokens(token0, row0, seq_len, rows)
    state_k = tl.where(seq >= 0, K, 0)
    return token0, seq_len, row0, rows, row_valid, tokens, state_k


@triton.jit
def load_rows(ptr, tokens, row_valid, i_h, H, D, offs, mask):
    """The ``[BT, BD]`` tile of a ``[B * T, H, D]`` tensor at rows ``tokens`` (int64),
    head ``i_h`` and columns ``offs``; rows outside the sequence (``row_valid``) and
    columns outside ``mask`` read 0."""
    return tl.load(
        ptr + (tokens[:, None] * H + i_h) * D + offs[None, :],
        mask=row_valid[:, None] & mask[None, :],
        other=0.0,
    )


@triton.jit
def load_rows_t(ptr, tokens, row_valid, i_h, H, D, offs, mask):
    """:func:`load_rows` transposed: the ``[BD, BT]`` tile."""
    return tl.load(
        ptr + (tokens[None, :] * H + i_h) * D + offs[:, None],
        mask=row_valid[None, :] & mask[:, None],
        other=0.0,
    )


@triton.jit
def store_rows(ptr, value, tokens, row_valid, i_h, H, D, offs, mask):
    """Store ``value`` (``[BT, BD]``, cast to the dtype of ``ptr``) where
    :func:`load_rows` reads."""
    tl.store(
        ptr + (tokens[:, None] * H + i_h) * D + offs[None, :],
        value.to(ptr.dtype.element_ty),
        mask=row_valid[:, None] & mask[None, :],
    )


@triton.jit
def load_state_block(state_base, offs_k, offs_v, V, state_k, mask_v):
    """The ``[BK, BV]`` block ``(offs_k, offs_v)`` of the ``[K, V]`` chunk state at
    ``state_base``; keys from ``state_k`` on (all of them for a spare chunk) and values
    outside ``mask_v`` read 0."""
    return tl.load(
        state_base + offs_k[:, None].to(tl.int64) * V + offs_v[None, :],
        mask=(offs_k < state_k)[:, None] & mask_v[None, :],
        other=0.0,
    )


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


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """How the kernels number the chunks of a batch: the forward's ``states`` rows and the
    backward's ``dh`` rows alike, without a host sync (torch ops on the device)."""

    cu_seqlens: torch.Tensor  # int32 [N + 1]: sequence n is tokens [cu[n], cu[n + 1])
    chunk_offsets: torch.Tensor  # int32 [N + 1]: the first global chunk of each sequence
    chunk_seq: torch.Tensor  # int32 [grid_chunks]: each chunk's sequence, -1 past the last
    grid_chunks: int  # the chunks the per-chunk grids cover

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.shape[0] - 1


def chunk_layout(
    batch: int, seq_len: int, cu_seqlens: torch.Tensor | None, chunk_size: int, device
) -> ChunkLayout:
    """The layout of ``batch`` sequences of ``seq_len`` tokens, or of the ``cu_seqlens``
    offsets (``batch == 1``) after :func:`repair_cu_seqlens`: whatever their entries, the
    kernels then read and write only inside their arrays."""
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
        return ChunkLayout(cu_seqlens, chunk_offsets, chunk_seq, grid_chunks)
    cu_seqlens = repair_cu_seqlens(cu_seqlens, batch * seq_len)
    num_seqs = cu_seqlens.shape[0] - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    counts = torch.div(lengths + chunk_size - 1, chunk_size, rounding_mode="floor")
    chunk_offsets = torch.zeros(num_seqs + 1, dtype=torch.int64, device=cu_seqlens.device)
    chunk_offsets[1:] = torch.cumsum(counts, 0)
    # cdiv(T, BT) + N bounds sum_n cdiv(L_n, BT) for repaired offsets, without reading them.
    grid_chunks = triton.cdiv(seq_len, chunk_size) + num_seqs
    chunks = torch.arange(grid_chunks, dtype=torch.int64, device=cu_seqlens.device)
    chunk_seq = torch.searchsorted(chunk_offsets, chunks, right=True) - 1
    chunk_seq = torch.where(chunk_seq < num_seqs, chunk_seq, -1)
    return ChunkLayout(
        cu_seqlens, chunk_offsets.to(torch.int32), chunk_seq.to(torch.int32), grid_chunks
    )


def signature_types(
    dtype: SignatureDtype, flags: dict[str, int]
) -> tuple[str, str, dict[str, str]]:
    """``(qkv, states, gates)`` of a kernel signature for inputs of ``dtype``: the pointer
    type of the inputs and outputs (``q, k, v, o`` and their gradients), of the chunk
    states (``states``, ``dh``: bf16 for bf16 inputs, else f32) and of the two gate
    pointers, an unused gate (``flags["USE_G"]``, ``flags["USE_GAMMA"]``) being a ``None``
    constexpr, as the launcher's ``None`` argument specialises it."""
    gates = {
        "g_ptr": "*fp32" if flags["USE_G"] else "constexpr",
        "gamma_ptr": "*fp32" if flags["USE_GAMMA"] else "constexpr",
    }
    return f"*{dtype}", ("*bf16" if dtype == "bf16" else "*fp32"), gates


def shipped_config(
    kernel_name: KernelName,
    kernel: triton.JITFunction,
    signature: dict[str, str],
    chunk_size: int,
    dtype: SignatureDtype,
    variant: str,
    constexprs: dict,
) -> TritonConfig:
    """The shipped configuration ``{kernel_name}_C{chunk_size}_{dtype}_{variant}`` of
    ``kernel``, with the warps it launches with at ``chunk_size``."""
    return TritonConfig(
        f"{kernel_name}_C{chunk_size}_{dtype}_{variant}",
        kernel,
        signature,
        constexprs,
        {"num_warps": BLOCKS.num_warps(kernel_name, chunk_size)},
    )


def gate_configurations() -> Iterator[tuple[int, SignatureDtype, str, dict, dict]]:
    """The shipped configurations shared by the forward and backward kernels, in the
    order the compile-only checks list them: each chunk size (64, 128), input dtype
    (bf16, f32 as tf32) and gate combination (neither, ``g_gamma``, ``g``, both).

    Yields ``(chunk_size, dtype, gate_name, common, none_pointers)``: ``gate_name`` like
    ``"g1gamma0"``, ``common`` the constexprs of :func:`kernel_flags` and
    ``none_pointers`` the ``None`` constexprs of the unused gate pointers (fresh dicts
    each time).
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
