"""Derive rule 2's margins and write ``tops/precision/margins.json``, the only way that
file is written.

For every registered case (slow ones included) of every op with a summation-order model
and every output the model covers, ``tops.precision.margins.derive`` draws 64 seeded random
orders and measures their ε against the float64 reference; the margin is ``max / min - 1``.
Prints a table. Explain every change to ``margins.json`` in the commit message.

Usage::

    python scripts/derive_rule2_margins.py
"""

from __future__ import annotations

import json
import time

from tops.precision import margins

COLUMNS = ("op", "case", "output", "margin", "ε min", "ε median", "ε max")


def main() -> None:
    start = time.perf_counter()
    entries = {margins.key(*output): margins.derive(*output) for output in margins.covered()}
    entries = dict(sorted(entries.items()))
    body = {"version": 1, "draws": margins.DRAWS, "entries": entries}
    margins.MARGINS_PATH.write_text(json.dumps(body, indent=1) + "\n")

    rows = [COLUMNS] + [
        (
            *k.split("|"),
            f"{e['margin']:.2%}",
            f"{e['eps_min']:.4e}",
            f"{e['eps_median']:.4e}",
            f"{e['eps_max']:.4e}",
        )
        for k, e in entries.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"{len(entries)} margins from {margins.DRAWS} orders each written to "
        f"{margins.MARGINS_PATH} in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
