"""Property-based: drawn shapes, dtypes, gates, states, flags, scales and packed
sequences, inside and just outside the valid ranges, on both APIs. Every draw either
raises a ValueError/TypeError whose message starts with an argument's name, or gives
outputs within the op's rule-1 tolerance of the float64 reference.
``--hypothesis-show-statistics`` prints how many draws were computed and refused per
argument. (Interpreted simple GLA compiles each new configuration, so few draws run by
default; ``-m slow`` runs many.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tops import backends, ops
from tops.cpu.simple_gla import chunk_simple_gla as reference
from tops.precision.cases.simple_gla import random_arrays, tolerance
from tops.precision.convert import to_torch
from tops.precision.metrics import compare
from tops.precision.testing import attempt, property_settings

ARGUMENTS = (
    "q",
    "k",
    "v",
    "g",
    "g_gamma",
    "scale",
    "initial_state",
    "output_final_state",
    "cu_seqlens",
    "chunk_size",
)
DEFAULT_EXAMPLES, LONG_EXAMPLES = 10, 150  # draws per API: the default suite, -m slow


@st.composite
def gla_inputs(draw):
    """``(arrays, options)``: the array arguments as NumPy values (None where absent) and
    the Python ones."""
    batch = draw(st.sampled_from((0, 1, 2)))
    seq_len = draw(st.sampled_from((0, 1, 37, 37, 37)))
    heads = draw(st.sampled_from((1, 2)))
    dtype = draw(st.sampled_from(("float32", "float32", "bfloat16", "bfloat16", "float64")))
    gate = draw(st.sampled_from(("none", "g", "g_gamma", "both")))
    varlen = batch == 1 and seq_len > 0 and draw(st.booleans())
    lengths = sorted(draw(st.lists(st.integers(0, seq_len), min_size=1, max_size=3)))
    cu = np.array([0, *lengths, seq_len]) if varlen else None
    num_states = (len(cu) - 1 if varlen else batch) if draw(st.booleans()) else 0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = random_arrays(
        rng,
        batch=batch,
        seq_len=seq_len,
        heads=heads,
        key_dim=16,
        value_dim=16,
        dtype="float32" if dtype == "float64" else dtype,
        gate=gate,
        num_states=num_states,
    )
    if dtype == "float64":  # refused: q, k and v must be bf16 or f32
        arrays = {
            name: a.astype(np.float64) if name in ("q", "k", "v") else a
            for name, a in arrays.items()
        }
    if cu is not None:
        arrays["cu_seqlens"] = cu.astype(draw(st.sampled_from((np.int32, np.int64, np.float32))))
    if draw(st.integers(0, 5)) == 0 and arrays.get("initial_state") is not None:
        arrays["initial_state"] = arrays["initial_state"][:, :, :-1]  # a wrong shape
    options = {
        "scale": draw(st.sampled_from((None, None, 0.5, np.float32(0.125), float("nan"), "0.5"))),
        "output_final_state": draw(st.sampled_from((False, True, True, np.bool_(True), 1))),
        "chunk_size": draw(st.sampled_from((64, 64, 128, 32))),
    }
    return arrays, options


def _check(o, final_state, arrays, options) -> None:
    expected_o, expected_state = reference(**arrays, **options)
    dtype = str(arrays["q"].dtype)
    bound = tolerance(dtype, arrays["q"].shape[1], options["chunk_size"], 16)
    assert compare(np.asarray(o, np.float32), expected_o, dtype).rel_l2 <= bound["o"]
    if options["output_final_state"]:
        got = np.asarray(final_state, np.float32)
        assert compare(got, expected_state, "float32").rel_l2 <= bound["final_state"]
    else:
        assert final_state is None


def _tpu_check(drawn) -> None:
    arrays, options = drawn
    call = lambda: ops.chunk_simple_gla(**arrays, **options)  # noqa: E731
    result, _ = attempt(call, ARGUMENTS)
    if result is not None:
        _check(*result, arrays, options)


def _gpu_check(drawn) -> None:
    from tops import gpu

    arrays, options = drawn
    device = backends.torch_device()
    tensors = {name: to_torch(a, device) for name, a in arrays.items() if a is not None}
    call = lambda: gpu.chunk_simple_gla(**tensors, **options)  # noqa: E731
    result, _ = attempt(call, ARGUMENTS)
    if result is not None:
        o, final_state = result
        state = None if final_state is None else final_state.cpu().float().numpy()
        _check(o.cpu().float().numpy(), state, arrays, options)


@property_settings(DEFAULT_EXAMPLES)
@given(gla_inputs())
def test_tpu_inputs_are_refused_by_name_or_computed_within_tolerance(drawn):
    _tpu_check(drawn)


@property_settings(DEFAULT_EXAMPLES)
@given(gla_inputs())
def test_gpu_inputs_are_refused_by_name_or_computed_within_tolerance(drawn):
    _gpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(gla_inputs())
def test_tpu_inputs_at_length(drawn):
    _tpu_check(drawn)


@pytest.mark.slow
@property_settings(LONG_EXAMPLES)
@given(gla_inputs())
def test_gpu_inputs_at_length(drawn):
    _gpu_check(drawn)
