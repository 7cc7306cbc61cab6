"""Benchmark temperature softmax: the Triton kernels against ``torch.softmax(logits / T)``,
and the bytes each Pallas TPU path must move.

Usage::

    python scripts/bench_temperature_softmax.py            # full grid on a GPU, small on CPU
    python scripts/bench_temperature_softmax.py --sweep    # single- vs multi-pass by V

On a CUDA GPU the times are CUDA-event medians; anywhere else the Triton interpreter runs
on CPU tensors, which proves the script works but measures nothing about a GPU. Every
table names the device it ran on.
"""

from __future__ import annotations

import argparse
import time

import torch
from benchlib import device_name, time_ms

from tops import backends, gpu
from tops.gpu.softmax import kernel as gpu_kernel
from tops.ops.softmax import kernel as tpu_kernel

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def min_bytes(batch: int, vocab: int, dtype: torch.dtype) -> int:
    """Bytes any implementation must move: read the logits once, write f32 once."""
    return batch * vocab * (torch.finfo(dtype).bits // 8 + 4)


def tpu_bytes(batch: int, vocab: int, itemsize: int) -> tuple[str, int]:
    """The Pallas path chosen for ``V`` and the HBM bytes it moves."""
    width = -(-vocab // tpu_kernel.LANES) * tpu_kernel.LANES
    if width <= tpu_kernel.BLOCKS.single_pass_max_v:
        return "single pass", batch * vocab * (itemsize + 4)
    stats = 5 * batch * tpu_kernel.LANES * 4 * 2  # written once, read once
    return "two pass", batch * vocab * (2 * itemsize + 4) + stats


def _grid_row(batch: int, vocab: int, dtype_name: str, repeats: int) -> tuple:
    device = backends.torch_device()
    dtype = DTYPES[dtype_name]
    logits = torch.randn(batch, vocab, device=device).to(dtype)
    t = torch.full((batch,), 0.7, device=device)
    out = torch.empty(batch, vocab, device=device)
    ours = time_ms(lambda: gpu.temperature_softmax(logits, t, out=out), repeats)
    theirs = time_ms(lambda: torch.softmax(logits.float() / t[:, None], dim=-1), repeats)
    nbytes = min_bytes(batch, vocab, dtype)
    return (
        batch,
        vocab,
        dtype_name,
        f"{ours:.4f}",
        f"{nbytes / ours / 1e6:.3g}",
        f"{theirs:.4f}",
        f"{nbytes / theirs / 1e6:.3g}",
    )


def run_grid(batches, vocabs, repeats: int) -> None:
    print(f"# temperature softmax, {device_name()}, {time.strftime('%Y-%m-%d')}")
    header = ("B", "V", "dtype", "tops ms", "tops GB/s", "torch ms", "torch GB/s")
    print(" | ".join(f"{h:>10}" for h in header))
    for dtype_name in DTYPES:
        for batch in batches:
            for vocab in vocabs:
                row = _grid_row(batch, vocab, dtype_name, repeats)
                print(" | ".join(f"{c:>10}" for c in row))
    print("\n# Pallas TPU kernel: HBM bytes per call (no TPU timing on this machine)")
    print(" | ".join(f"{h:>12}" for h in ("B", "V", "dtype", "path", "MB moved")))
    for dtype_name, itemsize in (("bf16", 2), ("f32", 4)):
        for batch in batches:
            for vocab in vocabs:
                path, nbytes = tpu_bytes(batch, vocab, itemsize)
                row = (batch, vocab, dtype_name, path, f"{nbytes / 1e6:.2f}")
                print(" | ".join(f"{c:>12}" for c in row))


def _sweep_row(vocab: int, batch: int, repeats: int) -> tuple:
    device = backends.torch_device()
    logits = torch.randn(batch, vocab, device=device).to(torch.bfloat16)
    t = torch.full((batch,), 0.7, device=device)
    out = torch.empty(batch, vocab, device=device)
    single = time_ms(lambda: gpu_kernel.launch_single_pass(logits, t, out), repeats)
    multi = time_ms(lambda: gpu_kernel.launch_multi_pass(logits, t, out), repeats)
    return vocab, f"{single:.4f}", f"{multi:.4f}"


def run_sweep(vocabs, batch: int, repeats: int) -> None:
    """Single- against multi-pass Triton kernel by V, to place BLOCKS.single_pass_max_v."""
    print(f"# single- vs multi-pass, B={batch}, bf16, {device_name()}")
    print(" | ".join(f"{h:>12}" for h in ("V", "single ms", "multi ms")))
    for vocab in vocabs:
        print(" | ".join(f"{c:>12}" for c in _sweep_row(vocab, batch, repeats)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="single- vs multi-pass by V")
    args = parser.parse_args()
    on_gpu = backends.gpu_mode() == "gpu"
    repeats = 50 if on_gpu else 2
    if args.sweep:
        vocabs = (4096, 8192, 16384, 32768, 65536) if on_gpu else (1024, 8192)
        run_sweep(vocabs, batch=32 if on_gpu else 2, repeats=repeats)
    elif on_gpu:
        run_grid((1, 32, 256), (32000, 128256, 201088), repeats)
    else:
        run_grid((1, 4), (1000, 50257), repeats)


if __name__ == "__main__":
    main()
