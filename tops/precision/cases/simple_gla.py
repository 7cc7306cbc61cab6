"""Registered cases of the chunked simple GLA forward: a covering grid over the contract
and the varlen layouts.

Tolerance (rule 1, both backends), for an output in ``u_out`` precision (``2**-9`` for
bf16 ``o``, ``2**-24`` for f32 ``o`` and ``final_state``), inputs whose GPU matmul operands
round to ``u_op`` (bf16 operands: ``2**-8``; tf32 for f32 inputs: ``2**-10``), chunk ``C``,
key width ``K`` and ``T`` tokens::

    ε <= u_out + 4 * u_op + (C + K + ceil(T / C)) * 2**-24

The GPU kernel uses the tensor-core arithmetic flash-linear-attention uses: on every
path to an output about four operands are rounded to ``u_op`` (the gated query, the
intra-chunk attention matrix, the state and the gated key of the state update); their
errors are independent, so they add in quadrature, and ``4 u_op`` bounds them with room
for correlated rows. The last term is the worst-case float32 accumulation of the
intra-chunk sum (``C`` terms), the state product (``K``) and the state recurrence over
``ceil(T / C)`` chunk updates: it grows with the sequence, while the operand rounding
does not (a state that keeps a long history is a sum of independently rounded chunk
contributions, whose relative error does not grow). Measured in interpret mode over the
grid: ε_GPU up to 8.2e-3 (bf16 ``o``), 3.3e-3 (bf16 ``final_state``), 1.5e-3 (f32 ``o``),
8.2e-4 (f32 ``final_state``); the TPU kernel (f32 operands at HIGHEST, double-float gate
sums) is at the bf16 floor for bf16 ``o`` and within 12x of the float32 floor otherwise
(ε_TPU <= 3.2e-7).

Rule 2: with bf16 inputs and no gate both kernels compute ``final_state`` as float32 sums
of exact products ``k_t^T v_t``, differing only in order; its margin there is derived from
the order model (``tops.precision.cases.summation_order``, ``tops.precision.margins``).
"""

from __future__ import annotations

import math

import numpy as np

from tops.precision.cases.summation_order import chunked_outer_sum
from tops.precision.metrics import numpy_dtype
from tops.precision.registry import Arrays, Case, Op, OrderModel, case_seed

OP_NAME = "simple_gla"

SLOW_TOKEN_HEADS = 8192
GATES = ("g", "g_gamma", "both", "none")


def keyword_arguments(inputs: Arrays) -> dict:
    """The static arguments of the call, from the case inputs."""
    kwargs = {
        "chunk_size": int(inputs["chunk_size"]),
        "output_final_state": bool(inputs["output_final_state"]),
    }
    if "scale" in inputs:
        kwargs["scale"] = float(inputs["scale"])
    return kwargs


ARRAY_ARGUMENTS = ("g", "g_gamma", "initial_state", "cu_seqlens")


def _outputs(o, final_state) -> Arrays:
    return {"o": o} if final_state is None else {"o": o, "final_state": final_state}


def _reference(inputs: Arrays) -> Arrays:
    from tops.cpu import simple_gla

    arrays = {name: inputs[name] for name in ARRAY_ARGUMENTS if name in inputs}
    return _outputs(
        *simple_gla.chunk_simple_gla(
            inputs["q"], inputs["k"], inputs["v"], **arrays, **keyword_arguments(inputs)
        )
    )


def _run_tpu(inputs: Arrays) -> Arrays:
    from tops.ops import simple_gla
    from tops.precision.convert import from_jax, to_jax

    arrays = {name: to_jax(inputs[name]) for name in ARRAY_ARGUMENTS if name in inputs}
    o, final_state = simple_gla.chunk_simple_gla(
        *(to_jax(inputs[name]) for name in ("q", "k", "v")), **arrays, **keyword_arguments(inputs)
    )
    return _outputs(from_jax(o), None if final_state is None else from_jax(final_state))


def _run_gpu(inputs: Arrays) -> Arrays:
    from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
    from tops.gpu import simple_gla
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    arrays = {name: to_torch(inputs[name], device) for name in ARRAY_ARGUMENTS if name in inputs}
    o, final_state = simple_gla.chunk_simple_gla(
        *(to_torch(inputs[name], device) for name in ("q", "k", "v")),
        **arrays,
        **keyword_arguments(inputs),
    )
    return _outputs(from_torch(o), None if final_state is None else from_torch(final_state))


def _output_dtypes(inputs: Arrays) -> dict[str, str]:
    dtypes = {"o": str(inputs["v"].dtype)}
    if bool(inputs["output_final_state"]):
        dtypes["final_state"] = "float32"
    return dtypes


# unit roundoff of the GPU kernel's matmul operands and of the output, per q/k/v dtype
OPERAND_UNIT = {"bfloat16": 2.0**-8, "float32": 2.0**-10}
OUTPUT_UNIT = {"bfloat16": 2.0**-9, "float32": 2.0**-24}


def tolerance(dtype: str, seq_len: int, chunk_size: int, key_dim: int) -> dict[str, float]:
    """The rule-1 bounds on ε of ``o`` and ``final_state`` (module docstring)."""
    accumulation = (chunk_size + key_dim + math.ceil(seq_len / chunk_size)) * 2.0**-24
    operands = 4 * OPERAND_UNIT[dtype] + accumulation
    return {"o": OUTPUT_UNIT[dtype] + operands, "final_state": OUTPUT_UNIT["float32"] + operands}


def random_arrays(
    rng: np.random.Generator,
    *,
    batch: int,
    seq_len: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    dtype: str,
    gate: str,
    num_states: int,
    gate_shift: float = 0.0,
) -> Arrays:
    """Random inputs of the op as NumPy arrays named like its arguments: normal ``q, k``
    ``[B, T, H, K]`` and ``v [B, T, H, V]`` in ``dtype``; for ``gate`` "g" or "both",
    ``g = logsigmoid(N(gate_shift, 1))`` (per-token decays in (0, 1), mean about exp(-0.8)
    unshifted); for "g_gamma" or "both", ALiBi-like ``g_gamma = -2**(-8 (h + 1) / H)``;
    with ``num_states > 0``, a normal f32 ``initial_state [num_states, H, K, V]``.
    Drawn from ``rng`` in that order (the cases and the kernel tests share it)."""
    qkv_dtype = numpy_dtype(dtype)
    arrays = {
        "q": rng.standard_normal((batch, seq_len, heads, key_dim)).astype(qkv_dtype),
        "k": rng.standard_normal((batch, seq_len, heads, key_dim)).astype(qkv_dtype),
        "v": rng.standard_normal((batch, seq_len, heads, value_dim)).astype(qkv_dtype),
    }
    if gate in ("g", "both"):
        logits = rng.standard_normal((batch, seq_len, heads)) + gate_shift
        arrays["g"] = (-np.logaddexp(0.0, -logits)).astype(np.float32)
    if gate in ("g_gamma", "both"):
        slopes = 2.0 ** (-8.0 * (np.arange(heads) + 1) / heads)
        arrays["g_gamma"] = (-slopes).astype(np.float32)
    if num_states:
        shape = (num_states, heads, key_dim, value_dim)
        arrays["initial_state"] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def case(
    *,
    dtype: str,
    batch: int,
    seq_len: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    chunk_size: int,
    gate: str,
    initial_state: bool,
    final_state: bool,
    scale: float | None = None,
    cu_seqlens: tuple[int, ...] | None = None,
    resets: tuple[int, ...] = (),
) -> Case:
    """The case of these parameters: its name spells them out, and its inputs
    (:func:`random_arrays`, then ``g = -inf`` at ``resets``) are drawn from
    ``case_seed("simple_gla", name)``."""
    num_states = batch if cu_seqlens is None else len(cu_seqlens) - 1
    name = (
        f"{dtype}_B{batch}_T{seq_len}_H{heads}_K{key_dim}_V{value_dim}_C{chunk_size}_{gate}"
        + ("_h0" if initial_state else "")
        + ("_hT" if final_state else "")
        + ("" if scale is None else f"_scale{scale}")
        + ("" if cu_seqlens is None else "_cu" + "-".join(map(str, cu_seqlens)))
        + ("_reset" + "-".join(map(str, resets)) if resets else "")
    )

    def make() -> Arrays:
        inputs = random_arrays(
            np.random.default_rng(case_seed(OP_NAME, name)),
            batch=batch,
            seq_len=seq_len,
            heads=heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dtype=dtype,
            gate=gate,
            num_states=num_states if initial_state else 0,
        )
        inputs["chunk_size"] = np.asarray(chunk_size)
        inputs["output_final_state"] = np.asarray(final_state)
        if scale is not None:
            inputs["scale"] = np.asarray(scale)
        if cu_seqlens is not None:
            inputs["cu_seqlens"] = np.asarray(cu_seqlens, np.int32)
        if resets:
            inputs["g"][:, list(resets), :] = -np.inf
        return inputs

    slow = batch * seq_len * heads > SLOW_TOKEN_HEADS
    return Case(name, make, tolerance(dtype, seq_len, chunk_size, key_dim), slow=slow)


def _cases() -> tuple[Case, ...]:
    grid = []

    def add(**params) -> None:
        grid.append(case(**params))

    # Every T, gate, chunk size and dtype, with and without states, at K = V = 64.
    for dtype in ("float32", "bfloat16"):
        for chunk_size in (64, 128):
            for index, seq_len in enumerate((1, 63, 64, 100, 1000)):
                gate = GATES[(index + chunk_size // 64) % len(GATES)]
                add(
                    dtype=dtype,
                    batch=2 if seq_len < 1000 else 1,
                    seq_len=seq_len,
                    heads=4 if seq_len < 1000 else 2,
                    key_dim=64,
                    value_dim=64,
                    chunk_size=chunk_size,
                    gate=gate,
                    initial_state=index % 2 == 0,
                    final_state=index != 3,
                )
    # Head counts, head dimensions that need padding, K != V, scale 0.1.
    for dtype in ("float32", "bfloat16"):
        for heads, key_dim, value_dim, gate in (
            (1, 100, 64, "both"),
            (16, 64, 128, "g_gamma"),
            (4, 128, 100, "g"),
            (2, 256, 128, "none"),
            (1, 128, 256, "both"),
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
        ("float32", (0, 15), 64),
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
    # Long sequences (slow): the state recurrence over many chunks.
    for dtype in ("float32", "bfloat16"):
        for gate in ("none", "both"):
            add(
                dtype=dtype,
                batch=1,
                seq_len=4096,
                heads=4,
                key_dim=128,
                value_dim=128,
                chunk_size=64,
                gate=gate,
                initial_state=False,
                final_state=True,
            )
    add_resets(add)
    return tuple(grid)


def add_resets(add) -> None:
    """Cases with ``g = -inf`` (exact resets, ``tops/spec/simple_gla.py``): at the first
    and last token, inside chunks, on both sides of chunk boundaries, twice in a row, in
    every sequence of a varlen batch, with and without ``g_gamma``, both dtypes and chunk
    sizes. ``add`` takes :func:`case`'s keyword arguments."""
    shape = dict(batch=2, seq_len=200, heads=2, key_dim=64, value_dim=64)
    add(dtype="float32", chunk_size=64, gate="g", initial_state=True, final_state=True,
        resets=(0, 30, 63, 64, 100, 101, 199), **shape)  # fmt: skip
    add(dtype="bfloat16", chunk_size=128, gate="both", initial_state=True, final_state=True,
        resets=(0, 127, 128, 150, 199), **shape)  # fmt: skip
    varlen = dict(batch=1, seq_len=200, heads=2, key_dim=64, value_dim=64,
                  cu_seqlens=(0, 50, 130, 200), initial_state=True, final_state=True)  # fmt: skip
    add(dtype="float32", chunk_size=64, gate="both", resets=(10, 50, 64, 129, 199), **varlen)
    add(dtype="bfloat16", chunk_size=128, gate="g", resets=(0, 49, 100, 127, 128, 130), **varlen)


def parameters(inputs: Arrays) -> dict[str, str | int]:
    """What a case varies, for the report's plots: dtype, T, chunk size, gate kind."""
    gate = {(True, True): "both", (True, False): "g", (False, True): "g_gamma"}
    return {
        "dtype": str(inputs["q"].dtype),
        "T": inputs["q"].shape[1],
        "chunk_size": int(inputs["chunk_size"]),
        "gate": gate.get(("g" in inputs, "g_gamma" in inputs), "none"),
    }


def ungated_bfloat16(inputs: Arrays) -> bool:
    """bf16 inputs and no gate: every state update is a sum of exact products ``k_t^T v_t``
    (both kernels upcast or keep bf16 operands and accumulate in float32)."""
    return inputs["k"].dtype == numpy_dtype("bfloat16") and not {"g", "g_gamma"} & inputs.keys()


def _same_arithmetic(inputs: Arrays, output: str) -> bool:
    return output == "final_state" and ungated_bfloat16(inputs)


def _draw_order(inputs: Arrays, output: str, rng: np.random.Generator) -> np.ndarray:
    """``final_state = h0 + sum_t k_t^T v_t`` in one random order within each chunk."""
    return chunked_outer_sum(
        inputs["k"],
        inputs["v"],
        inputs.get("initial_state"),
        chunk_size=int(inputs["chunk_size"]),
        cu_seqlens=inputs.get("cu_seqlens"),
        reverse=False,
        rng=rng,
    )


OP = Op(
    name=OP_NAME,
    output_dtypes=_output_dtypes,
    reference=_reference,
    runners={"tpu": _run_tpu, "gpu": _run_gpu},
    cases=_cases(),
    order_model=OrderModel(covers=_same_arithmetic, draw=_draw_order),
    parameters=parameters,
)
