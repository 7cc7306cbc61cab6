"""Error metrics of one output against its float64 reference (ARCHITECTURE.md, the contract).

==============  =========================================================================
``rel_l2``      the ε: ``||out - ref||_2 / ||ref||_2`` over the elements where ``ref`` is
                finite; an absolute norm when ``||ref||_2 == 0``; ``inf`` when ``out`` is
                non-finite at one of those elements
``max_abs``     ``max |out - ref|``
``max_ulp``     ``max |out - ref|`` in units of the output dtype's ulp at ``|ref|``
                (subnormal spacing below the smallest normal)
``nonfinite``   elements that are NaN/Inf in ``out`` where ``ref`` is finite
``special``     elements where ``ref`` is NaN/Inf and ``out`` is not the same special
                value (NaN for NaN, the same infinity): results on special rows must be
                identical on every backend
``floor``       ``rel_l2`` of ``ref`` rounded to the output dtype: the best any
                implementation can do
==============  =========================================================================

Values below the smallest normal number of a float32 or bfloat16 output compare as
zero, in ``out`` and in ``ref`` alike: TPUs and the fast GPU instructions flush float32
subnormals, so no kernel can be held to them (float16 keeps its subnormals).

Discrete outputs (indices, tokens, and values selected from the input such as top-k
values) use the output dtype ``EXACT``: an element matches when it is identical to the
reference (the same float64 bit pattern, so ``-0.0 != +0.0``; NaN matches NaN), and
``rel_l2`` is the fraction of elements that do not match; the floor is 0, so the rules
demand equality (tolerance 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

# (explicit significand bits, exponent of the smallest normal) per output dtype
_FORMATS = {
    "float32": (23, -126),
    "float16": (10, -14),
    "bfloat16": (7, -126),
}
_FLUSHED = ("float32", "bfloat16")
EXACT = "exact"


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a dtype name (``bfloat16`` through ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@dataclass(frozen=True)
class Comparison:
    """The metrics of one output, plus the worst element for failure messages."""

    rel_l2: float
    max_abs: float
    max_ulp: float
    nonfinite: int
    special: int
    floor: float
    worst_index: tuple[int, ...]
    worst_out: float
    worst_ref: float

    def as_dict(self) -> dict:
        return {
            "rel_l2": self.rel_l2,
            "max_abs": self.max_abs,
            "max_ulp": self.max_ulp,
            "nonfinite": self.nonfinite,
            "special": self.special,
            "floor": self.floor,
            "worst_index": list(self.worst_index),
            "worst_out": self.worst_out,
            "worst_ref": self.worst_ref,
        }


def ulp(magnitude: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` at ``|magnitude|`` (the subnormal spacing near zero)."""
    mantissa_bits, min_exponent = _FORMATS[dtype]
    magnitude = np.abs(magnitude)
    _, exponent = np.frexp(magnitude)  # |x| = f * 2**exponent, f in [0.5, 1)
    exponent = np.where(magnitude > 0, exponent - 1, min_exponent)
    return np.ldexp(1.0, np.maximum(exponent, min_exponent) - mantissa_bits)


def _flush_subnormals(values: np.ndarray, dtype: str) -> np.ndarray:
    smallest_normal = np.ldexp(1.0, _FORMATS[dtype][1])
    return np.where(np.abs(values) < smallest_normal, 0.0, values)


def norm(values: np.ndarray) -> float:
    """The Euclidean norm of float64 ``values``, the same bits on every host: squares are
    correctly rounded IEEE products and :func:`math.fsum` rounds their sum once, where
    ``np.linalg.norm`` sums in an order set by the host's BLAS kernels and threads."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return math.sqrt(math.fsum((flat * flat).tolist()))


def _rel_l2(diff: np.ndarray, ref: np.ndarray) -> float:
    ref_norm = norm(ref)
    return norm(diff) / (ref_norm if ref_norm > 0 else 1.0)


def _compare_exact(out: np.ndarray, ref: np.ndarray) -> Comparison:
    identical = (out.view(np.int64) == ref.view(np.int64)) | (np.isnan(out) & np.isnan(ref))
    mismatched = ~identical
    count = int(np.count_nonzero(mismatched))
    if count:
        worst = np.unravel_index(int(np.argmax(mismatched)), out.shape)
        worst_index, worst_out, worst_ref = tuple(int(i) for i in worst), out[worst], ref[worst]
        with np.errstate(invalid="ignore"):
            max_abs = float(np.nanmax(np.where(mismatched, np.abs(out - ref), 0.0)))
    else:
        worst_index, worst_out, worst_ref, max_abs = (), 0.0, 0.0, 0.0
    return Comparison(
        rel_l2=count / out.size if out.size else 0.0,
        max_abs=max_abs,
        max_ulp=0.0,
        nonfinite=0,
        special=0,
        floor=0.0,
        worst_index=worst_index,
        worst_out=float(worst_out),
        worst_ref=float(worst_ref),
    )


def compare(out, ref, dtype: str) -> Comparison:
    """Compare ``out`` (any real dtype) with the float64 ``ref`` for output dtype ``dtype``
    (a float dtype name, or ``EXACT`` for discrete outputs)."""
    out = np.asarray(out).astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {out.shape}, the reference {ref.shape}")
    if dtype == EXACT:
        return _compare_exact(out, ref)
    if dtype not in _FORMATS:
        raise ValueError(f"dtype must be one of {(*_FORMATS, EXACT)}, got {dtype!r}")
    if dtype in _FLUSHED:
        out, ref = _flush_subnormals(out, dtype), _flush_subnormals(ref, dtype)
    finite_ref = np.isfinite(ref)
    same_special = (np.isnan(out) & np.isnan(ref)) | (out == ref)
    special = int(np.count_nonzero(~finite_ref & ~same_special))
    nonfinite = int(np.count_nonzero(finite_ref & ~np.isfinite(out)))
    ref_f = np.where(finite_ref, ref, 0.0)
    diff = np.where(finite_ref, np.where(np.isfinite(out), out - ref_f, np.inf), 0.0)
    abs_diff = np.abs(diff)
    rounded = ref_f.astype(numpy_dtype(dtype)).astype(np.float64)
    if abs_diff.size:
        flat = int(np.argmax(~finite_ref & ~same_special)) if special else int(np.argmax(abs_diff))
        worst = np.unravel_index(flat, abs_diff.shape)
        worst_index = tuple(int(i) for i in worst)
        max_abs = float(abs_diff[worst])
        max_ulp = float(np.max(abs_diff / ulp(ref_f, dtype)))
        worst_out, worst_ref = float(out[worst]), float(ref[worst])
    else:
        worst_index, max_abs, max_ulp, worst_out, worst_ref = (), 0.0, 0.0, 0.0, 0.0
    return Comparison(
        rel_l2=_rel_l2(diff, ref_f),
        max_abs=max_abs,
        max_ulp=max_ulp,
        nonfinite=nonfinite,
        special=special,
        floor=_rel_l2(rounded - ref_f, ref_f),
        worst_index=worst_index,
        worst_out=worst_out,
        worst_ref=worst_ref,
    )
