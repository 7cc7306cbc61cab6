"""``python -m tops.precision report``: every registered case on every kernel backend,
judged by the three rules, printed as a table and written to ``--out`` as
``precision.json`` (:func:`record`, everything machine-readable), ``precision.md`` and
``precision.html`` (summary first, each ε beside its bounds, plots; ``tops.precision.markdown``,
``tops.precision.webpage``), with the ε that moved against ``--compare`` (default: the ledger).

Exit status 1 when any rule fails, so CI can gate on it; 2 when the run cannot start (a
backend whose packages are missing, a ledger rewrite with no ledger it may write, a
``--compare`` file that is neither a ledger nor a report).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tops import backends
from tops.precision import compare, ledger, margins, markdown, runner, summary, webpage
from tops.precision.contract import Measurement, Verdict, rule1, rule2, rule3
from tops.precision.metrics import EXACT
from tops.precision.registry import KERNEL_BACKENDS, ops

# The packages whose versions a report names (those installed).
VERSIONED = ("jax", "jaxlib", "libtpu", "numpy", "ml_dtypes", "torch", "triton")

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
    """One output of one case across the kernel backends, with its verdicts, the margin
    rule 2 used (None where it was not applied), the output's dtype and the case's
    parameters (``Op.parameters``)."""

    measurements: dict[str, Measurement]
    verdicts: tuple[Verdict, ...]
    dtype: str
    parameters: Mapping[str, str | int]
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
    case_inputs = runner.inputs(op_name, case_name)
    parameters = dict(spec.parameters(case_inputs))
    rows = []
    for index, (output, dtype) in enumerate(spec.output_dtypes(case_inputs).items()):
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
        rows.append(Row(measured, tuple(verdicts), dtype, parameters, margin))
    return rows


def versions() -> dict[str, str]:
    """Python's version and those of the :data:`VERSIONED` packages installed."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _row_record(row: Row) -> dict:
    first = next(iter(row.measurements.values()))
    return {
        "op": first.op,
        "case": first.case,
        "output": first.output,
        "dtype": row.dtype,
        "exact": row.dtype == EXACT,
        "parameters": dict(row.parameters),
        "measurements": {
            b: {"mode": m.mode, **m.comparison.as_dict()} for b, m in row.measurements.items()
        },
        "rule2_margin": row.rule2_margin,
        "verdicts": [
            {
                "rule": v.rule,
                "backend": v.backend,
                "ok": v.ok,
                "value": v.value,
                "bound": v.bound,
                "used": v.used,
                "message": v.message,
            }
            for v in row.verdicts
        ],
    }


def record(rows: list[Row], created: str, baseline: dict[str, float], source: str) -> dict:
    """The report as JSON: run metadata, one entry per row (measurements, verdicts with
    their bounds), ``ok``, and the ε that moved against ``baseline`` (read from
    ``source``)."""
    entries = [_row_record(row) for row in rows]
    return {
        "created": created,
        "modes": backends.modes(),
        "versions": versions(),
        "ok": all(row.ok for row in rows),
        "compare": compare.moved(entries, baseline, source),
        "rows": entries,
    }


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
    parser.add_argument(
        "--out", type=Path, default=Path("reports"), help="directory for the JSON, MD and HTML"
    )
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
    parser.add_argument(
        "--compare",
        type=Path,
        help="a ledger or an earlier precision.json: list the ε that moved against it "
        "(default: the ledger rule 3 reads)",
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

    before = ledger.load(ledger_path)
    baseline_source = str(args.compare or ledger_path)
    try:
        baseline = compare.load(args.compare) if args.compare else compare.from_ledger(before)
    except compare.BaselineError as error:
        print(f"error: --compare {error}", file=sys.stderr)
        return 2

    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"tops precision report\nmodes: {backends.modes()}; {created}")
    # While the ledger is rewritten, rule 3 has no baseline to hold the run to.
    entries = {} if args.update_baseline else before
    rows: list[Row] = []
    for op_name, case_name in selected:
        rows += judge(op_name, case_name, entries, backends_run)

    print(_table(rows))
    failures = [v.message for row in rows for v in row.verdicts if not v.ok]
    for message in failures:
        print(message, file=sys.stderr)
    report = record(rows, created, baseline, baseline_source)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "precision.md").write_text(markdown.render(report))
    (args.out / "precision.html").write_text(webpage.render(report))
    if args.update_baseline:
        measured = (ledger.entry(m) for row in rows for m in row.measurements.values())
        count = ledger.write(measured, ledger_path)
        print(f"baseline ledger: {count} entries written to {ledger_path}")
        print("\n".join(ledger.describe_changes(before, ledger.load(ledger_path))))
    print(summary.compare_line(report["compare"]))
    files = ", ".join(str(args.out / f"precision.{kind}") for kind in ("md", "html", "json"))
    print(f"{len(rows)} outputs, {len(failures)} rule failures; wrote {files}")
    return 1 if failures else 0
