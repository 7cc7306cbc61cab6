"""The op registry: every op declares its cases once; the tests and the report read them.

An op module (listed in ``OP_MODULES``) defines ``OP = Op(...)``: the reference, one
runner per kernel backend and the cases. Runners take the case inputs as NumPy arrays
(already rounded to the case dtype) and return NumPy outputs, so every backend and the
reference see identical values. An op whose backends share their arithmetic on some
outputs also gives an :class:`OrderModel`, from which rule 2's margins are derived.
"""

from __future__ import annotations

import functools
import importlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

Arrays = dict[str, np.ndarray]

OP_MODULES = (
    "tops.precision.cases.temperature_softmax",
    "tops.precision.cases.topk",
    "tops.precision.cases.simple_gla",
    "tops.precision.cases.simple_gla_grad",
    "tops.precision.cases.temperature_softmax_grad",
    "tops.precision.cases.sampling",
)
KERNEL_BACKENDS = ("tpu", "gpu")


@dataclass(frozen=True)
class Case:
    """One input configuration of an op.

    ``make_inputs`` is deterministic: its random draws are seeded by :func:`case_seed`.
    ``tolerance`` maps each output to its rule-1 bound on ε, the op's documented
    tolerance for this dtype and shape.
    """

    name: str
    make_inputs: Callable[[], Arrays]
    tolerance: Mapping[str, float]
    slow: bool = False


@dataclass(frozen=True)
class OrderModel:
    """The outputs on which the TPU and GPU kernels do the same arithmetic in different
    summation orders, and a random draw of such an order.

    ``covers(inputs, output)`` says whether ``output`` of the case with ``inputs`` is one
    of them; ``draw(inputs, output, rng)`` computes that output in one random order. The
    spread of ε over draws is rule 2's margin there (``tops.precision.margins``).
    """

    covers: Callable[[Arrays, str], bool]
    draw: Callable[[Arrays, str, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Op:
    """An op: its outputs' dtypes, float64 reference, kernel runners, cases and, where the
    backends share arithmetic, its summation-order model.

    ``parameters(inputs)`` names what a case varies (``{"dtype": ..., "T": ...}``): the
    axes the report plots ε against and the columns its per-op tables group by.
    """

    name: str
    output_dtypes: Callable[[Arrays], Mapping[str, str]]
    reference: Callable[[Arrays], Arrays]
    runners: Mapping[str, Callable[[Arrays], Arrays]]
    cases: tuple[Case, ...] = field(default_factory=tuple)
    order_model: OrderModel | None = None
    parameters: Callable[[Arrays], Mapping[str, str | int]] = lambda inputs: {}

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"{self.name} has no case {name!r}")


def case_seed(op_name: str, case_name: str) -> int:
    """The seed of a case's random inputs, derived from its op and name alone, so that
    adding, removing or reordering cases never changes another case's inputs."""
    return zlib.crc32(f"{op_name}|{case_name}".encode())


@functools.cache
def ops() -> dict[str, Op]:
    """Every registered op by name."""
    registered = (importlib.import_module(module).OP for module in OP_MODULES)
    return {op.name: op for op in registered}


def op(name: str) -> Op:
    return ops()[name]
