"""Benchmark the chunked simple GLA forward: the Triton kernels against flash-linear-
attention's ``chunk_simple_gla`` (the ``fla-core`` package, where installed) on the GPU,
and the HBM bytes the fused Pallas kernel moves against the minimum.

Usage::

    python scripts/bench_simple_gla.py     # issue shapes on a GPU, small shapes on CPU

On a CUDA GPU the times are CUDA-event medians; anywhere else the Triton interpreter runs
on CPU tensors, which proves the script works but measures nothing about a GPU. Inputs:
bf16 q, k, v, per-token gates ``g = logsigmoid(N(0, 1))``, default scale, no states.
"""

from __future__ import annotations

import time

import torch
from benchlib import device_name, print_table, time_ms

from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
from tops.gpu.simple_gla import chunk_simple_gla
from tops.ops.simple_gla import kernel as tpu_kernel

GPU_SHAPES = ((1, 8192, 16, 128), (4, 4096, 32, 128), (8, 2048, 32, 256))
CPU_SHAPES = ((1, 256, 2, 64), (1, 200, 2, 100))


def fla_forward():
    """FLA's ``chunk_simple_gla``, or None where fla-core is not installed."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla as fla_chunk_simple_gla
    except ImportError:
        return None
    return fla_chunk_simple_gla


def _inputs(batch, seq_len, heads, dim):
    device = backends.torch_device()
    shape = (batch, seq_len, heads, dim)
    q, k, v = (torch.randn(shape, device=device).to(torch.bfloat16) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(batch, seq_len, heads, device=device))
    return q, k, v, g


def gpu_rows(shapes, repeats: int):
    fla = fla_forward()
    for batch, seq_len, heads, dim in shapes:
        q, k, v, g = _inputs(batch, seq_len, heads, dim)
        ours = time_ms(lambda q=q, k=k, v=v, g=g: chunk_simple_gla(q, k, v, g=g), repeats)
        theirs = "-"
        if fla is not None:
            theirs = f"{time_ms(lambda q=q, k=k, v=v, g=g: fla(q, k, v, g=g), repeats):.3f}"
        nbytes = minimum_bytes(batch, seq_len, heads, dim, dim, 2)
        yield batch, seq_len, heads, dim, f"{ours:.3f}", f"{nbytes / ours / 1e6:.3g}", theirs


def minimum_bytes(batch, seq_len, heads, key_dim, value_dim, itemsize) -> int:
    """Read q, k, v and the f32 gates once, write o once."""
    tokens = batch * seq_len * heads
    return tokens * ((2 * key_dim + 2 * value_dim) * itemsize + 4)


def pallas_bytes(batch, seq_len, heads, key_dim, value_dim, itemsize, chunk) -> int:
    """HBM bytes of the fused Pallas forward and its wrapper (no states): q and k are
    read once per value tile, v read and o written once, all at the padded widths; the
    wrapper pads q, k, v when K or V is not a multiple of 128 (one read and one write
    each) and transposes the gates into 128-lane rows of one chunk each."""
    tokens = batch * seq_len * heads
    kp, vp = tpu_kernel.padded(key_dim), tpu_kernel.padded(value_dim)
    value_tiles = vp // tpu_kernel.value_block(vp)
    kernel = tokens * (2 * kp * value_tiles + 2 * vp) * itemsize
    padding = 0
    if kp != key_dim:
        padding += 2 * tokens * (key_dim + kp) * itemsize
    if vp != value_dim:
        padding += tokens * (value_dim + vp) * itemsize
    gate_rows = -(-seq_len // chunk)
    gate_rows = -(-gate_rows // tpu_kernel.GATE_ROWS) * tpu_kernel.GATE_ROWS
    transposed = batch * heads * gate_rows * tpu_kernel.LANES * 4
    gates = tokens * 4 + 2 * transposed  # read g, write and read the transposed copy
    return kernel + padding + gates


def tpu_rows(shapes):
    for batch, seq_len, heads, dim in shapes:
        minimum = minimum_bytes(batch, seq_len, heads, dim, dim, 2)
        for chunk in (64, 128):
            moved = pallas_bytes(batch, seq_len, heads, dim, dim, 2, chunk)
            yield (
                batch,
                seq_len,
                heads,
                dim,
                chunk,
                f"{minimum / 1e6:.1f}",
                f"{moved / 1e6:.1f}",
                f"{moved / minimum:.2f}",
            )


def main() -> None:
    on_gpu = backends.gpu_mode() == "gpu"
    shapes, repeats = (GPU_SHAPES, 20) if on_gpu else (CPU_SHAPES, 1)
    fla = "FLA chunk_simple_gla" if fla_forward() is not None else "fla-core not installed"
    print_table(
        f"# simple GLA forward, bf16, g gates, {device_name()}, {fla}, {time.strftime('%Y-%m-%d')}",
        ("B", "T", "H", "D", "tops ms", "tops GB/s", "FLA ms"),
        gpu_rows(shapes, repeats),
    )
    print()
    print_table(
        "# Pallas TPU fused forward: HBM MB moved against the minimum (read q, k, v, g once, "
        "write o once), bf16",
        ("B", "T", "H", "D", "chunk", "minimum MB", "moved MB", "ratio"),
        tpu_rows(GPU_SHAPES + CPU_SHAPES),
    )


if __name__ == "__main__":
    main()
