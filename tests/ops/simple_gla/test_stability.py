"""The ALiBi stability setting on both kernels: chunk 128, H = 16, ``make_alibi_g_gamma``
at every layer of a 20-layer model. The 20 layers run as one call with their 16 heads
side by side (320 heads: heads are independent, so this is the same computation as 20
calls). No output may be NaN or Inf, and the test first asserts that the exponents the
causal mask discards do pass float32's exp range, so that an implementation computing
``exp`` before masking (or ``exp(G_i) * exp(-G_j)``) would fail it.

Default suite: T = 200 (two chunks, the second with 56 padded rows to mask),
K = V = 64. The ``slow`` variant runs T = 4096 (32 chunks), one call per layer (the
interpreters' cost grows faster than the array, so 320 heads at once take far longer).
"""

from __future__ import annotations

import numpy as np
import pytest

from tops.ops.simple_gla import make_alibi_g_gamma

HEADS, LAYERS, CHUNK = 16, 20, 128
F32_EXP_OVERFLOW = float(np.log(np.finfo(np.float32).max))  # 88.72


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
        "g_gamma": _all_layers_g_gamma(),
    }


def _run(backend: str, arrays: dict[str, np.ndarray]):
    if backend == "tpu":
        from tops.ops.simple_gla import chunk_simple_gla
        from tops.precision.convert import from_jax, to_jax

        o, final = chunk_simple_gla(
            *(to_jax(arrays[n]) for n in ("q", "k", "v")),
            g_gamma=to_jax(arrays["g_gamma"]),
            output_final_state=True,
            chunk_size=CHUNK,
        )
        return from_jax(o), from_jax(final)
    from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
    from tops.gpu.simple_gla import chunk_simple_gla
    from tops.precision.convert import from_torch, to_torch

    device = backends.torch_device()
    o, final = chunk_simple_gla(
        *(to_torch(arrays[n], device) for n in ("q", "k", "v")),
        g_gamma=to_torch(arrays["g_gamma"], device),
        output_final_state=True,
        chunk_size=CHUNK,
    )
    return from_torch(o), from_torch(final)


def _assert_discarded_exponents_pass_the_float32_exp_range(g_gamma: np.ndarray) -> None:
    """Within a 128-token chunk the masked-out pairs reach ``|gamma| * 127``: for the
    steepest head of layer 0 (``|gamma| = 2**-0.5 * (1 + 1e-5)``) that is 89.8 > 88.72."""
    discarded = -g_gamma * (CHUNK - 1)  # exp(G_j - G_i) for i = 0, j = 127: positive
    assert discarded.max() > F32_EXP_OVERFLOW
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(discarded.astype(np.float32))).any()


@pytest.mark.parametrize(
    ("seq_len", "heads_per_call"),
    [
        pytest.param(200, HEADS * LAYERS, id="T200"),
        pytest.param(4096, HEADS, id="T4096", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_alibi_chunk128_every_layer_is_finite(backend, seq_len, heads_per_call):
    arrays = _inputs(seq_len, dim=64)
    _assert_discarded_exponents_pass_the_float32_exp_range(arrays["g_gamma"])
    for first in range(0, HEADS * LAYERS, heads_per_call):
        heads = slice(first, first + heads_per_call)
        call = {name: array[..., heads, :] for name, array in arrays.items() if name != "g_gamma"}
        o, final = _run(backend, {**call, "g_gamma": arrays["g_gamma"][heads]})
        where = f"heads {first}..{first + heads_per_call - 1}"
        assert np.isfinite(o).all(), f"{where}: {np.count_nonzero(~np.isfinite(o))} non-finite"
        assert np.isfinite(final).all(), where
