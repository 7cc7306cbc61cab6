"""The float64 simple-GLA references on the special values of ``tops/spec/simple_gla.py``:
``g = -inf`` as an exact reset (against an independent construction: the split sequence),
``g_gamma = -inf``, and the ``cu_seqlens`` check and repair functions the kernels mirror."""

from __future__ import annotations

import numpy as np
import pytest

from tops.cpu.simple_gla import (
    chunk_simple_gla,
    chunk_simple_gla_chunked,
    chunk_simple_gla_chunked_grad,
    chunk_simple_gla_grad,
)
from tops.spec.simple_gla import check_cu_seqlens, repaired_cu_seqlens

REFERENCES = pytest.mark.parametrize(
    "reference", [chunk_simple_gla, chunk_simple_gla_chunked], ids=["step", "chunked"]
)


def _inputs(seed, T=150, H=2, K=8, V=8):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, T, H, d)).astype(np.float32) for d in (K, K, V))
    g = (-np.abs(rng.standard_normal((1, T, H)))).astype(np.float32)
    h0 = rng.standard_normal((1, H, K, V)).astype(np.float32)
    return q, k, v, g, h0


@REFERENCES
@pytest.mark.parametrize("reset", [0, 37, 63, 64, 149])
def test_a_reset_equals_a_fresh_sequence_from_zero_state(reference, reset):
    """``g_t = -inf`` splits the sequence: the tokens before ``t`` are the prefix's, the
    tokens from ``t`` on those of a sequence starting at ``t`` from a zero state (``g_t``
    itself then multiplies nothing), and the final state is that sequence's."""
    q, k, v, g, h0 = _inputs(reset)
    g[0, reset, :] = -np.inf
    gamma = np.array([-0.05, -0.3], np.float32)
    o, h = reference(q, k, v, g=g, g_gamma=gamma, initial_state=h0, output_final_state=True)

    tail = slice(reset, None)
    g_tail = g[:, tail].copy()
    g_tail[0, 0, :] = 0.0  # multiplies the zero state
    o_tail, h_tail = chunk_simple_gla(
        q[:, tail], k[:, tail], v[:, tail], g=g_tail, g_gamma=gamma, output_final_state=True
    )
    np.testing.assert_allclose(o[:, tail], o_tail, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, h_tail, rtol=1e-12, atol=1e-12)
    if reset:
        head = slice(0, reset)
        o_head, _ = chunk_simple_gla(
            q[:, head], k[:, head], v[:, head], g=g[:, head], g_gamma=gamma, initial_state=h0
        )
        np.testing.assert_allclose(o[:, head], o_head, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [64, 128])
def test_chunked_form_and_recurrence_agree_with_resets(chunk_size):
    """Resets at the first and last token, inside chunks, on both sides of chunk boundaries,
    in one head or all: the chunked form (which cuts decays by reset counts) equals the
    step recurrence (which multiplies by ``exp(-inf) = 0``), forward and every gradient;
    both are finite and give ``dg = 0`` at every ``-inf`` gate."""
    q, k, v, g, h0 = _inputs(1)
    for t in (0, 5, 63, 64, 100, 127, 128, 149):
        g[0, t, t % 2] = -np.inf
    g[0, 70, :] = -np.inf
    gamma = np.array([-0.1, -0.2], np.float32)
    arguments = dict(g=g, g_gamma=gamma, initial_state=h0, chunk_size=chunk_size)
    o1, h1 = chunk_simple_gla(q, k, v, **arguments, output_final_state=True)
    o2, h2 = chunk_simple_gla_chunked(q, k, v, **arguments, output_final_state=True)
    assert np.isfinite(o1).all() and np.isfinite(h1).all()
    np.testing.assert_allclose(o2, o1, rtol=0, atol=1e-13 * np.abs(o1).max())
    np.testing.assert_allclose(h2, h1, rtol=0, atol=1e-13 * np.abs(h1).max())

    rng = np.random.default_rng(2)
    do = rng.standard_normal(o1.shape).astype(np.float32)
    dht = rng.standard_normal(h1.shape).astype(np.float32)
    step = chunk_simple_gla_grad(q, k, v, **arguments, do=do, dht=dht)
    chunked = chunk_simple_gla_chunked_grad(q, k, v, **arguments, do=do, dht=dht)
    for name, expected in step.items():
        assert np.isfinite(expected).all(), name
        np.testing.assert_allclose(
            chunked[name], expected, rtol=0, atol=1e-13 * np.abs(expected).max(), err_msg=name
        )
    resets = np.isneginf(g)
    assert (step["dg"][resets] == 0).all() and (chunked["dg"][resets] == 0).all()


@REFERENCES
def test_g_gamma_minus_inf_resets_every_token(reference):
    """``g_gamma[h] = -inf``: head ``h`` keeps only the current token,
    ``o_t = scale q_t k_t^T v_t``, whatever ``g`` and the initial state; the other head
    is untouched."""
    q, k, v, g, h0 = _inputs(3, T=70)
    gamma = np.array([-np.inf, -0.1], np.float32)
    o, h = reference(q, k, v, g=g, g_gamma=gamma, initial_state=h0, output_final_state=True)
    scale = q.shape[-1] ** -0.5
    q64, k64, v64 = (x[0, :, 0].astype(np.float64) for x in (q, k, v))
    expected = scale * np.sum(q64 * k64, axis=-1, keepdims=True) * v64
    np.testing.assert_allclose(o[0, :, 0], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h[0, 0], np.outer(k64[-1], v64[-1]), rtol=1e-12, atol=1e-12)
    o_other, _ = reference(
        q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], g=g[:, :, 1:], g_gamma=gamma[1:],
        initial_state=h0[:, 1:],
    )  # fmt: skip
    np.testing.assert_allclose(o[:, :, 1:], o_other, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cu, message",
    [
        ([0, 4, 40], r"end at T = 16 \(cu_seqlens\[-1\] = 40\)"),
        ([-3, 4, 16], r"start at 0 \(cu_seqlens\[0\] = -3\)"),
        ([0, 10, 5, 16], r"never decrease \(cu_seqlens\[1\] = 10 > cu_seqlens\[2\] = 5\)"),
        ([2, 1, 17], r"start at 0 .* and never decrease .* and end at T = 16"),
    ],
    ids=["past_T", "negative_start", "decreasing", "all_three"],
)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_check_cu_seqlens_names_every_broken_invariant(cu, message, dtype):
    with pytest.raises(ValueError, match=f"cu_seqlens must {message}"):
        check_cu_seqlens(np.asarray(cu, dtype), 16)
    check_cu_seqlens(np.asarray([0, 0, 7, 16], dtype), 16)  # empty sequences are valid


@pytest.mark.parametrize(
    "cu, expected",
    [
        ([0, 4, 40], [0, 4, 16]),
        ([-3, 4, 16], [0, 4, 16]),
        ([0, 10, 5, 16], [0, 10, 10, 16]),
        ([7, 3, 2], [0, 7, 16]),
        ([0, -5, -1, 0], [0, 0, 0, 16]),
        ([0, 2**40, 3, 16], [0, 16, 16, 16]),
        ([0, 3, 9, 16], [0, 3, 9, 16]),
    ],
    ids=["past_T", "negative", "decreasing", "short", "all_negative", "huge_int64", "valid"],
)
def test_repaired_cu_seqlens(cu, expected):
    """The repair is a running maximum clipped to ``[0, T]`` with the ends pinned; int64
    entries past int32 clip instead of wrapping; valid offsets pass unchanged, and the
    result always passes the check."""
    repaired = repaired_cu_seqlens(np.asarray(cu, np.int64), 16)
    assert repaired.dtype == np.int32
    assert repaired.tolist() == expected
    check_cu_seqlens(repaired, 16)


def test_reference_refuses_malformed_cu_seqlens_naming_the_invariant():
    x = np.ones((1, 16, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"cu_seqlens must end at T = 16"):
        chunk_simple_gla(x, x, x, cu_seqlens=np.array([0, 4, 40], np.int32))
