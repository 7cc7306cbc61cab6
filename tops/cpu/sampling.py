"""Reference of top-k / top-p / min-p sampling (NumPy): the executable definition.

The token-deciding arithmetic is the exact sequence of float32 operations and integer
arithmetic that ``tops/spec/sampling.py`` specifies; NumPy computes each float32 add,
subtract and multiply correctly rounded and never contracts them into a fused
multiply-add, so these are the bits every kernel must reproduce. Integer sums use int64
and the top-p comparison uint64 (both exact: sums stay below 2**48).
:func:`float64_probabilities` gives the float64 distribution the integers approximate,
for the precision report.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from tops.cpu import arith
from tops.spec.common import require_bool
from tops.spec.sampling import (
    EXP_COEFFICIENTS,
    LN2,
    LOG2E,
    MAX_ATTEMPTS,
    NEWTON_A,
    NEWTON_B,
    NEWTON_STEPS,
    PROB_BITS,
    PROB_ONE,
    RECIPROCAL_LIMIT,
    THREEFRY_PARITY,
    THREEFRY_ROTATIONS,
    THREEFRY_ROUNDS,
    TINY,
    TOP_P_BITS,
    validate,
)

_F32 = np.float32
_EXPONENT_MASK = 0x7F800000
EXP_COEFFICIENTS_F32 = tuple(_F32(c) for c in EXP_COEFFICIENTS)


def _row_parameter(value, batch: int, dtype) -> np.ndarray:
    return np.broadcast_to(np.asarray(value).astype(dtype), (batch,))


def threefry2x32(key0, key1, counter0, counter1) -> tuple[np.ndarray, np.ndarray]:
    """threefry2x32 with 20 rounds on uint32 arrays (broadcast): the two output words."""
    key0, key1, x0, x1 = (np.asarray(a, np.uint32) for a in (key0, key1, counter0, counter1))
    with np.errstate(over="ignore"):
        return _threefry_rounds(key0, key1, x0, x1)


def _threefry_rounds(key0, key1, x0, x1):
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(THREEFRY_PARITY))
    x0 = x0 + keys[0]
    x1 = x1 + keys[1]
    for round_index in range(THREEFRY_ROUNDS):
        rotation = THREEFRY_ROTATIONS[round_index % 8]
        x0 = x0 + x1
        x1 = (x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))
        x1 = x1 ^ x0
        if round_index % 4 == 3:
            injection = (round_index + 1) // 4
            x0 = x0 + keys[injection % 3]
            x1 = x1 + keys[(injection + 1) % 3] + np.uint32(injection)
    return x0, x1


def flush_subnormal(a: np.ndarray) -> np.ndarray:
    """float32 ``a`` with zeros and subnormals replaced by ``+0.0`` (what TPUs compute)."""
    a = np.asarray(a, _F32)
    return np.where((a.view(np.uint32) & _EXPONENT_MASK) == 0, _F32(0), a)


def reciprocal(temperature: np.ndarray) -> np.ndarray:
    """float32 ``1 / T`` to within a few ulp by a fixed Newton iteration, for
    ``TINY <= T < RECIPROCAL_LIMIT``; 0 for larger ``T`` (infinity included).

    ``T = M * 2**E`` with ``M`` in ``[1, 2)`` (exact bit manipulation); ``y ~ 1 / M``
    starts at ``NEWTON_A - NEWTON_B * M`` (error below 1/17) and takes ``NEWTON_STEPS``
    steps ``y = y * (2 - M * y)``; the result is ``y * 2**-E``, an exact scaling.
    """
    temperature = np.asarray(temperature, _F32)
    in_range = (temperature >= _F32(TINY)) & (temperature < _F32(RECIPROCAL_LIMIT))
    safe = np.where(in_range, temperature, _F32(1)).view(np.uint32)
    biased_exponent = (safe >> np.uint32(23)) & np.uint32(0xFF)
    mantissa = ((safe & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(_F32)
    y = _F32(NEWTON_A) - _F32(NEWTON_B) * mantissa
    for _ in range(NEWTON_STEPS):
        y = y * (_F32(2) - mantissa * y)
    inverse_scale = ((np.uint32(254) - biased_exponent) << np.uint32(23)).view(_F32)
    return np.where(in_range, y * inverse_scale, _F32(0))


def quantize(x: np.ndarray, m: np.ndarray, log2_scale: np.ndarray) -> np.ndarray:
    """Integer weights ``q`` in ``[0, PROB_ONE]``, ``q ~ PROB_ONE * 2**(-(m - x) * s)``.

    ``x`` float32 logits, ``m`` the row maximum, ``s = reciprocal(T) * LOG2E`` (all
    broadcast). Exactly: ``d = m - x`` (0 where ``x == m``), ``w = d * s``, with zeros
    and subnormals of ``x``, ``m``, ``d`` and ``w`` flushed to ``+0.0``; ``w >= 31`` (or
    not a number, as ``inf * 0``) gives 0; otherwise ``n = floor(w)``, ``f = w - n``
    (exact), ``r = P(f * LN2)`` with ``P`` the float32 Horner evaluation of the Taylor
    polynomial of ``exp(-t)`` (``EXP_COEFFICIENTS`` rounded to float32), and
    ``q = floor(r * 2**(30 - n))`` (the scaling is exact). ``P(0) = 1``, so the maximum
    gets exactly ``PROB_ONE``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        x = flush_subnormal(x)
        m = flush_subnormal(m)
        d = flush_subnormal(np.where(x == m, _F32(0), m - x))
        w = flush_subnormal(d * np.asarray(log2_scale, _F32))
        in_range = w < _F32(PROB_BITS + 1)
        w = np.where(in_range, w, _F32(0))
        n = np.floor(w)
        t = (w - n) * _F32(LN2)
        r = EXP_COEFFICIENTS_F32[-1]
        for coefficient in EXP_COEFFICIENTS_F32[-2::-1]:
            r = coefficient + t * r
        scale = ((np.uint32(127 + PROB_BITS) - n.astype(np.uint32)) << np.uint32(23)).view(_F32)
        q = np.floor(r * scale).astype(np.int64)
    return np.where(in_range, q, 0)


def _total_order_rank(x: np.ndarray) -> np.ndarray:
    """Each element's 0-based position in its row under the top-k op's order."""
    values = x.astype(np.float64)
    is_nan = np.isnan(values)
    descending = -np.where(is_nan, 0.0, values)
    negative_zero = (values == 0) & np.signbit(values)
    index = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.lexsort((index, negative_zero, descending, is_nan), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None, :], axis=-1)
    return rank


def _mass_strictly_above(q: np.ndarray) -> np.ndarray:
    """``sum(q_j for q_j > q_i)`` for every ``i`` of a row (int64)."""
    values, inverse = np.unique(q, return_inverse=True)
    mass = np.zeros(values.shape, np.int64)
    np.add.at(mass, inverse, q)
    above = q.sum() - np.cumsum(mass)  # strictly greater than each distinct value
    return above[inverse]


def draw(seed: np.ndarray, step: np.ndarray, total: np.ndarray) -> np.ndarray:
    """The token draw of each row: a uniform integer in ``[0, total)`` (int64) by rejection
    sampling, ``seed`` and ``step`` (uint32, broadcast against ``total``) keying threefry.
    Attempt ``a`` draws ``bit_length(total - 1)`` bits from counter ``(a, 0)`` and keeps the
    first value below ``total``; after ``MAX_ATTEMPTS`` rejections it takes the last value
    minus ``total``. The kernels reproduce it bit for bit."""
    total = np.asarray(total, np.int64)
    bits = np.array([int(t - 1).bit_length() for t in total], np.int64)
    low_mask = (np.int64(1) << np.minimum(bits, 32)) - 1
    high_mask = (np.int64(1) << np.maximum(bits - 32, 0)) - 1
    drawn = np.zeros_like(total)
    pending = np.ones(total.shape, bool)
    for attempt in range(MAX_ATTEMPTS):
        hi, lo = threefry2x32(seed, step, np.uint32(attempt), np.uint32(0))
        value = ((hi.astype(np.int64) & high_mask) << 32) | (lo.astype(np.int64) & low_mask)
        accept = pending & (value < total)
        last = pending & (attempt == MAX_ATTEMPTS - 1)
        drawn = np.where(accept, value, np.where(last, value - total, drawn))
        pending &= ~accept
    return drawn


def sample(
    logits,
    *,
    temperature,
    seed,
    step,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    max_k=None,
    debug=False,
):
    """Sample one token per row (the semantics of ``tops/spec/sampling.py``).

    Args:
      logits: ``[B, V]`` bf16, f16 or f32 (NumPy or JAX; validated as for
        ``tops.ops.sample``).
      temperature, top_p, min_p: numbers, or float32 arrays ``[B]`` or ``[]``.
      top_k, seed, step: integers, or integer arrays ``[B]`` or ``[]``.
      max_k: None, or the bounded-k path's static cap on ``top_k``.
      debug: also return the debug arrays.

    Returns:
      ``(next_tokens int32 [B], valid bool [B])``, plus with ``debug`` an OrderedDict:
      ``greedy_sampled`` int32 ``[B]``, ``topk_logits_unsorted [B, V]`` (dtype of
      ``logits``), ``topk_topp_unnorm_probs_i32_unsorted`` int32 ``[B, V]``,
      ``random_unnorm_cdf_sampled`` a pair of uint32 ``[B]`` (high, low),
      ``next_tokens`` int32 ``[B]``.
    """
    parameters = dict(
        temperature=temperature, seed=seed, step=step, top_k=top_k, top_p=top_p, min_p=min_p
    )
    validate(logits, **parameters, max_k=max_k, api="tops.ops")
    debug = require_bool("debug", debug)
    result = intermediates(logits, **parameters, max_k=max_k)
    tokens, valid = result["next_tokens"], result["valid"]
    if not debug:
        return tokens, valid
    arrays = OrderedDict(
        greedy_sampled=result["greedy_sampled"],
        topk_logits_unsorted=result["topk_logits_unsorted"],
        topk_topp_unnorm_probs_i32_unsorted=result["probs"].astype(np.int32),
        random_unnorm_cdf_sampled=(
            (result["drawn"] >> 32).astype(np.uint32),
            (result["drawn"] & 0xFFFFFFFF).astype(np.uint32),
        ),
        next_tokens=tokens,
    )
    return tokens, valid, arrays


def intermediates(logits, *, temperature, seed, step, top_k, top_p, min_p, max_k) -> dict:
    """Every intermediate of :func:`sample` for validated inputs: ``valid``,
    ``greedy_sampled``, ``topk_logits_unsorted``, ``kept`` (the top-k mask), ``probs``
    (int64 weights after every mask), ``support`` (the entries those masks keep),
    ``drawn`` (int64) and ``next_tokens``."""
    logits = np.asarray(logits)
    batch, vocab = logits.shape
    temperature = _row_parameter(temperature, batch, _F32)
    top_p = _row_parameter(top_p, batch, _F32)
    min_p = _row_parameter(min_p, batch, _F32)
    top_k = _row_parameter(top_k, batch, np.int64)
    seed = _row_parameter(np.asarray(seed).astype(np.int64) & 0xFFFFFFFF, batch, np.uint32)
    step = _row_parameter(np.asarray(step).astype(np.int64) & 0xFFFFFFFF, batch, np.uint32)
    rows = np.arange(batch)

    x = logits.astype(_F32)
    rank = _total_order_rank(logits)
    greedy = np.argmin(rank, axis=-1).astype(np.int32) if vocab else np.zeros(batch, np.int32)
    valid = ~np.isnan(x).any(axis=-1) & np.isfinite(x).any(axis=-1)
    greedy_row = ~(temperature >= _F32(TINY))

    k = np.where((top_k <= 0) | (top_k >= vocab), vocab, top_k)
    if max_k is not None:
        k = np.minimum(k, max_k)
    kept = rank < k[:, None]
    topk_logits = np.where(kept, logits, np.array(-np.inf, logits.dtype))

    log2_scale = reciprocal(temperature) * _F32(LOG2E)
    m = x[rows, greedy]
    q = np.where(kept, quantize(x, m[:, None], log2_scale[:, None]), 0)
    total = q.sum(axis=-1)

    min_p_enabled = min_p > _F32(2.0**-31)
    threshold = np.ceil(
        np.minimum(np.where(min_p_enabled, min_p, _F32(0)), _F32(1)) * _F32(PROB_ONE)
    )
    keep_min_p = q >= threshold.astype(np.int64)[:, None]
    top_p_enabled = top_p < _F32(1)
    p16 = np.floor(
        np.maximum(np.where(top_p_enabled, top_p, _F32(1)), _F32(0)) * _F32(2**TOP_P_BITS)
    ).astype(np.uint64)
    above = np.stack([_mass_strictly_above(row) for row in q]) if batch else q
    small_mass_above = (above.astype(np.uint64) << np.uint64(TOP_P_BITS)) < (
        p16 * total.astype(np.uint64)
    )[:, None]
    keep_top_p = ~top_p_enabled[:, None] | (q == PROB_ONE) | small_mass_above
    support = kept & keep_min_p & keep_top_p
    is_greedy = np.arange(vocab)[None, :] == greedy[:, None]
    support = np.where(greedy_row[:, None], is_greedy, support) & valid[:, None]
    probs = np.where(support, np.where(greedy_row[:, None], PROB_ONE, q), 0)
    sampled_total = probs.sum(axis=-1)
    drawn = np.where(valid & ~greedy_row, draw(seed, step, np.maximum(sampled_total, 1)), 0)
    passed = np.cumsum(probs, axis=-1) > drawn[:, None]
    tokens = np.where(valid, np.argmax(passed, axis=-1) if vocab else 0, greedy).astype(np.int32)
    return dict(
        valid=valid,
        greedy_sampled=greedy,
        topk_logits_unsorted=topk_logits,
        kept=kept,
        probs=probs,
        support=support,
        drawn=drawn.astype(np.int64),
        next_tokens=tokens,
    )


def float64_probabilities(logits, temperature, support) -> np.ndarray:
    """The float64 distribution the integer weights approximate: ``exp((x - m) / T)``
    normalised over ``support`` (a boolean ``[B, V]`` holding the row's maximum), with
    ``+inf`` logits sharing the mass evenly when the maximum is ``+inf``. Rows whose
    support is empty give zeros."""
    x = np.asarray(logits).astype(np.float64)
    temperature = _row_parameter(temperature, x.shape[0], _F32).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(np.where(support, x, -np.inf), axis=-1, keepdims=True)
        exponent = np.where(x == m, 0.0, (x - m) / temperature)
        weight = np.where(
            support & (exponent > -np.inf), arith.exp(np.where(support, exponent, 0.0)), 0.0
        )
        total = weight.sum(axis=-1, keepdims=True)
        return np.where(total > 0, weight / np.where(total > 0, total, 1.0), 0.0)
