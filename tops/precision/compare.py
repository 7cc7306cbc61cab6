"""What a run did to precision: the ε that moved against a baseline (the report's
``--compare``, by default the ledger that rule 3 reads).

A baseline is a ledger file (``{"entries": {key: {"eps": ...}}}``, ``tops.precision.ledger``)
or an earlier report's ``precision.json`` (``{"rows": [...]}``), so that a reviewer can
compare a pull request's report with main's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tops.precision import ledger


class BaselineError(ValueError):
    """The file given as a baseline is neither a ledger nor a report."""


def load(path: Path) -> dict[str, float]:
    """ε per ledger key (``op|case|output|mode``) from a ledger or a report's JSON."""
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BaselineError(f"{path}: cannot read it as JSON ({error})") from None
    if isinstance(body, dict) and isinstance(body.get("entries"), dict):
        return from_ledger(body["entries"])
    if isinstance(body, dict) and isinstance(body.get("rows"), list):
        return {
            ledger.key(row["op"], row["case"], row["output"], m["mode"]): m["rel_l2"]
            for row in body["rows"]
            for m in row["measurements"].values()
        }
    raise BaselineError(f"{path}: neither a ledger (entries) nor a precision report (rows)")


def from_ledger(entries: dict[str, dict[str, float]]) -> dict[str, float]:
    """ε per key of a loaded ledger (``tops.precision.ledger.load``)."""
    return {key: entry["eps"] for key, entry in entries.items()}


def ratio(before: float, after: float) -> float:
    """``after / before``, 1 where both are 0 and ``inf`` where only ``before`` is."""
    if before == 0:
        return 1.0 if after == 0 else math.inf
    return after / before


def moved(rows: list[dict], baseline: dict[str, float], source: str) -> dict:
    """The measurements of the report's ``rows`` whose ε differs from ``baseline``, the
    largest ratio first, and how many were unchanged or had no baseline entry."""
    entries, unchanged, new = [], 0, 0
    for row in rows:
        for backend, m in row["measurements"].items():
            before = baseline.get(ledger.key(row["op"], row["case"], row["output"], m["mode"]))
            if before is None:
                new += 1
            elif before == m["rel_l2"]:
                unchanged += 1
            else:
                entries.append(
                    {
                        "op": row["op"],
                        "case": row["case"],
                        "output": row["output"],
                        "backend": backend,
                        "mode": m["mode"],
                        "before": before,
                        "after": m["rel_l2"],
                        "ratio": ratio(before, m["rel_l2"]),
                    }
                )
    entries.sort(key=lambda e: (-e["ratio"], e["op"], e["case"], e["output"], e["backend"]))
    return {"baseline": source, "unchanged": unchanged, "new": new, "moved": entries}
