"""float64 references for chunked simple GLA; ``tops/spec/simple_gla.py`` states the
semantics (recurrence, gates, scale, variable-length sequences).

Two independent formulations, both in JAX under a scoped ``jax.enable_x64(True)`` (x64 is
never enabled globally):

* :func:`chunk_simple_gla`: the definition, one step per token (:func:`recurrence_f64`).
* :func:`chunk_simple_gla_chunked`: the chunked form the kernels use
  (:func:`chunked_f64`): an intra-chunk attention matrix plus the state carried between
  chunks.
* :func:`chunk_simple_gla_grad`: the gradients of ``sum(o * do) + sum(final_state * dht)``
  w.r.t. every input, ``jax.vjp`` of :func:`recurrence_f64` per sequence (and
  :func:`chunk_simple_gla_chunked_grad`, the same through :func:`chunked_f64`).

Both apply the gate through the per-token total log decay ``g_t + gamma_h`` with float64
cumulative sums, and every exponent that a causal mask discards is replaced *before*
``exp`` (``exp(where(mask, G_i - G_j, -inf))``), so no masked entry can overflow; a
``-inf`` gate is an exact reset in both (the recurrence multiplies by ``exp(-inf) = 0``,
the chunked form cuts every decay that crosses it).

:func:`recurrence_f64` and :func:`chunked_f64` are pure functions of float64 JAX arrays
for one sequence, so ``jax.vjp`` can differentiate them (inside ``jax.enable_x64(True)``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tops.spec.common import require_dtype, require_rank
from tops.spec.simple_gla import GLAShapes, check_cu_seqlens, validate

_HIGHEST = lax.Precision.HIGHEST
# dtypes accepted for the cotangents of o and final_state by the gradient references
COTANGENT_DTYPES = {"do": ("bfloat16", "float32", "float64"), "dht": ("float32", "float64")}


def chunk_simple_gla(
    q,
    k,
    v,
    *,
    g=None,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    chunk_size=64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Simple GLA by the step-by-step recurrence (the definition), in float64.

    Args:
      q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (bf16 or f32; NumPy or JAX arrays).
      g: None or float32 ``[B, T, H]`` per-token log decay.
      g_gamma: None or float32 ``[H]`` per-head log decay (adds to ``g``).
      scale: None (``K ** -0.5``) or a finite number.
      initial_state: None (zeros) or float32 ``[N, H, K, V]``.
      output_final_state: whether to return the final states.
      cu_seqlens: None or int32 ``[N + 1]`` (``B == 1``): sequence ``n`` is the tokens
        ``[cu[n], cu[n+1])``. Here the invariants are checked (ValueError otherwise).
      chunk_size: 64 or 128; validated only (the recurrence does not block).

    Returns:
      ``(o, final_state)``: ``o`` float64 ``[B, T, H, V]``; ``final_state`` float64
      ``[N, H, K, V]``, or None unless ``output_final_state``.
    """
    return _per_sequence(
        recurrence_f64,
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
    )


def chunk_simple_gla_chunked(
    q,
    k,
    v,
    *,
    g=None,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    chunk_size=64,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Simple GLA by the chunked formulation (:func:`chunked_f64`), in float64.

    Same arguments and results as :func:`chunk_simple_gla`; each sequence is cut into
    chunks of ``chunk_size`` tokens from its own start (the last chunk may be shorter).
    """
    return _per_sequence(
        _chunked_solver(chunk_size),
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
    )


def chunk_simple_gla_grad(
    q,
    k,
    v,
    *,
    g=None,
    g_gamma=None,
    scale=None,
    initial_state=None,
    cu_seqlens=None,
    chunk_size=64,
    do,
    dht=None,
) -> dict[str, np.ndarray]:
    """Gradients of simple GLA, ``jax.vjp`` of the step recurrence (:func:`recurrence_f64`,
    the definition) per sequence, in float64.

    The loss is ``sum(o * do) + sum(final_state * dht)`` (no second term when ``dht`` is
    None), with ``(o, final_state)`` of :func:`chunk_simple_gla` on the same arguments
    and ``output_final_state = dht is not None``.

    Args:
      q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size: as in
        :func:`chunk_simple_gla` (validated the same way).
      do: the cotangent of ``o``, ``[B, T, H, V]``, bf16, f32 or f64.
      dht: None or the cotangent of ``final_state``, ``[N, H, K, V]``, f32 or f64.

    Returns:
      float64 NumPy gradients, each the shape of its input: ``"dq"``, ``"dk"``, ``"dv"``
      always; ``"dg"`` iff ``g`` is given; ``"dg_gamma"`` iff ``g_gamma`` is given (for
      head ``h``, the sum over every position of every batch row or sequence of the
      gradient w.r.t. that position's total log decay ``g_t + gamma_h``); ``"dh0"`` iff
      ``initial_state`` is given (zeros for a sequence whose final state has no
      cotangent and that produces no output).

    Raises:
      ValueError: an argument violates the contract, or ``do``/``dht`` has the wrong
        rank, shape or dtype.
    """
    return _per_sequence_grad(
        recurrence_f64,
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=scale,
        initial_state=initial_state,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        do=do,
        dht=dht,
    )


def chunk_simple_gla_chunked_grad(
    q,
    k,
    v,
    *,
    g=None,
    g_gamma=None,
    scale=None,
    initial_state=None,
    cu_seqlens=None,
    chunk_size=64,
    do,
    dht=None,
) -> dict[str, np.ndarray]:
    """:func:`chunk_simple_gla_grad` by ``jax.vjp`` of the chunked form
    (:func:`chunked_f64`) instead of the recurrence: a second formulation for tests."""
    return _per_sequence_grad(
        _chunked_solver(chunk_size),
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=scale,
        initial_state=initial_state,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        do=do,
        dht=dht,
    )


@jax.jit
def recurrence_f64(q, k, v, g_total, h0, scale: float):
    """The recurrence for one sequence, one token at a time (``lax.scan`` over t).

    ``h_t = exp(g_total_t) * h_{t-1} + k_t^T v_t`` and ``o_t = scale * q_t h_t``, per head.

    Args:
      q, k: float64 ``[T, H, K]``; v: float64 ``[T, H, V]``.
      g_total: float64 ``[T, H]``, the total log decay ``g_t + gamma_h`` of each token.
      h0: float64 ``[H, K, V]``, the state before the first token.
      scale: Python float.

    Returns:
      ``(o, h_T)``: float64 ``[T, H, V]`` and ``[H, K, V]`` (``h_T = h0`` when ``T == 0``).
      Pure, jitted (``scale`` is traced) and differentiable with ``jax.vjp``; call it
      inside ``jax.enable_x64(True)`` (ValueError for inputs that are not float64).
    """
    _require_f64(q=q, k=k, v=v, g_total=g_total, h0=h0)

    def step(h, token):
        q_t, k_t, v_t, g_t = token  # [H, K], [H, K], [H, V], [H]
        h = jnp.exp(g_t)[:, None, None] * h + k_t[:, :, None] * v_t[:, None, :]
        o_t = scale * jnp.einsum("hk,hkv->hv", q_t, h, precision=_HIGHEST)
        return h, o_t

    h_last, o = lax.scan(step, h0, (q, k, v, g_total))
    return o, h_last


def chunked_f64(q, k, v, g_total, h0, scale: float, chunk_size: int):
    """The chunked form for one sequence; arguments and results as :func:`recurrence_f64`.

    Within a chunk of ``C`` tokens, with ``G_i = sum_{r <= i} g_total_r`` (float64 cumsum
    from the chunk start) and ``h`` the state before the chunk::

        o_i    = scale * (exp(G_i) q_i h + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j)
        h_next = exp(G_{C-1}) h + sum_j exp(G_{C-1} - G_j) k_j^T v_j

    The causal weights are ``exp(where(j <= i, G_i - G_j, -inf))``, then masked: the
    discarded exponents (``j > i``, positive for decaying gates) never reach ``exp``; a
    ``-inf`` gate (a reset) cuts the decays that cross it the same way.
    Unmasked, ALiBi decays at chunk 128 overflow float32, stronger ones float64, and
    ``jax.vjp`` would then return NaN. Pure and differentiable, like :func:`recurrence_f64`.
    """
    _require_f64(q=q, k=k, v=v, g_total=g_total, h0=h0)
    outputs = [jnp.zeros((0, *v.shape[1:]), jnp.float64)]
    h = h0
    for start in range(0, q.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        o_chunk, h = _chunk_step(q[chunk], k[chunk], v[chunk], g_total[chunk], h, scale)
        outputs.append(o_chunk)
    return jnp.concatenate(outputs), h


def _chunked_solver(chunk_size: int) -> Callable:
    """:func:`chunked_f64` with ``chunk_size`` bound: a ``solve`` with the arguments of
    :func:`recurrence_f64`."""

    def chunked(q, k, v, g_total, h0, scale):
        return chunked_f64(q, k, v, g_total, h0, scale, chunk_size)

    return chunked


@jax.jit
def _chunk_step(q, k, v, g_total, h, scale: float):
    """One chunk: ``q, k [C, H, K]``, ``v [C, H, V]``, ``g_total [C, H]``, ``h [H, K, V]``
    -> ``(o [C, H, V], h_next [H, K, V])``.

    A ``-inf`` gate is a reset (``tops/spec/simple_gla.py``): the sums run over the finite
    gates and ``R``, the number of resets up to each row, cuts every decay that crosses
    one (its exponent becomes ``-inf``), so ``-inf - (-inf)`` is never formed."""
    reset = jnp.isneginf(g_total)
    G = jnp.cumsum(jnp.where(reset, 0.0, g_total), axis=0)  # [C, H], inclusive
    R = jnp.cumsum(reset.astype(jnp.int32), axis=0)  # [C, H]
    length = q.shape[0]
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]  # [i, j]: j <= i
    kept = causal[None] & (R.T[:, :, None] == R.T[:, None, :])  # [H, i, j]
    log_decay = G.T[:, :, None] - G.T[:, None, :]  # [H, i, j]: G_i - G_j
    decay = jnp.exp(jnp.where(kept, log_decay, -jnp.inf))
    scores = jnp.einsum("ihk,jhk->hij", q, k, precision=_HIGHEST)
    attention = jnp.where(kept, scores * decay, 0.0)  # [H, i, j]

    to_row = jnp.exp(jnp.where(R == 0, G, -jnp.inf))  # [C, H]: exp(G_i), no reset up to i
    from_state = to_row[:, :, None] * jnp.einsum("ihk,hkv->ihv", q, h, precision=_HIGHEST)
    within = jnp.einsum("hij,jhv->ihv", attention, v, precision=_HIGHEST)
    o = scale * (from_state + within)

    # exp(G_{C-1} - G_j) for rows j with no reset after them, exp(G_{C-1}) without any.
    to_end = jnp.exp(jnp.where(R[-1][None, :] == R, G[-1][None, :] - G, -jnp.inf))
    whole = jnp.exp(jnp.where(R[-1] == 0, G[-1], -jnp.inf))
    h_next = whole[:, None, None] * h + jnp.einsum(
        "jhk,jhv->hkv", k * to_end[:, :, None], v, precision=_HIGHEST
    )
    return o, h_next


def _require_f64(**arrays) -> None:
    for name, array in arrays.items():
        if array.dtype != jnp.float64:
            raise ValueError(
                f"{name} must be float64 (call inside jax.enable_x64(True)), got {array.dtype}"
            )


def _sequences(q, k, v, **arguments) -> tuple[GLAShapes, list[tuple[int, slice]]]:
    """Validate the arguments and list the sequences as ``(batch row, token slice)``, in
    the order of ``initial_state`` / ``final_state`` (one per row, or per ``cu_seqlens``
    sequence)."""
    shapes = validate(q, k, v, **arguments)
    if shapes.varlen:
        bounds = _checked_cu_seqlens(arguments["cu_seqlens"], shapes.seq_len)
        return shapes, [(0, slice(bounds[n], bounds[n + 1])) for n in range(shapes.num_states)]
    return shapes, [(b, slice(0, shapes.seq_len)) for b in range(shapes.batch)]


def _f64_arguments(q, k, v, g, g_gamma, initial_state, shapes: GLAShapes):
    """``(q, k, v, g_total, h0)`` as float64 JAX arrays (call inside the x64 scope):
    ``g_total [B, T, H] = g + g_gamma`` (zeros for absent gates), ``h0`` zeros when
    ``initial_state`` is None."""
    B, T, H = shapes.batch, shapes.seq_len, shapes.heads
    g_total = jnp.zeros((B, T, H), jnp.float64)
    if g is not None:
        g_total = g_total + _f64(g)
    if g_gamma is not None:
        g_total = g_total + _f64(g_gamma)
    if initial_state is None:
        h0 = jnp.zeros((shapes.num_states, H, shapes.key_dim, shapes.value_dim), jnp.float64)
    else:
        h0 = _f64(initial_state)
    return _f64(q), _f64(k), _f64(v), g_total, h0


def _per_sequence(
    solve: Callable,
    q,
    k,
    v,
    *,
    g,
    g_gamma,
    scale,
    initial_state,
    output_final_state,
    cu_seqlens,
    chunk_size,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate, split the batch into sequences and run ``solve`` on each in float64."""
    shapes, sequences = _sequences(
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
    )
    B, T, H = shapes.batch, shapes.seq_len, shapes.heads
    K, V, N = shapes.key_dim, shapes.value_dim, shapes.num_states
    o = np.zeros((B, T, H, V))
    final = np.zeros((N, H, K, V))
    with jax.enable_x64(True):
        q64, k64, v64, g_total, h0 = _f64_arguments(q, k, v, g, g_gamma, initial_state, shapes)
        for n, (b, tokens) in enumerate(sequences):
            o_seq, h_seq = solve(
                q64[b, tokens],
                k64[b, tokens],
                v64[b, tokens],
                g_total[b, tokens],
                h0[n],
                shapes.scale,
            )
            o[b, tokens] = np.asarray(o_seq)
            final[n] = np.asarray(h_seq)
    return o, (final if output_final_state else None)


def _per_sequence_grad(
    solve: Callable,
    q,
    k,
    v,
    *,
    g,
    g_gamma,
    scale,
    initial_state,
    cu_seqlens,
    chunk_size,
    do,
    dht,
) -> dict[str, np.ndarray]:
    """Validate, split into sequences and pull ``(do, dht)`` back through ``solve`` on
    each sequence with ``jax.vjp`` in float64."""
    shapes, sequences = _sequences(
        q,
        k,
        v,
        g=g,
        g_gamma=g_gamma,
        scale=scale,
        initial_state=initial_state,
        output_final_state=dht is not None,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
    )
    B, T, H = shapes.batch, shapes.seq_len, shapes.heads
    K, V, N = shapes.key_dim, shapes.value_dim, shapes.num_states
    _require_array("do", do, (B, T, H, V), "[B, T, H, V]")
    if dht is not None:
        _require_array("dht", dht, (N, H, K, V), "[N, H, K, V]")

    grads = {
        "dq": np.zeros((B, T, H, K)),
        "dk": np.zeros((B, T, H, K)),
        "dv": np.zeros((B, T, H, V)),
        "dg_total": np.zeros((B, T, H)),
        "dh0": np.zeros((N, H, K, V)),
    }
    with jax.enable_x64(True):
        q64, k64, v64, g_total, h0 = _f64_arguments(q, k, v, g, g_gamma, initial_state, shapes)
        do64 = _f64(do)
        dht64 = jnp.zeros((N, H, K, V), jnp.float64) if dht is None else _f64(dht)

        def solve_scaled(q, k, v, g_total, h0):
            return solve(q, k, v, g_total, h0, shapes.scale)

        for n, (b, tokens) in enumerate(sequences):
            primals = (q64[b, tokens], k64[b, tokens], v64[b, tokens], g_total[b, tokens], h0[n])
            _, pullback = jax.vjp(solve_scaled, *primals)
            dq, dk, dv, dg_total, dh0 = pullback((do64[b, tokens], dht64[n]))
            grads["dq"][b, tokens] = np.asarray(dq)
            grads["dk"][b, tokens] = np.asarray(dk)
            grads["dv"][b, tokens] = np.asarray(dv)
            grads["dg_total"][b, tokens] = np.asarray(dg_total)
            grads["dh0"][n] = np.asarray(dh0)

    result = {name: grads[name] for name in ("dq", "dk", "dv")}
    if g is not None:
        result["dg"] = grads["dg_total"]
    if g_gamma is not None:
        result["dg_gamma"] = grads["dg_total"].sum(axis=(0, 1))
    if initial_state is not None:
        result["dh0"] = grads["dh0"]
    return result


def _require_array(name: str, array, shape: tuple[int, ...], layout: str) -> None:
    require_rank(name, array, len(shape), layout)
    require_dtype(name, array, COTANGENT_DTYPES[name])
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(array.shape)}")


def _f64(array):
    """A NumPy or JAX array (bf16 included) as a float64 JAX array (inside x64 scope)."""
    return jnp.asarray(np.asarray(array).astype(np.float64))


def _checked_cu_seqlens(cu_seqlens, seq_len: int) -> list[int]:
    check_cu_seqlens(cu_seqlens, seq_len)
    return [int(x) for x in np.asarray(cu_seqlens)]
