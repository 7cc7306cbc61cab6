"""Non-finite inputs and positive gates through both simple GLA kernels, forward and every
gradient: the "Special values" contract of ``tops/spec/simple_gla.py``.

The documented result for NaN and infinities: they propagate through IEEE arithmetic, and
a kernel is non-finite at exactly the elements where the float64 chunked form
(``tops.cpu.simple_gla.chunk_simple_gla_chunked`` and its gradient, same chunk size) is.
Both backends are held to that one mask, so they agree with each other element for
element; where the step recurrence (the definition) is non-finite the kernels are too,
and every element that stays finite matches the reference. The chunked form is a
superset of the recurrence's mask because a matmul multiplies a non-finite operand by the
zero weights of the causal mask (``0 * nan = nan``): a non-finite ``v_t`` reaches the rows
before ``t`` in its chunk through ``A v``, a non-finite ``q_t`` the ``dk`` of the keys
after ``t`` through ``ds^T q``. Masks applied with ``where`` rather than by multiplication
keep everything else causal.

Varlen batches: the TPU kernel chunks the packed token axis (chunk boundaries at multiples
of ``C``), the GPU kernel and the reference each sequence from its start, so inside the
sequence that holds the non-finite value the two layouts' masks differ where a matmul
leaks within a chunk; other sequences are bit-for-bit unaffected on both.
"""

from __future__ import annotations

import numpy as np
import pytest

from tops.cpu import simple_gla as reference
from tops.precision.cases import simple_gla as forward_cases
from tops.precision.cases import simple_gla_grad as grad_cases

BACKENDS = pytest.mark.parametrize("backend", ["tpu", "gpu"])
B, T, H, K, V, C = 2, 100, 2, 16, 16, 64  # a full chunk and a partial one
BAD_TOKEN = 70  # inside the second chunk
GRADIENT_OF = {"q": "dq", "k": "dk", "v": "dv", "g": "dg", "g_gamma": "dg_gamma"}


def _inputs(seed: int = 0, *, gamma=(-0.05, -0.1), batch: int = B, cu_seqlens=None) -> dict:
    rng = np.random.default_rng(seed)
    num_states = batch if cu_seqlens is None else len(cu_seqlens) - 1
    inputs = {
        "q": rng.standard_normal((batch, T, H, K)).astype(np.float32),
        "k": rng.standard_normal((batch, T, H, K)).astype(np.float32),
        "v": rng.standard_normal((batch, T, H, V)).astype(np.float32),
        "g": (-0.3 * np.abs(rng.standard_normal((batch, T, H)))).astype(np.float32),
        "g_gamma": np.asarray(gamma, np.float32),
        "initial_state": rng.standard_normal((num_states, H, K, V)).astype(np.float32),
        "do": rng.standard_normal((batch, T, H, V)).astype(np.float32),
        "dht": rng.standard_normal((num_states, H, K, V)).astype(np.float32),
        "chunk_size": np.asarray(C),
        "output_final_state": np.asarray(True),
    }
    if cu_seqlens is not None:
        inputs["cu_seqlens"] = np.asarray(cu_seqlens, np.int32)
    return inputs


def _run(backend: str, inputs: dict) -> dict:
    """Forward outputs and every gradient of one backend, as NumPy arrays."""
    results = dict(forward_cases.OP.runners[backend](inputs))
    results.update(grad_cases.OP.runners[backend](inputs))
    return {name: np.asarray(value, np.float64) for name, value in results.items()}


def _reference(inputs: dict, *, chunked: bool) -> dict:
    forward_fn, grad_fn = (
        (reference.chunk_simple_gla_chunked, reference.chunk_simple_gla_chunked_grad)
        if chunked
        else (reference.chunk_simple_gla, reference.chunk_simple_gla_grad)
    )
    arrays = {name: inputs[name] for name in forward_cases.ARRAY_ARGUMENTS if name in inputs}
    o, final_state = forward_fn(
        inputs["q"], inputs["k"], inputs["v"], **arrays, output_final_state=True, chunk_size=C
    )
    results = {"o": o, "final_state": final_state}
    results.update(
        grad_fn(
            inputs["q"], inputs["k"], inputs["v"], **arrays, chunk_size=C,
            do=inputs["do"], dht=inputs["dht"],
        )
    )  # fmt: skip
    return results


BOUNDS = {
    **forward_cases.tolerance("float32", T, C, K),
    **grad_cases.tolerance("float32", C, K, V, T),
}  # the registered rule-1 bounds of float32 cases of this shape (tf32 on the GPU)


def _assert_finite_part_matches(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Over the elements where both are finite, the relative L2 error of ``actual`` is
    within the op's registered rule-1 bound for ``name``."""
    both = np.isfinite(actual) & np.isfinite(expected)
    error = np.linalg.norm(actual[both] - expected[both])
    assert error <= BOUNDS[name] * np.linalg.norm(expected[both]), (name, error)


BAD_VALUES = [
    (name, value)
    for name in ("q", "k", "v", "initial_state")
    for value in (np.nan, np.inf, -np.inf)
] + [(name, value) for name in ("g", "g_gamma") for value in (np.nan, np.inf)]


@BACKENDS
@pytest.mark.parametrize("name, value", BAD_VALUES, ids=[f"{n}_{v}" for n, v in BAD_VALUES])
def test_nonfinite_input_mask_is_the_chunked_forms(backend, name, value):
    """One non-finite element (batch row 0, head 0; token 70, or state entry (3, 3), or
    ``g_gamma[0]``): the kernel's non-finite elements of ``o``, ``final_state`` and every
    gradient are exactly the float64 chunked form's, a superset of the recurrence's; batch
    row 1 and head 1 stay finite except through ``g_gamma[0]``'s own sum; the forward rows
    before the bad token's chunk stay finite; finite elements match the reference."""
    inputs = _inputs()
    index = {
        "initial_state": (0, 0, 3, 3),
        "g": (0, BAD_TOKEN, 0),
        "g_gamma": (0,),
    }.get(name, (0, BAD_TOKEN, 0, 3))
    inputs[name][index] = value
    results = _run(backend, inputs)
    chunked = _reference(inputs, chunked=True)
    step = _reference(inputs, chunked=False)
    for output, expected in chunked.items():
        actual = results[output]
        np.testing.assert_array_equal(
            ~np.isfinite(actual), ~np.isfinite(expected), err_msg=f"{output}: non-finite mask"
        )
        assert (~np.isfinite(step[output]) <= ~np.isfinite(actual)).all(), output
        _assert_finite_part_matches(actual, step[output], output)
    if name != "g_gamma":  # the other batch row and head never see the value
        for output in ("o", "dq", "dk", "dv", "dg"):
            assert (
                np.isfinite(results[output][1]).all()
                and np.isfinite(results[output][:, :, 1]).all()
            ), output
    if name in ("q", "k", "v", "g"):  # the chunks before the token's are untouched
        assert np.isfinite(results["o"][0, : C * (BAD_TOKEN // C), 0]).all()


@BACKENDS
def test_nonfinite_value_stays_in_its_varlen_sequence(backend):
    """A NaN in ``v`` of the middle of three packed sequences (the last one shares the TPU
    kernel's packed chunk ``[64, 128)`` with it): the other sequences' outputs,
    gradients and final states are bit for bit those of the clean input; inside it, the
    kernel is non-finite wherever the recurrence is."""
    cu_seqlens = (0, 30, 90, 100)
    clean = _inputs(1, batch=1, cu_seqlens=cu_seqlens)
    dirty = {name: np.array(value) for name, value in clean.items()}
    dirty["v"][0, BAD_TOKEN, 0, 3] = np.nan
    before, after = _run(backend, clean), _run(backend, dirty)
    step = _reference(dirty, chunked=False)
    others = np.r_[0:30, 90:100]
    for output in ("o", "dq", "dk", "dv", "dg"):
        np.testing.assert_array_equal(after[output][0, others], before[output][0, others])
        assert (~np.isfinite(step[output]) <= ~np.isfinite(after[output])).all(), output
    for output in ("final_state", "dh0"):
        np.testing.assert_array_equal(after[output][[0, 2]], before[output][[0, 2]])
    assert not np.isfinite(after["final_state"][1, 0]).all()


@BACKENDS
@pytest.mark.parametrize("gamma", [(0.02, 0.01), (-0.05, 0.05)], ids=["growing", "mixed"])
def test_positive_gates_follow_the_recurrence(backend, gamma):
    """Positive ``g_gamma`` (a growing state; ``exp(0.02 * 100) = 7.4``) and positive ``g``
    entries are allowed and match the float64 recurrence like decaying gates do."""
    inputs = _inputs(2, gamma=gamma)
    inputs["g"][:, ::7] = 0.05
    results = _run(backend, inputs)
    step = _reference(inputs, chunked=False)
    for output, expected in step.items():
        assert np.isfinite(results[output]).all(), output
        _assert_finite_part_matches(results[output], expected, output)


@BACKENDS
def test_overflowing_gates_never_give_a_finite_wrong_number(backend):
    """``g_gamma = +2`` grows the state by ``e^128`` per chunk: float32 overflows within
    the first chunk (``exp(2 i)`` passes the float32 maximum at ``i = 45``) while the float64
    reference does not. Every token's output row is either non-finite or within 16x the
    registered bound of the reference row (a single row is noisier than the whole array);
    the first 32 tokens are finite, and head 0 overflows."""
    inputs = _inputs(3, gamma=(2.0, -0.1))
    results = _run(backend, inputs)
    step = _reference(inputs, chunked=False)
    for output in ("o", "final_state"):
        actual = results[output].reshape(-1, V)
        expected = step[output].reshape(-1, V)
        finite = np.isfinite(actual).all(axis=1)
        error = np.linalg.norm(actual[finite] - expected[finite], axis=1)
        size = np.linalg.norm(expected[finite], axis=1)
        assert (error <= 16 * BOUNDS[output] * size).all(), output
    assert np.isfinite(results["o"][:, :32]).all()
    assert not np.isfinite(results["o"][:, :, 0]).all()
