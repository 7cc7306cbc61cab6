"""Project-wide pytest set-up: backend modes in the header, the baseline-ledger option,
the ``tpu``/``gpu`` marks of every test under tests/ops taken from its id (which must
name its backend), the GPU tests left out, said so, where torch and triton are not
installed, and the ``x64`` fixture."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tops import backends


def _updates_dir() -> Path:
    """Where xdist workers leave ledger updates for the controller: one folder per
    ledger file, so runs aimed at different ledgers (TOPS_BASELINE) never mix."""
    from tops.precision import ledger

    digest = hashlib.sha1(str(ledger.LEDGER_PATH.resolve()).encode()).hexdigest()[:12]
    return Path(__file__).parent / ".pytest_cache" / "tops-ledger-updates" / digest


def pytest_addoption(parser):
    parser.addoption(
        "--update-baseline",
        action="store_true",
        help="rewrite the baseline ledger entries of the precision cases this run measures",
    )


def pytest_report_header(config):
    modes = " ".join(f"{b}={m}" for b, m in backends.modes().items())
    lines = [f"tops modes: {modes}"]
    if not backends.gpu_available():
        lines.append(
            f"tops: test_gpu_*.py modules not collected, other GPU tests skipped: "
            f"{backends.GPU_INSTALL_HINT}"
        )
    return lines


def pytest_ignore_collect(collection_path, config):
    """Modules named ``test_gpu_*.py`` import torch and triton: without the GPU backend's
    packages they are left out (the report header says so) instead of failing to import."""
    if collection_path.name.startswith("test_gpu_") and not backends.gpu_available():
        return True
    return None


def pytest_configure(config):
    # Runs on the xdist controller before any worker starts: clear earlier updates.
    if config.getoption("--update-baseline") and not hasattr(config, "workerinput"):
        from tops.precision import ledger

        try:
            ledger.writable_path()
        except ledger.LedgerNotWritableError as error:
            raise pytest.UsageError(f"--update-baseline: {error}") from None
        shutil.rmtree(_updates_dir(), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Every test under tests/ops names its backend in its id: ``tpu``, ``gpu``, or both in
    a ``tpu_vs_gpu`` test that compares the two. The id decides the ``tpu``/``gpu`` marks,
    so ``-m tpu`` and ``-k tpu`` select the same tests (a ``tpu_vs_gpu`` test gets both);
    a name that holds the letters by accident (``output``) would silently join a side, so
    it is a usage error. Without the GPU backend's packages, the tests whose id names
    ``gpu`` are skipped with the install hint."""
    skip_gpu = pytest.mark.skip(reason=backends.GPU_INSTALL_HINT)
    for item in items:
        if "tests/ops/" not in item.nodeid.replace(os.sep, "/"):
            continue
        name = item.name
        if "output" in name:
            raise pytest.UsageError(f"{item.nodeid}: 'output' contains 'tpu'; rename it")
        tpu, gpu = "tpu" in name, "gpu" in name
        if not (tpu or gpu):
            raise pytest.UsageError(f"{item.nodeid}: a tests/ops id must contain tpu or gpu")
        if tpu and gpu and "tpu_vs_gpu" not in name:
            raise pytest.UsageError(
                f"{item.nodeid}: an id naming both backends must compare them (tpu_vs_gpu)"
            )
        if tpu:
            item.add_marker(pytest.mark.tpu)
        if gpu:
            item.add_marker(pytest.mark.gpu)
            if not backends.gpu_available():
                item.add_marker(skip_gpu)


@pytest.fixture
def x64():
    """``jax_enable_x64`` on for one test (global state, restored whatever happens)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@dataclass
class LedgerSession:
    """What the precision tests of one process measured for the baseline ledger."""

    updating: bool  # --update-baseline: rule 3 is reported by the rewrite, not asserted
    entries: list = field(default_factory=list)


@pytest.fixture(scope="session")
def baseline_ledger(request):
    """The session's :class:`LedgerSession`; with ``--update-baseline`` its entries are
    handed to the controller, which rewrites the ledger at the end of the run."""
    session = LedgerSession(updating=request.config.getoption("--update-baseline"))
    yield session
    if session.updating and session.entries:
        updates = _updates_dir()
        updates.mkdir(parents=True, exist_ok=True)
        worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
        (updates / f"{worker}.json").write_text(json.dumps(session.entries))


def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("--update-baseline") or hasattr(config, "workerinput"):
        return
    from tops.precision import ledger

    updates = []
    for path in sorted(_updates_dir().glob("*.json")):
        updates += [tuple(e) for e in json.loads(path.read_text())]
    path = ledger.writable_path()
    before = ledger.load(path)
    written = ledger.write(updates, path)
    lines = [f"\nbaseline ledger: {written} entries written to {path}"]
    lines += ledger.describe_changes(before, ledger.load(path))
    print("\n".join(lines))
