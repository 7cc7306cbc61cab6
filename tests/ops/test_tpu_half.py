"""float16 operands enter the Pallas kernels as their bits (Mosaic has no float16 vector
load); the in-kernel widening must be exact for every one of the 65536 bit patterns."""

import jax
import jax.numpy as jnp
import numpy as np

from tops.ops import half


def test_tpu_float16_bits_widen_exactly():
    bits = np.arange(2**16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32).view(np.uint32)
    operand = half.kernel_operand(jnp.asarray(bits.view(np.float16)))
    assert operand.dtype == half.FLOAT16_BITS
    widened = np.asarray(jax.jit(half.to_float32)(operand)).view(np.uint32)
    np.testing.assert_array_equal(widened, expected)


def test_tpu_other_dtypes_pass_unchanged():
    for dtype in (jnp.bfloat16, jnp.float32):
        x = jnp.asarray([1.5, -0.0, jnp.inf], dtype)
        assert half.kernel_operand(x) is x
        np.testing.assert_array_equal(half.to_float32(x), x.astype(jnp.float32))
