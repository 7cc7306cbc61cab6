"""Benchmark the chunked simple GLA: the Triton forward, and forward + backward with peak
memory, against flash-linear-attention's ``chunk_simple_gla`` (the ``fla-core`` package,
where installed) on the GPU; the HBM bytes the fused Pallas forward moves against the
minimum, and the Pallas backward's bytes per token and head.

Usage::

    python scripts/bench_simple_gla.py     # issue shapes on a GPU, small shapes on CPU

On a CUDA GPU the times are CUDA-event medians; anywhere else the Triton interpreter runs
on CPU tensors, which proves the script works but measures nothing about a GPU. Inputs:
bf16 q, k, v, per-token gates ``g = logsigmoid(N(0, 1))``, default scale, no states. The
forward + backward table adds a per-head decay ``g_gamma`` and differentiates
``loss = (o * do).sum()`` w.r.t. q, k, v, g and g_gamma (FLA takes one of ``g`` and
``g_gamma`` and returns no ``g_gamma`` gradient, so it gets ``g + g_gamma`` and autograd
sums the gradient of ``g_gamma``); peak MB is ``torch.cuda.max_memory_allocated`` during
one step above what the inputs and ``do`` already hold.
"""

from __future__ import annotations

import time

import torch
from benchlib import device_name, print_table, time_ms

from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
from tops.gpu.simple_gla import chunk_simple_gla
from tops.ops.simple_gla import common as tpu_common

GPU_SHAPES = ((1, 8192, 16, 128), (4, 4096, 32, 128), (8, 2048, 32, 256))
CPU_SHAPES = ((1, 256, 2, 64), (1, 200, 2, 100))
CPU_BACKWARD_SHAPES = ((1, 128, 2, 64),)


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


def _backward_inputs(batch, seq_len, heads, dim):
    """Leaf q, k, v, g, g_gamma that require gradients, and the cotangent ``do``."""
    q, k, v, g = _inputs(batch, seq_len, heads, dim)
    g_gamma = -torch.linspace(1.0, 4.0, heads, device=q.device).exp2().reciprocal()
    leaves = [t.requires_grad_() for t in (q, k, v, g, g_gamma)]
    return leaves, torch.randn_like(v)


def _step(fn, leaves, do):
    """One forward + backward of ``loss = (o * do).sum()`` through ``fn``."""

    def step():
        for leaf in leaves:
            leaf.grad = None
        o, _ = fn(*leaves)
        (o * do).sum().backward()

    return step


def _ours(q, k, v, g, g_gamma):
    return chunk_simple_gla(q, k, v, g=g, g_gamma=g_gamma)


def _fla(fla):
    def run(q, k, v, g, g_gamma):
        return fla(q, k, v, g=g + g_gamma)

    return run


def _peak_mb(step, leaves) -> str:
    """Peak MB allocated during one ``step`` above what was allocated before it (the
    inputs and ``do``); "-" off the GPU."""
    if backends.gpu_mode() != "gpu":
        return "-"
    for leaf in leaves:
        leaf.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    for leaf in leaves:
        leaf.grad = None
    return f"{peak / 2**20:.1f}"


def backward_rows(shapes, repeats: int):
    fla = fla_forward()
    for batch, seq_len, heads, dim in shapes:
        leaves, do = _backward_inputs(batch, seq_len, heads, dim)
        row = [batch, seq_len, heads, dim]
        for fn in (_ours, None if fla is None else _fla(fla)):
            if fn is None:
                row += ["-", "-"]
                continue
            step = _step(fn, leaves, do)
            row += [f"{time_ms(step, repeats):.3f}", _peak_mb(step, leaves)]
        yield tuple(row)


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
    kp, vp = tpu_common.padded(key_dim), tpu_common.padded(value_dim)
    value_tiles = vp // tpu_common.value_block(vp)
    kernel = tokens * (2 * kp * value_tiles + 2 * vp) * itemsize
    padding = 0
    if kp != key_dim:
        padding += 2 * tokens * (key_dim + kp) * itemsize
    if vp != value_dim:
        padding += tokens * (value_dim + vp) * itemsize
    gate_rows = -(-seq_len // chunk)
    gate_rows = -(-gate_rows // tpu_common.GATE_ROWS) * tpu_common.GATE_ROWS
    transposed = batch * heads * gate_rows * tpu_common.LANES * 4
    gates = tokens * 4 + 2 * transposed  # read g, write and read the transposed copy
    return kernel + padding + gates


def pallas_backward_bytes_per_token(key_dim, value_dim, itemsize, chunk) -> dict[str, float]:
    """HBM bytes per token and head of the fused Pallas backward kernel with ``g`` (the
    accounting of ``tops/ops/simple_gla/backward.py``, at the padded widths, wrapper
    copies left out), and of the two ways to get the chunk states it reads:

    * ``backward``: reads q, k (once per value tile), v, do, the saved float32 state
      (``Kp Vp 4 / C``) and the gates (one 128-lane row per chunk, per value tile);
      writes dq, dk (the input dtype with one value tile, float32 partials per tile
      otherwise), dv and the per-tile ``da`` rows;
    * ``saved``: what saving the states costs the forward (writing them);
    * ``recomputed``: what a states-only forward in the backward would move instead
      (read k, v, g; write the same states).
    """
    kp, vp = tpu_common.padded(key_dim), tpu_common.padded(value_dim)
    tiles = vp // tpu_common.value_block(vp)
    gate = 4 * tpu_common.LANES / chunk
    state = kp * vp * 4 / chunk
    key_grads = 2 * kp * (itemsize if tiles == 1 else 4 * tiles)
    reads = 2 * kp * itemsize * tiles + 2 * vp * itemsize + state + gate * tiles
    writes = key_grads + vp * itemsize + gate * tiles
    recomputed = (kp + vp) * itemsize + gate + state
    return {"backward": reads + writes, "saved": state, "recomputed": recomputed}


def tpu_backward_rows(dims):
    for dim in dims:
        for chunk in (64, 128):
            moved = pallas_backward_bytes_per_token(dim, dim, 2, chunk)
            yield (
                dim,
                chunk,
                f"{moved['backward']:.0f}",
                f"{moved['saved']:.0f}",
                f"{moved['recomputed']:.0f}",
            )


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
    print()
    backward_shapes = GPU_SHAPES if on_gpu else CPU_BACKWARD_SHAPES
    print_table(
        f"# simple GLA forward + backward, bf16, {device_name()}, {time.strftime('%Y-%m-%d')}",
        ("B", "T", "H", "D", "tops fwd+bwd ms", "tops peak MB", "fla fwd+bwd ms", "fla peak MB"),
        backward_rows(backward_shapes, repeats),
        width=15,
    )
    print()
    print_table(
        "# Pallas TPU fused backward kernel: HBM bytes per token and head (K = V = D at padded "
        "widths, bf16, g gates; states saved by the forward, or recomputed in the backward)",
        ("D", "chunk", "backward B", "saved B", "recomputed B"),
        tpu_backward_rows(sorted({shape[3] for shape in GPU_SHAPES + CPU_SHAPES})),
        width=12,
    )


if __name__ == "__main__":
    main()
