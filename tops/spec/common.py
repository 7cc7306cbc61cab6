"""Framework-neutral helpers for validating arrays of NumPy, JAX or torch."""

from __future__ import annotations

import numbers


def dtype_name(array) -> str:
    """``"bfloat16"``, ``"float32"``, ... for a NumPy, JAX or torch array."""
    return str(array.dtype).removeprefix("torch.")


def require_rank(name: str, array, rank: int, layout: str) -> None:
    if len(array.shape) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {tuple(array.shape)}")


def require_dtype(name: str, array, allowed: tuple[str, ...]) -> None:
    if dtype_name(array) not in allowed:
        raise ValueError(f"{name} must have dtype in {allowed}, got {dtype_name(array)}")


def python_number(value) -> float | None:
    """``value`` as a float when it is a Python (or NumPy scalar) number, else None.

    Numbers are fixed when a kernel is built, so they are validated then; arrays of any
    framework are run-time values, whose bad entries get the op's documented result.
    """
    if isinstance(value, numbers.Real):
        return float(value)
    return None
