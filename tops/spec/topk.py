"""Argument contract of exact top-k (shared by the TPU, GPU and CPU trees).

The order, on every backend: values descending in IEEE total order, except that NaN
(of either sign) ranks below every other value, ``-inf`` included; so ``+0.0`` ranks
above ``-0.0`` (as in ``jax.lax.top_k``) and ``-inf`` is an ordinary value below every
finite one. Among equal values (and among NaNs) the lower index comes first. A row's
top-k values and indices are therefore fully determined, and each returned value is the
input element at its index, bit for bit. On NaN-free rows the result equals
``jax.lax.top_k``'s (which ranks NaN first). When a row has fewer than ``k`` non-NaN
values, its NaNs fill the last places in index order.

Per-row ``k`` (an integer array ``[B]`` with a static ``max_k``): row ``b`` keeps its
first ``clip(k[b], 0, max_k)`` entries; the entries past them hold ``FILL_INDEX`` and a
value of ``-inf``.
"""

from __future__ import annotations

import numbers

from tops.spec.common import require_dtype, require_rank

INPUT_DTYPES = ("bfloat16", "float16", "float32")
K_DTYPES = ("int32", "int64")
FILL_INDEX = -1
# Both kernels take their fast path for k (or max_k) up to this.
FAST_PATH_MAX_K = 256


def _static_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__} {value!r}")
    return int(value)


def validate(x, k, max_k=None) -> tuple[int, bool]:
    """Raise ValueError naming the argument unless the inputs satisfy the contract.

    ``x`` is ``[B, V]`` in bf16, f16 or f32 with ``V >= 1``. Either ``k`` is a Python int
    with ``1 <= k <= V`` and ``max_k`` is None, or ``k`` is an integer array ``[B]`` and
    ``max_k`` a Python int with ``1 <= max_k <= V``.

    Returns ``(width, per_row)``: the number of output columns and whether ``k`` is
    per row.
    """
    require_rank("x", x, 2, "[B, V]")
    require_dtype("x", x, INPUT_DTYPES)
    batch, vocab = x.shape
    if vocab < 1:
        raise ValueError(f"x must have V >= 1 columns, got shape {tuple(x.shape)}")
    if isinstance(k, numbers.Integral) and not isinstance(k, bool):
        if max_k is not None:
            raise ValueError("max_k must be None when k is an int (it is the output width)")
        if not 1 <= k <= vocab:
            raise ValueError(f"k must satisfy 1 <= k <= V = {vocab}, got {k}")
        return int(k), False
    if not hasattr(k, "shape") or not hasattr(k, "dtype"):
        raise ValueError(f"k must be a Python int or an integer array [B], got {type(k).__name__}")
    require_rank("k", k, 1, "[B]")
    require_dtype("k", k, K_DTYPES)
    if tuple(k.shape) != (batch,):
        raise ValueError(f"k must have shape ({batch},), got {tuple(k.shape)}")
    if max_k is None:
        raise ValueError("max_k must be given (a Python int) when k is an array")
    width = _static_int("max_k", max_k)
    if not 1 <= width <= vocab:
        raise ValueError(f"max_k must satisfy 1 <= max_k <= V = {vocab}, got {width}")
    return width, True
