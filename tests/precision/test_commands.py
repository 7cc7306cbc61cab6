"""The report command and the ledger option, end to end in subprocesses, writing to a
temporary ledger (TOPS_BASELINE) so the committed one is untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CASES = ("float32_B5_V1000_T1.0", "special_rows")


def _run(args, tmp_path):
    env = {**os.environ, "TOPS_BASELINE": str(tmp_path / "ledger.json")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_report_command_writes_the_table_and_gates(tmp_path):
    args = ["-m", "tops.precision", "report", "--out", str(tmp_path / "out")]
    for case in CASES:
        args += ["--case", case]
    done = _run([*args, "--update-baseline"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ε_TPU" in done.stdout and "tpu-interpret" in done.stdout
    assert "4 entries written" in done.stdout
    record = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert record["ok"] and len(record["rows"]) == 2
    entries = json.loads((tmp_path / "ledger.json").read_text())["entries"]
    # Shrink one baseline tenfold: rule 3 must now fail and the command exit non-zero.
    key = next(k for k in entries if "special_rows" in k and "gpu" in k)
    entries[key]["eps"] /= 10
    (tmp_path / "ledger.json").write_text(json.dumps({"version": 1, "entries": entries}))
    failed = _run(args, tmp_path)
    assert failed.returncode == 1
    assert "rule 3 failed: temperature_softmax/special_rows" in failed.stderr


def test_pytest_update_baseline_merges_entries_from_every_worker(tmp_path):
    selection = " or ".join(CASES)
    done = _run(
        [
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            "--update-baseline",
            "tests/ops/temperature_softmax/test_precision.py::test_rules_1_and_3",
            "-k",
            selection,
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entries = json.loads((tmp_path / "ledger.json").read_text())["entries"]
    assert sorted(entries) == sorted(
        f"temperature_softmax|{case}|probs|{mode}"
        for case in CASES
        for mode in ("tpu-interpret", "gpu-interpret")
    )
