"""Property-based: drawn shapes, dtypes, special values and temperatures, inside and just
outside the valid ranges, on both APIs. Every draw either raises a ValueError/TypeError
whose message starts with the argument's name, or gives the reference's probabilities
(special rows included) to float32 accuracy. ``--hypothesis-show-statistics`` prints
how many draws were computed and refused per argument."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tops import backends, cpu, ops
from tops.precision.cases.temperature_softmax import OUTPUT, tolerance
from tops.precision.convert import to_torch
from tops.precision.metrics import compare
from tops.precision.testing import attempt, property_settings

ARGUMENTS = ("logits", "temperature")
DEFAULT_EXAMPLES, LONG_EXAMPLES = 14, 300  # draws per API: the default suite, -m slow
DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "float64": np.float64,  # refused
    "int32": np.int32,  # refused
}
SPECIAL_LOGITS = (np.nan, np.inf, -np.inf, 60000.0, -60000.0)
# Valid and invalid temperatures: zero and a float32 subnormal (greedy), the uniform
# threshold and +inf, negative and NaN (refused as numbers, NaN rows as array entries).
TEMPERATURES = (0.0, 1e-40, 0.3, 1.0, 40.0, 2.0**64, np.inf, -0.5, np.nan)


@st.composite
def softmax_inputs(draw):
    """``(logits, temperature)`` as NumPy values; the temperature's form is drawn too."""
    batch = draw(st.sampled_from((0, 1, 3)))
    vocab = draw(st.sampled_from((1, 9, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((batch, vocab)) * draw(st.sampled_from((1.0, 30.0)))
    for _ in range(draw(st.integers(0, 3)) if x.size else 0):
        x[rng.integers(batch), rng.integers(vocab)] = draw(st.sampled_from(SPECIAL_LOGITS))
    with np.errstate(invalid="ignore"):  # NaN and inf into int32: refused anyway
        logits = x.astype(DTYPES[draw(st.sampled_from(tuple(DTYPES)))])
    form = draw(st.sampled_from(("number", "numpy scalar", "0-d", "rows", "wrong shape")))
    values = np.array(draw(st.lists(st.sampled_from(TEMPERATURES), min_size=batch + 1)))
    temperature = {
        "number": float(values[0]),
        "numpy scalar": np.float32(values[0]),
        "0-d": np.asarray(values[0], np.float32),
        "rows": values[:batch].astype(np.float32),
        "wrong shape": values[: batch + 1].astype(np.float32),
    }[form]
    return logits, temperature


def _check(probs, logits, temperature) -> None:
    """Per row: the special values of the reference exactly, and ε within the op's
    rule-1 tolerance (an elementwise bound would not hold: the GPU kernel's exp2 of
    arguments near -130 is about 5e-6 off relative on entries of about 1e-29, which
    the contract's norm rightly ignores)."""
    expected = cpu.temperature_softmax(logits.astype(np.float32), temperature)
    bound = tolerance(logits.shape[1])[OUTPUT]
    for row, (got, want) in enumerate(zip(np.asarray(probs), expected, strict=True)):
        c = compare(got[None], want[None], "float32")
        assert c.special == c.nonfinite == 0 and c.rel_l2 <= bound, (row, c)


def _tpu_check(drawn) -> None:
    logits, temperature = drawn
    probs, _ = attempt(lambda: ops.temperature_softmax(logits, temperature), ARGUMENTS)
    if probs is not None:
        _check(probs, logits, temperature)


def _gpu_check(drawn) -> None:
    from tops import gpu

    device = backends.torch_device()
    logits, temperature = drawn
    t = (
        temperature
        if isinstance(temperature, float | np.floating)
        else to_torch(temperature, device)
    )
    probs, _ = attempt(lambda: gpu.temperature_softmax(to_torch(logits, device), t), ARGUMENTS)
    if probs is not None:
        _check(probs.cpu().numpy(), logits, temperature)


@property_settings(DEFAULT_EXAMPLES)
@given(softmax_inputs())
def test_tpu_inputs_are_refused_by_name_or_computed_exactly(drawn):
    _tpu_check(drawn)


@property_settings(DEFAULT_EXAMPLES)
@given(softmax_inputs())
def test_gpu_inputs_are_refused_by_name_or_computed_exactly(drawn):
    _gpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(softmax_inputs())
def test_tpu_inputs_at_length(drawn):
    _tpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(softmax_inputs())
def test_gpu_inputs_at_length(drawn):
    _gpu_check(drawn)
