"""What every benchmark script shares: the device line and the timer."""

from __future__ import annotations

import platform
import statistics
import time

import torch

from tops import backends


def device_name() -> str:
    """The device the Triton side runs on, for every table's title."""
    if backends.gpu_mode() == "gpu":
        return f"{torch.cuda.get_device_name()} (Triton, torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} (Triton interpreter)"


def time_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on a GPU)."""
    fn()  # compile / warm up
    samples = []
    for _ in range(repeats):
        if backends.gpu_mode() == "gpu":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def print_table(title: str, header: tuple, rows, width: int = 10) -> None:
    """A titled table with right-aligned columns."""
    print(title)
    print(" | ".join(f"{h:>{width}}" for h in header))
    for row in rows:
        print(" | ".join(f"{c:>{width}}" for c in row))
