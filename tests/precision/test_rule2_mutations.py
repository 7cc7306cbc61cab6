"""Rule 2 with derived margins still rejects worse kernels: a planted bf16 operand in the
Pallas forward fails rules 2 and 3, an output pushed just past its derived margin fails
rule 2 (and one just inside passes), and ``margins.json`` is what the script derives."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tops import backends
from tops.ops.simple_gla import kernel
from tops.precision import contract, ledger, margins, runner
from tops.precision.contract import Measurement
from tops.precision.metrics import compare, numpy_dtype
from tops.precision.registry import op
from tops.precision.testing import requires_gpu

PLANTED_OP = "simple_gla"
PLANTED_CASE = "float32_B2_T64_H4_K64_V64_C128_g_h0_hT"


def _dot_with_bfloat16_lhs(a, b, contract_dims):
    """The kernel's HIGHEST float32 matmul, but with its first operand rounded to bf16."""
    return lax.dot_general(
        a.astype(jnp.bfloat16).astype(jnp.float32),
        b,
        (contract_dims, ((), ())),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


@requires_gpu
@pytest.mark.xdist_group(f"{PLANTED_OP}/{PLANTED_CASE}")
def test_planted_bfloat16_operand_fails_rules_2_and_3(monkeypatch):
    spec = op(PLANTED_OP)
    inputs = runner.inputs(PLANTED_OP, PLANTED_CASE)
    expected = runner.reference(PLANTED_OP, PLANTED_CASE)
    # The jitted wrapper retraces only after the caches are cleared; clear them again
    # afterwards so that no later test in this process runs the planted kernel.
    try:
        with monkeypatch.context() as patch:
            patch.setattr(kernel, "dot", _dot_with_bfloat16_lhs)
            jax.clear_caches()
            planted = spec.runners["tpu"](inputs)
    finally:
        jax.clear_caches()
    gpu = {m.output: m for m in runner.measure(PLANTED_OP, PLANTED_CASE, "gpu")}
    entries = ledger.load()
    for output, dtype in spec.output_dtypes(inputs).items():
        m = Measurement(
            PLANTED_OP,
            PLANTED_CASE,
            output,
            "tpu",
            backends.mode("tpu"),
            compare(planted[output], expected[output], dtype),
        )
        baseline = ledger.baseline(entries, m)
        if baseline is None:
            pytest.skip(f"the ledger has no baseline for {m.where} in mode {m.mode}")
        second = contract.rule2(m, gpu[output], margins.margin(PLANTED_OP, PLANTED_CASE, output))
        third = contract.rule3(m, baseline)
        print(f"planted {output}: ε={m.eps:.3e}; {second.message}; {third.message}")
        assert not second.ok, second.message
        assert not third.ok, third.message


def _margin_params() -> list:
    """``(op, case, output)`` per derived margin; ``slow`` where the case is, and the
    case's xdist group, so that its kernel runs are shared with ``tests/ops``."""
    params = []
    for key in margins.load():
        op_name, case_name, output = key.split("|")
        marks = [pytest.mark.xdist_group(f"{op_name}/{case_name}")]
        if op(op_name).case(case_name).slow:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(op_name, case_name, output, id=key, marks=marks))
    return params


def _with_eps(out, expected, target: float, dtype: str) -> np.ndarray:
    """``out + a d`` rounded to ``dtype`` whose ε is ``target`` (to 1e-4), ``d`` a fixed
    random direction scaled by ``|expected|``. The rounded ε moves in steps of single
    elements, so ``a`` is bisected on the rounded output, starting from the float64
    solution of ``||out + a d - expected|| = target ||expected||``."""
    out = np.asarray(out, np.float64)
    direction = np.random.default_rng(0).standard_normal(out.shape) * np.abs(expected)
    error = out - expected
    along = float(np.sum(error * direction))
    norm2 = float(np.sum(direction**2))
    excess = float(np.sum(error**2)) - (target * np.linalg.norm(expected)) ** 2
    a = (-along + np.sqrt(along**2 - norm2 * excess)) / norm2

    def rounded(a: float) -> np.ndarray:
        return (out + a * direction).astype(numpy_dtype(dtype))

    def eps(a: float) -> float:
        return compare(rounded(a), expected, dtype).rel_l2

    low, high = 0.0, a
    while eps(high) < target:
        low, high = high, 2 * high
    for _ in range(64):
        if abs(eps(high) / target - 1) <= 1e-4:
            break
        middle = (low + high) / 2
        low, high = (middle, high) if eps(middle) < target else (low, middle)
    return rounded(high)


@requires_gpu
@pytest.mark.parametrize(("op_name", "case_name", "output"), _margin_params())
def test_rule2_fails_just_past_the_derived_margin(op_name, case_name, output):
    spec = op(op_name)
    dtype = spec.output_dtypes(runner.inputs(op_name, case_name))[output]
    expected = runner.reference(op_name, case_name)[output]
    tpu = next(m for m in runner.measure(op_name, case_name, "tpu") if m.output == output)
    gpu = next(m for m in runner.measure(op_name, case_name, "gpu") if m.output == output)
    margin = margins.margin(op_name, case_name, output)
    assert contract.rule2(tpu, gpu, margin).ok
    reference_eps = max(gpu.eps, tpu.comparison.floor)
    assert tpu.eps < reference_eps * (1 + 0.9 * margin), "the TPU is already near the bound"
    out = runner.outputs(op_name, case_name, "tpu")[output]
    for share, passes in ((1.1, False), (0.9, True)):
        target = reference_eps * (1 + share * margin)
        mutant = _with_eps(out, expected, target, dtype)
        m = Measurement(
            op_name, case_name, output, "tpu", tpu.mode, compare(mutant, expected, dtype)
        )
        assert m.eps == pytest.approx(target, rel=0.01)
        verdict = contract.rule2(m, gpu, margin)
        print(
            f"{op_name}/{case_name} {output}: margin {margin:.2%}, ε_GPU {gpu.eps:.4e}, "
            f"mutant at {share} x margin: ε {m.eps:.4e} (target {target:.4e}) {verdict.label}"
        )
        assert verdict.ok == passes, verdict.message
        assert f"margin {margin:.2%}" in verdict.message


@pytest.mark.parametrize(("op_name", "case_name", "output"), _margin_params())
def test_margins_file_is_what_the_script_derives(op_name, case_name, output):
    """To 6 significant digits: the draws are the same bits on every host, the float64
    reference they are measured against may differ in its last bits (about 1e-12 of ε)."""
    derived = margins.derive(op_name, case_name, output)
    recorded = margins.load()[margins.key(op_name, case_name, output)]
    assert recorded.keys() == derived.keys()
    for name, value in derived.items():
        assert recorded[name] == pytest.approx(value, rel=1e-6), name


def test_margins_file_covers_exactly_the_shared_arithmetic_outputs():
    assert sorted(margins.load()) == sorted(margins.key(*o) for o in margins.covered())
    assert json.loads(margins.MARGINS_PATH.read_text())["draws"] == margins.DRAWS
