"""``precision.md``: the report's JSON record as Markdown, summary first (the layout is
``tops.precision.summary``'s; the HTML page has the same sections and adds plots)."""

from __future__ import annotations

from tops.precision import summary


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _mark(cell: summary.Cell) -> str:
    return f"**FAIL** {cell.text}" if cell.failed else cell.text


def render(record: dict) -> str:
    lines = [
        "# tops precision report",
        "",
        f"**{summary.headline(record)}**",
        "",
        f"{record['created']} · modes: {summary.modes_line(record)} · "
        f"{summary.versions_line(record)}",
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        summary.SUMMARY_COLUMNS,
        [
            (
                f"[{c['op']}](#{c['op']})",
                str(c["cases"]),
                str(c["outputs"]),
                *map(str, c["failures"]),
                c["closest"] or "-",
            )
            for c in summary.op_counts(record)
        ],
    )
    lines += ["", "## Failures", ""]
    failed = summary.failures(record)
    lines += [f"- {f['message']}" for f in failed] or ["None."]
    comparison = record["compare"]
    lines += ["", "## Moved against the baseline", "", summary.compare_line(comparison), ""]
    if comparison["moved"]:
        lines += _table(summary.MOVED_COLUMNS, list(map(summary.moved_cells, comparison["moved"])))
        lines.append("")
    lines += ["## Legend", ""]
    lines += [f"- **{term}**: {text}" for term, text in summary.LEGEND]
    for op in summary.ops_in(record):
        lines += ["", f"## {op}", ""]
        exact = summary.exactness(record, op)
        if exact:
            lines += _table(summary.EXACT_COLUMNS, list(map(summary.exact_cells, exact)))
            lines.append("")
        lines += _table(
            summary.ROW_COLUMNS,
            [
                (
                    row["case"],
                    row["output"],
                    *summary.epsilon_cells(row),
                    *map(_mark, summary.rule_cells(row)),
                )
                for row in record["rows"]
                if row["op"] == op
            ],
        )
    return "\n".join(lines) + "\n"
