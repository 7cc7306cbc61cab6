"""What every op's precision tests do, so that each ``tests/ops/<op>/test_precision.py``
is two short test functions over the registered cases; and the marks of tests that need
an optional part of tops (``requires_gpu``: the ``gpu`` extra; ``requires_libtpu``: the
``tpu`` extra), skipped with the install hint where it is missing."""

from __future__ import annotations

import functools
import importlib.util

import pytest

from tops import backends
from tops.precision import contract, ledger, margins, runner
from tops.precision.registry import op

requires_gpu = pytest.mark.skipif(not backends.gpu_available(), reason=backends.GPU_INSTALL_HINT)
requires_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="the TPU compile check needs libtpu: pip install 'tops[tpu]'",
)


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
