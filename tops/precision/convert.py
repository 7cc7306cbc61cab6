"""NumPy <-> JAX / torch conversions that keep bf16 bits intact."""

from __future__ import annotations

import ml_dtypes
import numpy as np


def to_jax(array: np.ndarray):
    import jax.numpy as jnp

    return jnp.asarray(array)


def to_torch(array: np.ndarray, device: str):
    import torch

    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy()  # np.ascontiguousarray would turn a 0-d array into 1-d
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(array).to(device)


def from_jax(array) -> np.ndarray:
    return np.asarray(array)


def from_torch(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
