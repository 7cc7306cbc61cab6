"""``precision.md``: the report's JSON record as Markdown, summary first (the layout is
``tops.precision.summary``'s; the HTML page has the same sections and adds plots)."""

from __future__ import annotations

from tops.precision import summary


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _mark(cell: summary.Cell) -> str:
    return f"**FAIL** {cell.text}" if cell.failed else cell.text


def _count(exact: int | None) -> str:
    return "-" if exact is None else str(exact)


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
        ("op", "cases", "outputs", "rule 1 fails", "rule 2 fails", "rule 3 fails", "closest"),
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
        lines += _table(
            ("op", "case", "output", "mode", "baseline ε", "ε", "ratio"),
            [
                (
                    e["op"],
                    e["case"],
                    e["output"],
                    e["mode"],
                    summary.number(e["before"]),
                    summary.number(e["after"]),
                    summary.ratio(e["ratio"]),
                )
                for e in comparison["moved"]
            ],
        )
        lines.append("")
    lines += ["## Legend", ""]
    lines += [f"- **{term}**: {text}" for term, text in summary.LEGEND]
    for op in summary.ops_in(record):
        lines += ["", f"## {op}", ""]
        exact = summary.exactness(record, op)
        if exact:
            lines += _table(
                ("exact output", "cases", "exact on TPU", "exact on GPU"),
                [
                    (t["output"], str(t["cases"]), *(_count(t[b]) for b in ("tpu", "gpu")))
                    for t in exact
                ],
            )
            lines.append("")
        lines += _table(
            ("case", "output", "ε_TPU", "ε_GPU", "floor", *summary.RULE_COLUMNS),
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
