"""The baseline ledger: committed ε per (op, case, output, mode), read by rule 3.

Rewritten only on request (``pytest --update-baseline`` or
``python -m tops.precision report --update-baseline``); explain every change to
``baseline.json`` in the commit message.

Which ledger (:data:`LEDGER_PATH`): ``TOPS_BASELINE=PATH`` (or the report's
``--baseline PATH``) if set; else the checkout's ``tops/precision/baseline.json`` when
tops is imported from a checkout (editable install, ``PYTHONPATH``) or the working
directory lies inside one; else the copy installed with the package, which is only read:
a rewrite never goes into site-packages (:func:`writable_path`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tops.precision.contract import Measurement

INSTALLED_LEDGER = Path(__file__).with_name("baseline.json")
LEDGER_IN_CHECKOUT = Path("tops") / "precision" / "baseline.json"


class LedgerNotWritableError(RuntimeError):
    """No ledger may be rewritten: tops runs from an installed package outside a checkout."""


def checkout_ledger(start: Path) -> Path | None:
    """The ledger of the tops checkout that contains ``start``, if any (a folder holding
    ``pyproject.toml`` and ``tops/precision/baseline.json``)."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / LEDGER_IN_CHECKOUT).is_file():
            return folder / LEDGER_IN_CHECKOUT
    return None


def _package_checkout_ledger() -> Path | None:
    """The package's own ledger when the package itself lies in a checkout."""
    root = INSTALLED_LEDGER.parents[2]
    return INSTALLED_LEDGER if (root / "pyproject.toml").is_file() else None


def _ledger_path() -> Path:
    if os.environ.get("TOPS_BASELINE"):
        return Path(os.environ["TOPS_BASELINE"])
    return _package_checkout_ledger() or checkout_ledger(Path.cwd()) or INSTALLED_LEDGER


LEDGER_PATH = _ledger_path()


def writable_path(explicit: Path | None = None) -> Path:
    """Where a ledger rewrite goes: ``explicit`` if given, else :data:`LEDGER_PATH` unless
    that is the installed package's copy (raises :class:`LedgerNotWritableError`)."""
    if explicit is not None:
        return explicit
    if LEDGER_PATH == INSTALLED_LEDGER and _package_checkout_ledger() is None:
        raise LedgerNotWritableError(
            f"tops runs from an installed package ({INSTALLED_LEDGER.parent}) outside a tops "
            "checkout: run the rewrite inside a checkout, or name a ledger file with "
            "--baseline PATH (or TOPS_BASELINE=PATH); the installed ledger is never rewritten"
        )
    return LEDGER_PATH


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
