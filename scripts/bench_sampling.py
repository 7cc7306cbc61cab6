"""Benchmark top-k / top-p sampling: the Triton sampler (both paths) against FlashInfer's
``top_k_top_p_sampling_from_logits`` and a torch sort-based sampler, at top_k 64 and
top_p 0.95 on bf16 logits.

Usage::

    python scripts/bench_sampling.py     # full grid on a GPU, small sizes on CPU

On a CUDA GPU the times are CUDA-event medians; anywhere else the Triton interpreter runs
on CPU tensors, which proves the script works but measures nothing about a GPU.
FlashInfer is optional: its column prints ``-`` where it is not installed.
"""

from __future__ import annotations

import time

import torch
from benchlib import device_name, print_table, time_ms

from tops import backends, gpu

TOP_K = 64
TOP_P = 0.95


def torch_sort_sampler(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The usual eager sampler: top-k by sort, top-p on the sorted softmax, one draw."""
    values, indices = torch.sort(logits.float(), dim=-1, descending=True)
    values = values[:, :TOP_K]
    probs = torch.softmax(values, dim=-1)
    cumulative = torch.cumsum(probs, dim=-1)
    probs = torch.where(cumulative - probs < TOP_P, probs, torch.zeros_like(probs))
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices[:, :TOP_K].gather(1, choice).squeeze(1)


def flashinfer_sampler():
    """FlashInfer's fused sampler, or None where it is not installed."""
    try:
        from flashinfer.sampling import top_k_top_p_sampling_from_logits
    except ImportError:
        return None
    return lambda logits: top_k_top_p_sampling_from_logits(logits, TOP_K, TOP_P)


def rows(batches, vocabs, repeats: int):
    device = backends.torch_device()
    generator = torch.Generator(device=device).manual_seed(0)
    flashinfer = flashinfer_sampler()
    for batch in batches:
        seeds = torch.arange(batch, device=device)
        for vocab in vocabs:
            logits = (torch.randn(batch, vocab, device=device) * 3).to(torch.bfloat16)

            def ours(max_k, logits=logits, seeds=seeds):
                return gpu.sample(
                    logits,
                    temperature=1.0,
                    seed=seeds,
                    step=0,
                    top_k=TOP_K,
                    top_p=TOP_P,
                    max_k=max_k,
                )

            bounded = time_ms(lambda: ours(TOP_K), repeats)
            arbitrary = time_ms(lambda: ours(None), repeats)
            sort = time_ms(lambda logits=logits: torch_sort_sampler(logits, generator), repeats)
            theirs = (
                "-"
                if flashinfer is None
                else f"{time_ms(lambda logits=logits: flashinfer(logits), repeats):.4f}"
            )
            yield batch, vocab, f"{bounded:.4f}", f"{arbitrary:.4f}", theirs, f"{sort:.4f}"


def main() -> None:
    on_gpu = backends.gpu_mode() == "gpu"
    if on_gpu:
        batches, vocabs, repeats = (1, 16, 128, 512), (128256, 201088, 262144), 50
    else:
        batches, vocabs, repeats = (1, 4), (4096,), 1
    print_table(
        f"# sampling, bf16, top_k {TOP_K}, top_p {TOP_P}, {device_name()}, "
        f"{time.strftime('%Y-%m-%d')}",
        ("B", "V", "bounded ms", "arbitrary ms", "flashinfer ms", "torch sort ms"),
        rows(batches, vocabs, repeats),
        width=13,
    )


if __name__ == "__main__":
    main()
