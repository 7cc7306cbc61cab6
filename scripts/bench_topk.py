"""Benchmark exact top-k: the Triton kernel against ``torch.topk`` on the GPU, and the
Pallas kernel's termination statistics (list depth reached, passes, bytes moved).

Usage::

    python scripts/bench_topk.py     # full grid on a GPU, small sizes on CPU

On a CUDA GPU the times are CUDA-event medians; anywhere else the Triton interpreter runs
on CPU tensors, which proves the script works but measures nothing about a GPU. The TPU
table runs the Pallas kernel in the current TPU mode (interpret mode off a TPU): the
depths and bytes it prints do not depend on the mode.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import torch
from benchlib import device_name, print_table, time_ms

from tops import backends, gpu
from tops.ops.selection import kernel as tpu_kernel


def gpu_rows(batches, vocabs, ks, repeats: int):
    device = backends.torch_device()
    for batch in batches:
        for vocab in vocabs:
            x = torch.randn(batch, vocab, device=device).to(torch.bfloat16)
            for k in ks:
                ours = time_ms(lambda x=x, k=k: gpu.topk(x, k), repeats)
                theirs = time_ms(lambda x=x, k=k: torch.topk(x, k, dim=-1), repeats)
                gbps = batch * vocab * 2 / ours / 1e6
                yield batch, vocab, k, f"{ours:.4f}", f"{gbps:.3g}", f"{theirs:.4f}"


def tpu_rows(batches, vocabs, ks, seed: int = 0):
    rng = np.random.default_rng(seed)
    for batch in batches:
        for vocab in vocabs:
            x = jnp.asarray(rng.standard_normal((batch, vocab)), jnp.bfloat16)
            for k in ks:
                stats = tpu_kernel.termination_stats(x, k)
                first, step, final = stats["schedule"]
                yield (
                    batch,
                    vocab,
                    k,
                    f"{first}+{step}n..{final}",
                    int(stats["depth"].max()),
                    f"{stats['passes'].mean():.2f}",
                    f"{stats['hbm_bytes'] / 1e6:.2f}",
                    f"{stats['vmem_bytes'] / 1e6:.2f}",
                )


def main() -> None:
    on_gpu = backends.gpu_mode() == "gpu"
    date = time.strftime("%Y-%m-%d")
    if on_gpu:
        batches, vocabs, ks, repeats = (1, 32, 256, 2048), (128256, 201088), (50, 64, 128), 50
    else:
        batches, vocabs, ks, repeats = (1, 4), (50257,), (50, 128), 2
    print_table(
        f"# top-k, bf16, {device_name()}, {date}",
        ("B", "V", "k", "tops ms", "tops GB/s", "torch ms"),
        gpu_rows(batches, vocabs, ks, repeats),
    )
    print()
    tpu_batches = (1, 32, 256) if on_gpu else (1, 16)
    tpu_vocabs = (128256, 201088) if on_gpu else (50257,)
    print_table(
        f"# Pallas TPU top-k on random bf16 rows: termination statistics "
        f"({backends.tpu_mode()}, {date})",
        ("B", "V", "k", "schedule", "max depth", "mean passes", "HBM MB", "VMEM MB"),
        tpu_rows(tpu_batches, tpu_vocabs, ks),
        width=11,
    )


if __name__ == "__main__":
    main()
