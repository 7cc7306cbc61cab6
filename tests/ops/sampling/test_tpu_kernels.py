"""The Pallas sampler (``tops.ops.sampling``): exact equality with the executable
definition ``tops.cpu.sampling`` on tokens, validity and every debug array, on both paths
(arbitrary-k and bounded-k), per-row parameter mixes, special rows, every logits dtype and
the vocabulary edges; the integer weights on millions of inputs; the integer pieces
(threefry, the draw, the top-p bound) against the reference and big integers; the TPU
lowering of every shipped configuration; and a contracted multiply-add being caught."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tops.backends import tpu_mode
from tops.cpu import sampling as ref
from tops.ops import sampling as ops
from tops.ops.sampling import kernel
from tops.precision.testing import bits
from tops.spec.sampling import DEBUG_NAMES, PROB_ONE

inf, nan = np.inf, np.nan
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}


# ---------------------------------------------------------------------------------------
# Inputs.


def _rows(rng, batch, vocab):
    """Logit rows of varied shape: normal at several scales, a spike, tie-dense integers,
    a ramp, near-equal values."""
    kinds = rng.integers(0, 6, batch)
    scale = rng.choice([0.01, 1.0, 4.0, 30.0], (batch, 1))
    x = rng.standard_normal((batch, vocab)) * scale
    x[kinds == 1, rng.integers(0, vocab)] += 20.0
    x[kinds == 2] = rng.integers(-3, 4, (int((kinds == 2).sum()), vocab))
    x[kinds == 3] = np.linspace(-5, 5, vocab)[None, :]
    x[kinds == 4] = 1.0 + rng.integers(0, 3, (int((kinds == 4).sum()), vocab)) * 2.0**-20
    return x


def _special_rows(vocab):
    """A NaN, all -inf, +inf logits (one and several), all equal, -0.0 against +0.0,
    one finite value among -inf, +inf with -inf, subnormals, huge values."""
    rows = []

    def row(fill):
        r = np.full(vocab, fill, np.float64)
        rows.append(r)
        return r

    r = row(0.5)
    r[vocab // 2] = nan
    row(-inf)
    r = row(1.0)
    r[vocab - 1] = inf
    r = row(-3.0)
    r[::3] = inf
    row(2.0)
    r = row(-0.0)
    r[1::2] = 0.0
    r = row(-inf)
    r[vocab // 3] = -7.0
    r = row(-inf)
    r[0] = inf
    r = row(0.0)
    r[::2] = 1e-40
    r[1::4] = -1e-40
    r = row(3e38)
    r[::2] = -3e38
    r = row(nan)
    return np.stack(rows)


def _mixed_parameters(rng, batch, vocab, max_k):
    """Per-row parameters drawn from pools of edge values."""
    cap = max_k or vocab
    temperature = [0.0, 1e-4, 0.3, 1.0, 1.0, 2.5, 1e4, inf, 1e-40, 2.0**126, 2.0**-126, nan, -1.0]
    top_k = [0, -1, 1, 2, 5, vocab, vocab + 3, 50, cap, cap + 1, 2**31 - 1]
    top_p = [1.0, 0.9, 0.5, 1e-6, 0.0, 2.0**-16, 0.999, 1.5, -0.5, nan, 0.7]
    min_p = [0.0, 0.0, 0.5, 1.0, 0.01, 2.0**-31, 2.0**-30, 2.0, nan, -1.0, 0.05]

    def pick(pool, dtype):
        return np.asarray(pool, dtype)[rng.integers(0, len(pool), batch)]

    return dict(
        temperature=pick(temperature, np.float32),
        top_k=pick(top_k, np.int64),
        top_p=pick(top_p, np.float32),
        min_p=pick(min_p, np.float32),
        seed=rng.integers(0, 2**32, batch, dtype=np.int64),
        step=rng.integers(0, 2**32, batch, dtype=np.int64),
    )


def _as_jax(params):
    """The parameters as JAX arrays (int64 counts clipped first, seeds as uint32)."""
    out = {}
    for name, value in params.items():
        if name == "top_k":
            value = np.clip(value, -(2**31), 2**31 - 1).astype(np.int32)
        elif name in ("seed", "step"):
            value = value.astype(np.uint32)
        out[name] = jnp.asarray(value)
    return out


# ---------------------------------------------------------------------------------------
# The comparison.


def _assert_same(out, expected):
    tokens, valid, arrays = out
    ref_tokens, ref_valid, ref_arrays = expected
    assert tokens.dtype == jnp.int32 and valid.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    np.testing.assert_array_equal(np.asarray(valid), ref_valid)
    assert tuple(arrays) == DEBUG_NAMES
    for name in DEBUG_NAMES:
        got, want = arrays[name], ref_arrays[name]
        if name == "random_unnorm_cdf_sampled":
            assert isinstance(got, tuple) and len(got) == 2
            for g, w in zip(got, want, strict=True):
                assert g.dtype == jnp.uint32
                np.testing.assert_array_equal(np.asarray(g), w, err_msg=name)
        elif name == "topk_logits_unsorted":
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(bits(got), bits(want), err_msg=name)
        else:
            assert got.dtype == jnp.int32 and got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


def _cast(x, dtype):
    """``x`` rounded to ``dtype``; values past its range become infinities on purpose."""
    with np.errstate(over="ignore"):
        return x.astype(DTYPES[dtype])


def _check(x, params, max_k, jax_params=False):
    """Run the debug API and compare with the reference."""
    expected = ref.sample(x, **params, max_k=max_k, debug=True)
    given = _as_jax(params) if jax_params else params
    _assert_same(ops.sample(jnp.asarray(x), **given, max_k=max_k, debug=True), expected)
    return expected


# Interpret-mode compilation (seconds per shape, dtype and path) dominates the run time,
# so the tests share a few shapes: 21 rows (a partial row block), V = 1000 unless a test
# is about V.
BATCH = 21


# (V, dtype, max_k): both paths, every dtype, V = 1, 127, 1000 (one partial chunk) and
# 20000 (several chunks and vocabulary blocks, the last ones partial), max_k = 1, 64, 256.
MIXES = [
    (1000, "float32", None),
    (1000, "bfloat16", None),
    (20000, "float16", None),
    (1, "float32", None),
    (1000, "float32", 64),
    (1000, "bfloat16", 256),
    (127, "float16", 64),
    (1000, "float16", 1),
    (1, "bfloat16", 1),
]


@pytest.mark.parametrize(
    ("vocab", "dtype", "max_k"),
    [pytest.param(*m, id=f"tpu-V{m[0]}-{m[1]}-max_k{m[2]}") for m in MIXES],
)
def test_tpu_equals_the_reference_on_mixed_rows(vocab, dtype, max_k):
    """Per-row parameter mixes with special rows among them, over six seeds; NumPy
    parameters (int64 seeds and counts) and JAX ones (uint32 seeds, int32 counts)
    alternate."""
    for trial in range(6):
        rng = np.random.default_rng([vocab, max_k or 0, trial])
        x = _rows(rng, BATCH, vocab)
        specials = _special_rows(vocab)
        x[rng.choice(BATCH, 4, replace=False)] = specials[rng.choice(len(specials), 4)]
        params = _mixed_parameters(rng, BATCH, vocab, max_k)
        _check(_cast(x, dtype), params, max_k, jax_params=trial % 2 == 1)


@pytest.mark.parametrize(
    ("dtype", "max_k"),
    [("float32", None), ("float32", 64), ("bfloat16", None), ("bfloat16", 256)],
    ids=["tpu-full-float32", "tpu-bounded-float32", "tpu-full-bfloat16", "tpu-bounded-bfloat16"],
)
def test_tpu_special_rows_under_every_temperature(dtype, max_k):
    """Every special row under greedy, ordinary, huge and infinite temperatures, with
    top-k, top-p and min-p on and off."""
    specials = _special_rows(1000)
    x = _cast(np.resize(specials, (BATCH, 1000)), dtype)
    for temperature in (0.0, 1.0, 1e4, inf):
        for top_k, top_p, min_p in ((0, 1.0, 0.0), (3, 0.5, 0.0), (200, 0.9, 0.5)):
            params = dict(
                temperature=temperature,
                seed=123,
                step=4,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
            )
            _check(x, params, max_k)


@pytest.mark.parametrize(
    ("dtype", "max_k"),
    [("float32", None), ("float32", 64), ("bfloat16", 256)],
    ids=["tpu-full", "tpu-bounded64", "tpu-bounded256"],
)
def test_tpu_edge_parameters_as_python_numbers(dtype, max_k):
    """Python numbers at the edges: k of 1, V, 0, -1 and past V (past max_k on the
    bounded path); top_p 0, tiny and 1; min_p 1, 0.5 and 0."""
    rng = np.random.default_rng(7)
    x = _cast(_rows(rng, BATCH, 1000), dtype)
    cases = [
        dict(top_k=1),
        dict(top_k=1000),
        dict(top_k=0, top_p=0.0),
        dict(top_k=-1, top_p=1e-6),
        dict(top_k=5000, top_p=1.0, min_p=1.0),
        dict(top_k=100, top_p=0.8, min_p=0.5),
        dict(top_k=300, top_p=2.0**-16, min_p=0.0),
    ]
    for case in cases:
        params = dict(temperature=0.9, seed=2**32 - 1, step=17, **case)
        _check(x, params, max_k)


@pytest.mark.parametrize(
    ("dtype", "max_k"), [("float32", None), ("bfloat16", 256)], ids=["tpu-full", "tpu-bounded"]
)
def test_tpu_widest_vocabulary(dtype, max_k):
    """V = 2**18 (the contract's limit) at B = 3."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 2**18)) * 3
    x[1, ::1000] = 9.0  # ties at the top
    params = dict(
        temperature=np.array([0.7, 1.3, 0.0], np.float32),
        seed=np.array([1, 2, 3], np.int64),
        step=np.array([9, 9, 9], np.int64),
        top_k=np.array([0, 100, 5], np.int64),
        top_p=np.array([0.95, 0.5, 1.0], np.float32),
        min_p=np.array([0.0, 0.01, 0.0], np.float32),
    )
    _check(_cast(x, dtype), params, max_k)


@pytest.mark.parametrize("max_k", [None, 64], ids=["tpu-full", "tpu-bounded"])
def test_tpu_exact_top_p_and_min_p_boundaries(max_k):
    """A row ``[0, x2, x3, -inf, ...]`` at T = 1 whose weights satisfy ``q2 = 3 q3 -
    2**30``: for the third entry ``A = 2**30 + q2 = 3 q3``, so at top_p = 0.75 (p16 =
    49152) ``A * 2**16 == p16 * S`` exactly and the entry is dropped (the rule is strict),
    while at 0.75 + 2**-16 it is kept. min_p = q3 / 2**30 keeps it (ties at the threshold
    stay), the next float32 above drops it."""
    x2, x3 = np.float32(-0.23118122), np.float32(-0.51438993)
    row = np.full(1000, -inf, np.float32)
    row[:3] = (0.0, x2, x3)
    x = np.broadcast_to(row, (BATCH, 1000)).copy()
    q3 = int(ref.quantize(x3, np.float32(0), ref.reciprocal(np.float32(1)) * np.float32(ref.LOG2E)))
    min_p_at = np.float32(q3 / 2**30)
    assert float(min_p_at) * 2**30 == q3
    top_p = np.resize(np.array([0.75, 0.75 + 2**-16, 1.0], np.float32), BATCH)
    min_p = np.resize(
        np.array([0, 0, 0, min_p_at, np.nextafter(min_p_at, np.float32(1))], np.float32), BATCH
    )
    params = dict(
        temperature=1.0,
        seed=np.arange(BATCH, dtype=np.int64),
        step=0,
        top_p=top_p,
        min_p=np.where(top_p == 1, min_p, 0).astype(np.float32),
    )
    expected = _check(x, params, max_k)
    probs = expected[2]["topk_topp_unnorm_probs_i32_unsorted"]
    assert probs[0, 1] > 0 and probs[0, 2] == 0  # top_p 0.75: on the boundary, dropped
    assert probs[1, 2] == q3  # one step of 2**-16 higher: kept
    kept_at_min_p = (params["min_p"] == min_p_at) & (top_p == 1)
    dropped_at_min_p = (params["min_p"] > min_p_at) & (top_p == 1)
    assert kept_at_min_p.any() and dropped_at_min_p.any()
    assert (probs[kept_at_min_p, 2] == q3).all() and (probs[dropped_at_min_p, 2] == 0).all()


@pytest.mark.parametrize("max_k", [None, 64], ids=["tpu-full", "tpu-bounded"])
def test_tpu_many_seeds_one_distribution(max_k):
    """One row, 504 seeds and steps: every drawn value and token equals the reference."""
    rng = np.random.default_rng(5)
    x = np.broadcast_to(rng.standard_normal(1000) * 2, (BATCH, 1000)).astype(np.float32)
    tokens = set()
    for trial in range(24):
        seed = np.arange(BATCH, dtype=np.int64) * 7919 + trial * 104729
        params = dict(temperature=1.0, seed=seed, step=seed % 7, top_k=40, top_p=0.9, min_p=0.02)
        tokens |= set(_check(x, params, max_k)[0].tolist())
    assert len(tokens) > 10


def test_tpu_empty_batch():
    for max_k in (None, 4):
        x = jnp.zeros((0, 300), jnp.bfloat16)
        tokens, valid, arrays = ops.sample(
            x, temperature=1.0, seed=0, step=0, max_k=max_k, debug=True
        )
        assert tokens.shape == valid.shape == (0,) and tokens.dtype == jnp.int32
        assert arrays["topk_logits_unsorted"].shape == (0, 300)
        assert arrays["topk_logits_unsorted"].dtype == jnp.bfloat16
        assert arrays["random_unnorm_cdf_sampled"][0].dtype == jnp.uint32
        tokens, valid = ops.sample(x, temperature=1.0, seed=0, step=0, max_k=max_k)
        assert tokens.shape == valid.shape == (0,) and valid.dtype == jnp.bool_
    assert ops.integer_weights(jnp.zeros((0, 5), jnp.float32), 1.0).shape == (0, 5)


def test_tpu_under_jit_and_without_debug():
    """Traced parameters under ``jax.jit`` (static ``max_k`` and ``debug``), and the
    two-output form of both paths."""
    rng = np.random.default_rng(3)
    x = _rows(rng, BATCH, 1000).astype(np.float32)
    params = _mixed_parameters(rng, BATCH, 1000, 64)
    run = jax.jit(functools.partial(ops.sample, max_k=None, debug=False))
    for max_k, tokens_and_valid in (
        (None, run(jnp.asarray(x), **_as_jax(params))),
        (64, ops.sample(x, **params, max_k=64)),
    ):
        expected = ref.sample(x, **params, max_k=max_k)
        assert len(tokens_and_valid) == 2
        np.testing.assert_array_equal(np.asarray(tokens_and_valid[0]), expected[0])
        np.testing.assert_array_equal(np.asarray(tokens_and_valid[1]), expected[1])


@pytest.mark.parametrize("max_k", [None, 64], ids=["tpu-full", "tpu-bounded"])
def test_tpu_integer_parameter_dtypes(max_k):
    """Seeds and steps modulo 2**32 from int64, uint32 and negative int32; counts from
    int64 past 2**31 and uint32."""
    rng = np.random.default_rng(9)
    x = _rows(rng, BATCH, 1000).astype(np.float32)
    seed64 = np.resize(np.array([0, 2**32 - 1, 2**40 + 5, -1, 12345, 2**31], np.int64), BATCH)
    k64 = np.resize(np.array([2**40, 3, 0, -5, 7, 999], np.int64), BATCH)
    k32 = np.resize(np.array([2**32 - 1, 3, 0, 2**32 - 5, 7, 999], np.uint32), BATCH)
    step = seed64[::-1].copy()
    expected = ref.sample(
        x, temperature=1.0, seed=seed64, step=step, top_k=k64, max_k=max_k, debug=True
    )
    out = ops.sample(
        x,
        temperature=1.0,
        seed=jnp.asarray(seed64.astype(np.int32)),  # the same values modulo 2**32
        step=jnp.asarray(step.astype(np.uint32)),
        top_k=jnp.asarray(k32),
        max_k=max_k,
        debug=True,
    )
    _assert_same(out, expected)
    out = ops.sample(x, temperature=1.0, seed=seed64, step=step, top_k=k64, max_k=max_k, debug=True)
    _assert_same(out, expected)


BAD_ARGUMENTS = [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_p=nan), r"top_p must be in \[0, 1\]"),
    (dict(seed=2**32), "seed must be in"),
    (dict(top_k=True), "top_k must be an integer"),
    (dict(max_k=300), "max_k must satisfy"),
    (dict(top_k=np.ones(3, np.int32)), "top_k must have shape"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS, ids=[f"tpu-{i}" for i in range(6)])
def test_tpu_bad_arguments_raise_value_errors_naming_them(change, message):
    arguments = dict(temperature=1.0, seed=0, step=0) | change
    with pytest.raises(ValueError, match=message):
        ops.sample(np.zeros((2, 300), np.float32), **arguments)


# ---------------------------------------------------------------------------------------
# The integer weights, in bulk.


def _bulk_inputs(rows, vocab, seed):
    """Logits and temperatures aimed at every branch of the quantisation: wide random
    ranges, ``w`` straddling integers and the cut at 31, differences near the subnormal
    range, temperatures from subnormal to infinite."""
    rng = np.random.default_rng(seed)
    temperature = np.exp(rng.uniform(-12, 12, rows)).astype(np.float32)
    pool = np.array(
        [0, 1e-40, 2.0**-126, 2.0**-125, 1e-30, 2.0**125, 2.0**126, 1e30, inf, nan, -1], np.float32
    )
    special = rng.random(rows) < 0.08
    temperature[special] = rng.choice(pool, int(special.sum()))
    x = rng.standard_normal((rows, vocab)) * np.exp(rng.uniform(-8, 8, (rows, 1)))
    x += rng.uniform(-1e4, 1e4, (rows, 1)) * (rng.random((rows, 1)) < 0.3)
    # Rows aimed at chosen w = d * s: integers, just below and above them, and near 31.
    s = ref.reciprocal(temperature).astype(np.float64) * ref.LOG2E
    aimed = (rng.random(rows) < 0.4) & (s > 0) & np.isfinite(s)
    target = rng.integers(0, 33, (rows, vocab)) + rng.choice(
        [0.0, 1e-7, -1e-7, 0.5, 3e-6, -3e-6], (rows, vocab)
    )
    peak = rng.uniform(-50, 50, (rows, 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = np.where(aimed[:, None], peak - np.abs(target) / s[:, None], x)
    x[aimed, 0] = peak[aimed, 0]
    # Tiny differences near the float32 normal range.
    tiny = rng.random(rows) < 0.05
    x[tiny] = rng.choice([0.0, 1e-38, 2e-38, -1e-38, 1e-45, 1.2e-38], (int(tiny.sum()), vocab))
    # Some NaN, all -inf, +inf rows.
    x[rng.random(rows) < 0.01, 3] = nan
    x[rng.random(rows) < 0.01] = -inf
    x[rng.random(rows) < 0.02, 5] = inf
    return x, temperature


def _bulk_differences(rows, vocab, dtype, seed):
    x, temperature = _bulk_inputs(rows, vocab, seed)
    x = _cast(x, dtype)
    expected = ref.intermediates(
        x, temperature=temperature, seed=0, step=0, top_k=0, top_p=1.0, min_p=0.0, max_k=None
    )["probs"]
    got = np.asarray(ops.integer_weights(jnp.asarray(x), jnp.asarray(temperature)))
    assert got.dtype == np.int32 and got.shape == x.shape
    return int((got != expected).sum()), x.size, expected


def test_tpu_integer_weights_equal_the_reference_in_bulk():
    """2**21 float32 inputs plus 2**19 each of bf16 and f16: zero differing weights."""
    total = differing = 0
    for rows, vocab, dtype, seed in (
        (2048, 1024, "float32", 0),
        (512, 1024, "bfloat16", 1),
        (512, 1024, "float16", 2),
    ):
        bad, size, expected = _bulk_differences(rows, vocab, dtype, seed)
        differing += bad
        total += size
        assert 0 < (expected > 0).mean() < 1
        assert (expected == PROB_ONE).any()
    assert total >= 2**21 + 2**20
    assert differing == 0, f"{differing} of {total} integer weights differ from the reference"


def test_tpu_integer_weights_are_the_debug_weights_with_filters_off():
    rng = np.random.default_rng(4)
    x = _rows(rng, BATCH, 1000).astype(np.float32)
    x[:3] = _special_rows(1000)[[0, 2, 5]]
    temperature = np.resize(np.array([1, 0, 2, 1e4, inf, 0.5, 1e-40, 3, 0.1], np.float32), BATCH)
    _, _, arrays = ops.sample(x, temperature=temperature, seed=1, step=2, debug=True)
    np.testing.assert_array_equal(
        np.asarray(ops.integer_weights(x, temperature)),
        np.asarray(arrays["topk_topp_unnorm_probs_i32_unsorted"]),
    )


def _contracts_multiply_add() -> bool:
    """Whether XLA compiles ``c + a * b`` into a fused multiply-add on this platform."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(4096).astype(np.float32) for _ in range(3))
    return not np.array_equal(np.asarray(jax.jit(lambda a, b, c: c + a * b)(a, b, c)), c + a * b)


@pytest.mark.skipif(tpu_mode() != "tpu-interpret", reason="interpret mode only")
def test_tpu_a_contracted_multiply_add_is_caught(monkeypatch):
    """Where XLA contracts ``c + a * b`` (XLA:CPU does), the quantisation without its
    contraction barrier differs from the reference, and the bulk comparison sees it."""
    if not _contracts_multiply_add():
        pytest.skip("this XLA does not contract float32 multiply-adds")
    monkeypatch.setattr(kernel, "_unfused_product", lambda a, b: a * b)
    x, temperature = _bulk_inputs(256, 1024, 0)
    x = _cast(x, "float32")
    params = ops.pack_params(256, 1024, 1024, temperature, 1.0, 0.0, 0, 0, 0)

    @jax.jit  # a fresh trace, so the patched product is the one compiled
    def contracted(x, params):
        stats = kernel.row_stats(x, interpret=True)
        return kernel.integer_weights_from_stats(x, params, stats, interpret=True)

    expected = ref.intermediates(
        x, temperature=temperature, seed=0, step=0, top_k=0, top_p=1.0, min_p=0.0, max_k=None
    )["probs"]
    assert (np.asarray(contracted(jnp.asarray(x), params)) != expected).sum() > 0


# ---------------------------------------------------------------------------------------
# The integer pieces.


def test_tpu_threefry_equals_the_reference_and_jax():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, (4, 4096), dtype=np.uint64).astype(np.uint32)
    hi, lo = jax.jit(kernel.threefry2x32)(*(jnp.asarray(w.view(np.int32)) for w in words))
    ref_hi, ref_lo = ref.threefry2x32(*words)
    np.testing.assert_array_equal(np.asarray(hi).view(np.uint32), ref_hi)
    np.testing.assert_array_equal(np.asarray(lo).view(np.uint32), ref_lo)
    from jax.extend.random import threefry_2x32

    key = jnp.asarray(words[:2, 0])
    out = np.asarray(
        threefry_2x32(key, jnp.asarray(np.stack([words[2, :5], words[3, :5]]).ravel()))
    )
    mine = ref.threefry2x32(words[0, 0], words[1, 0], words[2, :5], words[3, :5])
    np.testing.assert_array_equal(out, np.concatenate(mine))


def _limbs(values):
    values = np.asarray(values, np.int64)
    return jnp.asarray((values >> 24).astype(np.int32))[:, None], jnp.asarray(
        (values & 0xFFFFFF).astype(np.int32)
    )[:, None]


def _value(limbs):
    hi, lo = (np.asarray(a).astype(np.int64)[:, 0] for a in limbs)
    return hi * 2**24 + lo


@pytest.mark.parametrize("attempts", [64, 1], ids=["tpu-64-attempts", "tpu-1-attempt"])
def test_tpu_draw_equals_the_reference(monkeypatch, attempts):
    """Totals from 1 to just below 2**48, just above powers of two (acceptance near 1/2);
    with one attempt the fallback (last value minus the total) is exercised too."""
    monkeypatch.setattr(kernel, "MAX_ATTEMPTS", attempts)
    monkeypatch.setattr(ref, "MAX_ATTEMPTS", attempts)
    rng = np.random.default_rng(attempts)
    n = 4096
    powers = 2 ** rng.integers(0, 48, n).astype(np.int64)
    total = np.where(rng.random(n) < 0.5, powers + rng.integers(0, 3, n), rng.integers(1, 2**48, n))
    total = np.clip(total, 1, 2**48 - 1)
    total[:4] = [1, 2, 2**30, 2**48 - 1]
    seed = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    step = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    drawn = jax.jit(lambda *args: kernel.draw(*args))(  # a fresh trace per attempt count
        jnp.asarray(seed.view(np.int32))[:, None],
        jnp.asarray(step.view(np.int32))[:, None],
        _limbs(total),
    )
    expected = ref.draw(seed, step, total)
    np.testing.assert_array_equal(_value(drawn), expected)
    if attempts == 1:  # the fallback was taken where one attempt differs from 64
        monkeypatch.setattr(ref, "MAX_ATTEMPTS", 64)
        assert (ref.draw(seed, step, total) != expected).sum() > n // 20


def test_tpu_top_p_bound_against_big_integers():
    rng = np.random.default_rng(0)
    n = 8192
    total = rng.integers(0, 2**48, n)
    total[:6] = [0, 1, 2**30, 2**48 - 1, 65536, 65535]
    p16 = rng.integers(0, 2**16, n)
    p16[:12] = [1, 65535, 0, 65535, 1, 3, 0, 7, 65535, 1, 2, 32768]
    bound = jax.jit(kernel.top_p_bound)(_limbs(total), jnp.asarray(p16.astype(np.int32))[:, None])
    got = _value(bound)
    expected = [
        (int(p) * int(t) - 1) // 2**16 if p * t > 0 else -(2**24)
        for p, t in zip(p16.tolist(), total.tolist(), strict=True)
    ]
    np.testing.assert_array_equal(got, np.array(expected, np.int64))


# ---------------------------------------------------------------------------------------
# The checked interpreter and the lowering.


@pytest.mark.parametrize("max_k", [None, 8], ids=["tpu-full", "tpu-bounded"])
def test_tpu_under_the_checked_interpreter(monkeypatch, max_k):
    """Race detection and NaN-filled uninitialised memory: partial row and column blocks
    never reach an output."""
    monkeypatch.setenv("TOPS_TPU_INTERPRET", "checked")
    rng = np.random.default_rng(2)
    x = _rows(rng, 11, 300).astype(np.float32)
    params = _mixed_parameters(rng, 11, 300, max_k)
    _check(x, params, max_k)
