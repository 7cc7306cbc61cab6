"""Framework-neutral helpers for validating arrays of NumPy, JAX or torch."""

from __future__ import annotations

import numbers

import numpy as np


def dtype_name(array) -> str:
    """``"bfloat16"``, ``"float32"``, ... for a NumPy, JAX or torch array."""
    return str(array.dtype).removeprefix("torch.")


def require_rank(name: str, array, rank: int, layout: str) -> None:
    if len(array.shape) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {tuple(array.shape)}")


def require_dtype(name: str, array, allowed: tuple[str, ...]) -> None:
    if dtype_name(array) not in allowed:
        raise ValueError(f"{name} must have dtype in {allowed}, got {dtype_name(array)}")


def concrete_values(value) -> np.ndarray | None:
    """The values of a Python number or NumPy array; None for device arrays and tracers,
    whose values are only known at run time."""
    if isinstance(value, numbers.Number | np.ndarray | np.generic):
        return np.asarray(value)
    return None
