"""Argument contract of temperature softmax (shared by the TPU, GPU and CPU trees)."""

from __future__ import annotations

import numpy as np

from tops.spec.common import python_number, require_dtype, require_rank

LOGIT_DTYPES = ("bfloat16", "float16", "float32")
# Temperatures below this (zero and float32 subnormals) select the greedy one-hot row:
# TPUs flush subnormals to zero, so treating them as zero keeps every backend identical.
SMALLEST_NORMAL_F32 = float(np.finfo(np.float32).tiny)
# Temperatures at or above this count as +inf: the row is uniform over its entries above
# -inf. (Below it, logit gaps under 2**39 already give probabilities uniform to float32;
# above it, an error-free product with T would overflow.)
UNIFORM_TEMPERATURE = 2.0**64


def validate(logits, temperature) -> None:
    """Raise ValueError naming the argument unless the inputs satisfy the contract.

    ``logits`` must be ``[B, V]`` in bf16, f16 or f32 with ``V >= 1``; ``temperature`` a
    scalar or ``[B]``. A Python-number temperature must be ``>= 0`` and not NaN; an
    array temperature is a run-time value, and a negative or NaN entry yields a NaN row.
    """
    require_rank("logits", logits, 2, "[B, V]")
    require_dtype("logits", logits, LOGIT_DTYPES)
    batch, vocab = logits.shape
    if vocab < 1:
        raise ValueError(f"logits must have V >= 1 columns, got shape {tuple(logits.shape)}")
    t_shape = tuple(np.shape(temperature))
    if t_shape not in ((), (batch,)):
        raise ValueError(f"temperature must be a scalar or have shape ({batch},), got {t_shape}")
    value = python_number(temperature)
    if value is not None and not value >= 0:
        raise ValueError(f"temperature must be >= 0 and not NaN, got {value}")
