"""The public wrappers' argument validation, the same on both kernels (the GPU-only
variants are in test_gpu_api.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tops import backends, ops
from tops.precision.convert import to_torch

BAD_ARGUMENTS = [
    ((5,), "float32", 1.0, "logits must have rank 2"),
    ((2, 5), "int32", 1.0, "logits must have dtype"),
    ((2, 5), "float64", 1.0, "logits must have dtype"),
    ((2, 0), "float32", 1.0, "logits must have V >= 1"),
    ((2, 5), "float32", np.ones(3, np.float32), "temperature must be a scalar"),
    ((2, 5), "float32", -0.5, "temperature must be >= 0"),
    ((2, 5), "float32", float("nan"), "temperature must be >= 0"),
]


def _tpu(shape, dtype, temperature):
    t = temperature if isinstance(temperature, float) else jnp.asarray(temperature)
    return ops.temperature_softmax(np.zeros(shape, dtype), t)  # NumPy keeps float64


def _gpu(shape, dtype, temperature):
    import torch

    from tops import gpu

    device = backends.torch_device()
    t = temperature if isinstance(temperature, float) else to_torch(temperature, device)
    return gpu.temperature_softmax(torch.zeros(shape, dtype=getattr(torch, dtype)).to(device), t)


@pytest.mark.parametrize(("shape", "dtype", "temperature", "message"), BAD_ARGUMENTS)
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_bad_arguments_raise_value_errors_naming_them(backend, shape, dtype, temperature, message):
    with pytest.raises(ValueError, match=message):
        (_tpu if backend == "tpu" else _gpu)(shape, dtype, temperature)
