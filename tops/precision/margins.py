"""Rule 2's derived margins: for each output on which the TPU and GPU kernels do the same
arithmetic in different summation orders, the spread of ε over random orders of the op's
:class:`~tops.precision.registry.OrderModel` (``tops/precision/contract.py`` says why).

``margins.json`` (beside ``baseline.json``) is written by ``scripts/derive_rule2_margins.py``
alone, from :func:`derive`; ``tests/precision/test_rule2_mutations.py`` regenerates entries
and compares them, so a margin edited by hand fails. Keys are the ledger's without the
mode: a margin describes the arithmetic, not where it runs.
"""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

import numpy as np

from tops.precision import runner
from tops.precision.contract import RULE2_MARGIN
from tops.precision.metrics import compare
from tops.precision.registry import op, ops

MARGINS_PATH = Path(__file__).with_name("margins.json")
DRAWS = 64


def key(op_name: str, case_name: str, output: str) -> str:
    return f"{op_name}|{case_name}|{output}"


@functools.cache
def load(path: Path = MARGINS_PATH) -> dict[str, dict[str, float]]:
    """``{key: {"margin", "eps_min", "eps_median", "eps_max"}}``; empty without the file."""
    if not path.exists():
        return {}
    return json.loads(path.read_text())["entries"]


def margin(op_name: str, case_name: str, output: str) -> float:
    """Rule 2's margin for the output: the derived one, else ``RULE2_MARGIN`` (0.02)."""
    entry = load().get(key(op_name, case_name, output))
    return RULE2_MARGIN if entry is None else entry["margin"]


def covered() -> list[tuple[str, str, str]]:
    """``(op, case, output)`` for every registered case, slow ones included, and every
    output its op's order model covers."""
    found = []
    for op_name, spec in ops().items():
        if spec.order_model is None:
            continue
        for case in spec.cases:
            inputs = runner.inputs(op_name, case.name)
            found += [
                (op_name, case.name, output)
                for output in spec.output_dtypes(inputs)
                if spec.order_model.covers(inputs, output)
            ]
    return found


def derive(op_name: str, case_name: str, output: str, draws: int = DRAWS) -> dict[str, float]:
    """The entry of one output: ε of ``draws`` random orders against the float64 reference
    (seeded by the key, so every run and host derives the same numbers)."""
    spec = op(op_name)
    inputs = runner.inputs(op_name, case_name)
    expected = runner.reference(op_name, case_name)[output]
    dtype = spec.output_dtypes(inputs)[output]
    rng = np.random.default_rng(zlib.crc32(key(op_name, case_name, output).encode()))
    eps = np.array(
        [
            compare(spec.order_model.draw(inputs, output, rng), expected, dtype).rel_l2
            for _ in range(draws)
        ]
    )
    return {
        "margin": float(eps.max() / eps.min() - 1),
        "eps_min": float(eps.min()),
        "eps_median": float(np.median(eps)),
        "eps_max": float(eps.max()),
    }
