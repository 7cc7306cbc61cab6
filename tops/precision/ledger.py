"""The baseline ledger: committed ε per (op, case, output, mode), read by rule 3.

Rewritten only on request (``pytest --update-baseline`` or
``python -m tops.precision report --update-baseline``); explain every change to
``baseline.json`` in the commit message. ``TOPS_BASELINE=PATH`` points both at another
ledger file (the tests of the option itself use it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tops.precision.contract import Measurement

LEDGER_PATH = Path(os.environ.get("TOPS_BASELINE") or Path(__file__).with_name("baseline.json"))


def key(op: str, case: str, output: str, mode: str) -> str:
    return f"{op}|{case}|{output}|{mode}"


def load(path: Path = LEDGER_PATH) -> dict[str, dict[str, float]]:
    """``{key: {"eps": ..., "floor": ...}}``; empty when the file does not exist."""
    if not path.exists():
        return {}
    return json.loads(path.read_text())["entries"]


def baseline(entries: dict, m: Measurement) -> float | None:
    entry = entries.get(key(m.op, m.case, m.output, m.mode))
    return None if entry is None else entry["eps"]


def entry(m: Measurement) -> tuple[str, dict[str, float]]:
    return key(m.op, m.case, m.output, m.mode), {"eps": m.eps, "floor": m.comparison.floor}


def write(updates: Iterable[tuple[str, dict[str, float]]], path: Path = LEDGER_PATH) -> int:
    """Merge ``updates`` into the ledger at ``path``; returns the number of entries written."""
    entries = load(path)
    count = 0
    for k, value in updates:
        entries[k] = value
        count += 1
    body = {"version": 1, "entries": dict(sorted(entries.items()))}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return count


def describe_changes(before: dict, after: dict) -> list[str]:
    """One line per entry added, removed or moved between two ledgers, for the commit
    message that must explain a ledger change."""
    lines = []
    for k in sorted(before.keys() | after.keys()):
        old, new = before.get(k), after.get(k)
        if old is None:
            lines.append(f"  added   {k}: eps {new['eps']:.4e}")
        elif new is None:
            lines.append(f"  removed {k}: eps {old['eps']:.4e}")
        elif old["eps"] != new["eps"]:
            lines.append(f"  moved   {k}: eps {old['eps']:.4e} -> {new['eps']:.4e}")
    return lines
