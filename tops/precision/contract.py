"""The three rules of the precision contract, as functions the tests and the report call.

1. Each backend: ``nonfinite == 0``, ``special == 0`` and ``ε <= tolerance``.
2. ``ε_TPU <= max(ε_GPU, floor) * (1 + margin)`` wherever both backends run the case;
   ``margin`` is 0.02 unless ``tops/precision/margins.json`` derives one for the output.
3. Regression gate: ``ε <= 1.25 * baseline + 0.01 * floor`` where the ledger has an entry.

What ``ε_TPU <= ε_GPU`` means where both backends do the same arithmetic and differ only
in summation order (exact products summed in float32: the ungated bf16 simple GLA states):
the ε of each backend is one draw from the distribution of ε over summation orders, so a
fixed 2% would compare two draws and its verdict would depend on the orders that each
host's compiler happens to pick. There the margin is the spread of that distribution,
measured over ``N`` random orders of the op's order model (``max / min - 1`` of their ε;
``tops.precision.margins``, written by ``scripts/derive_rule2_margins.py`` only), and the
rule fails only when the TPU is worse than any of those orders explains. The margin never
grows just to pass: ``tests/precision/test_rule2_mutations.py`` checks that the file is
what the script derives and that an output just past the margin fails.

Each rule returns a :class:`Verdict`; :func:`enforce` turns a failed one into an
AssertionError. Messages name the op, case, output, mode(s), the ε values, the floor
and the worst element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tops.precision.metrics import Comparison

RULE2_MARGIN = 0.02
RULE3_GROWTH = 1.25
RULE3_FLOOR_SHARE = 0.01


@dataclass(frozen=True)
class Measurement:
    """One output of one case measured on one backend."""

    op: str
    case: str
    output: str
    backend: str
    mode: str
    comparison: Comparison

    @property
    def eps(self) -> float:
        return self.comparison.rel_l2

    @property
    def where(self) -> str:
        return f"{self.op}/{self.case} output {self.output!r}"

    def worst(self) -> str:
        c = self.comparison
        return (
            f"worst element {list(c.worst_index)} in {self.mode}: "
            f"out={c.worst_out!r} ref={c.worst_ref!r} (max_ulp={c.max_ulp:.3g})"
        )


@dataclass(frozen=True)
class Verdict:
    """One rule applied to one measurement: ``value`` (the ε judged) against ``bound``
    (None where the rule has no bound to apply: rule 3 without a ledger entry)."""

    rule: int
    backend: str
    ok: bool
    value: float
    bound: float | None
    message: str

    @property
    def label(self) -> str:
        return "pass" if self.ok else "FAIL"

    @property
    def used(self) -> float | None:
        """``value / bound``: the share of the bound the ε uses (1 is at the bound)."""
        if self.bound is None:
            return None
        if self.bound == 0:
            return 0.0 if self.value == 0 else math.inf
        return self.value / self.bound


def _verdict(
    rule: int, backend: str, ok: bool, value: float, bound: float | None, detail: str
) -> Verdict:
    message = f"rule {rule} {'passed' if ok else 'failed'}: {detail}"
    return Verdict(rule, backend, ok, value, bound, message)


def rule1(m: Measurement, tolerance: float, other: Measurement | None = None) -> Verdict:
    """Finite where the reference is finite, special values identical, ``ε <= tolerance``.

    ``other`` (the same output on the other backend, when measured) is quoted in the
    message so that a failure shows both ε values.
    """
    c = m.comparison
    ok = c.nonfinite == 0 and c.special == 0 and c.rel_l2 <= tolerance
    other_eps = f", ε_{other.backend.upper()}={other.eps:.3e}" if other else ""
    detail = (
        f"{m.where} mode {m.mode}: ε_{m.backend.upper()}={c.rel_l2:.3e}{other_eps}, "
        f"tolerance {tolerance:.3e}, floor {c.floor:.3e}, nonfinite {c.nonfinite}, "
        f"special mismatches {c.special}; {m.worst()}"
    )
    return _verdict(1, m.backend, ok, c.rel_l2, tolerance, detail)


def rule2(tpu: Measurement, gpu: Measurement, margin: float = RULE2_MARGIN) -> Verdict:
    """``ε_TPU <= max(ε_GPU, floor) * (1 + margin)``; ``margin`` from
    ``tops.precision.margins.margin`` (0.02 where none is derived)."""
    floor = tpu.comparison.floor
    bound = max(gpu.eps, floor) * (1 + margin)
    ok = tpu.eps <= bound
    detail = (
        f"{tpu.where} modes {tpu.mode} vs {gpu.mode}: ε_TPU={tpu.eps:.3e}, "
        f"ε_GPU={gpu.eps:.3e}, floor {floor:.3e}, margin {margin:.2%}, bound "
        f"max(ε_GPU, floor) x (1 + {margin:.4g}) = {bound:.3e}; {tpu.worst()}; {gpu.worst()}"
    )
    return _verdict(2, "tpu", ok, tpu.eps, bound, detail)


def rule3(m: Measurement, baseline: float | None) -> Verdict:
    """``ε <= 1.25 * baseline + 0.01 * floor``; passes with a note when no baseline exists."""
    c = m.comparison
    if baseline is None:
        return _verdict(
            3, m.backend, True, c.rel_l2, None, f"{m.where} mode {m.mode}: no baseline entry"
        )
    bound = RULE3_GROWTH * baseline + RULE3_FLOOR_SHARE * c.floor
    detail = (
        f"{m.where} mode {m.mode}: ε_{m.backend.upper()}={c.rel_l2:.3e}, baseline "
        f"{baseline:.3e}, bound {RULE3_GROWTH} x baseline + {RULE3_FLOOR_SHARE} x floor = "
        f"{bound:.3e}, floor {c.floor:.3e}; {m.worst()}"
    )
    return _verdict(3, m.backend, c.rel_l2 <= bound, c.rel_l2, bound, detail)


def enforce(*verdicts: Verdict) -> None:
    """Raise AssertionError listing every failed verdict."""
    failed = [v.message for v in verdicts if not v.ok]
    if failed:
        raise AssertionError("\n".join(failed))
