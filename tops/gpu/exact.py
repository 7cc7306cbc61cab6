"""Exact conversions shared by the Triton kernels, written so that the Triton interpreter
computes them as a GPU does."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def upcast(raw):
    """bf16, f16 or f32 values as float32, exactly. bf16 goes through its bits (``<< 16``):
    the Triton interpreter's bf16 -> f32 conversion mangles subnormals (its
    ``_convert_float`` clamps the renormalised exponent at 0 instead of shifting the
    significand back), which would reorder subnormal keys and change their values; on a
    GPU both forms are exact."""
    if raw.dtype == tl.bfloat16:
        return (raw.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return raw.to(tl.float32)
