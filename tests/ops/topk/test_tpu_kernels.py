"""The Pallas top-k (``tops.ops.topk``): exact equality with the float64 reference and
``jax.lax.top_k`` on random and adversarial rows, special values, per-row ``k``, the API
edges, the depth schedule, the TPU lowering of every shipped configuration, and wrong tie
rules being caught."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops import cpu
from tops.backends import pallas_interpret
from tops.compile_only import lower_for_tpu
from tops.ops.selection import kernel, topk

inf, nan = np.inf, np.nan
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


# ---------------------------------------------------------------------------------------
# Inputs: one row block per pattern, so that each pattern's block stops on its own.


def _random(rng, vocab, rows):
    return rng.standard_normal((rows, vocab))


def _tie_dense(rng, vocab, rows):
    return rng.integers(-3, 4, (rows, vocab)).astype(np.float64)


def _all_equal(rng, vocab, rows):
    return np.full((rows, vocab), 0.5)


def _comb(rng, vocab, rows):
    """Zeros with a 1 at every 128th column (from column ``r`` in row ``r``): the top
    ones all sit in one lane, so no depth short of ``min(k, V / 128)`` is provably enough."""
    x = np.zeros((rows, vocab))
    for r in range(rows):
        x[r, r % min(vocab, 128) :: 128] = 1.0
    return x


def _ascending(rng, vocab, rows):
    return np.broadcast_to(np.arange(vocab, dtype=np.float64), (rows, vocab)).copy()


def _descending(rng, vocab, rows):
    return _ascending(rng, vocab, rows)[:, ::-1].copy()


def _late_peak(rng, vocab, rows):
    """Zeros with one large value in the last 128 columns."""
    x = np.zeros((rows, vocab))
    for r in range(rows):
        x[r, vocab - 1 - r % min(vocab, 128)] = 100.0
    return x


def _tie_trap(rng, vocab, rows):
    """Ones down lane 0 and in the last slice of every other lane, zeros elsewhere: the
    top ones by index are all in lane 0, while a value-only count (the seed's ``>=``)
    sees 127 more ones above the pivot and stops too early."""
    x = np.zeros((rows, vocab))
    x[:, ::128] = 1.0
    x[:, max(vocab - 128, 0) :] = 1.0
    return x


def _specials(rng, vocab, rows):
    """Dense NaN (both signs), +-inf and +-0.0 among a few values; then an all-NaN, an
    all -inf, an all -0.0/+0.0 and a NaN-then-finite row."""
    pool = np.array([nan, -nan, -inf, inf, -0.0, 0.0, 1.0, -1.0, 2.5])
    x = rng.choice(pool, (rows, vocab))
    x[0] = nan
    x[1 % rows] = -inf
    x[2 % rows] = rng.choice(np.array([-0.0, 0.0]), vocab)
    x[3 % rows, : vocab // 2] = nan
    return x


PATTERNS = (
    _random,
    _tie_dense,
    _all_equal,
    _comb,
    _ascending,
    _descending,
    _late_peak,
    _tie_trap,
    _specials,
)


@functools.cache
def _case(vocab: int, dtype: str):
    """``(x, reference order)``: every pattern in a row block of its own plus 3 random
    rows (a partial block); the reference is computed once at ``k = V``, since the top-k
    is a prefix of the full order."""
    rng = np.random.default_rng(vocab)
    rows = kernel.rows_per_block(dtype)
    blocks = [pattern(rng, vocab, rows) for pattern in PATTERNS]
    x = np.concatenate([*blocks, _random(rng, vocab, 3)]).astype(DTYPES[dtype])
    values, indices = cpu.topk(x, vocab)
    return x, values, indices


def _check_against_references(x, k, values, indices, ref_values, ref_indices):
    values, indices = np.asarray(values), np.asarray(indices)
    assert values.dtype == x.dtype and indices.dtype == np.int32
    assert values.shape == indices.shape == (x.shape[0], k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values.astype(np.float64), ref_values)
    # Bit for bit the input elements, NaN payloads and signed zeros included.
    gathered = np.take_along_axis(x, indices, axis=1)
    np.testing.assert_array_equal(values.view(np.uint8), gathered.view(np.uint8))
    # jax.lax.top_k on the first two rows of each NaN-free block (it is slow on CPU).
    first_rows = np.arange(x.shape[0]) % kernel.rows_per_block(x.dtype) < 2
    sample = first_rows & ~np.isnan(x.astype(np.float64)).any(axis=1)
    lax_values, lax_indices = jax.lax.top_k(jnp.asarray(x[sample]), k)
    np.testing.assert_array_equal(indices[sample], np.asarray(lax_indices))
    np.testing.assert_array_equal(
        values[sample].view(np.uint8), np.asarray(lax_values).view(np.uint8)
    )


# (V, k, dtype): every k of {1, 8, 64, 128, 256, 1000, V} up to V, dtypes rotated, all
# three at V = 50257. k = 1000 and k = V > 256 take the XLA sort path.
SIZES = [
    (1, 1, "float32"),
    (127, 1, "bfloat16"),
    (127, 8, "float16"),
    (127, 64, "float32"),
    (127, 127, "bfloat16"),
    (128, 1, "float32"),
    (128, 8, "bfloat16"),
    (128, 64, "float16"),
    (128, 128, "float32"),
    (1000, 1, "float16"),
    (1000, 8, "float32"),
    (1000, 64, "bfloat16"),
    (1000, 128, "float32"),
    (1000, 256, "bfloat16"),
    (1000, 1000, "float16"),
    (50257, 1, "bfloat16"),
    (50257, 8, "float16"),
    (50257, 64, "bfloat16"),
    (50257, 64, "float32"),
    (50257, 128, "float32"),
    (50257, 256, "bfloat16"),
    (50257, 1000, "float32"),
    (50257, 50257, "bfloat16"),
]


@pytest.mark.parametrize(
    ("vocab", "k", "dtype"), [pytest.param(*s, id=f"tpu-V{s[0]}-k{s[1]}-{s[2]}") for s in SIZES]
)
def test_tpu_equals_the_reference_and_lax_top_k(vocab, k, dtype):
    x, ref_values, ref_indices = _case(vocab, dtype)
    values, indices = topk(jnp.asarray(x), k)
    _check_against_references(x, k, values, indices, ref_values[:, :k], ref_indices[:, :k])


@pytest.mark.parametrize("max_k", [5, 300])
def test_tpu_per_row_k(max_k):
    x, _, _ = _case(1000, "bfloat16")
    row_k = np.resize(np.array([-3, 0, 1, 4, max_k, max_k + 7], np.int32), x.shape[0])
    values, indices = topk(jnp.asarray(x), jnp.asarray(row_k), max_k=max_k)
    ref_values, ref_indices = cpu.topk(x, row_k, max_k=max_k)
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    np.testing.assert_array_equal(np.asarray(values).astype(np.float64), ref_values)
    assert (np.asarray(indices)[row_k <= 0] == -1).all()
    huge = np.full(x.shape[0], 2**40, np.int64)  # host int64 counts clip, never wrap
    np.testing.assert_array_equal(
        np.asarray(topk(x, huge, max_k=max_k)[1]), cpu.topk(x, huge, max_k=max_k)[1]
    )


def test_tpu_empty_batch():
    values, indices = topk(jnp.zeros((0, 300), jnp.bfloat16), 7)
    assert values.shape == indices.shape == (0, 7)
    assert values.dtype == jnp.bfloat16 and indices.dtype == jnp.int32
    values, indices = topk(jnp.zeros((0, 300), jnp.float32), jnp.zeros((0,), jnp.int32), max_k=3)
    assert values.shape == indices.shape == (0, 3)


def test_tpu_numpy_input_and_python_k_under_jit():
    x = np.random.default_rng(3).standard_normal((5, 700)).astype(np.float32)
    ref_values, ref_indices = cpu.topk(x, 9)
    values, indices = topk(x, 9)
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    np.testing.assert_array_equal(np.asarray(values), ref_values.astype(np.float32))
    row_k = jnp.asarray([9, 2, 0, 9, 4], jnp.int32)
    _, jitted = jax.jit(lambda x, k: topk(x, k, max_k=9))(jnp.asarray(x), row_k)
    np.testing.assert_array_equal(np.asarray(jitted), cpu.topk(x, np.asarray(row_k), max_k=9)[1])


BAD_ARGUMENTS = [
    (np.zeros(5, np.float32), 1, None, "x must have rank 2"),
    (np.zeros((2, 5), np.int32), 1, None, "x must have dtype"),
    (np.zeros((2, 5), np.float64), 1, None, "x must have dtype"),
    (np.zeros((2, 0), np.float32), 1, None, "x must have V >= 1"),
    (np.zeros((2, 5), np.float32), 0, None, "k must satisfy"),
    (np.zeros((2, 5), np.float32), 6, None, "k must satisfy"),
    (np.zeros((2, 5), np.float32), True, None, "k must be"),
    (np.zeros((2, 5), np.float32), 2, 3, "max_k must be None"),
    (np.zeros((2, 5), np.float32), np.ones(2, np.int32), None, "max_k must be given"),
    (np.zeros((2, 5), np.float32), np.ones(3, np.int32), 2, "k must have shape"),
    (np.zeros((2, 5), np.float32), np.ones(2, np.float32), 2, "k must have dtype"),
    (np.zeros((2, 5), np.float32), np.ones(2, np.int32), 6, "max_k must satisfy"),
]


@pytest.mark.parametrize(("x", "k", "max_k", "message"), BAD_ARGUMENTS)
def test_tpu_bad_arguments_raise_value_errors_naming_them(x, k, max_k, message):
    with pytest.raises(ValueError, match=message):
        topk(x, k, max_k=max_k)


# ---------------------------------------------------------------------------------------
# The schedule and the termination statistics.


def test_tpu_row_failure_probability_closed_forms_and_sampling():
    assert kernel.row_failure_probability(2, 2) == pytest.approx(1 / 128, rel=1e-12)
    assert kernel.row_failure_probability(3, 2) == pytest.approx(1 - 127 * 126 / 128**2)
    assert kernel.row_failure_probability(5, 6) == 0.0
    lanes = np.random.default_rng(0).integers(0, 128, (20000, 64))
    counts = np.zeros((20000, 128), np.int64)
    np.add.at(counts, (np.arange(20000)[:, None], lanes), 1)
    sampled = (counts.max(axis=1) >= 5).mean()
    assert kernel.row_failure_probability(64, 5) == pytest.approx(sampled, abs=0.01)


def test_tpu_termination_stats():
    x, _, _ = _case(50257, "bfloat16")
    rows = kernel.rows_per_block("bfloat16")
    stats = kernel.termination_stats(jnp.asarray(x), 64)
    first, final = kernel.depth_schedule(64, 50257, rows)
    width = kernel.BLOCKS.pass_width
    assert stats["path"] == "fast" and stats["rows_per_block"] == rows
    assert stats["schedule"] == (first, width, final) and final == 64
    depth = dict(zip([p.__name__ for p in PATTERNS], stats["depth"], strict=False))
    assert depth["_random"] == first and depth["_tie_dense"] == first  # stops at once
    assert depth["_all_equal"] == first  # the index order breaks every tie
    assert depth["_comb"] >= final and depth["_tie_trap"] >= final
    assert (stats["passes"] == 1 + (stats["depth"] - first) // width).all()
    assert stats["hbm_bytes"] == x.shape[0] * (50257 * 2 + 64 * 4)
    assert stats["vmem_bytes"] == stats["passes"].sum() * rows * 50304 * 2
    assert kernel.termination_stats(jnp.asarray(x), 1000)["path"] == "sort"


# ---------------------------------------------------------------------------------------
# Wrong tie rules are caught.


def _fast_indices(x, k):
    """The kernel's indices, traced afresh (a new jit), so a patched rule takes effect."""
    launch = functools.partial(kernel.fast_topk_indices, k=k, interpret=pallas_interpret())
    return np.asarray(jax.jit(launch)(jnp.asarray(x)))


def test_tpu_a_sinking_sort_that_keeps_the_higher_index_is_caught(monkeypatch):
    """Comparing the carried entry instead of the new element, or ``>=``, breaks ties
    by the higher index (the same input passes ``test_tpu_equals_the_reference...``)."""
    x, _, ref_indices = _case(1000, "bfloat16")
    monkeypatch.setattr(kernel, "_displaces", lambda new_key, kept_key: new_key >= kept_key)
    assert not np.array_equal(_fast_indices(x, 64), ref_indices[:, :64])


def test_tpu_a_value_only_stopping_criterion_is_caught(monkeypatch):
    """The seed's criterion counts entries ``>=`` the pivot by value; on the tie-trap
    rows it stops before lane 0's ones are listed (the exact criterion passes them in
    ``test_tpu_equals_the_reference...``)."""
    x = _tie_trap(None, 50257, 8).astype(np.float32)
    ref_indices = cpu.topk(x, 64)[1]
    monkeypatch.setattr(
        kernel, "_ranks_above", lambda key, index, pivot_key, pivot_index: key >= pivot_key
    )
    assert not np.array_equal(_fast_indices(x, 64), ref_indices)


def test_tpu_under_the_checked_interpreter(monkeypatch):
    """Race detection and NaN-filled uninitialised memory: the scratch levels read past
    the listed depth never reach an output, and a partial row block stays exact."""
    monkeypatch.setenv("TOPS_TPU_INTERPRET", "checked")
    x = np.random.default_rng(4).integers(-2, 3, (11, 300)).astype(np.float32)
    x[0, ::128] = 5.0  # one block goes to the full depth
    np.testing.assert_array_equal(_fast_indices(x, 8), cpu.topk(x, 8)[1])


# ---------------------------------------------------------------------------------------
# The sort path (the kernel configurations compile in tests/ops/test_tpu_compile.py).


def test_tpu_sort_path_exports_for_tpu():
    """k > 256 is an XLA sort: it exports for TPU, with no Pallas kernel in it."""
    x = jax.ShapeDtypeStruct((13, 50257), jnp.bfloat16)
    assert "tpu_custom_call" not in lower_for_tpu(lambda x: topk(x, 1000), x)
