"""Registered cases of the temperature-softmax backward: the gradient ``dlogits`` of
``sum(temperature_softmax(logits, T) * g)`` w.r.t. the logits, in the logits' dtype.

Each case is a forward case of ``tops/precision/cases/temperature_softmax.py`` (same
name, same inputs) plus the cotangent ``g``, standard normal float32 ``[B, V]``. The
reference is ``tops.cpu.temperature_softmax_vjp`` (float64, exact row sum). The TPU runner
differentiates ``tops.ops.temperature_softmax`` with ``jax.vjp`` (the custom VJP), the GPU
runner calls ``backward`` through ``tops.gpu.temperature_softmax``.

Tolerance (rule 1, both backends), for rows of ``V`` entries and the output unit ``u_out``
(``2**-24`` float32, ``2**-9`` bfloat16, ``2**-11`` float16 gradients)::

    ε <= u_out + ((ln V + 3) 2**-24 + 2**-22) + 4 * 2**-24

``dx_i = p_i (g_i - s) / T``. Both kernels take ``p`` from their forward, whose error is
bounded by the forward tolerance (the middle term, ``tolerance`` of
``tops/precision/cases/temperature_softmax.py``). It enters through the factor ``p_i``
(weighted by ``p_i**2 (g_i - s)**2``, which for a cotangent drawn independently of the
logits averages like the forward's ``p_i**2``) and through ``s = sum(p g) / sum(p)``, a
``p``-weighted mean of the same errors times ``g_j - s`` that does not add coherently to
the first (dividing by ``sum(p)`` removes the coherent part, ``g_k (1 - sum(p))``, which
made ``ε`` 6x larger on peaked rows). The sums are exact to about 2**-44; then four
float32 roundings: ``1 / T``, ``g - s``, ``p * (g - s)`` and the product with ``1 / T``;
then the rounding to the output dtype. A cotangent nearly constant over a row's mass
would cancel ``g - s`` and the relative ε with it; the registered cotangents are standard
normal, where ``g - s`` is ``O(1)``.

Measured (interpret modes, every case): float32 ε_TPU 2.5e-8 to 6.9e-8 (floor 2.3e-8 to
3.6e-8), ε_GPU 3.3e-8 to 1.31e-7, at most 1/8 of the bound; bfloat16 and float16 both
backends at the output's floor (1.1e-3 to 1.7e-3 bf16, bound 1.95e-3; 2.0e-4 f16, bound
4.9e-4).

Rule 2 at the default 2% margin: both backends do the same backward arithmetic (the same
double-float sums to 2**-44, the same four roundings); the ε differ only by the forward's
``p``, which the TPU rounds correctly.
"""

from __future__ import annotations

import numpy as np

from tops.precision.cases import temperature_softmax as forward
from tops.precision.registry import Arrays, Case, Op, case_seed

OP_NAME = "temperature_softmax_grad"

OUTPUT = "dlogits"
# The forward cases reused, by name: both kernel paths of each backend (V = 40000 takes
# the two-pass TPU and multi-pass GPU kernels), every logits dtype, scalar and mixed
# temperatures (greedy rows included), V = 1, an empty batch and the special rows.
FORWARD_CASES = (
    "float32_B1_V1_T1.0",
    "float32_B5_V1000_T1.0",
    "float32_B5_V1000_Tmixed",
    "float32_B3_V4097_Tmixed",
    "float32_B2_V40000_Tmixed",
    "float32_B0_V1000_T1.0",
    "bfloat16_B5_V1000_Tmixed",
    "bfloat16_B3_V4097_T1.0",
    "bfloat16_B2_V40000_Tmixed",
    "float16_B5_V1000_Tmixed",
    "near_uniform_T100",
    "special_rows",
)


def _reference(inputs: Arrays) -> Arrays:
    from tops import cpu

    dx = cpu.temperature_softmax_vjp(inputs["logits"], inputs["temperature"], inputs["g"])
    return {OUTPUT: dx}


def _run_tpu(inputs: Arrays) -> Arrays:
    import jax

    from tops import ops
    from tops.precision.convert import from_jax, to_jax

    temperature = to_jax(inputs["temperature"])
    _, vjp = jax.vjp(lambda x: ops.temperature_softmax(x, temperature), to_jax(inputs["logits"]))
    (dx,) = vjp(to_jax(inputs["g"]))
    return {OUTPUT: from_jax(dx)}


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    logits = to_torch(inputs["logits"], device).requires_grad_()
    probs = gpu.temperature_softmax(logits, to_torch(inputs["temperature"], device))
    probs.backward(to_torch(inputs["g"], device))
    return {OUTPUT: from_torch(logits.grad)}


def tolerance(dtype: str, vocab: int) -> dict[str, float]:
    """The rule-1 bound on ε (module docstring)."""
    u_out = {"float32": 2.0**-24, "bfloat16": 2.0**-9, "float16": 2.0**-11}[dtype]
    return {OUTPUT: u_out + forward.tolerance(vocab)[forward.OUTPUT] + 4 * 2.0**-24}


def _case(name: str) -> Case:
    source = forward.OP.case(name)

    def make() -> Arrays:
        inputs = source.make_inputs()
        rng = np.random.default_rng(case_seed(OP_NAME, name))
        inputs["g"] = rng.standard_normal(inputs["logits"].shape).astype(np.float32)
        return inputs

    dtype = str(source.make_inputs()["logits"].dtype)
    vocab = source.make_inputs()["logits"].shape[1]
    return Case(name, make, tolerance(dtype, vocab), slow=source.slow)


OP = Op(
    name=OP_NAME,
    output_dtypes=lambda inputs: {OUTPUT: str(inputs["logits"].dtype)},
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=tuple(_case(name) for name in FORWARD_CASES),
    parameters=forward.parameters,
)
