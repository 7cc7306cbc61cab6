"""The harness against hand-computed facts, and proof that its rules reject worse kernels."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from tops import cpu
from tops.precision import contract, ledger, registry, report
from tops.precision.contract import Measurement
from tops.precision.metrics import compare, ulp
from tops.precision.registry import Case, Op
from tops.precision.testing import requires_gpu


def _measure(out, ref, backend="tpu", mode="tpu-interpret", case="demo"):
    return Measurement("softmax_demo", case, "probs", backend, mode, compare(out, ref, "float32"))


# --- metrics -------------------------------------------------------------------------


def test_metrics_by_hand():
    ref = np.array([3.0, 4.0])
    c = compare(np.array([3.0, 4.0 + 2**-20], np.float32), ref, "float32")
    assert c.rel_l2 == pytest.approx(2**-20 / 5.0)
    assert c.max_abs == 2**-20
    assert c.max_ulp == pytest.approx(2**-20 / 2**-21)  # ulp of float32 at 4 is 2**-21
    assert (c.nonfinite, c.special) == (0, 0)
    assert c.worst_index == (1,)
    assert (c.worst_out, c.worst_ref) == (4.0 + 2**-20, 4.0)


def test_floor_is_the_rounding_error_of_the_reference():
    ref = np.array([1.0 / 3.0])
    assert compare(ref, ref, "float32").floor == pytest.approx(
        abs(float(np.float32(1 / 3)) - 1 / 3) / (1 / 3)
    )
    bf16 = compare(ref, ref, "bfloat16").floor
    assert bf16 == pytest.approx(abs(float(ml_dtypes.bfloat16(1 / 3)) - 1 / 3) * 3)


def test_ulp_of_each_dtype():
    assert ulp(np.array(1.0), "float32") == 2**-23
    assert ulp(np.array(1.0), "bfloat16") == 2**-7
    assert ulp(np.array(1.0), "float16") == 2**-10
    assert ulp(np.array(0.0), "float16") == 2**-24  # the subnormal spacing


def test_nonfinite_and_special_values_are_counted():
    ref = np.array([1.0, np.nan, 0.5, np.inf])
    c = compare(np.array([np.nan, np.nan, 0.5, np.inf]), ref, "float32")
    assert (c.nonfinite, c.special, c.rel_l2) == (1, 0, np.inf)
    c = compare(np.array([1.0, 0.0, 0.5, np.nan]), ref, "float32")
    assert (c.nonfinite, c.special) == (0, 2)
    assert c.worst_index == (1,)


def test_zero_reference_uses_an_absolute_norm():
    c = compare(np.array([0.0, 1e-3]), np.zeros(2), "float32")
    assert c.rel_l2 == pytest.approx(1e-3)


def test_float32_subnormals_compare_as_zero_float16_subnormals_do_not():
    assert compare(np.array([0.0, 1.0]), np.array([1e-40, 1.0]), "float32").rel_l2 == 0.0
    assert compare(np.array([0.0, 1.0]), np.array([1e-6, 1.0]), "float16").rel_l2 > 0.0


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros(3), np.zeros(4), "float32")


# --- the rules reject worse implementations ------------------------------------------


def _softmax_rows():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((4, 2000)) * 4).astype(np.float32)


def _softmax_in_bfloat16(x, t):
    """A worse kernel: the whole computation rounded through bfloat16."""
    z = ((x - x.max(axis=1, keepdims=True)) / t).astype(ml_dtypes.bfloat16)
    e = np.exp(z.astype(np.float32)).astype(ml_dtypes.bfloat16).astype(np.float32)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _softmax_scaled_before_max(x, t):
    """A worse kernel: divides by T before taking the max (overflows at small T)."""
    with np.errstate(all="ignore"):
        z = x.astype(np.float32) / np.float32(t)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def test_rule1_rejects_a_bfloat16_softmax_and_names_everything():
    x = _softmax_rows()
    ref = cpu.temperature_softmax(x, 0.8)
    m = _measure(_softmax_in_bfloat16(x, 0.8), ref)
    verdict = contract.rule1(m, tolerance=4e-6, other=_measure(ref, ref, backend="gpu"))
    assert not verdict.ok
    for expected in (
        "rule 1 failed",
        "softmax_demo/demo",
        "output 'probs'",
        "mode tpu-interpret",
        "ε_TPU=",
        "ε_GPU=",
        "floor",
        "worst element [",
    ):
        assert expected in verdict.message
    with pytest.raises(AssertionError, match="rule 1 failed"):
        contract.enforce(verdict)


def test_rule1_rejects_scaling_before_the_max():
    x = np.array([[1e4, 1e4 + 1, 1e4 - 1], [3.0, 2.0, 1.0]], np.float32)
    ref = cpu.temperature_softmax(x, 1e-36)  # x / T overflows to inf, inf - inf is NaN
    verdict = contract.rule1(_measure(_softmax_scaled_before_max(x, 1e-36), ref), 4e-6)
    assert not verdict.ok
    assert "nonfinite 3" in verdict.message


def test_rule2_rejects_a_tpu_kernel_less_precise_than_the_gpu_kernel():
    x = _softmax_rows()
    ref = cpu.temperature_softmax(x, 0.8)
    good = ref.astype(np.float32)
    worse = _measure(_softmax_in_bfloat16(x, 0.8), ref)
    better = _measure(good, ref, backend="gpu", mode="gpu-interpret")
    verdict = contract.rule2(worse, better)
    assert not verdict.ok
    assert "ε_TPU=" in verdict.message and "ε_GPU=" in verdict.message
    assert "tpu-interpret vs gpu-interpret" in verdict.message
    assert contract.rule2(_measure(good, ref), better).ok


def test_rule2_allows_two_percent_over_the_floor():
    ref = np.array([1.0 / 3.0, 2.0 / 3.0])
    at_floor = _measure(ref.astype(np.float32), ref)
    assert contract.rule2(at_floor, _measure(ref, ref, backend="gpu")).ok


def test_rule3_gates_a_regression_against_the_ledger():
    x = _softmax_rows()
    ref = cpu.temperature_softmax(x, 0.8)
    m = _measure(_softmax_in_bfloat16(x, 0.8), ref)
    assert contract.rule3(m, baseline=m.eps).ok
    verdict = contract.rule3(m, baseline=m.eps / 2)
    assert not verdict.ok
    assert "baseline" in verdict.message and "rule 3 failed" in verdict.message
    assert contract.rule3(m, baseline=None).ok


def test_exact_outputs_count_every_mismatch_including_signed_zero():
    ref = np.array([3.0, 0.0, np.nan, -np.inf])
    assert compare(ref.copy(), ref, "exact").rel_l2 == 0.0
    c = compare(np.array([3.0, -0.0, np.nan, -np.inf]), ref, "exact")
    assert c.rel_l2 == 0.25 and c.worst_index == (1,) and c.floor == 0.0
    assert compare(np.array([3.0, 0.0, 1.0, -np.inf]), ref, "exact").rel_l2 == 0.25


def _topk_keeping_higher_index_on_ties(inputs):
    """A wrong tie rule: among equal values the higher index comes first."""
    x = inputs["x"].astype(np.float64)
    k = int(inputs["k"])
    vocab = x.shape[1]
    order = np.lexsort((-np.arange(vocab)[None, :].repeat(len(x), 0), -x), axis=-1)[:, :k]
    return {"values": np.take_along_axis(x, order, -1), "indices": order.astype(np.int32)}


def test_rule1_catches_a_wrong_tie_rule_on_a_tie_dense_topk_case():
    from tops.precision.registry import op

    spec = op("topk")
    case = spec.case("ties_bfloat16_B4_V50257_k1000")
    inputs = case.make_inputs()
    ref = spec.reference(inputs)
    got = _topk_keeping_higher_index_on_ties(inputs)
    indices = Measurement(
        "topk",
        case.name,
        "indices",
        "tpu",
        "tpu-interpret",
        compare(got["indices"], ref["indices"], "exact"),
    )
    verdict = contract.rule1(indices, case.tolerance["indices"])
    assert not verdict.ok and indices.eps > 0.9
    # The values alone cannot see a tie rule: equal values are equal.
    assert compare(got["values"], ref["values"], "exact").rel_l2 == 0.0


# --- ledger and report ---------------------------------------------------------------


def test_ledger_round_trip(tmp_path):
    path = tmp_path / "baseline.json"
    ref = np.array([0.25, 0.75])
    m = _measure(ref.astype(np.float32), ref)
    assert ledger.write([ledger.entry(m)], path) == 1
    entries = ledger.load(path)
    assert ledger.baseline(entries, m) == m.eps
    assert json.loads(path.read_text())["version"] == 1
    assert ledger.baseline(entries, _measure(ref, ref, mode="tpu")) is None


def _fake_op(tpu_kernel):
    x = _softmax_rows()

    def make():
        return {"logits": x, "temperature": np.float32(0.8)}

    return Op(
        name="softmax_demo",
        output_dtypes=lambda inputs: {"probs": "float32"},
        reference=lambda i: {"probs": cpu.temperature_softmax(i["logits"], i["temperature"])},
        runners={
            "tpu": lambda i: {"probs": tpu_kernel(i["logits"], i["temperature"])},
            "gpu": lambda i: {
                "probs": cpu.temperature_softmax(i["logits"], i["temperature"]).astype(np.float32)
            },
        },
        cases=(Case("demo", make, {"probs": 4e-6}),),
    )


@requires_gpu  # the measurements record the GPU backend's mode
@pytest.mark.parametrize(
    ("tpu_kernel", "exit_code"),
    [
        (lambda x, t: cpu.temperature_softmax(x, t).astype(np.float32), 0),
        (_softmax_in_bfloat16, 1),
    ],
    ids=["exact", "bfloat16"],
)
def test_report_prints_writes_and_gates(monkeypatch, tmp_path, capsys, tpu_kernel, exit_code):
    from tops.precision import runner

    monkeypatch.setattr(report, "ops", lambda: {"softmax_demo": _fake_op(tpu_kernel)})
    monkeypatch.setattr(runner, "op", lambda name: _fake_op(tpu_kernel))
    for cached in (runner.inputs, runner.reference, runner.outputs, runner.measure):
        cached.cache_clear()
    try:
        assert report.main(["--out", str(tmp_path)]) == exit_code
    finally:
        for cached in (runner.inputs, runner.reference, runner.outputs, runner.measure):
            cached.cache_clear()
    printed = capsys.readouterr()
    assert "ε_TPU" in printed.out and "softmax_demo" in printed.out
    record = json.loads((tmp_path / "precision.json").read_text())
    assert record["ok"] == (exit_code == 0)
    markdown = (tmp_path / "precision.md").read_text()
    assert "| case | output | ε_TPU | ε_GPU | floor |" in markdown
    page = (tmp_path / "precision.html").read_text()
    if exit_code:
        assert "rule 1 failed" in printed.err and "rule 2 failed" in printed.err
        # The failures come first, each with its bound; failed cells are marked.
        assert markdown.index("## Failures") < markdown.index("## softmax_demo")
        assert "- rule 1 failed: softmax_demo/demo" in markdown and "**FAIL** 4.00e-06" in markdown
        assert 'class="headline failed"' in page and 'class="number fail"' in page
    else:
        assert "**All 1 outputs pass rules 1-3.**" in markdown and 'class="headline ok"' in page


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--op", "typo"], lambda ops: f"--op typo: unknown; the ops are {', '.join(ops)}\n"),
        (["--case", "typo"], lambda ops: "--case typo: unknown; the cases are\n  "),
        (
            ["--op", "topk", "--case", "float32_B5_V1000_T1.0"],
            lambda ops: f"are\n  topk: {', '.join(c.name for c in ops['topk'].cases)}\n",
        ),
    ],
    ids=["op", "case", "case-of-another-op"],
)
def test_report_refuses_unknown_names_and_lists_the_valid_ones(tmp_path, capsys, argv, says):
    assert report.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert says(registry.ops()) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the earlier reports stay


def test_report_never_runs_an_empty_selection(tmp_path, capsys):
    slow = next(c.name for spec in registry.ops().values() for c in spec.cases if c.slow)
    assert report.main(["--case", slow, "--out", str(tmp_path / "out")]) == 2
    assert "only slow cases: add --slow" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_lists_every_op_and_case(capsys):
    assert report.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [
        f"{name} {c.name}{' (slow)' if c.slow else ''}"
        for name, spec in registry.ops().items()
        for c in spec.cases
    ]
    assert lines == expected and any(line.endswith(" (slow)") for line in lines)
