"""float64 reference of exact top-k (NumPy): a full lexicographic sort of each row.

Converting bf16, f16 and f32 to float64 is exact, so the order is the input's order.
"""

from __future__ import annotations

import numpy as np

from tops.spec.topk import FILL_INDEX, validate


def topk(x, k, *, max_k=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``x [B, V]``: ``(values [B, w] float64, indices [B, w] int32)``.

    ``x`` is a NumPy or JAX array (validated as for ``tops.ops.topk``). ``w = k`` for an
    int ``k``; for an integer array ``k [B]`` (or ``[]``), ``w = max_k`` and row ``b``
    keeps its first ``clip(k[b], 0, max_k)`` entries, the rest being ``-inf`` and
    ``FILL_INDEX``. Order: values descending, NaN below ``-inf``, ``+0.0`` above
    ``-0.0``, ties (NaNs included) by lower index (``tops.spec.topk``).
    """
    width, per_row = validate(x, k, max_k, api="tops.ops")
    values = np.asarray(x).astype(np.float64)
    vocab = values.shape[1]
    is_nan = np.isnan(values)
    descending = -np.where(is_nan, 0.0, values)
    negative_zero = (values == 0) & np.signbit(values)
    index = np.broadcast_to(np.arange(vocab), values.shape)
    # np.lexsort sorts by its last key first: NaN flag, -value, -0.0 after +0.0, index.
    order = np.lexsort((index, negative_zero, descending, is_nan), axis=-1)[:, :width]
    top_values = np.take_along_axis(values, order, axis=-1)
    top_indices = order.astype(np.int32)
    if per_row:
        counts = np.broadcast_to(np.asarray(k, np.int64), values.shape[:1])
        kept = np.clip(counts, 0, width)[:, None]
        past = np.arange(width)[None, :] >= kept
        top_values = np.where(past, -np.inf, top_values)
        top_indices = np.where(past, FILL_INDEX, top_indices).astype(np.int32)
    return top_values, top_indices
