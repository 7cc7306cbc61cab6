"""Registered cases of the chunked simple GLA backward: the gradients of
``loss = sum(o * do) + sum(final_state * dht)`` w.r.t. every input present (``dq, dk, dv``
always, ``dg``, ``dg_gamma``, ``dh0`` when ``g``, ``g_gamma``, ``initial_state`` are
given), on a representative subset of the forward grid.

Each case is a forward case of ``tops/precision/cases/simple_gla.py`` (same builder, same
names) plus the cotangents: ``do`` normal in the dtype of ``v`` and, where the case asks
for the final state, ``dht`` normal float32 ``[N, H, K, V]``. The reference is
``tops.cpu.simple_gla.chunk_simple_gla_grad`` (``jax.vjp`` of the float64 step
recurrence). The TPU runner differentiates ``tops.ops.simple_gla.chunk_simple_gla`` with
``jax.grad`` (the custom VJP), the GPU runner calls ``loss.backward()`` through
``tops.gpu.simple_gla.chunk_simple_gla``; both form the loss in float32.

Tolerance (rule 1, both backends). With ``u_op`` the unit of the GPU kernels' matmul
operands (bf16 inputs: ``2**-8``; f32 inputs, tf32 operands: ``2**-10``), ``u_out`` the
output's rounding (``2**-9`` for bf16 ``dq, dk, dv``, else ``2**-24``), chunk ``C``, key
and value widths ``K, V`` and ``L`` the longest sequence (``T`` without ``cu_seqlens``)::

    base        = 4 u_op + (C + K + V + ceil(L / C)) 2**-24
    dq, dk, dv  : ε <= u_out + base
    dh0, dg     : ε <= 2**-24 + base
    dg_gamma    : ε <= 2**-24 + 4 base

``dq, dk, dv, dh0`` are the forward's paths run backwards (derivation in
``tops/precision/cases/simple_gla.py``): each is a sum of products with about four
independently rounded operands on its path (the gated ``do`` or ``q`` and the bf16/tf32
state gradient ``dS`` with its own rounded inputs; the masked ``ds = do v^T`` and attention
matrices; the forward's stored states), so ``4 u_op``; the accumulation term is
worst-case float32 summation over the chunk (``C``), the state products (``K`` or ``V``)
and the reverse state recurrence over ``ceil(L / C)`` chunk updates. Sequence length
enters only there: the state gradient carried across chunks is a sum of independently
rounded chunk contributions, whose relative error does not grow.

``dg`` (gradient of the per-token total log decay, float32) is ``sum_{i >= t} dG_i`` with
``dG_i = q_i . dq_i - k_i . dk_i``, a reverse cumsum *within the chunk* (at most ``C``
terms) plus the chunk-end term ``exp(G_L) <S, dS'>``, which carries everything after the
chunk through the float32 state gradient. The terms inherit the operand errors of
``dq, dk`` before their output rounding, hence ``base``. A reverse cumsum over the whole
sequence instead (a kernel that accumulated ``dG`` across chunks) would add errors
``sqrt(L)`` times the per-term size to a result that stays ``O(1)`` (with decaying gates
``dg_t`` only sees a window), a relative error growing like ``sqrt(L) u_op``; the bound
does not allow that. Measured ``ε(dg)`` does not grow with ``T`` (GPU 7e-4 to 2.4e-3 at
``T`` 64 to 2048).

``dg_gamma[h] = sum_t dg_total_t`` over every token of every sequence: ``n = B T`` terms of
random sign (``do`` is drawn independently of the forward, so the loss has no systematic
dependence on the decay). Both the sum and its error then grow like ``sqrt(n)``, and the
relative error is that of ``dg`` divided by the chance factor ``|z|``: the heads' sums
relative to their random-walk size ``sqrt(n) rms(dg_total)``; the errors of one chunk's
``dg_total`` share the suffix sums of its reverse cumsum, which can raise the error of
their sum further, by at most ``sqrt(2 C / 3)`` over independent errors (measured
``ε(dg_gamma) / ε(dg)`` <= 2.5 on the GPU, where ``ε(dg)`` itself stays 6x to 20x below
``base``). ``4 base`` admits ``|z|`` down to 1/4 (``DG_GAMMA_CANCELLATION``); over the
registered cases the combined factor ``sqrt(n sum_h rms_h**2) / ||dg_gamma||`` is 0.12 to
1.51. The relative ε of a sum that cancels further is not a property of the kernel: such
a case would need a tolerance normalised by ``sqrt(n) rms(dg_total)`` instead.

Measured (interpret modes, every case): GPU ``dq, dk, dv`` 6.0e-3 to 6.6e-3 (bf16;
floor 1.65e-3) and 1.1e-3 to 1.5e-3 (f32, tf32); ``dh0`` <= 3.6e-3 (bf16 inputs) and
<= 7.8e-4 (f32); ``dg`` <= 2.4e-3 / 1.5e-3; ``dg_gamma`` <= 3.7e-3 / 1.1e-3. TPU (f32
HIGHEST): bf16 ``dq, dk, dv`` at the bf16 floor, every other ε <= 3.5e-7.

Rule 2: with bf16 inputs, no gate and a power-of-two scale, both kernels compute ``dh0``
as float32 sums of exact products ``scale q_t^T do_t``, differing only in order; its
margin there is derived from the order model (``tops.precision.margins``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tops.precision.cases import simple_gla as forward
from tops.precision.cases.summation_order import chunked_outer_sum
from tops.precision.registry import Arrays, Case, Op, OrderModel, case_seed

OP_NAME = "simple_gla_grad"

# A backward costs the interpreters about three forwards: cases over this many token-heads
# (T = 1000 and the varlen layouts up to T = 2048, besides T = 4096) run with -m slow.
SLOW_TOKEN_HEADS = 1600
# differentiable argument -> its gradient's output name
GRADIENTS = {
    "q": "dq",
    "k": "dk",
    "v": "dv",
    "g": "dg",
    "g_gamma": "dg_gamma",
    "initial_state": "dh0",
}
OPTIONAL_ARGUMENTS = ("g", "g_gamma", "initial_state")


def _present(inputs: Arrays) -> list[str]:
    return [name for name in GRADIENTS if name in inputs]


def _reference(inputs: Arrays) -> Arrays:
    from tops.cpu import simple_gla

    arrays = {name: inputs[name] for name in forward.ARRAY_ARGUMENTS if name in inputs}
    kwargs = forward.keyword_arguments(inputs)
    del kwargs["output_final_state"]  # implied by dht
    return simple_gla.chunk_simple_gla_grad(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        **arrays,
        **kwargs,
        do=inputs["do"],
        dht=inputs.get("dht"),
    )


def _run_tpu(inputs: Arrays) -> Arrays:
    import jax
    import jax.numpy as jnp

    from tops.ops import simple_gla
    from tops.precision.convert import from_jax, to_jax

    primals = {name: to_jax(inputs[name]) for name in _present(inputs)}
    cu_seqlens = to_jax(inputs["cu_seqlens"]) if "cu_seqlens" in inputs else None
    do = to_jax(inputs["do"]).astype(jnp.float32)
    dht = to_jax(inputs["dht"]) if "dht" in inputs else None
    kwargs = forward.keyword_arguments(inputs)

    def loss(primals):
        o, final_state = simple_gla.chunk_simple_gla(
            primals["q"],
            primals["k"],
            primals["v"],
            **{name: primals[name] for name in OPTIONAL_ARGUMENTS if name in primals},
            cu_seqlens=cu_seqlens,
            **kwargs,
        )
        value = jnp.sum(o.astype(jnp.float32) * do)
        if dht is not None:
            value = value + jnp.sum(final_state * dht)
        return value

    grads = jax.grad(loss)(primals)
    return {GRADIENTS[name]: from_jax(grad) for name, grad in grads.items()}


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
    from tops.gpu import simple_gla
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    leaves = {name: to_torch(inputs[name], device).requires_grad_() for name in _present(inputs)}
    cu_seqlens = to_torch(inputs["cu_seqlens"], device) if "cu_seqlens" in inputs else None
    o, final_state = simple_gla.chunk_simple_gla(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        **{name: leaves[name] for name in OPTIONAL_ARGUMENTS if name in leaves},
        cu_seqlens=cu_seqlens,
        **forward.keyword_arguments(inputs),
    )
    loss = (o.float() * to_torch(inputs["do"], device).float()).sum()
    if "dht" in inputs:
        loss = loss + (final_state * to_torch(inputs["dht"], device)).sum()
    loss.backward()
    return {GRADIENTS[name]: from_torch(leaf.grad) for name, leaf in leaves.items()}


def _output_dtypes(inputs: Arrays) -> dict[str, str]:
    """dq, dk, dv in the dtype of q, k, v; the gate and state gradients float32."""
    qkv = str(inputs["q"].dtype)
    return {
        GRADIENTS[name]: qkv if name in ("q", "k", "v") else "float32" for name in _present(inputs)
    }


# dg_gamma's bound is this multiple of dg's (module docstring): how far below its
# random-walk size the heads' sums of dg_total may fall (registered cases: 0.12 to 1.51)
DG_GAMMA_CANCELLATION = 4.0


def tolerance(
    dtype: str, chunk_size: int, key_dim: int, value_dim: int, longest: int
) -> dict[str, float]:
    """The rule-1 bounds on ε of every gradient (module docstring); ``longest`` is the
    length of the longest sequence (``T`` without ``cu_seqlens``)."""
    accumulation = (chunk_size + key_dim + value_dim + math.ceil(longest / chunk_size)) * 2.0**-24
    operands = 4 * forward.OPERAND_UNIT[dtype] + accumulation
    bounds = {name: forward.OUTPUT_UNIT[dtype] + operands for name in ("dq", "dk", "dv")}
    f32 = forward.OUTPUT_UNIT["float32"]
    bounds["dh0"] = f32 + operands
    bounds["dg"] = f32 + operands
    bounds["dg_gamma"] = f32 + DG_GAMMA_CANCELLATION * operands
    return bounds


def _case(**params) -> Case:
    """Forward case ``params`` (``tops.precision.cases.simple_gla.case``: the same
    inputs as the forward case of that name) with its cotangents: ``do`` normal in the
    dtype of ``v`` and, when the forward returns the final state, ``dht`` normal float32
    ``[N, H, K, V]``, from a generator seeded by this op and the case name."""
    base = forward.case(**params)
    cu_seqlens = params.get("cu_seqlens")
    longest = params["seq_len"] if cu_seqlens is None else max(np.diff(cu_seqlens))

    def make() -> Arrays:
        inputs = base.make_inputs()
        rng = np.random.default_rng(case_seed(OP_NAME, base.name))
        v = inputs["v"]
        inputs["do"] = rng.standard_normal(v.shape).astype(v.dtype)
        if params["final_state"]:
            num_states = params["batch"] if cu_seqlens is None else len(cu_seqlens) - 1
            shape = (num_states, params["heads"], params["key_dim"], params["value_dim"])
            inputs["dht"] = rng.standard_normal(shape).astype(np.float32)
        return inputs

    bounds = tolerance(
        params["dtype"],
        params["chunk_size"],
        params["key_dim"],
        params["value_dim"],
        int(longest),
    )
    slow = params["batch"] * params["seq_len"] * params["heads"] > SLOW_TOKEN_HEADS
    return dataclasses.replace(base, make_inputs=make, tolerance=bounds, slow=slow)


def _cases() -> tuple[Case, ...]:
    grid = []

    def add(**params) -> None:
        grid.append(_case(**params))

    # T 1, 63, 64, 100, 1000 across dtypes, chunk sizes, gates, initial/final states.
    for dtype, seq_len, chunk_size, gate, initial_state, final_state in (
        ("float32", 1, 64, "g", True, True),
        ("bfloat16", 1, 128, "both", False, True),
        ("float32", 63, 64, "g_gamma", False, True),
        ("bfloat16", 63, 128, "none", True, False),
        ("float32", 64, 128, "both", True, True),
        ("bfloat16", 64, 64, "g", True, True),
        ("float32", 100, 64, "none", True, True),
        ("bfloat16", 100, 128, "g_gamma", True, True),
        ("float32", 1000, 128, "g", False, True),
        ("bfloat16", 1000, 64, "both", True, False),
    ):
        add(
            dtype=dtype,
            batch=2 if seq_len < 1000 else 1,
            seq_len=seq_len,
            heads=4 if seq_len < 1000 else 2,
            key_dim=64,
            value_dim=64,
            chunk_size=chunk_size,
            gate=gate,
            initial_state=initial_state,
            final_state=final_state,
        )
    # Head dimensions that need padding, K != V, many heads, scale 0.1.
    for dtype, heads, key_dim, value_dim, gate in (
        ("float32", 1, 100, 64, "both"),
        ("bfloat16", 4, 128, 100, "none"),
        ("float32", 16, 64, 128, "g_gamma"),
    ):
        add(
            dtype=dtype,
            batch=1,
            seq_len=100,
            heads=heads,
            key_dim=key_dim,
            value_dim=value_dim,
            chunk_size=64,
            gate=gate,
            initial_state=True,
            final_state=True,
            scale=0.1,
        )
    # Varlen: sequences that start and end inside chunks, from their own states.
    for dtype, cu_seqlens, chunk_size in (
        ("bfloat16", (0, 256, 500, 1000), 64),
        ("float32", (0, 1, 100, 300, 1200, 2048), 128),
        ("bfloat16", (0, 1, 100, 300, 1200, 2048), 64),
    ):
        add(
            dtype=dtype,
            batch=1,
            seq_len=cu_seqlens[-1],
            heads=2,
            key_dim=64,
            value_dim=64,
            chunk_size=chunk_size,
            gate="both",
            initial_state=True,
            final_state=True,
            cu_seqlens=cu_seqlens,
        )
    # Long sequences: the state recurrences over many chunks, both gates.
    for dtype in ("float32", "bfloat16"):
        add(
            dtype=dtype,
            batch=1,
            seq_len=4096,
            heads=4,
            key_dim=128,
            value_dim=128,
            chunk_size=64,
            gate="both",
            initial_state=True,
            final_state=True,
        )
    # A short varlen layout for the default suite (the ones above are slow).
    add(
        dtype="float32",
        batch=1,
        seq_len=300,
        heads=2,
        key_dim=64,
        value_dim=64,
        chunk_size=64,
        gate="both",
        initial_state=True,
        final_state=True,
        cu_seqlens=(0, 1, 70, 300),
    )
    forward.add_resets(add)
    return tuple(grid)


def _scale(inputs: Arrays) -> float:
    return float(inputs["scale"]) if "scale" in inputs else inputs["q"].shape[-1] ** -0.5


def _same_arithmetic(inputs: Arrays, output: str) -> bool:
    """``dh0`` of ungated bf16 cases whose scale is a power of two: the GPU rounds
    ``scale q`` to bf16 before its matmul, the TPU scales the float32 chunk sum, and both
    are exact only then (``K ** -0.5`` at K = 128, or scale 0.1, are not)."""
    return (
        output == "dh0"
        and forward.ungated_bfloat16(inputs)
        and math.frexp(_scale(inputs))[0] == 0.5
    )


def _draw_order(inputs: Arrays, output: str, rng: np.random.Generator) -> np.ndarray:
    """``dh0 = dht + sum_t scale q_t^T do_t`` in one random order within each chunk, the
    chunks from the last."""
    return chunked_outer_sum(
        _scale(inputs) * inputs["q"].astype(np.float64),
        inputs["do"],
        inputs.get("dht"),
        chunk_size=int(inputs["chunk_size"]),
        cu_seqlens=inputs.get("cu_seqlens"),
        reverse=True,
        rng=rng,
    )


OP = Op(
    name=OP_NAME,
    output_dtypes=_output_dtypes,
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=_cases(),
    order_model=OrderModel(covers=_same_arithmetic, draw=_draw_order),
    parameters=forward.parameters,
)
