"""The sampling reference against independent facts: published threefry test vectors
and JAX's threefry, the float64 values the quantisation approximates, a brute-force
restatement of the integer semantics with Python integers and fractions, batch
invariance, the draw's distribution, and argument validation."""

from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from scipy import stats

from tops.cpu import sampling
from tops.spec.sampling import MAX_VOCAB, PROB_ONE, TOP_P_BITS

LOG2E32 = np.float32(1.4426950408889634)


# Known-answer vectors of threefry2x32 with 20 rounds (Random123's kat_vectors):
# (key0, key1, counter0, counter1) -> (out0, out1).
THREEFRY_KAT = (
    ((0, 0, 0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF,) * 4, (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
)


@pytest.mark.parametrize(("words", "expected"), THREEFRY_KAT)
def test_threefry_known_answers(words, expected):
    out = sampling.threefry2x32(*(np.uint32(w) for w in words))
    assert tuple(int(word) for word in out) == expected


def test_threefry_equals_jax():
    rng = np.random.default_rng(0)
    counter0, counter1 = (rng.integers(0, 2**32, 512, dtype=np.uint32) for _ in range(2))
    for key0, key1 in rng.integers(0, 2**32, (8, 2), dtype=np.uint32):
        ours = sampling.threefry2x32(key0, key1, counter0, counter1)
        theirs = threefry_2x32(
            (jnp.uint32(key0), jnp.uint32(key1)), jnp.stack([counter0, counter1])
        )
        assert np.array_equal(np.asarray(theirs[0]), ours[0])
        assert np.array_equal(np.asarray(theirs[1]), ours[1])


def test_reciprocal_within_two_ulp_and_zero_past_the_limit():
    rng = np.random.default_rng(1)
    temperature = np.exp2(rng.uniform(-126, 126, 200_000)).astype(np.float32)
    temperature = np.concatenate(
        [temperature, np.float32(2.0) ** np.arange(-126, 126, dtype=np.float32)]
    )
    inverse = sampling.reciprocal(temperature).astype(np.float64)
    exact = 1.0 / temperature.astype(np.float64)
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(inverse - exact) / ulp) <= 2.0
    powers = np.float32(2.0) ** np.arange(-126, 126, dtype=np.float32)
    assert np.array_equal(
        sampling.reciprocal(powers), (1.0 / powers.astype(np.float64)).astype(np.float32)
    )
    beyond = np.array([2.0**126, 3e38, np.inf], np.float32)
    assert np.array_equal(sampling.reciprocal(beyond), np.zeros(3, np.float32))


def test_quantize_approximates_the_float64_weight():
    """q ~ PROB_ONE * 2**-w within the error budget of tops/precision/cases/sampling.py:
    three float32 roundings in w (relative 5 * 2**-24, moving 2**-w by
    ln 2 * w * 5 * 2**-24), about 4 * 2**-24 from the polynomial, and at most 1 from the
    floor. Exactly PROB_ONE at the maximum and 0 past w = 31."""
    rng = np.random.default_rng(2)
    x = (-rng.exponential(4.0, 1_000_000)).astype(np.float32)
    temperature = np.exp(rng.uniform(-2, 2, x.shape)).astype(np.float32)
    s = sampling.reciprocal(temperature) * LOG2E32
    q = sampling.quantize(x, np.float32(0), s)
    w = -x.astype(np.float64) / temperature.astype(np.float64) / np.log(2)
    exact = PROB_ONE * np.exp2(-w)
    budget = (np.log(2) * w * 5 + 4) * 2.0**-24 * exact + 1
    assert np.all(np.abs(q - exact) <= budget)
    assert np.count_nonzero(q) > 500_000
    assert sampling.quantize(np.float32(5), np.float32(5), np.float32(1)) == PROB_ONE
    assert sampling.quantize(np.float32(-32), np.float32(0), np.float32(1)) == 0
    assert sampling.quantize(np.float32(-np.inf), np.float32(0), np.float32(0)) == 0


def test_quantize_flushes_subnormals():
    """A subnormal logit, maximum or difference counts as zero (what a TPU computes)."""
    tiny = np.float32(2.0**-127)
    s = np.float32(2.0**100)
    assert sampling.quantize(tiny, np.float32(0), s) == PROB_ONE
    assert sampling.quantize(np.float32(0), tiny, s) == PROB_ONE
    normal = np.float32(1.5 * 2.0**-126)
    assert sampling.quantize(np.float32(2.0**-126), normal, s) == PROB_ONE  # d subnormal


def _brute_force_row(x, temperature, top_k, top_p, min_p, seed, step):
    """Steps 1-5 of the contract for one row with Python integers and fractions; the
    float weights come from :func:`sampling.quantize` (tested above)."""
    vocab = len(x)
    order = sorted(range(vocab), key=lambda i: (-float(x[i]), math.copysign(1, float(x[i])) < 0, i))
    greedy = order[0]
    k = vocab if top_k <= 0 or top_k >= vocab else top_k
    kept = set(order[:k])
    if not temperature >= 2.0**-126:
        probs = [PROB_ONE if i == greedy else 0 for i in range(vocab)]
        return greedy, probs, 0
    s = sampling.reciprocal(np.float32(temperature)) * LOG2E32
    q = [
        int(sampling.quantize(np.float32(x[i]), np.float32(x[greedy]), s)) if i in kept else 0
        for i in range(vocab)
    ]
    total = sum(q)
    threshold = math.ceil(min(Fraction(float(min_p)), 1) * PROB_ONE) if min_p > 2.0**-31 else 0
    p16 = math.floor(max(Fraction(float(top_p)), 0) * 2**TOP_P_BITS) if top_p < 1 else None
    probs = []
    for value in q:
        above = sum(other for other in q if other > value)
        keep = value >= threshold and (
            p16 is None or value == PROB_ONE or above * 2**TOP_P_BITS < p16 * total
        )
        probs.append(value if keep else 0)
    total = sum(probs)
    bits = (total - 1).bit_length()
    for attempt in range(64):
        hi, lo = sampling.threefry2x32(
            np.uint32(seed), np.uint32(step), np.uint32(attempt), np.uint32(0)
        )
        drawn = ((int(hi) << 32) | int(lo)) & ((1 << bits) - 1)
        if drawn < total:
            break
    prefix = 0
    for token, value in enumerate(probs):
        prefix += value
        if prefix > drawn:
            return token, probs, drawn
    raise AssertionError("the draw is below the total")


@pytest.mark.parametrize("trial", range(12))
def test_reference_equals_brute_force(trial):
    rng = np.random.default_rng(100 + trial)
    batch, vocab = 6, int(rng.integers(1, 40))
    logits = np.round(rng.standard_normal((batch, vocab)) * 2, 1).astype(np.float32)  # ties
    temperature = rng.choice(np.array([0, 0.5, 1, 2, 1e-4, 1e4], np.float32), batch)
    top_k = rng.integers(-2, vocab + 2, batch).astype(np.int32)
    top_p = rng.choice(np.array([1, 0.9, 0.5, 1e-6, 0], np.float32), batch)
    min_p = rng.choice(np.array([0, 0.1, 0.5, 1], np.float32), batch)
    seed = rng.integers(0, 2**32, batch, dtype=np.uint32)
    step = rng.integers(0, 2**32, batch, dtype=np.uint32)
    tokens, valid, debug = sampling.sample(
        logits,
        temperature=temperature,
        seed=seed,
        step=step,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        debug=True,
    )
    assert valid.all()
    hi, lo = debug["random_unnorm_cdf_sampled"]
    for b in range(batch):
        token, probs, drawn = _brute_force_row(
            logits[b], temperature[b], top_k[b], top_p[b], min_p[b], seed[b], step[b]
        )
        assert tokens[b] == token
        assert debug["topk_topp_unnorm_probs_i32_unsorted"][b].tolist() == probs
        assert (int(hi[b]) << 32) | int(lo[b]) == drawn


def test_debug_arrays_names_dtypes_and_shapes():
    logits = np.random.default_rng(3).standard_normal((3, 10)).astype(ml_dtypes.bfloat16)
    tokens, valid, debug = sampling.sample(
        logits, temperature=1.0, seed=1, step=2, top_k=4, debug=True
    )
    assert list(debug) == [
        "greedy_sampled",
        "topk_logits_unsorted",
        "topk_topp_unnorm_probs_i32_unsorted",
        "random_unnorm_cdf_sampled",
        "next_tokens",
    ]
    assert debug["greedy_sampled"].dtype == np.int32 and debug["greedy_sampled"].shape == (3,)
    assert debug["topk_logits_unsorted"].dtype == logits.dtype and debug[
        "topk_logits_unsorted"
    ].shape == (3, 10)
    assert np.isfinite(debug["topk_logits_unsorted"].astype(np.float32)).sum(axis=1).tolist() == [
        4,
        4,
        4,
    ]
    assert debug["topk_topp_unnorm_probs_i32_unsorted"].dtype == np.int32
    assert all(
        part.dtype == np.uint32 and part.shape == (3,)
        for part in debug["random_unnorm_cdf_sampled"]
    )
    assert tokens.dtype == np.int32 and valid.dtype == bool
    assert np.array_equal(debug["next_tokens"], tokens)


def test_greedy_rows_and_degenerate_filters():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((64, 50)).astype(np.float32)
    greedy = np.argmax(logits, axis=1)
    seeds = np.arange(64, dtype=np.uint32)
    for kwargs in (
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 1},
        {"temperature": 1.0, "min_p": 1.0},
        {"temperature": 1.0, "top_p": 1e-6},
        {"temperature": 1.0, "top_p": 0.0},
        {"temperature": 1e-4},
    ):
        tokens, _ = sampling.sample(logits, seed=seeds, step=0, **kwargs)
        assert np.array_equal(tokens, greedy), kwargs
    tokens, _ = sampling.sample(logits, temperature=1.0, seed=seeds, step=0)
    assert len(set(tokens.tolist())) > 10


def test_min_p_one_keeps_every_tie_of_the_maximum():
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], np.float32)
    tokens = {
        int(sampling.sample(logits, temperature=1.0, seed=s, step=0, min_p=1.0)[0][0])
        for s in range(200)
    }
    assert tokens == {1, 2, 4}


def test_special_rows():
    """NaN or no finite logit: invalid, token = greedy_sampled, zero weights and draw;
    +inf logits share the mass; the other rows are unaffected."""
    logits = np.array(
        [
            [0.0, np.nan, 5.0, 1.0],
            [-np.inf] * 4,
            [1.0, np.inf, 2.0, np.inf],
            [np.inf, np.inf, np.inf, np.inf],
            [0.5, 0.25, -1.0, 0.0],
        ],
        np.float32,
    )
    tokens, valid, debug = sampling.sample(logits, temperature=1.0, seed=7, step=0, debug=True)
    assert valid.tolist() == [False, False, True, False, True]
    assert tokens[:2].tolist() == [2, 0] and tokens[3] == 0
    assert tokens[2] in (1, 3)
    probs = debug["topk_topp_unnorm_probs_i32_unsorted"]
    assert probs[2].tolist() == [0, PROB_ONE, 0, PROB_ONE]
    assert not probs[[0, 1, 3]].any()
    assert all(not part[[0, 1, 3]].any() for part in debug["random_unnorm_cdf_sampled"])
    alone, _ = sampling.sample(logits[4:], temperature=1.0, seed=7, step=0)
    assert tokens[4] == alone[0]


def test_a_rows_token_depends_only_on_its_own_inputs():
    """Reordered, padded and grown batches give every row the same token and arrays."""
    rng = np.random.default_rng(5)
    batch, vocab = 16, 300
    logits = rng.standard_normal((batch, vocab)).astype(np.float32)
    params = {
        "temperature": rng.uniform(0.5, 2, batch).astype(np.float32),
        "top_k": rng.integers(0, 60, batch).astype(np.int32),
        "top_p": rng.uniform(0.5, 1, batch).astype(np.float32),
        "min_p": rng.uniform(0, 0.1, batch).astype(np.float32),
        "seed": rng.integers(0, 2**32, batch, dtype=np.uint32),
        "step": rng.integers(0, 2**32, batch, dtype=np.uint32),
    }
    tokens, _, debug = sampling.sample(logits, **params, debug=True)
    permutation = rng.permutation(batch)
    grown = np.concatenate([permutation, rng.integers(0, batch, 9)])
    shuffled, _, shuffled_debug = sampling.sample(
        logits[grown], **{name: value[grown] for name, value in params.items()}, debug=True
    )
    assert np.array_equal(shuffled[:batch], tokens[permutation])
    assert np.array_equal(shuffled[batch:], tokens[grown[batch:]])
    probs = "topk_topp_unnorm_probs_i32_unsorted"
    assert np.array_equal(shuffled_debug[probs][:batch], debug[probs][permutation])


def test_draw_is_uniform_and_below_the_total():
    """Rejection sampling: every value is below the total, and the values of a total
    just above a power of two (the worst case for a masked draw: almost half the masked
    values are rejected) fall uniformly into 16 bins (chi-square, p > 1e-6)."""
    total = np.full(40_000, 2**40 + 1, np.int64)
    drawn = sampling.draw(np.arange(40_000, dtype=np.uint32), np.uint32(9), total)
    assert np.all((drawn >= 0) & (drawn < total))
    counts = np.bincount((drawn * 16 // total).astype(np.int64), minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-6


CHI_SQUARE_DRAWS = 20_000
CHI_SQUARE_FALSE_ALARM = 1e-6


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [(1.0, 0, 1.0, 0.0), (0.7, 6, 1.0, 0.0), (1.3, 0, 0.8, 0.0), (1.0, 0, 1.0, 0.05)],
)
def test_chi_square_of_20000_draws(temperature, top_k, top_p, min_p):
    """20000 draws over distinct seeds match the float64 distribution renormalised over
    the kept entries: Pearson's chi-square with df = kept - 1 stays below the
    (1 - 1e-6) quantile, so a correct sampler fails this test once in a million runs."""
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, 1.5, 0.25]], np.float32)
    batch = CHI_SQUARE_DRAWS
    rows = np.repeat(logits, batch, axis=0)
    seeds = np.arange(batch, dtype=np.uint32)
    tokens, _, debug = sampling.sample(
        rows,
        temperature=temperature,
        seed=seeds,
        step=3,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        debug=True,
    )
    support = debug["topk_topp_unnorm_probs_i32_unsorted"][0] > 0
    expected = sampling.float64_probabilities(logits, np.float32(temperature), support[None])[0]
    counts = np.bincount(tokens, minlength=logits.shape[1])
    assert not counts[~support].any()
    statistic = np.sum(
        (counts[support] - batch * expected[support]) ** 2 / (batch * expected[support])
    )
    assert statistic < stats.chi2.ppf(1 - CHI_SQUARE_FALSE_ALARM, df=support.sum() - 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logits": np.zeros((2, 3, 4), np.float32)}, "logits"),
        ({"logits": np.zeros((2, 4), np.float64)}, "logits"),
        ({"logits": np.zeros((2, MAX_VOCAB + 1), np.float32)}, "logits"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": np.ones(3, np.float32)}, "temperature"),
        ({"temperature": np.ones(2, np.float64)}, "temperature"),
        ({"temperature": np.ones((2, 1), np.float32)}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_p": -0.5}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": float("nan")}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 2.0}, "min_p"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": np.ones(2, np.float32)}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"step": True}, "step"),
        ({"max_k": 0}, "max_k"),
        ({"max_k": 5}, "max_k"),
        ({"max_k": 2.0}, "max_k"),
    ],
)
def test_bad_arguments_raise(change, message):
    arguments = {
        "logits": np.zeros((2, 4), np.float32),
        "temperature": 1.0,
        "seed": 0,
        "step": 0,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        sampling.sample(**arguments)
