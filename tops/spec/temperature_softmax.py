"""Contract of temperature softmax (shared by the TPU, GPU and CPU trees).

``tops.ops.temperature_softmax(logits, temperature)`` (JAX),
``tops.gpu.temperature_softmax(logits, temperature, *, out=None)`` and
``tops.gpu.temperature_softmax_(logits, temperature)`` (torch, in place, float32 logits),
``tops.cpu.temperature_softmax`` (float64): ``logits [B, V]`` bf16/f16/f32 with any
``B >= 0`` and ``1 <= V <= MAX_VOCAB``; ``temperature`` a number or a ``[]``/``[B]`` array,
rounded to float32. Returns the probabilities, float32 ``[B, V]`` (float64 for the
reference).

Per row, in order of precedence (``m`` = the maximum of the raw logits):

1. NaN temperature, negative temperature (run-time) or any NaN logit: all NaN.
2. ``m = -inf`` (all ``-inf``): all zeros.
3. ``T < SMALLEST_NORMAL_F32 = 2**-126`` (zero and float32 subnormals, which TPUs flush):
   one-hot at the first index of ``m``.
4. ``T >= UNIFORM_TEMPERATURE = 2**64`` (``+inf`` included): uniform over the entries
   above ``-inf``.
5. Otherwise ``p_i = exp(z_i) / sum_j exp(z_j)`` with ``z_i = -inf`` where
   ``x_i = -inf``, ``0`` where ``x_i = m`` (so ``+inf`` logits share the mass evenly),
   ``-inf`` for the other entries when ``m = +inf``, and ``(x_i - m) / T`` otherwise. The
   exponent is masked before ``exp``, and the maximum is over the raw logits, so no
   temperature overflows.

Gradient (``jax.vjp``/``jax.grad`` through ``tops.ops``, ``backward`` through
``tops.gpu.temperature_softmax`` without ``out``; reference
``tops.cpu.temperature_softmax_vjp``). For the cotangent ``g`` of the probabilities ``p``,
the gradient w.r.t. the logits, in their dtype, per row in order of precedence:

1. the forward's NaN rows (NaN or negative temperature, a NaN logit): NaN;
2. greedy (``T < 2**-126``) and uniform (``T >= 2**64``) rows: zeros (the forward is
   constant in the logits there);
3. otherwise ``p * (g - s) / T`` with ``s = sum(p * g)``; the kernels take
   ``s = sum(p * g) / sum(p)`` in double-float32 (equal for exact ``p``; it cancels the
   rounding of the probabilities' sum), then two float32 products, the same arithmetic on
   both backends. An all ``-inf`` row and ``-inf`` entries (``p = 0``) get zeros;
   ``+inf`` logits get the limit of equal, large, finite logits. A cotangent entry that
   is not finite, or of magnitude ``2**100`` or more, makes the row NaN.

The temperature gets no gradient: a zero cotangent in JAX, ``None`` in torch. The
``out=`` and in-place variants are not differentiable (ValueError when autograd would
need the logits' gradient).

Bad input. Tests (name prefixes) are in ``tests/ops/temperature_softmax/test_api.py``
unless a module is named (``gpu_api``: ``test_gpu_api.py``); "run-time": no error, the
documented row.

| input | ``tops.ops`` | ``tops.gpu`` | test |
| --- | --- | --- | --- |
| list or tuple (logits, temperature) | TypeError | TypeError | ``test_lists_and_tuples`` |
| NumPy scalar temperature | a number | a number | ``test_scalar_temperatures`` |
| 0-d or ``[B]`` array temperature | run-time | run-time | ``test_scalar_temperatures`` |
| NumPy array (logits, temperature) | accepted | TypeError | ``test_wrong_framework`` |
| torch tensor | TypeError | accepted | ``test_wrong_framework`` |
| JAX array | accepted | TypeError | ``test_wrong_framework`` |
| x64 mode, f32/bf16/f16 logits | identical results | (no JAX) | ``test_tpu_x64_mode`` |
| x64 mode, float64 logits | ValueError | ValueError | ``test_tpu_x64_mode`` |
| rank, dtype, ``V = 0``, ``T`` shape | ValueError | ValueError | ``test_bad_arguments`` |
| empty batch ``B = 0`` | ``[0, V]`` | ``[0, V]`` | ``test_empty_batch`` |
| ``V > MAX_VOCAB`` (``2**30``) | ValueError | ValueError | ``test_huge_vocabulary`` |
| number ``T < 0`` or NaN | ValueError | ValueError | ``test_bad_arguments`` |
| array ``T < 0`` or NaN | run-time: NaN row | run-time: NaN row | ``test_array_temperatures`` |
| ``out=``/in place, requires_grad | (no variant) | ValueError | ``gpu_api``: ``test_gpu_no_grad`` |

TypeErrors name the argument and which API takes which arrays
(``tops.spec.common.require_array``); ValueErrors name the argument. ``MAX_VOCAB``: both
kernels index columns in int32, with room for the padded last block.
"""

from __future__ import annotations

import numpy as np

from tops.spec.common import python_number, require_dtype, require_rank

LOGIT_DTYPES = ("bfloat16", "float16", "float32")
# Temperatures below this (zero and float32 subnormals) select the greedy one-hot row:
# TPUs flush subnormals to zero, so treating them as zero keeps every backend identical.
SMALLEST_NORMAL_F32 = float(np.finfo(np.float32).tiny)
# Temperatures at or above this count as +inf: the row is uniform over its entries above
# -inf. (Below it, logit gaps under 2**39 already give probabilities uniform to float32;
# above it, an error-free product with T would overflow.)
UNIFORM_TEMPERATURE = 2.0**64
# Largest V: both kernels index columns in int32, with room for the padded last block.
MAX_VOCAB = 2**30


def validate(logits, temperature) -> None:
    """Raise ValueError naming the argument unless the inputs satisfy the contract.

    ``logits`` must be ``[B, V]`` in bf16, f16 or f32 with ``1 <= V <= MAX_VOCAB``;
    ``temperature`` a scalar or ``[B]``. A Python-number temperature must be ``>= 0`` and
    not NaN; an array temperature is a run-time value, and a negative or NaN entry yields
    a NaN row.
    """
    require_rank("logits", logits, 2, "[B, V]")
    require_dtype("logits", logits, LOGIT_DTYPES)
    batch, vocab = logits.shape
    if not 1 <= vocab <= MAX_VOCAB:
        raise ValueError(
            f"logits must have V >= 1 columns, at most {MAX_VOCAB}, got shape {tuple(logits.shape)}"
        )
    t_shape = tuple(np.shape(temperature))
    if t_shape not in ((), (batch,)):
        raise ValueError(f"temperature must be a scalar or have shape ({batch},), got {t_shape}")
    value = python_number(temperature)
    if value is not None and not value >= 0:
        raise ValueError(f"temperature must be >= 0 and not NaN, got {value}")
