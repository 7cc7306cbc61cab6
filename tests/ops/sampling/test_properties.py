"""Property-based: drawn shapes, dtypes, special logits and every sampling parameter as a
number, a NumPy scalar, a 0-d or a per-row array, inside and just outside the valid
ranges, on both APIs. Every draw either raises a ValueError/TypeError whose message
starts with an argument's name, or returns the reference's tokens, validity and debug
arrays bit for bit. ``--hypothesis-show-statistics`` prints how many draws were computed
and refused per argument."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tops import backends, ops
from tops.cpu.sampling import sample as reference
from tops.precision.convert import from_torch, to_torch
from tops.precision.testing import attempt, property_settings

ARGUMENTS = (
    "logits",
    "temperature",
    "seed",
    "step",
    "top_k",
    "top_p",
    "min_p",
    "max_k",
    "debug",
)
DEFAULT_EXAMPLES, LONG_EXAMPLES = 10, 200  # draws per API: the default suite, -m slow
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
SPECIALS = (np.nan, np.inf, -np.inf, -0.0)
# Per parameter: values inside, on and just outside the valid range.
VALUES = {
    "temperature": (0.0, 0.7, 1.0, np.inf, -0.5, np.nan),
    "top_p": (0.0, 0.5, 0.9, 1.0, -0.5, 1.5, np.nan),
    "min_p": (0.0, 0.1, 1.0, -0.1, 1.2),
    "top_k": (0, 1, 5, 300, -1),
    "seed": (0, 7, 2**32 - 1, -1),
    "step": (0, 3, 2**31, -1),
}
FLOAT_PARAMETERS = ("temperature", "top_p", "min_p")


@st.composite
def sampling_inputs(draw):
    """``(logits, parameters)``: NumPy logits and every parameter in a drawn form."""
    batch = draw(st.sampled_from((0, 1, 3)))
    vocab = draw(st.sampled_from((1, 9, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((batch, vocab)) * 3
    for _ in range(draw(st.integers(0, 3)) if x.size else 0):
        x[rng.integers(batch), rng.integers(vocab)] = draw(st.sampled_from(SPECIALS))
    logits = x.astype(DTYPES[draw(st.sampled_from(tuple(DTYPES)))])
    parameters = {}
    for name, values in VALUES.items():
        form = draw(st.sampled_from(("default", "number", "number", "numpy scalar", "rows")))
        if form == "default" and name not in ("temperature", "seed", "step"):
            continue
        value = draw(st.sampled_from(values))
        floating = name in FLOAT_PARAMETERS
        if form == "rows":
            rows = draw(st.lists(st.sampled_from(values), min_size=batch, max_size=batch))
            dtype = np.float32 if floating else np.int64
            with np.errstate(invalid="ignore", over="ignore"):
                parameters[name] = np.array(rows, np.float64).astype(dtype)
        elif form == "numpy scalar":
            parameters[name] = np.float32(value) if floating else np.int64(value)
        else:
            parameters[name] = float(value) if floating else int(value)
    parameters["max_k"] = draw(st.sampled_from((None, None, 1, 8, 257)))
    parameters["debug"] = draw(st.sampled_from((False, True, np.bool_(True), 1)))
    return logits, parameters


def _assert_same_bits(got, want, name: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert (got.dtype, got.shape) == (want.dtype, want.shape), name
    assert got.tobytes() == want.tobytes(), f"{name}: {got} != {want}"


def _check(result, logits, parameters) -> None:
    expected = reference(logits, **parameters)
    if parameters["debug"]:
        *head, debug = result
        *expected_head, expected_debug = expected
        assert list(debug) == list(expected_debug)
        for name, got in debug.items():
            want = expected_debug[name]
            pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
            for g, w in pairs:
                _assert_same_bits(g, w, name)
        result, expected = head, expected_head
    for got, want, name in zip(result, expected, ("next_tokens", "valid"), strict=True):
        _assert_same_bits(got, want, name)


def _tpu_check(drawn) -> None:
    logits, parameters = drawn
    result, _ = attempt(lambda: ops.sample(logits, **parameters), ARGUMENTS)
    if result is not None:
        _check(result, logits, parameters)


def _gpu_check(drawn) -> None:
    import torch

    from tops import gpu

    logits, parameters = drawn
    device = backends.torch_device()
    on_device = {
        name: to_torch(value, device) if isinstance(value, np.ndarray) else value
        for name, value in parameters.items()
    }
    result, _ = attempt(lambda: gpu.sample(to_torch(logits, device), **on_device), ARGUMENTS)
    if result is None:
        return

    def host(value):
        if isinstance(value, tuple):
            return tuple(host(v) for v in value)
        if isinstance(value, torch.Tensor):
            return from_torch(value)
        return type(value)((k, host(v)) for k, v in value.items())

    _check(tuple(host(r) for r in result), logits, parameters)


@property_settings(DEFAULT_EXAMPLES)
@given(sampling_inputs())
def test_tpu_inputs_are_refused_by_name_or_sampled_exactly(drawn):
    _tpu_check(drawn)


@property_settings(DEFAULT_EXAMPLES)
@given(sampling_inputs())
def test_gpu_inputs_are_refused_by_name_or_sampled_exactly(drawn):
    _gpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(sampling_inputs())
def test_tpu_inputs_at_length(drawn):
    _tpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(sampling_inputs())
def test_gpu_inputs_at_length(drawn):
    _gpu_check(drawn)
