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


def python_number(value) -> float | None:
    """``value`` as a float when it is a Python (or NumPy scalar) number, else None.

    Numbers are fixed when a kernel is built, so they are validated then; arrays of any
    framework are run-time values, whose bad entries get the op's documented result.
    """
    if isinstance(value, numbers.Real):
        return float(value)
    return None


ARRAY_APIS = {
    "tops.ops": ("JAX or NumPy array", ("jax", "jaxlib", "numpy")),
    "tops.gpu": ("torch tensor", ("torch",)),
}


def require_array(name: str, value, api: str) -> None:
    """TypeError naming ``name`` unless ``value`` is an array of ``api``'s framework:
    ``tops.ops`` (and ``tops.cpu``) take JAX and NumPy arrays, ``tops.gpu`` torch tensors.
    Lists and tuples are refused as JAX and torch refuse them."""
    kind, modules = ARRAY_APIS[api]
    if type(value).__module__.split(".")[0] in modules and hasattr(value, "shape"):
        return
    raise TypeError(
        f"{name} must be a {kind} for {api} (tops.ops takes JAX or NumPy arrays, tops.gpu "
        f"torch tensors), got {type(value).__module__}.{type(value).__name__}"
    )


def require_bool(name: str, value) -> bool:
    """``value`` as a bool when it is a Python or NumPy bool, else TypeError naming it."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
