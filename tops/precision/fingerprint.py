"""``python -m tops.precision.fingerprint OP/CASE [OP/CASE ...]``: one JSON line per kernel
output of the named cases: a SHA-256 of its bytes, its ε and the verdicts of rules 1-3.

The interpret modes must give the same bits on every host (ARCHITECTURE.md, "Faithful
interpretation"); ``tests/precision/test_reproducibility.py`` runs this module under
settings that imitate other hosts (OpenBLAS kernel family and threads, XLA:CPU's ISA,
NumPy's SIMD dispatch, torch's CPU capability and threads) and compares the lines.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable

import numpy as np

from tops.precision import ledger, report, runner
from tops.precision.registry import KERNEL_BACKENDS, ops


def digest_all(arrays: Iterable) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes (C order), in order."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def fingerprint(op_name: str, case_name: str) -> list[dict]:
    """One record per output of a registered case: the digest of the case's inputs, per
    kernel backend the digest of the output and its ε, and the verdicts of the rules in
    the report's order."""
    case_inputs = runner.inputs(op_name, case_name)
    inputs_digest = digest_all(case_inputs[name] for name in sorted(case_inputs))
    records = []
    for row in report.judge(op_name, case_name, ledger.load(), KERNEL_BACKENDS):
        first = next(iter(row.measurements.values()))
        records.append(
            {
                "key": f"{op_name}/{case_name}/{first.output}",
                "sha256": {
                    b: digest_all([runner.outputs(op_name, case_name, b)[m.output]])
                    for b, m in row.measurements.items()
                },
                "eps": {b: m.eps for b, m in row.measurements.items()},
                "inputs": inputs_digest,
                "verdicts": [f"rule {v.rule} {v.label}" for v in row.verdicts],
            }
        )
    return records


def main(argv: list[str]) -> int:
    known = {f"{name}/{case.name}" for name, spec in ops().items() for case in spec.cases}
    unknown = [name for name in argv if name not in known]
    if not argv or unknown:
        print(f"usage: python -m tops.precision.fingerprint OP/CASE ...; unknown: {unknown}")
        return 2
    for name in argv:
        op_name, case_name = name.split("/", 1)
        for record in fingerprint(op_name, case_name):
            print(json.dumps(record, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
