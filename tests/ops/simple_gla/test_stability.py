"""The ALiBi stability setting on both kernels, forward and backward: chunk 128, H = 16,
``make_alibi_g_gamma`` at every layer of a 20-layer model. The 20 layers run as one call
with their 16 heads side by side (320 heads: heads are independent, so this is the same
computation as 20 calls). No output and no gradient (of ``sum(o * do) + sum(final_state
* dht)`` with respect to q, k, v and g_gamma) may be NaN or Inf, and the test first
asserts that the exponents the causal mask discards do pass float32's exp range, so that
an implementation computing ``exp`` before masking (or ``exp(G_i) * exp(-G_j)``) would
fail it.

Default suite: T = 200 (two chunks, the second with 56 padded rows to mask), K = V = 64,
the first layer (the steepest decays, whose discarded exponents pass 88.72) and the last,
in one call. ``slow``: every layer at T = 200 in one call, and T = 4096 (32 chunks) one
call per layer (the interpreters' cost grows faster than the array, so 320 heads at once
take far longer).
"""

from __future__ import annotations

import numpy as np
import pytest

from tops.ops.simple_gla import make_alibi_g_gamma
from tops.ops.simple_gla.alibi import FLOAT32_EXP_LIMIT, max_discarded_exponent

HEADS, LAYERS, CHUNK = 16, 20, 128


def _all_layers_g_gamma() -> np.ndarray:
    return np.concatenate(
        [np.asarray(make_alibi_g_gamma(HEADS, LAYERS, layer)) for layer in range(LAYERS)]
    )


def _inputs(seq_len: int, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20)
    heads = HEADS * LAYERS
    shape = (1, seq_len, heads, dim)
    return {
        "q": rng.standard_normal(shape).astype(np.float32),
        "k": rng.standard_normal(shape).astype(np.float32),
        "v": rng.standard_normal(shape).astype(np.float32),
        "do": rng.standard_normal(shape).astype(np.float32),
        "dht": rng.standard_normal((1, heads, dim, dim)).astype(np.float32),
        "g_gamma": _all_layers_g_gamma(),
    }


DIFFERENTIATED = ("q", "k", "v", "g_gamma")


def _run(backend: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``o``, the final state and the gradients of q, k, v and g_gamma."""
    if backend == "tpu":
        import jax
        import jax.numpy as jnp

        from tops.ops.simple_gla import chunk_simple_gla

        def forward(q, k, v, g_gamma):
            return chunk_simple_gla(
                q, k, v, g_gamma=g_gamma, output_final_state=True, chunk_size=CHUNK
            )

        primals = [jnp.asarray(arrays[name]) for name in DIFFERENTIATED]
        (o, final), vjp = jax.vjp(forward, *primals)
        gradients = vjp((jnp.asarray(arrays["do"]), jnp.asarray(arrays["dht"])))
        outputs = {"o": o, "final_state": final}
        outputs.update(
            {f"d{name}": grad for name, grad in zip(DIFFERENTIATED, gradients, strict=True)}
        )
        return {name: np.asarray(value) for name, value in outputs.items()}
    import torch

    from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
    from tops.gpu.simple_gla import chunk_simple_gla

    device = backends.torch_device()
    primals = [
        torch.tensor(arrays[name], device=device, requires_grad=True) for name in DIFFERENTIATED
    ]
    o, final = chunk_simple_gla(
        *primals[:3], g_gamma=primals[3], output_final_state=True, chunk_size=CHUNK
    )
    loss = (o * torch.tensor(arrays["do"], device=device)).sum()
    loss = loss + (final * torch.tensor(arrays["dht"], device=device)).sum()
    loss.backward()
    outputs = {"o": o, "final_state": final}
    outputs.update({f"d{name}": p.grad for name, p in zip(DIFFERENTIATED, primals, strict=True)})
    return {name: value.detach().cpu().numpy() for name, value in outputs.items()}


EVERY_LAYER = tuple(range(LAYERS))


@pytest.mark.parametrize(
    ("seq_len", "layers", "layers_per_call"),
    [
        pytest.param(200, (0, LAYERS - 1), 2, id="T200-first_and_last_layer"),
        pytest.param(200, EVERY_LAYER, LAYERS, id="T200-every_layer", marks=pytest.mark.slow),
        pytest.param(4096, EVERY_LAYER, 1, id="T4096-every_layer", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_alibi_chunk128_is_finite_with_gradients(backend, seq_len, layers, layers_per_call):
    arrays = _inputs(seq_len, dim=64)
    for start in range(0, len(layers), layers_per_call):
        chosen = layers[start : start + layers_per_call]
        heads = np.concatenate([np.arange(layer * HEADS, (layer + 1) * HEADS) for layer in chosen])
        call = {name: arrays[name][..., heads, :] for name in ("q", "k", "v", "do")}
        call["dht"] = arrays["dht"][:, heads]
        call["g_gamma"] = arrays["g_gamma"][heads]
        if 0 in chosen:
            # The steepest head: 2**-0.5 * (1 + 1e-5) * 127 = 89.8 > 88.72.
            assert max_discarded_exponent(call["g_gamma"], CHUNK) > FLOAT32_EXP_LIMIT
        for name, value in _run(backend, call).items():
            bad = np.count_nonzero(~np.isfinite(value))
            assert bad == 0, f"layers {chosen}: {bad} non-finite in {name}"
