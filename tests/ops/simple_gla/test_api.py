"""Bad input to ``tops.ops.simple_gla.chunk_simple_gla``: one test per row of the "Bad
input" table in ``tops/spec/simple_gla.py`` (the torch API's twins are in
``test_gpu_api.py``), under the TPU interpreter at small shapes."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops.compile_only import compile_tpu_kernels_in_subprocess
from tops.ops.simple_gla import chunk_simple_gla, kernel
from tops.precision.testing import requires_libtpu
from tops.spec import simple_gla as spec
from tops.spec.simple_gla import FIRST_DERIVATIVES_ONLY, HeadFirstWarning


def _arrays(seed=0, *, batch=1, seq_len=70, heads=2, dim=16, dtype=jnp.float32):
    """q, k, v ``[B, T, H, dim]``, g ``[B, T, H]``, g_gamma ``[H]``, one initial state per
    batch row: NumPy arrays (v, q, k in ``dtype``, the rest float32)."""
    rng = np.random.default_rng(seed)
    return {
        **{name: rng.standard_normal((batch, seq_len, heads, dim)).astype(dtype) for name in "qkv"},
        "g": -rng.random((batch, seq_len, heads)).astype(np.float32),
        "g_gamma": -rng.random(heads).astype(np.float32) / 4,
        "initial_state": rng.standard_normal((batch, heads, dim, dim)).astype(np.float32),
    }


@pytest.fixture
def enable_x64():
    """Turns ``jax_enable_x64`` on when called (globally, as users set it), and restores
    the flag after the test whatever happens."""
    before = jax.config.jax_enable_x64
    try:
        yield lambda: jax.config.update("jax_enable_x64", True)
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize(
    "change",
    [
        {"g_gamma": [-0.1, -0.2]},
        {"cu_seqlens": [0, 30, 70]},
        {"q": ((0.0,),)},
    ],
    ids=["tpu_g_gamma_list", "tpu_cu_seqlens_list", "tpu_q_tuple"],
)
def test_tpu_lists_and_tuples(change):
    (name,) = change
    arrays = {**_arrays(), "initial_state": None, **change}
    with pytest.raises(TypeError, match=rf"^{name} must be a JAX or NumPy array for tops.ops"):
        chunk_simple_gla(**arrays)


def test_tpu_numpy_scalars():
    arrays = _arrays(seq_len=10)
    python = chunk_simple_gla(**arrays, scale=0.25, chunk_size=128)
    numpy = chunk_simple_gla(**arrays, scale=np.float32(0.25), chunk_size=np.int64(128))
    np.testing.assert_array_equal(np.asarray(numpy[0]), np.asarray(python[0]))


def test_tpu_wrong_framework():
    torch = pytest.importorskip("torch")
    arrays = _arrays(seq_len=10)
    for name in ("q", "g", "cu_seqlens"):
        wrong = torch.zeros(3, dtype=torch.int32) if name == "cu_seqlens" else arrays[name]
        changed = {**arrays, name: torch.as_tensor(wrong)}
        with pytest.raises(TypeError, match=rf"^{name} must be a JAX or NumPy array .* torch"):
            chunk_simple_gla(**changed)


@pytest.mark.parametrize(
    ("dtype", "varlen"),
    [(jnp.float32, True), (jnp.bfloat16, False)],
    ids=["tpu_f32_varlen", "tpu_bf16"],
)
def test_tpu_x64_mode(enable_x64, dtype, varlen):
    """With ``jax_enable_x64`` on, f32 and bf16 inputs give the bits they give with it off,
    forward and gradient (int64 ``cu_seqlens`` included); float64 inputs are refused."""
    batch = 1 if varlen else 2
    arrays = _arrays(batch=batch, seq_len=20, dim=8, dtype=dtype)
    arrays = {name: jnp.asarray(x) for name, x in arrays.items()}
    if varlen:
        arrays["initial_state"] = jnp.concatenate([arrays["initial_state"]] * 2)
    cu_seqlens = np.asarray([0, 7, 20], np.int64) if varlen else None

    def loss(arrays):
        o, final_state = chunk_simple_gla(**arrays, cu_seqlens=cu_seqlens, output_final_state=True)
        return jnp.sum(o.astype(jnp.float32) ** 2) + jnp.sum(final_state**2)

    def run():
        value, grads = jax.jit(jax.value_and_grad(loss))(arrays)
        return [value, *jax.tree.leaves(grads)]

    expected = run()
    enable_x64()
    got = run()
    for x, y in zip(got, expected, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match=r"^q must have dtype in"):
        chunk_simple_gla(*(jnp.zeros((1, 4, 2, 8), jnp.float64) for _ in range(3)))


def shipped_configs():
    """The varlen configurations of ``kernel.shipped_configs()`` (both gates, initial and
    final states; forward and ``_grad``): every integer constant of both kernels, their
    index maps and the SMEM ``g_gamma`` block, for the x64 compile check."""
    return [config for config in kernel.shipped_configs() if "both_T300" in config.name]


@requires_libtpu
def test_tpu_x64_mode_compiles(monkeypatch):
    """Mosaic has no 64-bit scalars: with ``jax_enable_x64`` on, the kernels still compile
    (an untyped Python int became an i64 rotate amount, block index and SMEM index map)."""
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    results = compile_tpu_kernels_in_subprocess(__file__, ("v5e",))
    assert len(results) == 8
    assert [r for r in results if not r["ok"]] == []


@pytest.mark.parametrize("final_state", [False, True], ids=["tpu_o", "tpu_o_and_state"])
def test_tpu_empty_batch(final_state):
    arrays = {name: jnp.asarray(x) for name, x in _arrays(batch=0, seq_len=5).items()}

    def run(arrays):
        return chunk_simple_gla(**arrays, output_final_state=final_state)

    o, state = run(arrays)
    assert o.shape == (0, 5, 2, 16) and o.dtype == jnp.float32
    assert (state.shape == (0, 2, 16, 16)) if final_state else (state is None)
    grads = jax.grad(lambda arrays: jnp.sum(run(arrays)[0]))(arrays)
    assert {name: x.shape for name, x in grads.items()} == {
        name: x.shape for name, x in arrays.items()
    }


def test_tpu_no_tokens():
    arrays = _arrays(seq_len=0)
    with pytest.raises(ValueError, match=r"^q must have T, H, K >= 1, got shape \(1, 0, 2, 16\)"):
        chunk_simple_gla(**arrays)


def test_tpu_huge_seq_len(monkeypatch):
    """Above ``MAX_TOKENS`` (patched small: the real one needs 2**31 tokens) B * T is
    refused before any kernel; at the limit the call runs."""
    monkeypatch.setattr(spec, "MAX_TOKENS", 20)
    arrays = _arrays(batch=2, seq_len=10, dim=8)
    assert chunk_simple_gla(**arrays)[0].shape == (2, 10, 2, 8)
    with pytest.raises(ValueError, match=r"^q must have B \* T <= 20 \(token positions are int32"):
        chunk_simple_gla(**_arrays(batch=3, seq_len=7, dim=8))


def test_tpu_head_first_layout():
    """``1 < T < H`` warns (a ``[B, H, T, K]`` tensor read as ``[B, T, H, K]``); ``T >= H``
    and ``T = 1`` do not; the dedicated category silences it."""
    head_first = _arrays(seq_len=3, heads=8, dim=8)
    with pytest.warns(HeadFirstWarning, match=r"expects \[B, T, H, K\], not head-first") as seen:
        chunk_simple_gla(**head_first)
    # Only the category counts: Triton 3.6's interpreter adds DeprecationWarnings.
    ours = [w for w in seen if issubclass(w.category, HeadFirstWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadFirstWarning)
        for seq_len, heads in ((8, 8), (1, 8)):
            chunk_simple_gla(**_arrays(seq_len=seq_len, heads=heads, dim=8))
        warnings.filterwarnings("ignore", category=HeadFirstWarning)
        chunk_simple_gla(**head_first)


@pytest.mark.parametrize(
    "derivative",
    [
        lambda f, x: jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x),
        lambda f, x: jax.jit(jax.hessian(f))(x),
        lambda f, x: jax.jvp(jax.grad(f), (x,), (x,)),
    ],
    ids=["tpu_grad_of_grad", "tpu_hessian", "tpu_jvp_of_grad"],
)
def test_tpu_higher_order(derivative):
    arrays = _arrays(seq_len=5, dim=8)
    q = jnp.asarray(arrays.pop("q"))

    def f(q):
        return jnp.sum(chunk_simple_gla(q, **arrays)[0])

    with pytest.raises(NotImplementedError, match=f"^{re.escape(FIRST_DERIVATIVES_ONLY)}"):
        derivative(f, q)


def test_tpu_bool_flags():
    """``output_final_state`` is a Python or NumPy bool; anything else a TypeError."""
    arrays = _arrays(seq_len=10)
    for flag in (1, 1.0, "yes", None, np.int64(1)):
        with pytest.raises(TypeError, match=r"^output_final_state must be a bool"):
            chunk_simple_gla(**arrays, output_final_state=flag)
    _, state = chunk_simple_gla(**arrays, output_final_state=np.bool_(True))
    _, expected = chunk_simple_gla(**arrays, output_final_state=True)
    np.testing.assert_array_equal(np.asarray(state), np.asarray(expected))


MALFORMED_CU_SEQLENS = {
    "start": ([1, 30, 70], r"start at 0 \(cu_seqlens\[0\] = 1\)"),
    "decrease": (
        [0, 40, 30, 70],
        r"never decrease \(cu_seqlens\[1\] = 40 > cu_seqlens\[2\] = 30\)",
    ),
    "end": ([0, 30, 71], r"end at T = 70 \(cu_seqlens\[-1\] = 71\)"),
    "negative": ([0, -2, 70], r"never decrease"),
    "int64": ([0, 2**32 + 30, 70], r"never decrease .* = 4294967326 >"),
}


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["tpu_int32", "tpu_int64"])
def test_tpu_malformed_cu_seqlens(dtype, monkeypatch):
    """NumPy offsets that do not start at 0, decrease or do not end at T: ValueError
    naming ``cu_seqlens`` and the broken invariant, before any kernel is built."""
    arrays = {**_arrays(), "initial_state": None}
    monkeypatch.setattr(kernel, "forward", None)  # a kernel launch would fail differently
    for cu, match in MALFORMED_CU_SEQLENS.values():
        if dtype == np.int32 and max(cu) >= 2**31:
            continue
        with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
            chunk_simple_gla(**arrays, cu_seqlens=np.asarray(cu, dtype))


def test_tpu_device_cu_seqlens():
    """Malformed JAX offsets, concrete or traced, are repaired on the device: the result
    is the call's on ``repaired_cu_seqlens`` (valid NumPy offsets), bit for bit, finite."""
    arrays = {**_arrays(), "initial_state": None}

    def run(cu_seqlens):
        return chunk_simple_gla(**arrays, cu_seqlens=cu_seqlens, output_final_state=True)

    jitted = jax.jit(run)
    for cu, _ in MALFORMED_CU_SEQLENS.values():
        if max(cu) >= 2**31:
            continue  # int64 needs x64 on (tests/ops/simple_gla/test_tpu_robustness.py)
        want = run(spec.repaired_cu_seqlens(cu, 70))
        for got in (run(jnp.asarray(cu, jnp.int32)), jitted(jnp.asarray(cu, jnp.int32))):
            for x, y in zip(got, want, strict=True):
                assert np.isfinite(np.asarray(x)).all()
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tpu_checked_cu_seqlens(monkeypatch):
    """With ``TOPS_CHECK_CU_SEQLENS=1``: a concrete JAX array is synced and checked
    (ValueError); a traced one is checked when the computation runs, and the call raises
    ``jax.errors.JaxRuntimeError`` whose message carries the ValueError. Valid offsets
    give the unchecked result."""
    monkeypatch.setenv(spec.CHECK_CU_SEQLENS_VARIABLE, "1")
    arrays = {**_arrays(), "initial_state": None}

    def run(cu_seqlens):
        return chunk_simple_gla(**arrays, cu_seqlens=cu_seqlens)[0]

    jitted = jax.jit(run)  # traced after the variable is set: the check is in the trace
    for cu, match in MALFORMED_CU_SEQLENS.values():
        if max(cu) >= 2**31:
            continue
        with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
            run(jnp.asarray(cu, jnp.int32))
        with pytest.raises(
            jax.errors.JaxRuntimeError, match=rf"ValueError: cu_seqlens must {match}"
        ):
            jax.block_until_ready(jitted(jnp.asarray(cu, jnp.int32)))
    valid = np.asarray([0, 30, 70], np.int32)
    expected = np.asarray(run(valid))
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(valid))), expected)
    np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(valid))), expected)
