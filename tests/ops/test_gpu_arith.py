"""The Triton kernels' shared arithmetic (:mod:`tops.gpu.arith`, :mod:`tops.gpu.reduce`):
tensor-core operand rounding, the interpreted dot's summation order, the interpreted
exp/exp2, the fixed torch reduction and the combine functions of ``tl.reduce``.
Interpreted, these pin the host-independent emulation; on a GPU they check the claims it
emulates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
from tops.gpu import arith, reduce

INTERPRETED = backends.gpu_mode() == "gpu-interpret"
LOG2E_F32 = np.float32(np.log2(np.e))


def _dot_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, K: tl.constexpr, TF32: tl.constexpr):
        rows = tl.arange(0, M)
        ks = tl.arange(0, K)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :])
        b = tl.load(b_ptr + ks[:, None] * M + rows[None, :])
        tl.store(c_ptr + rows[:, None] * M + rows[None, :], arith.dot(a, b, TF32))

    return dot_kernel


def _dot(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    device = backends.torch_device()
    m, k = a.shape
    c = torch.empty((m, m), dtype=torch.float32, device=device)
    ta = torch.from_numpy(a).to(getattr(torch, dtype)).to(device)
    tb = torch.from_numpy(b).to(getattr(torch, dtype)).to(device)
    _dot_kernel()[(1,)](ta, tb, c, M=m, K=k, TF32=dtype == "float32")
    return c.cpu().numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_dot_operands_are_rounded_as_tensor_cores_round_them(dtype):
    """f32 operands are truncated to tf32 (1 + 2**-11 + 2**-12 -> 1; cvt.rna would give
    1 + 2**-10); bf16 operands multiply exactly (the raw interpreter multiplies bit
    patterns)."""
    value = 1 + 2.0**-11 + 2.0**-12 if dtype == "float32" else 1.5
    a = np.full((16, 16), value, dtype=np.float32)
    c = _dot(a, np.ones((16, 16), dtype=np.float32), dtype)
    assert (c == (16.0 if dtype == "float32" else 24.0)).all(), c[0, 0]


@pytest.mark.skipif(not INTERPRETED, reason="the summation order is the interpreter's")
def test_gpu_interpreted_dot_sums_exact_products_in_ascending_k():
    """Bit-equal to a sequential float32 loop over k on rows whose sum depends on the
    order (terms spanning 2**-20 to 2**20 with cancellation), and different from the
    descending loop, so the test can tell orders apart."""
    rng = np.random.default_rng(7)
    m, k = 16, 64
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-20, 20, (m, k)))).astype(np.float32)
    b = rng.standard_normal((k, m)).astype(np.float32)
    a16 = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
    b16 = torch.from_numpy(b).to(torch.bfloat16).float().numpy()
    products = a16[:, :, None] * b16[None, :, :]  # exact in float32
    ascending = products[:, 0, :].copy()
    for i in range(1, k):
        ascending = ascending + products[:, i, :]
    descending = products[:, k - 1, :].copy()
    for i in range(k - 2, -1, -1):
        descending = descending + products[:, i, :]
    got = _dot(a16, b16, "bfloat16")
    assert np.array_equal(got.view(np.int32), ascending.view(np.int32))
    assert not np.array_equal(ascending, descending)


def _exp_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def exp_kernel(x_ptr, exp2_ptr, exp_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        x = tl.load(x_ptr + offs)
        tl.store(exp2_ptr + offs, arith.exp2(x))
        tl.store(exp_ptr + offs, arith.exp(x))

    return exp_kernel


def _exps(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    device = backends.torch_device()
    x = torch.from_numpy(t).to(device)
    out2, out = torch.empty_like(x), torch.empty_like(x)
    _exp_kernel()[(1,)](x, out2, out, N=t.size)
    return out2.cpu().numpy(), out.cpu().numpy()


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in float32 steps (both finite and non-negative)."""
    return np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))


def test_gpu_exp2_and_exp():
    """Interpreted: ``exp2`` is 2**t rounded once to float32 (float64 ``np.ldexp`` of the
    float64 ``exp2`` as the reference: it can only disagree within 1e-16 relative of a
    rounding boundary, which none of these 2**16 inputs is) and ``exp(x)`` is
    ``exp2(float32(x * log2 e))``. On a GPU, ``ex2.approx.f32`` is within 2 ulp. Special
    values: NaN, inf, 0 below -150, inf from 128."""
    rng = np.random.default_rng(3)
    t = rng.uniform(-149.0, 127.9, 2**16 - 8).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 128.0, -151.0, 1.0], np.float32)
    t = np.concatenate([t, specials])
    got2, got = _exps(t)
    with np.errstate(over="ignore"):
        want2 = np.exp2(t.astype(np.float64)).astype(np.float32)
        want = np.exp2((t * LOG2E_F32).astype(np.float64)).astype(np.float32)
    finite = np.isfinite(t) & (t < 128) & (t > -126)  # normal results
    allowed = 0 if INTERPRETED else 2
    assert _ulps(got2[finite], want2[finite]).max() <= allowed
    assert _ulps(got[finite], want[finite]).max() <= allowed
    tail = got2[-8:]
    assert np.isnan(tail[0]) and tail[1] == np.inf and tail[2] == 0.0 and tail[5] == np.inf
    assert tail[3] == tail[4] == tail[7] / 2 == 1.0 and tail[6] == 0.0


def test_gpu_pairwise_sum_is_a_fixed_tree():
    """Rows whose float32 sum depends on the order: the tree adds row ``i`` to row
    ``i + n // 2``, giving ``((1 + 1) + (2**24 - 2**24)) + 0.5 = 2.5``; a sequential sum
    gives 0.5."""
    rows = torch.tensor([[1.0], [2.0**24], [1.0], [-(2.0**24)], [0.5]], dtype=torch.float32)
    assert arith.pairwise_sum(rows).item() == 2.5
    assert torch.equal(arith.pairwise_sum(rows[:0]), torch.zeros(1))
    values = torch.randn(1001, 3, generator=torch.Generator().manual_seed(0))
    expected = values.double().sum(0)
    assert torch.allclose(arith.pairwise_sum(values).double(), expected, rtol=1e-5)


def _reduce_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def reduce_kernel(x_ptr, totals_ptr, prefix_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        x = tl.load(x_ptr + offs)
        tl.store(totals_ptr, tl.reduce(x, 0, reduce.add_combine))
        tl.store(totals_ptr + 1, tl.reduce(x, 0, reduce.max_combine))
        tl.store(totals_ptr + 2, tl.reduce(x, 0, reduce.min_combine))
        tl.store(prefix_ptr + offs, tl.associative_scan(x, 0, reduce.add_combine))

    return reduce_kernel


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_gpu_combine_functions_reduce_and_scan(dtype):
    """``tl.reduce`` with :data:`~tops.gpu.reduce.add_combine`, ``max_combine`` and
    ``min_combine`` is the sum, maximum and minimum of a block, and
    ``tl.associative_scan`` with ``add_combine`` its inclusive prefix sum: exact integers,
    whatever the combine order."""
    device = backends.torch_device()
    rng = np.random.default_rng(11)
    values = rng.integers(-(2**16), 2**16, 4096).astype(dtype)
    x = torch.from_numpy(values).to(device)
    totals = torch.empty(3, dtype=x.dtype, device=device)
    prefix = torch.empty_like(x)
    _reduce_kernel()[(1,)](x, totals, prefix, N=values.size)
    assert totals.tolist() == [int(values.sum()), int(values.max()), int(values.min())]
    assert np.array_equal(prefix.cpu().numpy(), np.cumsum(values))
