"""Chunked simple gated linear attention on TPU (Pallas), differentiable.

Semantics in ``tops/spec/simple_gla.py``; the forward kernel in ``kernel.py``, the
backward kernel in ``backward.py``, what they share in ``common.py``. ``jax.grad`` goes
through a ``jax.custom_vjp``: the forward saves the float32 state before every segment
(the backward's only residual besides the inputs) and the backward visits the segments
in reverse.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from tops.backends import pallas_interpret
from tops.ops.simple_gla import backward, common, kernel
from tops.ops.simple_gla.alibi import build_alibi_slopes, make_alibi_g_gamma
from tops.spec.simple_gla import (
    FIRST_DERIVATIVES_ONLY,
    check_cu_seqlens,
    check_device_cu_seqlens,
    validate,
)

__all__ = ["build_alibi_slopes", "chunk_simple_gla", "make_alibi_g_gamma"]


def chunk_simple_gla(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    g: ArrayLike | None = None,
    g_gamma: ArrayLike | None = None,
    scale: float | None = None,
    initial_state: ArrayLike | None = None,
    output_final_state: bool = False,
    cu_seqlens: ArrayLike | None = None,
    chunk_size: Literal[64, 128] = 64,
) -> tuple[jax.Array, jax.Array | None]:
    """Simple GLA, ``h_t = exp(g_t + gamma) h_{t-1} + k_t^T v_t``, ``o_t = scale q_t h_t``.

    Args:
      q, k: ``[B, T, H, K]``, bf16 or f32; v: ``[B, T, H, V]``, the dtype of ``q``.
        Any ``B >= 0``, ``T, H, K, V >= 1``.
      g: None or float32 ``[B, T, H]``, per-token log decay.
      g_gamma: None or float32 ``[H]``, per-head constant log decay (adds to ``g``).
      scale: None (``K ** -0.5``) or a finite Python or NumPy number.
      initial_state: None (zeros) or float32 ``[N, H, K, V]``.
      output_final_state: whether to return the final states (a Python or NumPy bool).
      cu_seqlens: None or int32 or int64 ``[N + 1]`` with ``B == 1``: packed sequences
        ``[cu[n], cu[n+1])``, each from its own initial state. A NumPy array is checked
        (start 0, never decreasing, end ``T``); a JAX array, possibly traced, is not
        read on the host: the kernels run on the repaired offsets
        (``common.repair_cu_seqlens``), unless ``TOPS_CHECK_CU_SEQLENS=1`` asks for the
        check (see ``tops/spec/simple_gla.py``).
      chunk_size: 64 or 128 (blocking only, not the result).

    Returns:
      ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of ``v``; ``final_state``
      float32 ``[N, H, K, V]`` or None unless ``output_final_state``. Every matmul is
      float32 at ``HIGHEST`` precision; the state is float32 throughout.

    Differentiable (``jax.grad``, ``jax.vjp``, under ``jax.jit`` or not) w.r.t. ``q, k,
    v, g, g_gamma, initial_state``, with cotangents for ``o`` and ``final_state``;
    gradients come back in each input's dtype (``d g_gamma[h]`` sums the gradient of
    every token's total log decay of head ``h``). ``cu_seqlens`` gets none. First
    derivatives only. Under ``jax_enable_x64`` the results are those without it.

    Raises:
      TypeError: an array argument that is not a JAX or NumPy array (a list, a torch
        tensor), or ``output_final_state`` that is not a bool.
      ValueError: an argument violates the contract (named in the message), malformed
        NumPy ``cu_seqlens`` included (and concrete JAX ones with
        ``TOPS_CHECK_CU_SEQLENS=1``).
      jax.errors.JaxRuntimeError: with ``TOPS_CHECK_CU_SEQLENS=1``, malformed traced
        ``cu_seqlens``, when the computation runs (its message holds the ValueError).
      NotImplementedError: when a gradient is differentiated (``jax.grad`` of ``jax.grad``,
        ``jax.hessian``, ``jax.jvp`` of ``jax.grad``).

    Warns:
      HeadFirstWarning: ``1 < T < H`` suggests head-first ``[B, H, T, K]`` inputs.
    """
    shapes = validate(
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        api="tops.ops",
    )
    output_final_state = bool(output_final_state)
    if shapes.batch == 0:
        o = jnp.zeros((0, shapes.seq_len, shapes.heads, shapes.value_dim), v.dtype)
        state_shape = (0, shapes.heads, shapes.key_dim, shapes.value_dim)
        return o, jnp.zeros(state_shape, jnp.float32) if output_final_state else None

    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, shapes.seq_len)
        # The kernels index in int32 (TPU scalar memory has no 64-bit integers); repairing
        # outside the custom_vjp keeps its integer input, which gets no cotangent, int32.
        cu_seqlens = _repair_cu_seqlens(cu_seqlens, seq_len=shapes.seq_len)

    def as_jax(x, dtype=None):
        return None if x is None else jnp.asarray(x, dtype)

    return _forward(
        *(as_jax(x) for x in (q, k, v, g, g_gamma, initial_state)),
        cu_seqlens,
        scale=shapes.scale,
        chunk_size=int(chunk_size),
        output_final_state=output_final_state,
        interpret=pallas_interpret(),
    )


def _check_cu_seqlens(cu_seqlens, seq_len: int) -> None:
    """ValueError for malformed NumPy ``cu_seqlens``; with ``TOPS_CHECK_CU_SEQLENS=1``
    also for a concrete JAX array (a device-to-host copy) and, when the computation runs,
    for a traced one (a host callback raising the same ValueError, which JAX reports as
    a ``JaxRuntimeError``)."""
    if isinstance(cu_seqlens, np.ndarray):
        check_cu_seqlens(cu_seqlens, seq_len)
    elif check_device_cu_seqlens():
        if isinstance(cu_seqlens, jax.core.Tracer):
            jax.debug.callback(functools.partial(check_cu_seqlens, seq_len=seq_len), cu_seqlens)
        else:
            check_cu_seqlens(np.asarray(cu_seqlens), seq_len)


def _repair_cu_seqlens(cu_seqlens, *, seq_len: int) -> jax.Array:
    """``common.repair_cu_seqlens`` as one dispatch (a NumPy array is clipped on the
    host first, so int64 entries never wrap)."""
    if isinstance(cu_seqlens, np.ndarray):
        cu_seqlens = np.clip(cu_seqlens, 0, seq_len)
    return _repair_jit(cu_seqlens, seq_len=seq_len)


_repair_jit = jax.jit(common.repair_cu_seqlens, static_argnames=("seq_len",))


@functools.partial(
    jax.jit, static_argnames=("scale", "chunk_size", "output_final_state", "interpret")
)
def _forward(
    q,
    k,
    v,
    g,
    g_gamma,
    initial_state,
    cu_seqlens,
    *,
    scale,
    chunk_size,
    output_final_state,
    interpret,
):
    """The kernel launch for validated inputs with ``B >= 1``, compiled once per shape,
    dtype, presence of each optional array and static argument."""
    return _differentiable(
        q, k, v, g, g_gamma, initial_state, cu_seqlens,
        scale, chunk_size, output_final_state, interpret,
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _differentiable(
    q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, chunk_size, output_final_state, interpret
):
    o, final_state, _ = kernel.forward(
        q, k, v, g, g_gamma, initial_state, cu_seqlens,
        scale=scale, chunk_size=chunk_size, output_final_state=output_final_state,
        save_states=False, interpret=interpret,
    )  # fmt: skip
    return o, final_state


def _first_derivatives_only(launch):
    """``launch(scale, chunk_size, output_final_state, interpret, *arrays)``, run by the
    custom_vjp's forward or backward, with a JVP rule that raises. The Pallas kernels have
    no derivative rules (differentiating them fails on a bare assertion inside
    ``pallas_call``), and only a derivative of a derivative differentiates these launches."""
    launch = jax.custom_jvp(launch, nondiff_argnums=(0, 1, 2, 3))

    @launch.defjvp
    def _refuse(scale, chunk_size, output_final_state, interpret, primals, tangents):
        raise NotImplementedError(FIRST_DERIVATIVES_ONLY)

    return launch


@_first_derivatives_only
def _saving_forward(scale, chunk_size, output_final_state, interpret, arrays):
    """The forward, also saving the state before every segment (padded layout)."""
    return kernel.forward(
        *arrays, scale=scale, chunk_size=chunk_size, output_final_state=output_final_state,
        save_states=True, interpret=interpret, padded_states=True,
    )  # fmt: skip


@_first_derivatives_only
def _gradients(scale, chunk_size, output_final_state, interpret, residuals, cotangents):
    """``(dq, dk, dv, dg, dg_gamma, dh0)`` from the forward's residuals and the
    cotangents of ``(o, final_state)``."""
    q, k, v, g, g_gamma, initial_state, cu_seqlens, states = residuals
    do, dht = cotangents
    dq, dk, dv, da, dh0 = backward.backward(
        q, k, v, g, g_gamma, cu_seqlens, states, do, dht if output_final_state else None,
        has_h0=initial_state is not None, scale=scale, chunk_size=chunk_size, interpret=interpret,
    )  # fmt: skip
    dg = da if g is not None else None
    dg_gamma = backward.sum_tokens(da) if g_gamma is not None else None
    return dq, dk, dv, dg, dg_gamma, dh0


def _differentiable_fwd(
    q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, chunk_size, output_final_state, interpret
):
    arrays = (q, k, v, g, g_gamma, initial_state, cu_seqlens)
    o, final_state, states = _saving_forward(
        scale, chunk_size, output_final_state, interpret, arrays
    )
    return (o, final_state), (*arrays, states)


def _differentiable_bwd(scale, chunk_size, output_final_state, interpret, residuals, cotangents):
    gradients = _gradients(scale, chunk_size, output_final_state, interpret, residuals, cotangents)
    return (*gradients, None)


_differentiable.defvjp(_differentiable_fwd, _differentiable_bwd)
