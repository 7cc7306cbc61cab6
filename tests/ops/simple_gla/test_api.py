"""Bad input to ``tops.ops.chunk_simple_gla`` and ``tops.gpu.chunk_simple_gla``: one test
per row of the "Bad input" table in ``tops/spec/simple_gla.py``, run on both backends
(``[tpu]``: the TPU interpreter, ``[gpu]``: the Triton interpreter or a GPU) at small
shapes; the rows or parts of rows that one API lacks are single-backend tests named after
it. The GPU API (and torch) is imported inside the tests, so its half is skipped where
torch is missing, and the compile check can import this module without it."""

from __future__ import annotations

import re
import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tops import backends, ops
from tops.compile_only import compile_tpu_kernels_in_subprocess
from tops.ops.simple_gla import kernel
from tops.precision.convert import from_torch, to_torch
from tops.precision.testing import requires_libtpu
from tops.spec import simple_gla as spec
from tops.spec.simple_gla import FIRST_DERIVATIVES_ONLY, HeadFirstWarning

Backend = Literal["tpu", "gpu"]
BACKENDS: list[Backend] = ["tpu", "gpu"]
WRONG_API = {
    "tpu": r"must be a JAX or NumPy array for tops.ops",
    "gpu": r"must be a torch tensor for tops.gpu",
}
HOST_DEVICE = "cpu"  # host cu_seqlens for tops.gpu: CPU tensors, checked before any kernel


def _gla(backend: Backend):
    if backend == "tpu":
        return ops.chunk_simple_gla
    from tops import gpu

    return gpu.chunk_simple_gla


def _kernel(backend: Backend):
    """The module whose ``forward`` launches the backend's forward kernels."""
    if backend == "tpu":
        return kernel
    from tops.gpu.simple_gla import kernel as gpu_kernel

    return gpu_kernel


def _native(backend: Backend, array: np.ndarray, device: str | None = None):
    """``array`` as the API's own type: itself for tops.ops (NumPy is one of its array
    types), a torch tensor on ``device`` (default: the backend's) for tops.gpu."""
    if backend == "tpu":
        return array
    return to_torch(array, device or backends.torch_device())


def _numpy(array) -> np.ndarray:
    return np.asarray(array) if isinstance(array, np.ndarray | jax.Array) else from_torch(array)


def _assert_same(got, expected):
    """The same dtype, shape and values (``torch.equal`` on tops.gpu's tensors)."""
    got, expected = _numpy(got), _numpy(expected)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def _arrays(seed=0, *, batch=1, seq_len=10, heads=2, dim=8, dtype=np.float32):
    """q, k, v ``[B, T, H, dim]``, g ``[B, T, H]``, g_gamma ``[H]``, one initial state per
    batch row: NumPy arrays (v, q, k in ``dtype``, the rest float32)."""
    rng = np.random.default_rng(seed)
    return {
        **{name: rng.standard_normal((batch, seq_len, heads, dim)).astype(dtype) for name in "qkv"},
        "g": -rng.random((batch, seq_len, heads)).astype(np.float32),
        "g_gamma": -rng.random(heads).astype(np.float32) / 4,
        "initial_state": rng.standard_normal((batch, heads, dim, dim)).astype(np.float32),
    }


def _inputs(backend: Backend, **sizes):
    """:func:`_arrays` as the backend's arrays (on its device for tops.gpu)."""
    return {name: _native(backend, x) for name, x in _arrays(**sizes).items()}


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
    [{"g_gamma": [-0.1, -0.2]}, {"cu_seqlens": [0, 3, 10]}, {"q": ((0.0,),)}],
    ids=["g_gamma_list", "cu_seqlens_list", "q_tuple"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_and_tuples(backend, change):
    (name,) = change
    arrays = {**_inputs(backend), "initial_state": None, **change}
    with pytest.raises(TypeError, match=rf"^{name} {WRONG_API[backend]}"):
        _gla(backend)(**arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars(backend):
    arrays, gla = _inputs(backend), _gla(backend)
    python = gla(**arrays, scale=0.25, chunk_size=128)
    numpy = gla(**arrays, scale=np.float32(0.25), chunk_size=np.int64(128))
    _assert_same(numpy[0], python[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_framework(backend):
    """tops.ops refuses torch tensors; tops.gpu refuses JAX and NumPy arrays."""
    arrays = _inputs(backend)
    for name in ("q", "g", "cu_seqlens"):
        if backend == "tpu":
            torch = pytest.importorskip("torch")
            wrong = torch.zeros(3, dtype=torch.int32) if name == "cu_seqlens" else arrays[name]
            wrongs = [torch.as_tensor(wrong)]
            match = rf"^{name} must be a JAX or NumPy array .* torch"
        else:
            wrongs = [jnp.zeros(3, jnp.int32), np.zeros(3, np.int32)]
            match = rf"^{name} must be a torch tensor .* got"
        for wrong in wrongs:
            with pytest.raises(TypeError, match=match):
                _gla(backend)(**{**arrays, name: wrong})


def _tpu_x64_bits(enable_x64, dtype, varlen):
    """tops.ops under ``jax.jit``, forward and gradient (int64 ``cu_seqlens`` with
    ``varlen``): the bits with ``jax_enable_x64`` on are those with it off. Leaves the
    flag on."""
    batch = 1 if varlen else 2
    arrays = _arrays(batch=batch, seq_len=20, dim=8, dtype=dtype)
    arrays = {name: jnp.asarray(x) for name, x in arrays.items()}
    if varlen:
        arrays["initial_state"] = jnp.concatenate([arrays["initial_state"]] * 2)
    cu_seqlens = np.asarray([0, 7, 20], np.int64) if varlen else None

    def loss(arrays):
        o, final_state = ops.chunk_simple_gla(
            **arrays, cu_seqlens=cu_seqlens, output_final_state=True
        )
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


@pytest.mark.parametrize(
    ("backend", "dtype", "varlen"),
    [
        pytest.param("tpu", np.float32, True, id="tpu-f32_varlen"),
        pytest.param("tpu", ml_dtypes.bfloat16, False, id="tpu-bf16"),
        pytest.param("gpu", None, None, id="gpu"),
    ],
)
def test_x64_mode(enable_x64, backend, dtype, varlen):
    """With ``jax_enable_x64`` on, tops.ops gives f32 and bf16 inputs the bits it gives them
    with it off, forward and gradient (int64 ``cu_seqlens`` included); float64 inputs are
    refused. torch has no x64 mode: float64 tensors get the ValueError float64 JAX arrays
    get."""
    if backend == "tpu":
        _tpu_x64_bits(enable_x64, dtype, varlen)
        q = jnp.zeros((1, 4, 2, 8), jnp.float64)
    else:
        q = _native(backend, np.zeros((1, 4, 2, 8), np.float64))
    with pytest.raises(ValueError, match=r"^q must have dtype in"):
        _gla(backend)(q, q, q)


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


@pytest.mark.parametrize("final_state", [False, True], ids=["o", "o_and_state"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, final_state):
    arrays = _arrays(batch=0, seq_len=5, dim=16)
    if backend == "tpu":
        arrays = {name: jnp.asarray(x) for name, x in arrays.items()}

        def run(arrays):
            return ops.chunk_simple_gla(**arrays, output_final_state=final_state)

        o, state = run(arrays)
        grads = jax.grad(lambda arrays: jnp.sum(run(arrays)[0]))(arrays)
        grads = [grads[name] for name in arrays]
    else:
        import torch

        arrays = {name: _native(backend, x).requires_grad_() for name, x in arrays.items()}
        o, state = _gla(backend)(**arrays, output_final_state=final_state)
        grads = torch.autograd.grad(o.sum(), list(arrays.values()))
    assert tuple(o.shape) == (0, 5, 2, 16) and str(o.dtype).endswith("float32")
    assert (tuple(state.shape) == (0, 2, 16, 16)) if final_state else (state is None)
    assert [tuple(x.shape) for x in grads] == [tuple(x.shape) for x in arrays.values()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tokens(backend):
    with pytest.raises(ValueError, match=r"^q must have T, H, K >= 1, got shape \(1, 0, 2, 8\)"):
        _gla(backend)(**_inputs(backend, seq_len=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_seq_len(backend, monkeypatch):
    """Above ``MAX_TOKENS`` (patched small: the real one needs 2**31 tokens) B * T is
    refused before any kernel; at the limit the call runs."""
    monkeypatch.setattr(spec, "MAX_TOKENS", 20)
    gla = _gla(backend)
    assert tuple(gla(**_inputs(backend, batch=2, seq_len=10))[0].shape) == (2, 10, 2, 8)
    with pytest.raises(ValueError, match=r"^q must have B \* T <= 20 \(token positions are int32"):
        gla(**_inputs(backend, batch=3, seq_len=7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_first_layout(backend):
    """``1 < T < H`` warns (a ``[B, H, T, K]`` tensor read as ``[B, T, H, K]``); ``T >= H``
    and ``T = 1`` do not; the dedicated category silences it."""
    gla, head_first = _gla(backend), _inputs(backend, seq_len=3, heads=8)
    with pytest.warns(HeadFirstWarning, match=r"expects \[B, T, H, K\], not head-first") as seen:
        gla(**head_first)
    # Only the category counts: Triton 3.6's interpreter adds DeprecationWarnings.
    ours = [w for w in seen if issubclass(w.category, HeadFirstWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadFirstWarning)
        for seq_len, heads in ((8, 8), (1, 8)):
            gla(**_inputs(backend, seq_len=seq_len, heads=heads))
        warnings.filterwarnings("ignore", category=HeadFirstWarning)
        gla(**head_first)


def _torch_grad_of_grad(f, q):
    import torch

    (dq,) = torch.autograd.grad(f(q), q, create_graph=True)
    dq.sum().backward()


def _derivative(backend: Backend, name: str):
    """``derivative(f, q)``: a second derivative of the scalar function ``f`` at ``q``."""
    if backend == "tpu":
        return {
            "grad_of_grad": lambda f, x: jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x),
            "hessian": lambda f, x: jax.jit(jax.hessian(f))(x),
            "jvp_of_grad": lambda f, x: jax.jvp(jax.grad(f), (x,), (x,)),
        }[name]
    import torch

    return {"grad_of_grad": _torch_grad_of_grad, "hessian": torch.autograd.functional.hessian}[name]


@pytest.mark.parametrize(
    ("backend", "derivative"),
    [
        ("tpu", "grad_of_grad"),
        ("tpu", "hessian"),
        ("tpu", "jvp_of_grad"),  # a JAX transformation: no tops.gpu counterpart
        ("gpu", "grad_of_grad"),
        ("gpu", "hessian"),
    ],
)
def test_higher_order(backend, derivative):
    """tops.ops: NotImplementedError; tops.gpu: RuntimeError at the second backward."""
    arrays = _inputs(backend, seq_len=5)
    q, gla = arrays.pop("q"), _gla(backend)
    if backend == "tpu":
        q, error = jnp.asarray(q), NotImplementedError

        def f(q):
            return jnp.sum(gla(q, **arrays)[0])
    else:
        q, error = q.requires_grad_(), RuntimeError

        def f(q):
            return gla(q, **arrays)[0].sum()

    with pytest.raises(error, match=f"^{re.escape(FIRST_DERIVATIVES_ONLY)}"):
        _derivative(backend, derivative)(f, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bool_flags(backend):
    """``output_final_state`` is a Python or NumPy bool; anything else (on tops.gpu also a
    torch bool tensor) a TypeError."""
    arrays, gla = _inputs(backend), _gla(backend)
    flags = [1, 1.0, "yes", None, np.int64(1)]
    if backend == "gpu":
        import torch

        flags.append(torch.tensor(True))
    for flag in flags:
        with pytest.raises(TypeError, match=r"^output_final_state must be a bool"):
            gla(**arrays, output_final_state=flag)
    _, state = gla(**arrays, output_final_state=np.bool_(True))
    _, expected = gla(**arrays, output_final_state=True)
    _assert_same(state, expected)


MALFORMED_CU_SEQLENS = {  # for T = 70
    "start": ([1, 30, 70], r"start at 0 \(cu_seqlens\[0\] = 1\)"),
    "decrease": (
        [0, 40, 30, 70],
        r"never decrease \(cu_seqlens\[1\] = 40 > cu_seqlens\[2\] = 30\)",
    ),
    "end": ([0, 30, 71], r"end at T = 70 \(cu_seqlens\[-1\] = 71\)"),
    "negative": ([0, -2, 70], r"never decrease"),
    "int64": ([0, 2**32 + 30, 70], r"never decrease .* = 4294967326 >"),
}
VALID_CU_SEQLENS = np.asarray([0, 30, 70], np.int32)


def _varlen_inputs(backend: Backend):
    """One packed batch row of T = 70 tokens (two chunks of 64), no initial state."""
    return {**_inputs(backend, seq_len=70, dim=16), "initial_state": None}


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_cu_seqlens(backend, dtype, monkeypatch):
    """Host offsets (NumPy arrays; CPU tensors) that do not start at 0, decrease or do not
    end at T: ValueError naming ``cu_seqlens`` and the broken invariant, before any kernel
    is built. (tops.gpu's device offsets, which the wrapper does not read, reach the
    launchers unchecked: their twin of ``test_tpu_device_cu_seqlens`` is
    ``test_gpu_launchers_repair_raw_offsets`` in ``test_gpu_robustness.py``.)"""
    arrays = _varlen_inputs(backend)
    monkeypatch.setattr(_kernel(backend), "forward", None)  # a launch would fail differently
    for cu, match in MALFORMED_CU_SEQLENS.values():
        if dtype == np.int32 and max(cu) >= 2**31:
            continue
        cu_seqlens = _native(backend, np.asarray(cu, dtype), HOST_DEVICE)
        with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
            _gla(backend)(**arrays, cu_seqlens=cu_seqlens)


def test_tpu_device_cu_seqlens():
    """Malformed JAX offsets, concrete or traced, are repaired on the device: the result
    is the call's on ``repaired_cu_seqlens`` (valid NumPy offsets), bit for bit, finite."""
    arrays = _varlen_inputs("tpu")

    def run(cu_seqlens):
        return ops.chunk_simple_gla(**arrays, cu_seqlens=cu_seqlens, output_final_state=True)

    jitted = jax.jit(run)
    for cu, _ in MALFORMED_CU_SEQLENS.values():
        if max(cu) >= 2**31:
            continue  # int64 needs x64 on (tests/ops/simple_gla/test_tpu_robustness.py)
        want = run(spec.repaired_cu_seqlens(cu, 70))
        for got in (run(jnp.asarray(cu, jnp.int32)), jitted(jnp.asarray(cu, jnp.int32))):
            for x, y in zip(got, want, strict=True):
                assert np.isfinite(np.asarray(x)).all()
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_checked_cu_seqlens(backend, monkeypatch):
    """With ``TOPS_CHECK_CU_SEQLENS=1``: malformed offsets raise the ValueError of host
    offsets. On tops.ops a concrete JAX array is synced and checked; a traced one is
    checked when the computation runs, and the call raises ``jax.errors.JaxRuntimeError``
    whose message carries the ValueError. On tops.gpu CUDA offsets are synced (the test's
    are CPU tensors, int64 past int32 included). Valid offsets give the unchecked
    result."""
    arrays, gla = _varlen_inputs(backend), _gla(backend)

    def run(cu_seqlens):
        return gla(**arrays, cu_seqlens=cu_seqlens)[0]

    expected = run(_native(backend, VALID_CU_SEQLENS, HOST_DEVICE))
    monkeypatch.setenv(spec.CHECK_CU_SEQLENS_VARIABLE, "1")
    if backend == "gpu":
        for cu, match in MALFORMED_CU_SEQLENS.values():
            cu_seqlens = _native(backend, np.asarray(cu, np.int64), HOST_DEVICE)
            with pytest.raises(ValueError, match=rf"^cu_seqlens must {match}"):
                run(cu_seqlens)
        _assert_same(run(_native(backend, VALID_CU_SEQLENS, HOST_DEVICE)), expected)
        return
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
    _assert_same(run(VALID_CU_SEQLENS), expected)
    _assert_same(run(jnp.asarray(VALID_CU_SEQLENS)), expected)
    _assert_same(jitted(jnp.asarray(VALID_CU_SEQLENS)), expected)
