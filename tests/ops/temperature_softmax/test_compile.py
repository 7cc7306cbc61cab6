"""Compile-only checks for every shipped Pallas configuration: the kernels lower to Mosaic
for TPU (the Triton configurations are compiled for sm_90 in tests/ops/test_gpu_compile.py)."""

from __future__ import annotations

import pytest

from tops.compile_only import lower_for_tpu
from tops.ops.temperature_softmax import kernel as tpu_kernel


@pytest.mark.parametrize(
    ("fn", "shapes"),
    [pytest.param(fn, shapes, id=name) for name, fn, shapes in tpu_kernel.lowering_configs()],
)
def test_tpu_lowers_to_mosaic(fn, shapes):
    text = lower_for_tpu(fn, *shapes)
    assert "tpu_custom_call" in text


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
