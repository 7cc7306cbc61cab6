"""``precision.html``: the report's JSON record as one self-contained page: the Markdown's
sections (``tops.precision.summary``) with inline CSS and the plots of
``tops.precision.plots`` as inline SVG, nothing fetched from elsewhere.

Each op's section is ``<section id="op-NAME">``; each plot a ``<figure class="plot">``.
Without matplotlib the page says how to get the plots and has every table.
"""

from __future__ import annotations

from html import escape

from tops.precision import plots, summary

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1b1b; }
h1 { margin-bottom: 0.2em; }
.headline { font-size: 1.2em; font-weight: 600; }
.headline.ok { color: #1a7f37; } .headline.failed { color: #cf222e; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 12.5px; }
th, td { border: 1px solid #d0d7de; padding: 2px 6px; text-align: left; }
th { background: #f6f8fa; position: sticky; top: 0; }
td.number { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
td.fail { background: #ffebe9; color: #cf222e; font-weight: 600; }
dl.legend dt { font-weight: 600; float: left; clear: left; width: 5em; }
dl.legend dd { margin-left: 6em; margin-bottom: 0.3em; }
figure.plot { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure.plot svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 12px; max-width: 60em; }
ul.failures li { font-family: ui-monospace, monospace; font-size: 12px; margin: 0.3em 0; }
"""


def _table(header: tuple[str, ...], rows: list[tuple], numeric: range = range(0)) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for cells in rows:
        tds = []
        for index, cell in enumerate(cells):
            cell = cell if isinstance(cell, summary.Cell) else summary.Cell(str(cell))
            classes = [c for c, on in (("number", index in numeric), ("fail", cell.failed)) if on]
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            text = f"FAIL {cell.text}" if cell.failed else cell.text
            tds.append(f"<td{attribute}>{escape(text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figures(op: str, rows: list[dict], exact: list[dict]) -> list[str]:
    if not plots.available():
        return []
    drawn = [
        plots.scatter_tpu_gpu(op, rows),
        plots.against(op, rows, "T"),
        plots.against(op, rows, "chunk_size"),
        plots.against(op, rows, "V") if not any("T" in r["parameters"] for r in rows) else None,
        plots.exactness(op, exact),
    ]
    return [
        f'<figure class="plot">{svg}<figcaption>{escape(caption)}</figcaption></figure>'
        for caption, svg in filter(None, drawn)
    ]


def _op_section(op: str, record: dict) -> str:
    rows = [row for row in record["rows"] if row["op"] == op]
    parts = [f'<section id="op-{escape(op)}">', f"<h2>{escape(op)}</h2>"]
    exact = summary.exactness(record, op)
    parts += _figures(op, rows, exact)
    if exact:
        parts.append(
            _table(
                summary.EXACT_COLUMNS,
                list(map(summary.exact_cells, exact)),
                numeric=range(1, 4),
            )
        )
    parts.append(
        _table(
            summary.ROW_COLUMNS,
            [
                (row["case"], row["output"], *summary.epsilon_cells(row), *summary.rule_cells(row))
                for row in rows
            ],
            numeric=range(2, 9),
        )
    )
    parts.append("</section>")
    return "\n".join(parts)


def render(record: dict) -> str:
    ok = not summary.failures(record)
    counts = summary.op_counts(record)
    summary_table = _table(
        summary.SUMMARY_COLUMNS,
        [
            (
                summary.Cell(c["op"]),
                c["cases"],
                c["outputs"],
                *(summary.Cell(str(n), n > 0) for n in c["failures"]),
                c["closest"] or "-",
            )
            for c in counts
        ],
        numeric=range(1, 6),
    )
    links = " · ".join(f'<a href="#op-{escape(c["op"])}">{escape(c["op"])}</a>' for c in counts)
    failed = summary.failures(record)
    failure_list = (
        '<ul class="failures">'
        + "".join(f"<li>{escape(f['message'])}</li>" for f in failed)
        + "</ul>"
        if failed
        else "<p>None.</p>"
    )
    comparison = record["compare"]
    moved = ""
    if comparison["moved"]:
        moved = _table(
            summary.MOVED_COLUMNS,
            list(map(summary.moved_cells, comparison["moved"])),
            numeric=range(4, 7),
        )
    legend = "".join(
        f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>" for term, text in summary.LEGEND
    )
    no_plots = ""
    if not plots.available():
        no_plots = (
            "<p>No plots: matplotlib is missing (<code>pip install 'tops[report]'</code>).</p>"
        )
    body = [
        "<h1>tops precision report</h1>",
        f'<p class="headline {"ok" if ok else "failed"}">{escape(summary.headline(record))}</p>',
        f'<p class="meta">{escape(record["created"])} · modes: '
        f"{escape(summary.modes_line(record))} · {escape(summary.versions_line(record))}</p>",
        no_plots,
        '<section id="summary"><h2>Summary</h2>',
        summary_table,
        f"<p>{links}</p></section>",
        f'<section id="failures"><h2>Failures</h2>{failure_list}</section>',
        '<section id="compare"><h2>Moved against the baseline</h2>',
        f"<p>{escape(summary.compare_line(comparison))}</p>{moved}</section>",
        f'<section id="legend"><h2>Legend</h2><dl class="legend">{legend}</dl></section>',
        *(_op_section(op, record) for op in summary.ops_in(record)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>tops precision report</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
