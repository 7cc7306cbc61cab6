"""The benchmark scripts run here (at their small CPU sizes) and print their tables."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_softmax_benchmark_prints_device_and_tables():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_temperature_softmax.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "# temperature softmax, " in done.stdout
    assert "tops GB/s" in done.stdout and "two pass" in done.stdout


def test_softmax_threshold_sweep_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_temperature_softmax.py"), "--sweep"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "single ms" in done.stdout


def test_topk_benchmark_prints_device_and_termination_statistics():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_topk.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "# top-k, bf16, " in done.stdout and "torch ms" in done.stdout
    assert "termination statistics" in done.stdout and "max depth" in done.stdout


def test_simple_gla_benchmark_prints_device_and_bytes():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_simple_gla.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "# simple GLA forward, bf16" in done.stdout and "tops ms" in done.stdout
    assert "minimum MB" in done.stdout and "ratio" in done.stdout
