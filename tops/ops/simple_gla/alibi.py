"""ALiBi slopes and the per-head constant log decay ``g_gamma`` built from them.

The slopes follow the ALiBi paper's reference code (Press et al., 2022,
github.com/ofirpress/attention_with_linear_biases, ``get_slopes``), as used by MaxText's
BailingMoeV2 linear attention:

* ``H`` a power of two: ``slope_i = (2 ** (-8 / H)) ** (i + 1) = 2 ** (-8 (i + 1) / H)``
  for ``i = 0 .. H-1`` (a geometric sequence from ``2 ** (-8 / H)`` down to ``2 ** -8``).
* otherwise, with ``n0`` the largest power of two below ``H``: the ``n0`` slopes of the
  power-of-two rule for ``n0``, followed by the first ``H - n0`` of the even-indexed
  slopes ``0, 2, 4, ...`` of the rule for ``2 n0``, i.e.
  ``slope_{n0 + j} = 2 ** (-8 (2 j + 1) / (2 n0)) = 2 ** (-4 (2 j + 1) / n0)``; these
  interleave with the first ones (for ``H = 12``: ``2**-1 .. 2**-8`` then
  ``2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5``).

Everything is computed in float64 and rounded once to float32.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _slopes_f64(num_heads: int) -> np.ndarray:
    n0 = 1 << (num_heads.bit_length() - 1)  # largest power of two <= num_heads
    exponents = [-8.0 * (i + 1) / n0 for i in range(n0)]
    exponents += [-8.0 * (2 * j + 1) / (2 * n0) for j in range(num_heads - n0)]
    return np.exp2(np.array(exponents, dtype=np.float64))


def build_alibi_slopes(num_heads: int):
    """ALiBi slopes, float32 ``[num_heads]`` (the rule is in the module docstring).

    Raises:
      ValueError: ``num_heads`` is not an int >= 1.
    """
    num_heads = _positive_int("num_heads", num_heads)
    return jnp.asarray(_slopes_f64(num_heads).astype(np.float32))


def make_alibi_g_gamma(num_heads: int, num_layers: int, layer_idx: int):
    """Per-head log decay of layer ``layer_idx``, float32 ``[num_heads]``.

    ``g_gamma = -slopes * (1 - layer_idx / (num_layers - 1) + 1e-5)``: the first layer
    decays at the full ALiBi slopes, the last one at ``1e-5`` times them. With
    ``num_layers == 1`` the denominator is taken as 1 (as in MaxText), so the single
    layer gets ``-slopes * (1 + 1e-5)``.

    Raises:
      ValueError: ``num_heads`` or ``num_layers`` is not an int >= 1, or ``layer_idx``
        is not an int in ``[0, num_layers)``.
    """
    num_heads = _positive_int("num_heads", num_heads)
    num_layers = _positive_int("num_layers", num_layers)
    if (
        isinstance(layer_idx, bool)
        or not isinstance(layer_idx, numbers.Integral)
        or not 0 <= layer_idx < num_layers
    ):
        raise ValueError(f"layer_idx must be an int in [0, {num_layers}), got {layer_idx!r}")
    layer_scale = 1.0 - int(layer_idx) / max(num_layers - 1, 1) + 1e-5
    return jnp.asarray((-_slopes_f64(num_heads) * layer_scale).astype(np.float32))


# exp overflows float32 above this exponent: log(float32 max) = 88.72.
FLOAT32_EXP_LIMIT = float(np.log(np.finfo(np.float32).max))


def max_discarded_exponent(g_gamma, chunk_size: int) -> float:
    """The largest exponent ``G_j - G_i`` (``j > i``, ``G`` the cumulative per-head log
    decay) that a chunk's causal mask discards: ``max(-g_gamma) * (chunk_size - 1)`` for
    decays ``g_gamma <= 0`` (float64). An implementation that evaluates ``exp`` before
    masking overflows float32 when this exceeds :data:`FLOAT32_EXP_LIMIT`."""
    return float(np.max(-np.asarray(g_gamma, np.float64))) * (chunk_size - 1)
