"""The content the report's Markdown and HTML share, read from its JSON record
(``tops.precision.report.record``): counts per op, the failures, each row's ε beside the
bound it was held to, and the legend.

A rule's *use* is ``ε / bound``: 100% is at the bound, above it the rule fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tops.precision.contract import RULE3_FLOOR_SHARE, RULE3_GROWTH

LEGEND = (
    (
        "ε",
        "‖out - ref‖₂ / ‖ref‖₂ over the elements where the float64 reference is finite; for "
        "indices, tokens and selected values, the fraction of elements that differ from it.",
    ),
    (
        "floor",
        "ε of the reference itself rounded to the output dtype: the best any kernel can do. "
        "Exact outputs have floor 0.",
    ),
    (
        "rule 1",
        "each backend: finite wherever the reference is, special values identical, and "
        "ε ≤ the case's tolerance (derived beside the cases in tops/precision/cases).",
    ),
    (
        "rule 2",
        "ε_TPU ≤ max(ε_GPU, floor) x (1 + margin); the margin is 2% unless margins.json "
        "derives one from the summation orders both kernels may use.",
    ),
    (
        "rule 3",
        f"no regression: ε ≤ {RULE3_GROWTH} x the ledger's ε + {RULE3_FLOOR_SHARE} x floor "
        "(tops/precision/baseline.json); an output without a ledger entry passes.",
    ),
    (
        "use",
        "ε / bound, the share of its bound an ε uses: 100% is at the bound; a rule fails above it.",
    ),
)

RULE_COLUMNS = ("rule 1: tolerance", "rule 2: bound", "rule 3 TPU: bound", "rule 3 GPU: bound")
# The headers of the report's tables (Markdown and HTML alike).
SUMMARY_COLUMNS = (
    "op",
    "cases",
    "outputs",
    "rule 1 fails",
    "rule 2 fails",
    "rule 3 fails",
    "closest",
)
MOVED_COLUMNS = ("op", "case", "output", "mode", "baseline ε", "ε", "ratio")
EXACT_COLUMNS = ("exact output", "cases", "exact on TPU", "exact on GPU")
ROW_COLUMNS = ("case", "output", "ε_TPU", "ε_GPU", "floor", *RULE_COLUMNS)


def number(value: float | None) -> str:
    """An ε or a bound, three significant digits."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def share(used: float | None) -> str:
    """A use (``ε / bound``) as a percentage."""
    if used is None:
        return "-"
    if used == 0:
        return "0%"
    if not math.isfinite(used):
        return "∞%"
    return f"{used:.0%}" if used >= 0.01 else f"{used:.1%}" if used >= 0.001 else "<0.1%"


@dataclass(frozen=True)
class Cell:
    """One table cell: its text and whether it reports a failed rule."""

    text: str
    failed: bool = False


def rule_cells(row: dict) -> tuple[Cell, ...]:
    """The row's four rule columns (:data:`RULE_COLUMNS`): each bound with the use of the
    ε it judged; rule 1's one tolerance carries both backends' uses."""
    verdicts = row["verdicts"]

    def pick(rule: int, backend: str | None = None) -> list[dict]:
        return [v for v in verdicts if v["rule"] == rule and backend in (None, v["backend"])]

    first = pick(1)
    rule1 = Cell("-")
    if first:
        uses = ", ".join(f"{v['backend'].upper()} {share(v['used'])}" for v in first)
        rule1 = Cell(f"{number(first[0]['bound'])} ({uses})", not all(v["ok"] for v in first))

    def single(verdict: list[dict]) -> Cell:
        if not verdict:
            return Cell("-")
        (v,) = verdict
        if v["bound"] is None:
            return Cell("no entry")
        return Cell(f"{number(v['bound'])} ({share(v['used'])})", not v["ok"])

    return rule1, single(pick(2)), single(pick(3, "tpu")), single(pick(3, "gpu"))


def epsilon_cells(row: dict) -> tuple[str, str, str]:
    """ε_TPU, ε_GPU and the floor of a row."""
    m = row["measurements"]
    floor = next(iter(m.values()))["floor"]
    return (
        number(m["tpu"]["rel_l2"]) if "tpu" in m else "-",
        number(m["gpu"]["rel_l2"]) if "gpu" in m else "-",
        number(floor),
    )


def ops_in(record: dict) -> list[str]:
    """The ops of the record in the order they ran."""
    return list(dict.fromkeys(row["op"] for row in record["rows"]))


def op_counts(record: dict) -> list[dict]:
    """Per op: cases, outputs, failures per rule and the verdict closest to its bound."""
    counts = []
    for op in ops_in(record):
        rows = [row for row in record["rows"] if row["op"] == op]
        verdicts = [(row, v) for row in rows for v in row["verdicts"] if v["used"] is not None]
        row, closest = max(verdicts, key=lambda pair: pair[1]["used"], default=(None, None))
        counts.append(
            {
                "op": op,
                "cases": len({row["case"] for row in rows}),
                "outputs": len(rows),
                "failures": [
                    sum(not v["ok"] for row in rows for v in row["verdicts"] if v["rule"] == r)
                    for r in (1, 2, 3)
                ],
                "closest": None
                if closest is None
                else f"{share(closest['used'])} of rule {closest['rule']} "
                f"({closest['backend'].upper()}, {row['case']} {row['output']})",
            }
        )
    return counts


def failures(record: dict) -> list[dict]:
    """Every failed verdict with its row: the message names ε, bound, floor and the worst
    element."""
    return [
        {"op": row["op"], "case": row["case"], "output": row["output"], **v}
        for row in record["rows"]
        for v in row["verdicts"]
        if not v["ok"]
    ]


def headline(record: dict) -> str:
    """One line: every output passed, or how many rule failures."""
    outputs = len(record["rows"])
    failed = len(failures(record))
    if failed == 0:
        return f"All {outputs} outputs pass rules 1-3."
    return f"{failed} rule failures in {outputs} outputs."


def versions_line(record: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in record["versions"].items())


def modes_line(record: dict) -> str:
    return ", ".join(f"{backend}: {mode}" for backend, mode in record["modes"].items())


def exactness(record: dict, op: str) -> list[dict]:
    """Per exact output of ``op``: its cases and how many each backend got exactly right
    (None for a backend that did not run)."""
    table = {}
    for row in record["rows"]:
        if row["op"] != op or not row["exact"]:
            continue
        entry = table.setdefault(
            row["output"], {"output": row["output"], "cases": 0, "tpu": None, "gpu": None}
        )
        entry["cases"] += 1
        for backend, m in row["measurements"].items():
            entry[backend] = (entry[backend] or 0) + (m["rel_l2"] == 0)
    return list(table.values())


def ratio(value: float) -> str:
    """A ratio of two ε, with enough digits to show a move in the last bits."""
    return f"{value:.3g}" if abs(value - 1) >= 1e-3 else f"{value:.6f}"


def compare_line(comparison: dict) -> str:
    """What ``--compare`` found, in one sentence."""
    return (
        f"Against {comparison['baseline']}: {len(comparison['moved'])} ε moved, "
        f"{comparison['unchanged']} unchanged, {comparison['new']} without a baseline entry"
        + ("; the largest ratio first:" if comparison["moved"] else ".")
    )


def moved_cells(entry: dict) -> tuple[str, ...]:
    """A row of the moved-ε table (:data:`MOVED_COLUMNS`)."""
    return (
        entry["op"],
        entry["case"],
        entry["output"],
        entry["mode"],
        number(entry["before"]),
        number(entry["after"]),
        ratio(entry["ratio"]),
    )


def exact_cells(entry: dict) -> tuple[str, ...]:
    """A row of an op's exactness table (:data:`EXACT_COLUMNS`)."""
    counts = ("-" if entry[b] is None else str(entry[b]) for b in ("tpu", "gpu"))
    return (entry["output"], str(entry["cases"]), *counts)
