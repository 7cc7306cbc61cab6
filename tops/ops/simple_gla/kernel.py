"""Pallas TPU kernel for the chunked simple GLA forward, beside its launcher.

One fused kernel on the grid ``(B, H, Vp / BV, S)`` of ``common.py``, the segments in
order, the ``(Kp, BV)`` float32 state in VMEM scratch across them. Blocks: ``q, k``
``(C, Kp)``, ``v, o`` ``(C, BV)`` in the input dtype; ``g`` ``(8, 128)`` float32;
``g_gamma`` ``(H,)`` in SMEM; initial, final and saved states ``(Kp, BV)`` float32. Per
segment, with the window's log decays ``D`` (``common.segment_decays``)::

    o_i   = scale * (exp(D_i) q_i S + sum_{j <= i} exp(D_i - D_j) (q_i . k_j) v_j)
    S_new = exp(D_tot) S + sum_j exp(D_tot - D_j) k_j^T v_j

Consecutive segments of one chunk map to the same blocks, so q, k, v and g are read
once and o is written once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tops.compile_only import PallasConfig
from tops.ops.simple_gla.common import (
    Interpret,
    Launch,
    causal_mask,
    dot,
    load_window,
    segment,
    segment_decays,
    store_window,
    window_rows,
)


def _gla_kernel(
    *refs,
    chunk,
    seq_len,
    scale,
    varlen,
    has_g,
    has_gamma,
    has_h0,
    has_ht,
    save_states,
):
    """One segment of one ``(batch, head, value tile)``: output rows of its window and
    the state update. Refs, in order:

    * scalar prefetch (only with ``cu_seqlens``): ``chunk[S]``, ``seq[S]`` int32 and
      ``cu_seqlens[N + 1]``;
    * ``q_ref``, ``k_ref`` ``(C, Kp)``, ``v_ref`` ``(C, BV)``;
    * ``g_ref`` ``(8, 128)`` (with ``g``): 8 chunks of the head, the segment's among them;
    * ``gamma_ref`` ``(H,)`` in SMEM (with ``g_gamma``);
    * ``h0_ref`` ``(Kp, BV)`` (with an initial state): the sequence's;
    * ``o_ref`` ``(C, BV)``;
    * ``ht_ref`` ``(Kp, BV)`` (with ``output_final_state``): the state after the segment;
    * ``states_ref`` ``(Kp, BV)`` (with ``save_states``): the state before the segment;
    * scratch ``state_ref`` ``(Kp, BV)``, carried along the segment axis.
    """
    refs = list(refs)
    prefetch = [refs.pop(0) for _ in range(3)] if varlen else []
    q_ref, k_ref, v_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    g_ref = refs.pop(0) if has_g else None
    gamma_ref = refs.pop(0) if has_gamma else None
    h0_ref = refs.pop(0) if has_h0 else None
    o_ref = refs.pop(0)
    ht_ref = refs.pop(0) if has_ht else None
    states_ref = refs.pop(0) if save_states else None
    (state_ref,) = refs

    chunk_row, lo, hi, first, _ = segment(prefetch, chunk=chunk, seq_len=seq_len, varlen=varlen)

    @pl.when(first)
    def _reset():
        if has_h0:
            state_ref[...] = h0_ref[...]
        else:
            state_ref[...] = jnp.zeros(state_ref.shape, jnp.float32)

    state = state_ref[...]
    if save_states:
        states_ref[...] = state

    window = window_rows(lo, hi, chunk)
    q, k, v = (load_window(ref, window) for ref in (q_ref, k_ref, v_ref))
    decay_ij, decay_in, decay_tot, decay_out = segment_decays(
        g_ref, gamma_ref, chunk_row=chunk_row, lo=lo, hi=hi, chunk=chunk
    )
    causal = causal_mask(window, chunk)

    scores = dot(q, k, ((1,), (1,)))  # (C, C) = q k^T
    attention = jnp.where(causal, scores * jnp.exp(jnp.where(causal, decay_ij, 0.0)), 0.0)
    from_state = dot(q * jnp.exp(jnp.where(window, decay_in, 0.0)), state, ((1,), (0,)))
    within = dot(attention, v, ((1,), (0,)))
    store_window(o_ref, window, scale * (from_state + within))

    k_out = k * jnp.exp(jnp.where(window, decay_out, 0.0))
    state = jnp.exp(decay_tot) * state + dot(k_out, v, ((0,), (0,)))
    state_ref[...] = state
    if has_ht:
        ht_ref[...] = state


def forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array | None,
    g_gamma: jax.Array | None,
    initial_state: jax.Array | None,
    cu_seqlens: jax.Array | None,
    *,
    scale: float,
    chunk_size: int,
    output_final_state: bool,
    save_states: bool,
    interpret: Interpret,
    padded_states: bool = False,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Launch the kernel on validated inputs with ``B >= 1``.

    Args:
      q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (bf16 or f32).
      g: None or float32 ``[B, T, H]``; g_gamma: None or float32 ``[H]``.
      initial_state: None or float32 ``[N, H, K, V]``.
      cu_seqlens: None or int32 or int64 ``[N + 1]`` (``B == 1``), possibly traced; run
        on ``common.repair_cu_seqlens`` of it (any entries are safe).
      scale: the resolved scale; chunk_size: 64 or 128.
      output_final_state: whether to return the final states.
      save_states: also return the state before every segment (for the backward).
      interpret: ``pl.pallas_call``'s (``tops.backends.pallas_interpret()``).
      padded_states: return the saved states with ``K, V`` padded to ``Kp, Vp`` (the
        backward's layout; zero in the padding).

    Returns:
      ``(o, final_state, states)``: ``o [B, T, H, V]`` in the dtype of ``v``;
      ``final_state`` float32 ``[N, H, K, V]`` (None unless ``output_final_state``);
      ``states`` float32 ``[B, H, S, K, V]`` (None unless ``save_states``), the state
      before each segment (chunk ``s`` of each batch row; with ``cu_seqlens``, segment
      ``s`` of ``common.segment_tables``).
    """
    launch = Launch.of(q, v, cu_seqlens, chunk=chunk_size)
    batch, seq_len, heads = launch.batch, launch.seq_len, launch.heads
    kp, vp, bv, chunk = launch.kp, launch.vp, launch.bv, launch.chunk
    maps = launch.index_maps()
    inputs, in_specs = launch.operands(maps, [q, k], [v], g, g_gamma)
    state_spec = pl.BlockSpec((None, None, kp, bv), maps.state)
    if initial_state is not None:
        inputs.append(launch.padded_state(initial_state))
        in_specs.append(state_spec)

    out_shape = [jax.ShapeDtypeStruct((batch, seq_len, heads * vp), v.dtype)]
    out_specs = [pl.BlockSpec((None, chunk, bv), maps.value)]
    if output_final_state:
        out_shape.append(jax.ShapeDtypeStruct((launch.num_states, heads, kp, vp), jnp.float32))
        out_specs.append(state_spec)
    if save_states:
        saved_shape = (batch, heads, launch.num_segments, kp, vp)
        out_shape.append(jax.ShapeDtypeStruct(saved_shape, jnp.float32))
        out_specs.append(pl.BlockSpec((None, None, None, kp, bv), maps.saved))

    outputs = launch.call(
        _gla_kernel, cu_seqlens, inputs, in_specs, out_shape, out_specs,
        interpret=interpret, scale=scale, has_g=g is not None, has_gamma=g_gamma is not None,
        has_h0=initial_state is not None, has_ht=output_final_state, save_states=save_states,
    )  # fmt: skip
    key_dim, value_dim = launch.key_dim, launch.value_dim
    o = outputs.pop(0).reshape(batch, seq_len, heads, vp)[..., :value_dim]
    final_state = outputs.pop(0)[:, :, :key_dim, :value_dim] if output_final_state else None
    states = None
    if save_states:
        states = outputs.pop(0)
        if not padded_states:
            states = states[..., :key_dim, :value_dim]
    return o, final_state, states


def shipped_configs() -> list[PallasConfig]:
    """Every shipped configuration for the TPU compile check, through the public wrapper:
    chunk 64 and 128, bf16 and f32, each gate combination, with and without initial and
    final states, varlen, and K/V that need padding or several value tiles (V = 512: two of
    256 lanes, V = 600: five of 128); ``T = 100`` leaves a partial last chunk, ``T = 1`` is
    decoding. Each
    configuration also appears as ``<name>_grad``: ``jax.vjp`` through the wrapper with
    cotangents for ``o`` (and the final state), which compiles the saving forward and the
    backward kernel (``backward.py``; V = 600 and V = 512 give partial ``dq, dk`` per value
    tile)."""
    # (gate, B, T, K, V, initial and final states, len(cu_seqlens) or None)
    cases = (
        *((gate, 2, 100, 128, 128, True, None) for gate in ("g", "g_gamma", "both", "none")),
        ("both", 1, 300, 100, 64, True, 5),
        ("g", 3, 1, 64, 600, True, None),
        ("g_gamma", 1, 256, 256, 512, False, None),
        ("none", 1, 129, 128, 100, False, 3),
    )
    configs = []
    for dtype in ("bfloat16", "float32"):
        for chunk in (64, 128):
            for gate, batch, seq_len, key_dim, value_dim, states, cu in cases:
                varlen = "" if cu is None else f"_varlen{cu - 1}"
                outputs = "_h0_hT" if states else "_o_only"
                configs += _config(
                    f"{dtype}_C{chunk}_{gate}_T{seq_len}_K{key_dim}_V{value_dim}{varlen}{outputs}",
                    dtype=dtype, batch=batch, seq_len=seq_len, key_dim=key_dim,
                    value_dim=value_dim, chunk=chunk, gate=gate, h0=states, ht=states, cu=cu,
                )  # fmt: skip
            configs += _saved_states_configs(dtype, chunk)
    return configs


def production_configs() -> list[PallasConfig]:
    """The production shapes, forward and ``_grad``, bf16, gate ``g``, chunk 64 and 128:
    ``(B, T, H, K = V)`` = (1, 8192, 16, 128), (4, 4096, 32, 128), (8, 2048, 32, 256),
    and varlen: four sequences packed in (1, 8192, 16, 128)."""
    configs = []
    for chunk in (64, 128):
        for batch, seq_len, heads, dim, cu in (
            (1, 8192, 16, 128, None),
            (4, 4096, 32, 128, None),
            (8, 2048, 32, 256, None),
            (1, 8192, 16, 128, 5),
        ):
            varlen = "" if cu is None else f"_varlen{cu - 1}"
            configs += _config(
                f"bfloat16_C{chunk}_g_B{batch}_T{seq_len}_H{heads}_K{dim}_V{dim}{varlen}",
                dtype="bfloat16", batch=batch, seq_len=seq_len, heads=heads, key_dim=dim,
                value_dim=dim, chunk=chunk, gate="g", h0=False, ht=True, cu=cu,
            )  # fmt: skip
    return configs


def _config(
    name: str,
    *,
    dtype: str,
    batch: int,
    seq_len: int,
    key_dim: int,
    value_dim: int,
    chunk: int,
    gate: str,
    h0: bool,
    ht: bool,
    cu: int | None = None,
    heads: int = 2,
) -> list[PallasConfig]:
    """The forward ``name`` and its ``name_grad`` (``jax.vjp`` with cotangents for ``o``
    and, with ``ht``, the final state) through ``chunk_simple_gla``."""
    from tops.ops.simple_gla import chunk_simple_gla

    def struct(shape, dtype):
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

    num_states = batch if cu is None else cu - 1
    names = ["q", "k", "v"]
    shapes = [
        struct((batch, seq_len, heads, key_dim), dtype),
        struct((batch, seq_len, heads, key_dim), dtype),
        struct((batch, seq_len, heads, value_dim), dtype),
    ]
    if gate in ("g", "both"):
        names.append("g")
        shapes.append(struct((batch, seq_len, heads), "float32"))
    if gate in ("g_gamma", "both"):
        names.append("g_gamma")
        shapes.append(struct((heads,), "float32"))
    if h0:
        names.append("initial_state")
        shapes.append(struct((num_states, heads, key_dim, value_dim), "float32"))
    if cu is not None:
        names.append("cu_seqlens")
        shapes.append(struct((cu,), "int32"))

    def fn(q, k, v, *rest):
        arrays = dict(zip(names[3:], rest, strict=True))
        return chunk_simple_gla(q, k, v, **arrays, output_final_state=ht, chunk_size=chunk)

    def grad_fn(*args):
        primals, cotangents = args[: len(names)], args[len(names) :]
        cu_seqlens = primals[-1] if cu is not None else None
        differentiable = primals[:-1] if cu is not None else primals

        def primal(*xs):
            arrays = dict(zip(names, xs, strict=False))
            return chunk_simple_gla(
                **arrays, cu_seqlens=cu_seqlens, output_final_state=ht, chunk_size=chunk
            )

        _, pullback = jax.vjp(primal, *differentiable)
        return pullback((cotangents[0], cotangents[1] if ht else None))

    cotangent_shapes = [struct((batch, seq_len, heads, value_dim), dtype)]
    if ht:
        cotangent_shapes.append(struct((num_states, heads, key_dim, value_dim), "float32"))
    return [
        PallasConfig(name, fn, tuple(shapes)),
        PallasConfig(f"{name}_grad", grad_fn, (*shapes, *cotangent_shapes)),
    ]


def _saved_states_configs(dtype: str, chunk: int) -> list[PallasConfig]:
    """The launcher with ``save_states=True`` (the backward's entry), batched and varlen."""
    from tops.backends import pallas_interpret

    def fn(q, k, v, g, cu_seqlens=None):
        return forward(
            q, k, v, g, None, None, cu_seqlens,
            scale=1.0, chunk_size=chunk, output_final_state=True, save_states=True,
            interpret=pallas_interpret(),
        )  # fmt: skip

    configs = []
    for batch, cu in ((2, None), (1, 4)):
        shapes = [
            jax.ShapeDtypeStruct((batch, 200, 2, 64), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2, 64), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2, 128), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((batch, 200, 2), jnp.float32),
        ]
        name = f"{dtype}_C{chunk}_g_T200_K64_V128_saved_states"
        if cu is not None:
            shapes.append(jax.ShapeDtypeStruct((cu,), jnp.int32))
            name += "_varlen3"
        configs.append(PallasConfig(name, fn, tuple(shapes)))
    return configs
