"""tops as a non-editable install sees it: the package alone in a site-packages folder,
run from a folder outside any checkout, with and without the GPU backend's packages.

Each test copies ``tops/`` into ``tmp_path/site-packages`` and runs a subprocess with
only that folder added to ``sys.path`` (``-P`` keeps the working directory off it), which
is the layout ``pip install .`` gives. The stack ``jax011-py312`` of CI also runs the
whole TPU side from a real non-editable install (README, "CI stacks").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CASE = ("--op", "topk", "--case", "float32_B3_V127_k8", "--backend", "tpu")
# Run as the first statement of the subprocess: makes torch and triton unimportable.
NO_GPU_PACKAGES = "import sys; sys.modules['torch'] = sys.modules['triton'] = None"


@pytest.fixture
def installed(tmp_path):
    """``(site_packages, work_dir)``: a copy of the package, and an empty folder to run in."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "tops", site / "tops", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    return site, work


def _python(site: Path, cwd: Path, code: str, *, no_gpu: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOPS_BASELINE")}
    env["PYTHONPATH"] = str(site)
    prelude = NO_GPU_PACKAGES + "\n" if no_gpu else ""
    return subprocess.run(
        [sys.executable, "-P", "-c", prelude + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def _report(site: Path, cwd: Path, *args: str, no_gpu: bool = False):
    code = f"import sys; from tops.precision.report import main; sys.exit(main({list(args)!r}))"
    return _python(site, cwd, code, no_gpu=no_gpu)


def test_report_runs_from_an_installed_package_and_judges_by_its_ledger(installed):
    site, work = installed
    done = _report(site, work, *CASE, "--out", str(work / "out"))
    assert done.returncode == 0, done.stderr
    assert "no baseline entry" not in done.stdout + done.stderr
    record = json.loads((work / "out" / "precision.json").read_text())
    assert record["ok"] and len(record["rows"]) == 2


def test_update_baseline_never_writes_into_site_packages(installed):
    site, work = installed
    ledger = site / "tops" / "precision" / "baseline.json"
    before = ledger.read_bytes()
    done = _report(site, work, *CASE, "--out", str(work / "out"), "--update-baseline")
    assert done.returncode == 2
    assert "installed package" in done.stderr and "--baseline PATH" in done.stderr
    assert ledger.read_bytes() == before
    assert not (work / "out").exists()  # refused before measuring anything


def test_update_baseline_writes_the_ledger_named_by_baseline(installed):
    site, work = installed
    target = work / "ledger.json"
    done = _report(
        site,
        work,
        *CASE,
        "--out",
        str(work / "out"),
        "--update-baseline",
        "--baseline",
        str(target),
    )
    assert done.returncode == 0, done.stderr
    entries = json.loads(target.read_text())["entries"]
    assert sorted(entries) == [
        "topk|float32_B3_V127_k8|indices|tpu-interpret",
        "topk|float32_B3_V127_k8|values|tpu-interpret",
    ]


def test_update_baseline_inside_a_checkout_writes_the_checkouts_ledger(installed):
    site, work = installed
    (work / "pyproject.toml").write_text('[project]\nname = "tops"\n')
    ledger = work / "tops" / "precision" / "baseline.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"version": 1, "entries": {}}))
    inner = work / "reports"
    inner.mkdir()
    done = _report(site, inner, *CASE, "--out", str(inner), "--update-baseline")
    assert done.returncode == 0, done.stderr
    assert f"2 entries written to {ledger}" in done.stdout
    assert len(json.loads(ledger.read_text())["entries"]) == 2


def test_without_gpu_packages_the_tpu_side_works_and_the_gpu_side_says_what_to_install(
    installed,
):
    site, work = installed
    done = _python(site, work, "import tops.gpu", no_gpu=True)
    assert done.returncode == 1
    assert "ImportError" in done.stderr and "pip install 'tops[gpu]'" in done.stderr
    done = _python(site, work, "import tops.ops, tops.cpu, tops.precision", no_gpu=True)
    assert done.returncode == 0, done.stderr
    case = ("--op", "topk", "--case", "float32_B3_V127_k8", "--out", str(work / "out"))
    done = _report(site, work, *case, no_gpu=True)
    assert done.returncode == 0, done.stderr
    assert "'gpu': 'unavailable'" in done.stdout
    done = _report(site, work, *case, "--backend", "gpu", no_gpu=True)
    assert done.returncode == 2
    assert "pip install 'tops[gpu]'" in done.stderr
