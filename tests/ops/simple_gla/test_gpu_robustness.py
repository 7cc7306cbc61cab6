"""The Triton simple GLA on input the contract repairs or defines specially
(``tops/spec/simple_gla.py``, "Malformed cu_seqlens" and "Special values"), under the Triton
interpreter at small shapes: malformed ``cu_seqlens`` handed straight to the launchers (as a
CUDA tensor reaches them, unchecked: run on the repaired offsets, in bounds), the issue's
segmentation-fault reproducers, and ``-inf`` gates (exact resets) where the precision
cases do not reach (``g_gamma = -inf``, ``dg`` exactly 0, the state before a reset).

Tolerances are the registered rule-1 bounds of float32 cases of the same shape
(``tops/precision/cases/simple_gla.py`` and ``simple_gla_grad.py``: tf32 operands); on the
repaired offsets the launchers' results are equal bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tops import backends, gpu  # noqa: F401  (tops.gpu configures Triton first)
from tops.cpu import simple_gla as reference
from tops.gpu.simple_gla import backward, common, kernel
from tops.precision.cases import simple_gla as forward_cases
from tops.precision.cases import simple_gla_grad as grad_cases
from tops.precision.convert import from_torch, to_torch
from tops.spec.simple_gla import repaired_cu_seqlens

HEADS, DIM, CHUNK = 2, 16, 64
SCALE = DIM**-0.5


def _problem(seed, *, batch, seq_len, num_states):
    """Float32 inputs of the precision cases' distribution (``random_arrays``: both gates,
    an initial state) and the cotangents ``do`` and ``dht``, named like the registry's."""
    rng = np.random.default_rng(seed)
    arrays = forward_cases.random_arrays(
        rng, batch=batch, seq_len=seq_len, heads=HEADS, key_dim=DIM, value_dim=DIM,
        dtype="float32", gate="both", num_states=num_states,
    )  # fmt: skip
    arrays["do"] = rng.standard_normal((batch, seq_len, HEADS, DIM)).astype(np.float32)
    arrays["dht"] = rng.standard_normal((num_states, HEADS, DIM, DIM)).astype(np.float32)
    return arrays


def _launch(arrays, cu_seqlens):
    """``kernel.forward`` then ``backward.backward`` on whatever ``cu_seqlens`` they get
    (a torch tensor of any values): every result as float64 NumPy."""
    device = backends.torch_device()
    t = {name: None if x is None else to_torch(x, device) for name, x in arrays.items()}
    o, final_state, states, _ = kernel.forward(
        t["q"], t["k"], t["v"], t["g"], t["g_gamma"], SCALE, t["initial_state"], True,
        cu_seqlens, CHUNK,
    )  # fmt: skip
    grads = backward.backward(
        t["q"], t["k"], t["v"], t["g"], t["g_gamma"], SCALE, states, t["do"], t["dht"],
        cu_seqlens, CHUNK,
    )  # fmt: skip
    names = ("o", "final_state", "dq", "dk", "dv", "dg", "dg_gamma", "dh0")
    results = zip(names, (o, final_state, *grads), strict=True)
    return {n: np.asarray(from_torch(x), np.float64) for n, x in results if x is not None}


def _reference(arrays, cu_seqlens=None):
    """The float64 recurrence's forward and gradients."""
    inputs = {n: arrays[n] for n in ("q", "k", "v", "g", "g_gamma", "initial_state")}
    o, final_state = reference.chunk_simple_gla(
        **inputs, cu_seqlens=cu_seqlens, scale=SCALE, output_final_state=True, chunk_size=CHUNK
    )
    grads = reference.chunk_simple_gla_grad(
        **inputs, cu_seqlens=cu_seqlens, scale=SCALE, chunk_size=CHUNK,
        do=arrays["do"], dht=arrays["dht"],
    )  # fmt: skip
    return {"o": o, "final_state": final_state, **grads}


def _check(got, want, seq_len):
    """Finite, and within the registered float32 rule-1 bound of every result."""
    bounds = {
        **forward_cases.tolerance("float32", seq_len, CHUNK, DIM),
        **grad_cases.tolerance("float32", CHUNK, DIM, DIM, seq_len),
    }
    for name, value in got.items():
        assert np.isfinite(value).all(), name
        norm = np.linalg.norm(want[name])
        error = np.linalg.norm(value - want[name])
        assert error <= bounds[name] * max(norm, np.finfo(np.float32).tiny), (name, error, norm)


# ---------------------------------------------------------------------------------------
# Malformed cu_seqlens past validation: the result on the repaired offsets.

SHORT = 16  # T of the malformed-offset cases (one partial chunk)
MALFORMED = {
    "gpu_last_past_T": [0, 4, 40],
    "gpu_negative_first": [-3, 4, 16],
    "gpu_decreasing": [0, 12, 4],
    "gpu_all_past_T": [20, 30, 40],
    "gpu_all_negative": [-5, -1, -7],
}


def test_gpu_repair_matches_the_spec():
    """``common.repair_cu_seqlens`` is ``repaired_cu_seqlens`` for int32 and int64 tensors
    (int64 entries past int32 clip rather than wrap); valid offsets come back unchanged,
    and the input is not modified."""
    rng = np.random.default_rng(0)
    cases = [np.asarray(cu) for cu in MALFORMED.values()]
    cases += [rng.integers(-30, 50, size) for size in (2, 3, 9, 40)]
    cases += [np.asarray([0, 7, 7, 16]), np.zeros(33, np.int64)]
    cases += [np.asarray([0, 2**32 + 4, 16]), np.asarray([-(2**40), 4, 2**40, 2**33, 3])]
    for cu in cases:
        want = repaired_cu_seqlens(cu, SHORT)
        dtypes = (torch.int64,) if np.abs(cu).max() >= 2**31 else (torch.int32, torch.int64)
        for dtype in dtypes:
            x = torch.tensor(cu.tolist(), dtype=dtype)
            before = x.clone()
            got = common.repair_cu_seqlens(x, SHORT)
            assert got.dtype == torch.int32
            np.testing.assert_array_equal(got.numpy(), want)
            assert torch.equal(x, before)
    np.testing.assert_array_equal(
        repaired_cu_seqlens(np.asarray([0, 2**32 + 4, 16]), SHORT), [0, 16, 16]
    )


@pytest.mark.parametrize("cu", list(MALFORMED.values()), ids=list(MALFORMED))
def test_gpu_launchers_repair_raw_offsets(cu):
    """Forward and backward launchers given raw malformed offsets: every result finite,
    bit for bit the launchers' on the repaired offsets, and the float64 reference's on
    them within the float32 bounds."""
    arrays = _problem(1, batch=1, seq_len=SHORT, num_states=len(cu) - 1)
    repaired = repaired_cu_seqlens(cu, SHORT)
    got = _launch(arrays, torch.tensor(cu, dtype=torch.int32))
    want = _launch(arrays, torch.from_numpy(repaired))
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    _check(got, _reference(arrays, repaired), SHORT)


def test_gpu_many_empty_sequences_of_zeros():
    """``N = 8`` offsets, all zero, int64: 7 empty sequences (final state = initial state,
    ``dh0`` = the final-state cotangent) and one of all T tokens."""
    cu = np.zeros(9, np.int64)
    arrays = _problem(3, batch=1, seq_len=SHORT, num_states=8)
    got = _launch(arrays, torch.from_numpy(cu))
    _check(got, _reference(arrays, repaired_cu_seqlens(cu, SHORT)), SHORT)
    np.testing.assert_array_equal(got["final_state"][:7], arrays["initial_state"][:7])
    np.testing.assert_array_equal(got["dh0"][:7], arrays["dht"][:7])


REPRODUCER = """
import numpy as np, torch
from tops.gpu.simple_gla import chunk_simple_gla, kernel
q = torch.randn(1, 16, 2, 16)
for cu in ([0, 4, 40], [-3, 4, 16]):
    offsets = torch.tensor(cu, dtype=torch.int32)
    try:
        chunk_simple_gla(q, q, q, cu_seqlens=offsets)
    except ValueError as error:
        print("ValueError:", error)
    o, _, _, _ = kernel.forward(q, q, q, None, None, 0.25, None, False, offsets, 64)
    print("finite:", bool(torch.isfinite(o).all()))
"""


def test_gpu_segfault_reproducers_in_a_subprocess():
    """The issue's reproducers (``T = 16``, ``cu_seqlens = [0, 4, 40]`` and ``[-3, 4,
    16]``), in a process of their own (they used to end in a segmentation fault or a
    double free): the public op raises a ValueError naming ``cu_seqlens`` and the broken
    invariant, and the forward launcher, given the offsets unchecked, returns a finite
    output."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REPRODUCER)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    assert len(lines) == 4, run.stdout
    assert lines[0].startswith("ValueError: cu_seqlens") and "end at T" in lines[0], lines[0]
    assert lines[2].startswith("ValueError: cu_seqlens") and "start at 0" in lines[2], lines[2]
    assert lines[1] == lines[3] == "finite: True"


# ---------------------------------------------------------------------------------------
# g = -inf and g_gamma = -inf: exact resets (the position classes of the precision cases,
# which hold both backends to rules 1-3, are not repeated here).

LONG = 200
VARLEN = np.asarray([0, 100, 200], np.int32)


def test_gpu_g_gamma_minus_inf():
    """``g_gamma[0] = -inf`` resets every token of head 0, with and without ``g`` (head 1
    keeps finite decays and resets of its own): the reference's result, ``d g_gamma[0]``
    and head 0's ``dg`` exactly 0, ``dg`` exactly 0 at every ``-inf`` gate."""
    arrays = _problem(7, batch=1, seq_len=LONG, num_states=2)
    arrays["g_gamma"] = np.asarray([-np.inf, -0.1], np.float32)
    arrays["g"][0, [10, 64, 170], 1] = -np.inf
    got = _launch(arrays, torch.from_numpy(VARLEN))
    _check(got, _reference(arrays, VARLEN), LONG)
    assert got["dg_gamma"][0] == 0 and (got["dg"][..., 0] == 0).all()
    assert (got["dg"][np.isneginf(arrays["g"])] == 0).all()

    got = _launch({**arrays, "g": None}, torch.from_numpy(VARLEN))
    assert "dg" not in got
    want = _reference({**arrays, "g": np.zeros_like(arrays["g"])}, VARLEN)
    _check(got, want, LONG)
    assert got["dg_gamma"][0] == 0


@pytest.mark.parametrize("reset", [70, 64], ids=["gpu_inside", "gpu_boundary"])
def test_gpu_state_before_a_reset_contributes_nothing(reset):
    """Changing ``q, k, v`` before a reset (both heads, first of two packed sequences) and
    that sequence's initial state leaves every output row from the reset on and the
    final states unchanged, bit for bit; ``dg`` is exactly 0 at the reset."""
    rng = np.random.default_rng(10)
    arrays = _problem(5, batch=1, seq_len=LONG, num_states=2)
    arrays["g"][0, reset, :] = -np.inf
    changed = {name: x.copy() for name, x in arrays.items()}
    for name in ("q", "k", "v"):
        changed[name][:, :reset] = 100 * rng.standard_normal(changed[name][:, :reset].shape)
    changed["initial_state"][0] = 100 * rng.standard_normal(changed["initial_state"][0].shape)
    before = _launch(arrays, torch.from_numpy(VARLEN))
    after = _launch(changed, torch.from_numpy(VARLEN))
    np.testing.assert_array_equal(after["o"][:, reset:], before["o"][:, reset:])
    np.testing.assert_array_equal(after["final_state"], before["final_state"])
    assert not np.array_equal(after["o"][:, :reset], before["o"][:, :reset])
    assert (before["dg"][0, reset] == 0).all()
    _check(before, _reference(arrays, VARLEN), LONG)
