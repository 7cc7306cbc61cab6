"""Compile-only checks for every shipped kernel configuration: the Pallas kernels lower
to Mosaic for TPU, the Triton kernels compile to a cubin for sm_90."""

from __future__ import annotations

import functools

import pytest

from tops.compile_only import compile_gpu_kernels_in_subprocess, lower_for_tpu
from tops.gpu.temperature_softmax import kernel as gpu_kernel
from tops.ops.temperature_softmax import kernel as tpu_kernel

MODULE = "tops.gpu.temperature_softmax.kernel"


@pytest.mark.parametrize(
    ("fn", "shapes"),
    [pytest.param(fn, shapes, id=name) for name, fn, shapes in tpu_kernel.lowering_configs()],
)
def test_tpu_lowers_to_mosaic(fn, shapes):
    text = lower_for_tpu(fn, *shapes)
    assert "tpu_custom_call" in text


@functools.cache
def _hopper_results() -> dict[str, dict]:
    return {r["name"]: r for r in compile_gpu_kernels_in_subprocess() if r["module"] == MODULE}


@pytest.mark.parametrize("name", [c["name"] for c in gpu_kernel.compile_configs()])
def test_gpu_compiles_for_sm90(name):
    result = _hopper_results()[name]
    assert result["ok"], result.get("error")
    assert result["cubin_bytes"] > 0 and result["ptx_bytes"] > 0


def test_tpu_lowering_rejects_a_block_mosaic_cannot_tile():
    """The check can fail: a (3, 100) block is neither (8, 128)-aligned nor the full array."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    from tops.backends import pallas_interpret

    def copy(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def bad(x):
        spec = pl.BlockSpec((3, 100), lambda i: (i, 0))
        return pl.pallas_call(
            copy,
            grid=(3,),
            in_specs=[spec],
            out_specs=spec,
            out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            interpret=pallas_interpret(),
        )(x)

    with pytest.raises(Exception, match=r"(?i)block"):
        lower_for_tpu(bad, jax.ShapeDtypeStruct((9, 300), jnp.float32))
