"""float16 logits in the Pallas kernels, and the row block of a logits dtype.

Mosaic has no float16 vector load on v5e, v5p or v6e ("Invalid vector type for load"), so
a float16 operand enters a kernel as its bits (:func:`kernel_operand`, a free bitcast to
uint16, which loads like any packed 16-bit type) and :func:`to_float32` widens the bits
exactly inside the kernel with integer operations. bf16 and float32 pass unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

FLOAT16_BITS = jnp.dtype(jnp.uint16)
_F16_EXPONENT_BIAS_SHIFT = 127 - 15


def rows_per_block(dtype: jnp.dtype | type) -> int:
    """Sublane rows of a row block, one native tile: 8 for 32-bit operands, 16 for packed
    16-bit ones."""
    return 8 if jnp.dtype(dtype).itemsize == 4 else 16


def kernel_operand(x: jax.Array) -> jax.Array:
    """``x`` as a Pallas TPU kernel operand: float16 as its uint16 bits, else ``x``."""
    return lax.bitcast_convert_type(x, FLOAT16_BITS) if x.dtype == jnp.float16 else x


def to_float32(x: jax.Array) -> jax.Array:
    """Exact float32 of a loaded operand of :func:`kernel_operand` (float16 bits decoded:
    subnormals as ``mantissa * 2**-24``, infinities and NaN payloads kept)."""
    if x.dtype != FLOAT16_BITS:
        return x.astype(jnp.float32)
    h = x.astype(jnp.int32)
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    subnormal = lax.bitcast_convert_type(mantissa.astype(jnp.float32) * 2.0**-24, jnp.int32)
    normal = ((exponent + _F16_EXPONENT_BIAS_SHIFT) << 23) | (mantissa << 13)
    special = 0x7F800000 | (mantissa << 13)
    magnitude = jnp.where(exponent == 0, subnormal, jnp.where(exponent == 0x1F, special, normal))
    return lax.bitcast_convert_type(magnitude | ((h & 0x8000) << 16), jnp.float32)
