"""Runs registered cases and measures them, once per process (results are cached, so a
test for rule 1 and another for rule 2 share one kernel run)."""

from __future__ import annotations

import functools

from tops import backends
from tops.precision.contract import Measurement
from tops.precision.metrics import compare
from tops.precision.registry import Arrays, op


@functools.cache
def inputs(op_name: str, case_name: str) -> Arrays:
    return op(op_name).case(case_name).make_inputs()


@functools.cache
def reference(op_name: str, case_name: str) -> Arrays:
    return op(op_name).reference(inputs(op_name, case_name))


@functools.cache
def outputs(op_name: str, case_name: str, backend: str) -> Arrays:
    """The kernel outputs of the case on ``backend``."""
    return op(op_name).runners[backend](inputs(op_name, case_name))


@functools.cache
def measure(op_name: str, case_name: str, backend: str) -> tuple[Measurement, ...]:
    """One :class:`Measurement` per output of the case on ``backend``."""
    spec = op(op_name)
    case_inputs = inputs(op_name, case_name)
    expected = reference(op_name, case_name)
    got = outputs(op_name, case_name, backend)
    mode = backends.mode(backend)
    return tuple(
        Measurement(
            op_name, case_name, output, backend, mode, compare(got[output], expected[output], dtype)
        )
        for output, dtype in spec.output_dtypes(case_inputs).items()
    )
