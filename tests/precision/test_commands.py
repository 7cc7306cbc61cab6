"""The report command and the ledger option, end to end in subprocesses, writing to a
temporary ledger (TOPS_BASELINE) so the committed one is untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tops.precision.testing import requires_gpu

ROOT = Path(__file__).resolve().parent.parent.parent
CASES = ("float32_B5_V1000_T1.0", "special_rows")


def _run(args, tmp_path):
    env = {**os.environ, "TOPS_BASELINE": str(tmp_path / "ledger.json")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@requires_gpu
def test_report_command_writes_the_table_and_gates(tmp_path):
    args = ["-m", "tops.precision", "report", "--op", "temperature_softmax"]
    args += ["--out", str(tmp_path / "out")]
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


@requires_gpu
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


def test_loadgroup_keeps_each_case_on_one_worker(tmp_path):
    """The suite relies on ``--dist loadgroup`` sending all tests of a case (its
    ``xdist_group``) to one worker, where the kernel runs are cached. pytest-xdist 3.8
    does this under pytest 8 but silently not under pytest 9.2 (it renames node ids
    through an attribute pytest 9.2 no longer reads); this test pins the behaviour."""
    (tmp_path / "test_groups.py").write_text(
        "import os\n"
        "import pathlib\n"
        "import pytest\n"
        "CASES = [pytest.param(c, marks=pytest.mark.xdist_group(f'op/{c}')) for c in 'abcd']\n"
        "@pytest.mark.parametrize('case', CASES)\n"
        "@pytest.mark.parametrize('backend', ['tpu', 'gpu'])\n"
        "def test_case(backend, case):\n"
        "    worker = os.environ['PYTEST_XDIST_WORKER']\n"
        "    pathlib.Path(f'{case}-{backend}-{worker}.ran').touch()\n"
    )
    xdist = ("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-o", "addopts=")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *xdist, "test_groups.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workers: dict[str, set[str]] = {}
    for ran in tmp_path.glob("*.ran"):
        case, _, worker = ran.stem.split("-")
        workers.setdefault(case, set()).add(worker)
    assert sorted(workers) == ["a", "b", "c", "d"]
    assert all(len(seen) == 1 for seen in workers.values()), workers
