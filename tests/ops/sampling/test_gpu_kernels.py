"""The Triton sampling kernels (interpreted on CPU): tokens, validity and every debug array
equal ``tops.cpu.sampling.sample`` bit for bit on both paths (bounded-k over the top-k
survivors, arbitrary-k over the whole row), across seeds, per-row parameter mixes,
special rows, dtypes and shapes; and the bulk check of the shared quantisation helper
through ``integer_weights`` (the sm_90 compile-only check of every configuration is in
tests/ops/test_gpu_compile.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import tops.gpu  # noqa: F401  (configures the Triton interpreter before the kernels load)
from tops.cpu.sampling import sample as reference_sample
from tops.gpu.sampling import integer_weights, sample
from tops.gpu.sampling.common import SamplingBlocks
from tops.precision.convert import to_torch
from tops.precision.testing import bits

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
PATHS = {"gpu_arbitrary": None, "gpu_bounded1": 1, "gpu_bounded64": 64, "gpu_bounded256": 256}
TEMPERATURES = np.array(
    [0.0, 1e-4, 0.3, 1.0, 1.0, 2.0, 1e4, np.inf, 1e-40, 2.0**126, 2.0**-126, np.nan, -1.0],
    np.float32,
)
TOP_PS = np.array([1.0, 1.0, 0.9, 0.5, 0.3, 1e-6, 0.0, 0.99, 2.0, -np.inf, np.nan], np.float32)
MIN_PS = np.array([0.0, 0.0, 0.01, 0.5, 1.0, 1e-10, 2.0, -1.0, np.nan, 0.1], np.float32)


def _logits(rows: np.ndarray, dtype: str) -> tuple[torch.Tensor, np.ndarray]:
    """The rows rounded to ``dtype``: (torch tensor for the kernels, NumPy for the reference)."""
    rounded = np.asarray(rows, np.float64).astype(np.float32).astype(NUMPY_DTYPES[dtype])
    return to_torch(rounded.copy(), "cpu"), rounded


def _random_rows(rng, batch: int, vocab: int) -> np.ndarray:
    scale = rng.choice([0.5, 3.0, 20.0], size=(batch, 1))
    rows = rng.standard_normal((batch, vocab)) * scale
    tie = rng.random(batch) < 0.3  # few distinct values: long runs of ties in logits and q
    rows[tie] = rng.integers(-3, 4, (int(tie.sum()), vocab))
    return rows


def _random_params(rng, batch: int, vocab: int) -> dict:
    top_k = np.where(
        rng.random(batch) < 0.5,
        rng.integers(1, vocab + 1, batch),
        rng.choice([0, -1, 1, vocab, vocab + 5, 2, 300], batch),
    ).astype(np.int64)
    return dict(
        temperature=rng.choice(TEMPERATURES, batch),
        top_k=top_k,
        top_p=rng.choice(TOP_PS, batch),
        min_p=rng.choice(MIN_PS, batch),
        seed=rng.integers(0, 2**32, batch, dtype=np.int64).astype(np.uint32),
        step=rng.integers(0, 2**32, batch, dtype=np.int64),
    )


def _torch_params(params: dict) -> dict:
    return {
        name: to_torch(value.copy(), "cpu") if isinstance(value, np.ndarray) else value
        for name, value in params.items()
    }


def _check(x: torch.Tensor, x_ref: np.ndarray, max_k=None, plain=False, **params) -> None:
    """Kernels against the reference: tokens, validity and every debug array, bit for bit
    (and with ``plain`` the tokens and validity of a call without ``debug``)."""
    tokens, valid, arrays = sample(x, max_k=max_k, debug=True, **_torch_params(params))
    ref_tokens, ref_valid, ref_arrays = reference_sample(x_ref, max_k=max_k, debug=True, **params)
    assert tokens.dtype == torch.int32 and valid.dtype == torch.bool
    np.testing.assert_array_equal(tokens.numpy(), ref_tokens)
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    assert list(arrays) == list(ref_arrays)
    assert arrays["topk_logits_unsorted"].dtype == x.dtype
    for name, ref in ref_arrays.items():
        got = arrays[name]
        if name == "random_unnorm_cdf_sampled":
            assert all(part.dtype == torch.uint32 for part in got)
            for part, ref_part in zip(got, ref, strict=True):
                np.testing.assert_array_equal(bits(part), bits(ref_part), err_msg=name)
        else:
            np.testing.assert_array_equal(bits(got), bits(ref), err_msg=name)
    if not plain:
        return
    plain_tokens, plain_valid = sample(x, max_k=max_k, **_torch_params(params))
    np.testing.assert_array_equal(plain_tokens.numpy(), ref_tokens)
    np.testing.assert_array_equal(plain_valid.numpy(), ref_valid)


def _special_rows(vocab: int, rng) -> np.ndarray:
    base = rng.standard_normal(vocab)
    rows = []
    nan_row = base.copy()
    nan_row[vocab // 2] = np.nan
    rows.append(nan_row)
    rows.append(np.full(vocab, -np.inf))  # no finite logit: invalid
    inf_row = base.copy()
    inf_row[[1 % vocab, vocab - 1]] = np.inf  # +inf maxima share the mass
    rows.append(inf_row)
    rows.append(np.full(vocab, 0.75))  # all equal
    zeros = np.where(rng.random(vocab) < 0.5, 0.0, -0.0)  # +0.0 ranks above -0.0
    rows.append(zeros)
    mixed = np.where(rng.random(vocab) < 0.5, -np.inf, base)  # -inf entries get 0
    rows.append(mixed)
    only_inf = np.where(rng.random(vocab) < 0.5, np.inf, -np.inf)  # no finite: invalid
    rows.append(only_inf)
    wide = base * 1e38  # m - x overflows to inf
    rows.append(wide)
    tiny = rng.standard_normal(vocab) * 1e-39  # subnormal logits flush to zero
    rows.append(tiny)
    return np.stack(rows)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_gpu_random_rows_and_parameter_mixes(dtype, path):
    max_k = PATHS[path]
    vocab = 1000
    rng = np.random.default_rng(hash((dtype, path)) % 2**32)
    batch = 13
    x, x_ref = _logits(_random_rows(rng, batch, vocab), dtype)
    _check(x, x_ref, max_k=max_k, plain=True, **_random_params(rng, batch, vocab))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("vocab", [1, 127, 1000])
def test_gpu_vocab_sizes(vocab, path):
    max_k = PATHS[path]
    if max_k is not None and max_k > vocab:
        max_k = vocab
    rng = np.random.default_rng(vocab)
    batch = 7
    x, x_ref = _logits(_random_rows(rng, batch, vocab), "float32")
    _check(x, x_ref, max_k=max_k, **_random_params(rng, batch, vocab))


@pytest.mark.parametrize("path", list(PATHS))
def test_gpu_special_rows(path):
    rng = np.random.default_rng(7)
    vocab = 300
    rows = _special_rows(vocab, rng)
    batch = rows.shape[0]
    for dtype in ("float32", "bfloat16"):
        x, x_ref = _logits(rows, dtype)
        # Each row under each parameter set once: sampling with every filter off, with
        # all of them on, and greedy (rows cycle through the sets, shifted per call).
        sets = np.array([(1.0, 0, 1.0, 0.0), (0.7, 40, 0.8, 0.05), (0.0, 5, 0.5, 0.0)])
        for shift in range(3):
            chosen = sets[(np.arange(rows.shape[0]) + shift) % 3]
            _check(
                x,
                x_ref,
                max_k=PATHS[path],
                temperature=chosen[:, 0].astype(np.float32),
                top_k=chosen[:, 1].astype(np.int64),
                top_p=chosen[:, 2].astype(np.float32),
                min_p=chosen[:, 3].astype(np.float32),
                seed=11,
                step=batch,
            )


def test_gpu_bounded_bf16_subnormal_order():
    """A row of bf16 subnormals: the bounded path's survivors come from tops.gpu.topk,
    whose keys must come from the exact upcast (the interpreter's bf16 conversion mangles
    subnormals)."""
    rng = np.random.default_rng(7)
    x, x_ref = _logits(rng.standard_normal((1, 300)) * 1e-39, "bfloat16")
    _check(x, x_ref, max_k=64, temperature=0.7, seed=11, step=9, top_k=40, top_p=0.8, min_p=0.05)


@pytest.mark.parametrize("path", list(PATHS))
def test_gpu_per_row_edges(path):
    """Each row one edge: greedy next to sampling rows, k in {1, V, 0, -1, > V} and
    k around max_k, top_p 0 / tiny / 1, min_p 0 / 0.5 / 1, temperatures 1e-4 .. inf."""
    vocab = 257
    rng = np.random.default_rng(3)
    edges = [
        (0.0, 0, 1.0, 0.0),
        (1.0, 0, 1.0, 0.0),
        (1e-4, 0, 1.0, 0.0),
        (1e4, 0, 1.0, 0.0),
        (np.inf, 0, 1.0, 0.0),
        (1.0, 1, 1.0, 0.0),
        (1.0, vocab, 1.0, 0.0),
        (1.0, -1, 1.0, 0.0),
        (1.0, vocab + 1, 1.0, 0.0),
        (1.0, 64, 0.9, 0.0),
        (1.0, 65, 0.9, 0.0),
        (1.0, 256, 0.95, 0.0),
        (2.0, 0, 0.0, 0.0),
        (2.0, 0, 1e-6, 0.0),
        (2.0, 0, 0.5, 0.5),
        (2.0, 0, 1.0, 1.0),
        (2.0, 0, 1.0, 0.5),
        (0.5, 10, 0.7, 0.02),
        (np.inf, 0, 0.5, 0.0),
    ]
    temperature, top_k, top_p, min_p = (np.array(column) for column in zip(*edges, strict=True))
    batch = len(edges)
    x, x_ref = _logits(rng.standard_normal((batch, vocab)) * 4, "float32")
    _check(
        x,
        x_ref,
        max_k=PATHS[path],
        plain=True,
        temperature=temperature.astype(np.float32),
        top_k=top_k.astype(np.int32),
        top_p=top_p.astype(np.float32),
        min_p=min_p.astype(np.float32),
        seed=np.arange(batch, dtype=np.int64) * 7919,
        step=5,
    )


@pytest.mark.parametrize("path", ["gpu_arbitrary", "gpu_bounded64"])
def test_gpu_many_seeds(path):
    """One row repeated with 53 seeds and steps: every draw and token matches."""
    rng = np.random.default_rng(5)
    vocab = 200
    batch = 53
    row = rng.standard_normal(vocab) * 2
    x, x_ref = _logits(np.tile(row, (batch, 1)), "float16")
    _check(
        x,
        x_ref,
        max_k=PATHS[path],
        temperature=1.3,
        top_k=50,
        top_p=0.95,
        min_p=0.001,
        seed=rng.integers(0, 2**32, batch, dtype=np.int64),
        step=np.arange(batch, dtype=np.int32),
    )


def test_gpu_tie_cutoffs():
    """Tie-dense rows (bf16 integers): top-k cuts inside a run of equal logits (lowest
    indices kept) and top-p keeps or drops equal weights together, on the arbitrary-k
    path (the bounded path takes its cut from tops.gpu.topk)."""
    rng = np.random.default_rng(9)
    vocab = 5000
    batch = 6
    x, x_ref = _logits(rng.integers(-2, 3, (batch, vocab)), "bfloat16")
    _check(
        x,
        x_ref,
        temperature=np.array([1.0, 0.5, 2.0, 1.0, 1.0, 8.0], np.float32),
        top_k=np.array([1500, 1, 2999, 4999, 0, 3000]),
        top_p=np.array([0.9, 1.0, 0.5, 0.7, 0.3, 0.999], np.float32),
        min_p=0.0,
        seed=1,
        step=2,
    )


@pytest.mark.parametrize("path", list(PATHS))
def test_gpu_empty_batch(path):
    x = torch.zeros((0, 300), dtype=torch.float32)
    tokens, valid, arrays = sample(
        x, temperature=1.0, seed=0, step=0, max_k=PATHS[path], debug=True
    )
    assert tokens.shape == (0,) and valid.shape == (0,) and tokens.dtype == torch.int32
    assert arrays["topk_topp_unnorm_probs_i32_unsorted"].shape == (0, 300)
    assert arrays["topk_logits_unsorted"].shape == (0, 300)
    assert integer_weights(x, 1.0).shape == (0, 300)


@pytest.mark.parametrize("path", ["gpu_arbitrary", "gpu_bounded256"])
def test_gpu_largest_vocab(path):
    """V = 2**18 (MAX_VOCAB: sums up to 2**48) at B = 1, top-k and top-p both active."""
    rng = np.random.default_rng(11)
    vocab = 2**18
    row = rng.standard_normal((1, vocab)) * 0.01  # nearly flat: S near its 2**48 bound
    x, x_ref = _logits(row, "bfloat16")
    _check(
        x,
        x_ref,
        max_k=PATHS[path],
        temperature=1.0,
        top_k=200_000,
        top_p=0.9,
        min_p=0.0,
        seed=3,
        step=4,
    )


def test_gpu_integer_weights_matches_sample():
    """integer_weights equals topk_topp_unnorm_probs_i32_unsorted with every filter off,
    greedy and invalid rows included."""
    rng = np.random.default_rng(13)
    rows = np.concatenate([_special_rows(100, rng), rng.standard_normal((4, 100))])
    temperature = rng.choice(TEMPERATURES, rows.shape[0])
    for dtype in TORCH_DTYPES:
        x, x_ref = _logits(rows, dtype)
        _, _, ref = reference_sample(x_ref, temperature=temperature, seed=0, step=0, debug=True)
        got = integer_weights(x, torch.from_numpy(temperature))
        np.testing.assert_array_equal(got.numpy(), ref["topk_topp_unnorm_probs_i32_unsorted"])


def _bulk_inputs(rng, batch: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows whose weights probe the whole quantisation: each row has its own
    temperature (log-uniform over 2**-140 .. 2**130, subnormal, huge and infinite ones
    included) and maximum, and differences from the maximum spread log-uniformly around
    the scale where ``w = d * s`` crosses integers and the 31 cut-off, plus differences
    right at those crossings (a few ulp either side)."""
    temperature = np.exp2(rng.uniform(-140, 130, batch)).astype(np.float32)
    special = rng.random(batch) < 0.05
    temperature[special] = rng.choice(
        np.array([np.inf, 2.0**126, 2.0**-126, 1e-45, 3e-39, 1.0], np.float32), int(special.sum())
    )
    m = rng.standard_normal(batch) * np.exp2(rng.uniform(-20, 40, batch))
    # Half the rows put the maximum within 2**-8 .. 2**24 temperatures of zero, so that
    # x = m - d keeps many bits of d and the weights fill (0, 2**30).
    near_scale = rng.random(batch) < 0.5
    m[near_scale] = (
        rng.choice([-1.0, 1.0], int(near_scale.sum()))
        * np.minimum(temperature[near_scale].astype(np.float64), 1e30)
        * np.exp2(rng.uniform(-8, 24, int(near_scale.sum())))
    )
    m = m.astype(np.float32)
    m[rng.random(batch) < 0.05] = 0.0
    # d ~ T * w / log2(e) with w log-uniform in [2**-30, 64] (w < 31 is the live range).
    w = np.exp2(rng.uniform(-30, 6, (batch, vocab)))
    near = rng.random((batch, vocab)) < 0.3
    w[near] = rng.integers(0, 32, int(near.sum())) * (
        1 + rng.integers(-4, 5, int(near.sum())) * 2.0**-23
    )
    d = w * temperature.astype(np.float64)[:, None] / np.log2(np.e)
    x = (m.astype(np.float64)[:, None] - d).astype(np.float32)
    x[np.arange(batch), rng.integers(0, vocab, batch)] = m  # the maximum itself (w = 0)
    wide = rng.random(batch) < 0.05  # unrelated values over the whole float32 range
    x[wide] = (
        rng.standard_normal((int(wide.sum()), vocab))
        * np.exp2(rng.uniform(-130, 127, (int(wide.sum()), vocab)))
    ).astype(np.float32)
    return x, temperature


@pytest.mark.parametrize(
    ("batch", "seed"),
    [
        pytest.param(512, 2024, id="gpu-2**21"),
        pytest.param(4096, 2025, id="gpu-2**24", marks=pytest.mark.slow),
    ],
)
def test_gpu_integer_weights_bulk(batch, seed):
    """2**21 (2**24 with -m slow) weights from the shared quantisation helper equal the
    reference with zero differing bits."""
    rng = np.random.default_rng(seed)
    vocab = 4096
    x, temperature = _bulk_inputs(rng, batch, vocab)
    got = integer_weights(torch.from_numpy(x), torch.from_numpy(temperature)).numpy()
    _, _, ref = reference_sample(x, temperature=temperature, seed=0, step=0, debug=True)
    ref = ref["topk_topp_unnorm_probs_i32_unsorted"]
    differing = int(np.count_nonzero(got != ref))
    assert got.size >= 2**21
    assert differing == 0, f"{differing} of {got.size} weights differ"
    # The inputs reach every regime: zero and full weights, and many in between.
    assert np.count_nonzero(ref == 0) > 0 and np.count_nonzero(ref == 2**30) >= batch // 2
    assert np.count_nonzero((ref > 0) & (ref < 2**30)) > got.size // 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(min_p=float("nan")), "min_p"),
        (dict(seed=2**32), "seed"),
        (dict(step=-1), "step"),
        (dict(top_k=1.5), "top_k"),
        (dict(max_k=0), "max_k"),
        (dict(max_k=257), "max_k"),
        (dict(temperature=torch.ones(3)), "temperature"),
    ],
)
def test_gpu_validation(kwargs, message):
    args = dict(temperature=1.0, seed=0, step=0) | kwargs
    with pytest.raises(ValueError, match=message):
        sample(torch.zeros((2, 300)), **args)


@pytest.mark.parametrize("path", ["gpu_arbitrary", "gpu_bounded64"])
def test_gpu_small_tiles(path, monkeypatch):
    """Rows walked in many small tiles (128 columns, 64-entry search blocks): ties of the
    top-k cut, prefix sums and the CDF walk carried across tiles, as on a GPU (whose
    tiles are 4096 and 512 columns; interpreted launches use up to 16384)."""
    monkeypatch.setattr(SamplingBlocks, "row_blocks", lambda self, vocab: (128, 64))
    rng = np.random.default_rng(17)
    vocab = 1000
    batch = 8
    rows = rng.integers(-2, 3, (batch, vocab)).astype(np.float64)
    rows[::2] = rng.standard_normal((batch // 2, vocab)) * 2
    rows[1, 500] = np.nan
    x, x_ref = _logits(rows, "bfloat16")
    _check(
        x,
        x_ref,
        max_k=PATHS[path],
        temperature=np.array([1.0, 0.5, 2.0, 0.0, 1.0, 4.0, 1.0, 0.3], np.float32),
        top_k=np.array([0, 300, 777, 5, 64, 999, 1, 400]),
        top_p=np.array([0.9, 1.0, 0.5, 0.7, 0.95, 0.999, 1.0, 0.2], np.float32),
        min_p=np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.2, 0.0, 0.0], np.float32),
        seed=np.arange(batch) + 100,
        step=7,
    )


@pytest.mark.parametrize("max_k", [None, 1], ids=["gpu_arbitrary", "gpu_bounded"])
def test_gpu_debug_logits_keep_nan_payloads(max_k):
    """The debug logits are the input's bits: torch's CPU scatter of bfloat16 used to turn
    the bounded path's quiet NaN 0x7FC0 into 0xFFFF (found by the property test)."""
    x, x_ref = _logits(np.array([[np.nan, 1.0, -2.0]]), "bfloat16")
    _check(x, x_ref, max_k=max_k, temperature=0.0, seed=0, step=0)
