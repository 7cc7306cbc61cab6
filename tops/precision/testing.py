"""What every op's precision tests do, so that each ``tests/ops/<op>/test_precision.py``
binds its two tests with :func:`precision_tests`; the marks of tests that need an
optional part of tops (``requires_gpu``: the ``gpu`` extra; ``requires_libtpu``: the
``tpu`` extra), skipped with the install hint where it is missing; and :func:`bits`, what
the kernel tests compare bit for bit."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable

import numpy as np
import pytest

from tops import backends
from tops.precision import contract, convert, ledger, margins, runner
from tops.precision.registry import op

requires_gpu = pytest.mark.skipif(not backends.gpu_available(), reason=backends.GPU_INSTALL_HINT)
requires_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="the TPU compile check needs libtpu: pip install 'tops[tpu]'",
)


def bits(array) -> np.ndarray:
    """What a bit-for-bit comparison compares: a floating-point array's bit patterns as
    unsigned integers of its width (equal NaN payloads are equal, -0.0 and 0.0 are not),
    any other array's values (so int32 results compare with an int64 reference). Takes a
    NumPy, JAX or torch array."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(array, torch.Tensor):
        array = convert.from_torch(array)
    array = np.asarray(array)
    if array.dtype.kind in "iub":
        return array
    return array.view(f"u{array.dtype.itemsize}")


def case_params(op_name: str) -> list:
    """``pytest.param`` per registered case: id = case name, ``slow`` mark where
    registered, and one xdist group per case so its backends share the cached runs."""
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.xdist_group(f"{op_name}/{case.name}")]
            + ([pytest.mark.slow] if case.slow else []),
        )
        for case in op(op_name).cases
    ]


@functools.cache
def _ledger() -> dict:
    return ledger.load()


def check_rules_1_and_3(op_name: str, case, backend: str, baseline_ledger) -> None:
    """Rule 1 and rule 3 for every output of ``case`` on ``backend``, recording the
    measured ε in ``baseline_ledger`` (the conftest fixture). While the ledger is being
    rewritten (``--update-baseline``) rule 3 is not asserted: the rewrite prints every
    entry that moves, for the commit message."""
    verdicts = []
    for m in runner.measure(op_name, case.name, backend):
        baseline_ledger.entries.append(ledger.entry(m))
        verdicts.append(contract.rule1(m, case.tolerance[m.output]))
        if not baseline_ledger.updating:
            verdicts.append(contract.rule3(m, ledger.baseline(_ledger(), m)))
    contract.enforce(*verdicts)


def check_rule2(op_name: str, case) -> None:
    """Rule 2 (ε_TPU <= max(ε_GPU, floor) x (1 + margin), the margin derived where the
    backends share arithmetic, else 0.02) for every output of ``case``."""
    tpu = runner.measure(op_name, case.name, "tpu")
    gpu = runner.measure(op_name, case.name, "gpu")
    contract.enforce(
        *(
            contract.rule2(t, g, margins.margin(op_name, case.name, t.output))
            for t, g in zip(tpu, gpu, strict=True)
        )
    )


def precision_tests(op_name: str) -> tuple[Callable, Callable]:
    """The precision tests of ``op_name``'s registered cases, which its test module binds
    as ``test_rules_1_and_3, test_rule2_tpu_vs_gpu = precision_tests(OP)``: rules 1 and 3
    per backend and case, rule 2 per case."""

    @pytest.mark.parametrize("case", case_params(op_name))
    @pytest.mark.parametrize("backend", ["tpu", "gpu"])
    def test_rules_1_and_3(backend, case, baseline_ledger):
        check_rules_1_and_3(op_name, case, backend, baseline_ledger)

    @pytest.mark.parametrize("case", case_params(op_name))
    def test_rule2_tpu_vs_gpu(case):
        check_rule2(op_name, case)

    return test_rules_1_and_3, test_rule2_tpu_vs_gpu


def property_settings(examples: int):
    """Hypothesis settings for the property tests: ``examples`` draws, the same ones on
    every run and host (derandomized, no example database), no per-example deadline (the
    interpreters compile each new shape)."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def attempt(call, arguments: tuple[str, ...]):
    """``(result, None)`` when ``call()`` returns, ``(None, "TypeError: name")`` when it
    raises a ValueError or TypeError whose message starts with one of ``arguments``; any
    other exception, or a message naming no argument, fails the test. Each outcome is a
    hypothesis event, so ``--hypothesis-show-statistics`` counts them."""
    from hypothesis import event

    try:
        result = call()
    except (ValueError, TypeError) as error:
        message = str(error)
        named = [name for name in arguments if message.startswith(name)]
        assert named, f"{type(error).__name__} names no argument of {arguments}: {message}"
        label = f"{type(error).__name__}: {max(named, key=len)}"
        event(label)
        return None, label
    event("computed")
    return result, None
