"""``python -m tops.precision report``: every registered case on every kernel backend,
judged by the three rules, printed as a table and written as JSON and Markdown.

Exit status 1 when any rule fails, so CI can gate on it; 2 when the run cannot start (a
backend whose packages are missing, or a ledger rewrite with no ledger it may write).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tops import backends
from tops.precision import ledger, margins, runner
from tops.precision.contract import Measurement, Verdict, rule1, rule2, rule3
from tops.precision.registry import KERNEL_BACKENDS, ops

COLUMNS = (
    "op",
    "case",
    "output",
    "modes",
    "ε_TPU",
    "ε_GPU",
    "floor",
    "rule 1",
    "rule 2",
    "rule-2 margin",
    "rule 3",
)


@dataclass(frozen=True)
class Row:
    """One output of one case across the kernel backends, with its verdicts and the
    margin rule 2 used (None where it was not applied)."""

    measurements: dict[str, Measurement]
    verdicts: tuple[Verdict, ...]
    rule2_margin: float | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def cells(self) -> tuple[str, ...]:
        first = next(iter(self.measurements.values()))

        def eps(backend: str) -> str:
            m = self.measurements.get(backend)
            return "-" if m is None else f"{m.eps:.3e}"

        def labels(rule: int) -> str:
            return "/".join(v.label for v in self.verdicts if v.rule == rule) or "-"

        return (
            first.op,
            first.case,
            first.output,
            "/".join(m.mode for m in self.measurements.values()),
            eps("tpu"),
            eps("gpu"),
            f"{first.comparison.floor:.3e}",
            labels(1),
            labels(2),
            "-" if self.rule2_margin is None else f"{self.rule2_margin:.2%}",
            labels(3),
        )


def judge(op_name: str, case_name: str, entries: dict, backends_run: tuple[str, ...]) -> list[Row]:
    """Measure one case on ``backends_run`` and apply rules 1-3 to each output."""
    spec = ops()[op_name]
    case = spec.case(case_name)
    per_backend = {b: runner.measure(op_name, case_name, b) for b in backends_run}
    rows = []
    for index, output in enumerate(spec.output_dtypes(runner.inputs(op_name, case_name))):
        measured = {b: per_backend[b][index] for b in backends_run}
        verdicts = []
        for backend, m in measured.items():
            other = next((o for b, o in measured.items() if b != backend), None)
            verdicts.append(rule1(m, case.tolerance[output], other))
        margin = None
        if "tpu" in measured and "gpu" in measured:
            margin = margins.margin(op_name, case_name, output)
            verdicts.append(rule2(measured["tpu"], measured["gpu"], margin))
        verdicts += [rule3(m, ledger.baseline(entries, m)) for m in measured.values()]
        rows.append(Row(measured, tuple(verdicts), margin))
    return rows


def _markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    failures = [v.message for row in rows for v in row.verdicts if not v.ok]
    if failures:
        lines += ["", "## Failures", "", *[f"- {message}" for message in failures]]
    return "\n".join(lines) + "\n"


def _table(rows: list[Row]) -> str:
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _select(
    op_names: list[str] | None, case_names: list[str] | None, slow: bool
) -> tuple[list[tuple[str, str]], str | None]:
    """The ``(op, case)`` pairs a run measures, or an error naming the valid choices: an
    unknown name or an empty selection never runs (it would overwrite the reports)."""
    registered = ops()
    unknown = sorted(set(op_names or ()) - registered.keys())
    if unknown:
        return [], f"--op {', '.join(unknown)}: unknown; the ops are {', '.join(registered)}"
    chosen = [registered[name] for name in registered if not op_names or name in op_names]
    known = {case.name for spec in chosen for case in spec.cases}
    unknown = sorted(set(case_names or ()) - known)
    if unknown:
        valid = "\n".join(
            f"  {spec.name}: {', '.join(c.name for c in spec.cases)}" for spec in chosen
        )
        return [], f"--case {', '.join(unknown)}: unknown; the cases are\n{valid}"
    selected = [
        (spec.name, case.name)
        for spec in chosen
        for case in spec.cases
        if (slow or not case.slow) and (not case_names or case.name in case_names)
    ]
    if not selected:
        return [], "the selection holds only slow cases: add --slow (see --list)"
    return selected, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tops.precision report", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="directory for JSON/MD")
    parser.add_argument("--op", action="append", help="only these ops (repeatable)")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--slow", action="store_true", help="include cases marked slow")
    parser.add_argument("--list", action="store_true", help="print every op and case; run none")
    parser.add_argument("--backend", action="append", choices=KERNEL_BACKENDS, help="subset")
    parser.add_argument(
        "--update-baseline", action="store_true", help="rewrite the ledger entries measured"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help=f"the ledger to judge rule 3 by and to rewrite (default: {ledger.LEDGER_PATH})",
    )
    args = parser.parse_args(argv)

    if args.list:
        for op_name, spec in ops().items():
            for case in spec.cases:
                print(f"{op_name} {case.name}{' (slow)' if case.slow else ''}")
        return 0
    selected, problem = _select(args.op, args.case, args.slow)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    backends_run = tuple(args.backend or (b for b in KERNEL_BACKENDS if backends.available(b)))
    missing = [b for b in backends_run if not backends.available(b)]
    if missing:
        print(f"error: --backend {missing[0]}: {backends.GPU_INSTALL_HINT}", file=sys.stderr)
        return 2
    ledger_path = args.baseline or ledger.LEDGER_PATH
    if args.update_baseline:
        try:
            ledger_path = ledger.writable_path(args.baseline)
        except ledger.LedgerNotWritableError as error:
            print(f"error: --update-baseline: {error}", file=sys.stderr)
            return 2

    modes = backends.modes()
    header = (
        f"# tops precision report\n\nmodes: {modes}; python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(header.replace("# ", "", 1).replace("\n\n", "\n"))
    before = ledger.load(ledger_path)
    # While the ledger is rewritten, rule 3 has no baseline to hold the run to.
    entries = {} if args.update_baseline else before
    rows: list[Row] = []
    for op_name, case_name in selected:
        rows += judge(op_name, case_name, entries, backends_run)

    print(_table(rows))
    failures = [v.message for row in rows for v in row.verdicts if not v.ok]
    for message in failures:
        print(message, file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.md").write_text(_markdown(rows, header))
    record = {
        "modes": modes,
        "rows": [
            {
                "measurements": {
                    b: {"mode": m.mode, **m.comparison.as_dict()}
                    for b, m in row.measurements.items()
                },
                "op": row.cells()[0],
                "case": row.cells()[1],
                "output": row.cells()[2],
                "rule2_margin": row.rule2_margin,
                "verdicts": [
                    {"rule": v.rule, "ok": v.ok, "message": v.message} for v in row.verdicts
                ],
            }
            for row in rows
        ],
        "ok": not failures,
    }
    (args.out / "precision.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.update_baseline:
        measured = (ledger.entry(m) for row in rows for m in row.measurements.values())
        written = ledger.write(measured, ledger_path)
        print(f"baseline ledger: {written} entries written to {ledger_path}")
        print("\n".join(ledger.describe_changes(before, ledger.load(ledger_path))))
    print(
        f"{len(rows)} outputs, {len(failures)} rule failures; "
        f"wrote {args.out / 'precision.md'} and {args.out / 'precision.json'}"
    )
    return 1 if failures else 0
