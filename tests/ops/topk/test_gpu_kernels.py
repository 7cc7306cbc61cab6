"""The Triton top-k kernels (interpreted on CPU): exact equality with the float64 reference
on random and adversarial rows, order properties checked independently of any reference,
per-row k and argument validation (the sm_90 compile-only check of every configuration is
in tests/ops/test_gpu_compile.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tops.gpu  # noqa: F401  (configures the Triton interpreter before the kernels load)
from tops import backends
from tops.cpu.selection import topk as reference_topk
from tops.gpu.selection import topk
from tops.precision.testing import bits
from tops.spec.topk import FILL_INDEX

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PATTERNS = (
    "random",
    "equal",
    "sparse_ones",
    "ascending",
    "descending",
    "late_peak",
    "specials",
    "tie_dense",
)


def _pattern(name: str, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """One float64 row of an adversarial pattern (rounded to the test dtype later)."""
    column = np.arange(vocab, dtype=np.float64)
    if name == "random":
        return rng.standard_normal(vocab) * 8.0
    if name == "equal":
        return np.full(vocab, 0.75)
    if name == "sparse_ones":  # zeros with a 1 at every 128th column
        return np.where(column % 128 == 0, 1.0, 0.0)
    if name == "ascending":
        return column / 4.0
    if name == "descending":
        return -column / 4.0
    if name == "late_peak":  # one large value beyond column V - 128 among small ones
        row = rng.standard_normal(vocab)
        row[max(0, vocab - 1 - int(rng.integers(0, min(vocab, 127))))] = 1e4
        return row
    if name == "specials":  # NaN of both signs, +-0.0, +-inf and a few small integers
        choices = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 2.0])
        return rng.choice(choices, vocab)
    if name == "tie_dense":  # few distinct values: long runs of ties
        return rng.integers(-3, 4, vocab).astype(np.float64)
    raise ValueError(name)


def _batch(dtype: str, vocab: int, patterns=PATTERNS, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    rows = np.stack([_pattern(name, vocab, rng) for name in patterns])
    x = torch.from_numpy(rows).to(TORCH_DTYPES[dtype])
    return x.to(backends.torch_device())


def _order_keys(x: torch.Tensor) -> np.ndarray:
    """The contract's order as int64 keys (NaN lowest), computed here with NumPy."""
    pattern = x.cpu().float().view(torch.int32).numpy().astype(np.int64)
    keys = np.where(pattern < 0, pattern ^ 0x7FFFFFFF, pattern)
    return np.where(np.isnan(x.cpu().float().numpy()), -(2**32), keys)


def _check(x: torch.Tensor, k, **kwargs) -> None:
    """The kernel equals the reference exactly; its values are the input elements bit
    for bit; and, independently of the reference, the kept entries are distinct, in
    order, and no left-out entry ranks above the last kept one."""
    values, indices = topk(x, k, **kwargs)
    k_ref = k.cpu().numpy() if isinstance(k, torch.Tensor) else k
    ref_values, ref_indices = reference_topk(x.cpu().float().numpy(), k_ref, **kwargs)
    got = indices.cpu().numpy()
    assert indices.dtype == torch.int32 and values.dtype == x.dtype
    np.testing.assert_array_equal(got, ref_indices)
    live = got != FILL_INDEX
    rows = np.nonzero(live)[0]
    gathered = bits(x)[rows, got[live]]
    np.testing.assert_array_equal(bits(values)[live], gathered)
    assert np.all(values.cpu().float().numpy()[~live] == -np.inf)
    assert np.all(np.isnan(ref_values) == np.isnan(values.cpu().float().numpy()))

    keys = _order_keys(x)
    for row in range(x.shape[0]):
        kept = got[row][live[row]]
        assert len(set(kept.tolist())) == len(kept)
        if len(kept) == 0:
            continue
        pairs = list(zip((-keys[row, kept]).tolist(), kept.tolist(), strict=True))
        assert pairs == sorted(pairs)
        rest = np.setdiff1d(np.arange(x.shape[1]), kept)
        last_key, last_index = keys[row, kept[-1]], kept[-1]
        above = (keys[row, rest] > last_key) | ((keys[row, rest] == last_key) & (rest < last_index))
        assert not above.any()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("vocab", [1, 127, 128, 1000])
def test_gpu_small_vocab_matches_reference_for_every_k(dtype, vocab):
    x = _batch(dtype, vocab)
    for k in sorted({k for k in (1, 8, 64, 128, 256, 1000, vocab) if k <= vocab}):
        _check(x, k)


@pytest.mark.parametrize(
    ("dtype", "k"),
    [
        ("float32", 1),
        ("float32", 64),
        ("float32", 256),
        ("bfloat16", 8),
        ("bfloat16", 128),
        ("float16", 64),
    ],
)
def test_gpu_fast_path_at_gpt2_vocab(dtype, k):
    _check(_batch(dtype, 50257), k)


@pytest.mark.parametrize(
    ("dtype", "k", "patterns"),
    [
        ("bfloat16", 1000, ("random", "tie_dense")),
        ("float32", 50257, ("specials",)),
    ],
)
def test_gpu_general_path_at_gpt2_vocab(dtype, k, patterns):
    _check(_batch(dtype, 50257, patterns), k)


def test_gpu_bf16_tie_dense_large_vocab():
    """bf16 normal logits over 200k columns: thousands of exact ties near the threshold."""
    _check(_batch("bfloat16", 200_000, ("random",), seed=3), 256)


@pytest.mark.parametrize("k_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize(
    ("vocab", "max_k", "k"),
    [(5000, 64, [0, 1, 64, 100, -3, 30, 64, 7]), (1000, 300, [300, 0, 299, 1000, 5, -1, 2, 1])],
)
def test_gpu_per_row_k(vocab, max_k, k, k_dtype):
    _check(_batch("float32", vocab), torch.tensor(k, dtype=k_dtype), max_k=max_k)


def test_gpu_strided_inputs():
    wide = _batch("bfloat16", 3000)
    _check(wide[:, 100:2100], 50)  # row stride 3000, last dim contiguous
    _check(wide.t().contiguous().t()[:, :700], 300)  # last dim strided: copied first


def test_gpu_empty_batch_returns_empty_tensors():
    x = torch.zeros((0, 10), dtype=torch.bfloat16, device=backends.torch_device())
    values, indices = topk(x, 3)
    assert values.shape == (0, 3) and values.dtype == torch.bfloat16
    assert indices.shape == (0, 3) and indices.dtype == torch.int32
    values, indices = topk(x, torch.zeros(0, dtype=torch.int32), max_k=4)
    assert values.shape == (0, 4) and indices.shape == (0, 4)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda x: (x[0], 1, None), "x must have rank 2"),
        (lambda x: (x.double(), 1, None), "x must have dtype"),
        (lambda x: (x.int(), 1, None), "x must have dtype"),
        (lambda x: (x[:, :0], 1, None), "x must have V >= 1"),
        (lambda x: (x, 0, None), "k must satisfy"),
        (lambda x: (x, 11, None), "k must satisfy"),
        (lambda x: (x, 2.0, None), "k must be a Python int or an integer array"),
        (lambda x: (x, 2, 4), "max_k must be None"),
        (lambda x: (x, torch.ones(3, dtype=torch.int32), None), "max_k must be given"),
        (lambda x: (x, torch.ones(2, dtype=torch.int32), 4), "k must have shape"),
        (lambda x: (x, torch.ones(3), 4), "k must have dtype"),
        (lambda x: (x, torch.ones(3, dtype=torch.int32), 11), "max_k must satisfy"),
    ],
)
def test_gpu_bad_arguments_raise_value_errors_naming_them(make_args, message):
    x = torch.zeros((3, 10), dtype=torch.float32, device=backends.torch_device())
    array, k, max_k = make_args(x)
    with pytest.raises(ValueError, match=message):
        topk(array, k, max_k=max_k)
