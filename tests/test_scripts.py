"""The benchmark scripts run here (at their small CPU sizes) and print their tables;
scripts/gpu_check.sh, which runs only on a CUDA machine, is valid bash."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tops.precision.testing import requires_gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (["bench_temperature_softmax.py"], ("# temperature softmax, ", "tops GB/s", "two pass")),
        (["bench_temperature_softmax.py", "--sweep"], ("single ms",)),
        (["bench_topk.py"], ("# top-k, bf16, ", "torch ms", "termination statistics", "max depth")),
        (
            ["bench_simple_gla.py"],
            (
                "# simple GLA forward, bf16",
                "tops ms",
                "minimum MB",
                "ratio",
                "# simple GLA forward + backward, bf16",
                "tops fwd+bwd ms",
                "fla peak MB",
                "# Pallas TPU fused backward kernel",
                "recomputed B",
            ),
        ),
        (["bench_sampling.py"], ("# sampling, bf16, top_k 64", "arbitrary ms", "flashinfer ms")),
    ],
    ids=["softmax", "softmax-sweep", "topk", "simple_gla", "sampling"],
)
@requires_gpu  # every benchmark times the Triton kernels
def test_benchmark_prints_its_tables(script, expected):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script[0]), *script[1:]],
        capture_output=True,
        text=True,
        check=True,
    )
    for text in expected:
        assert text in done.stdout, text


def test_gpu_check_script_parses():
    """scripts/gpu_check.sh (the GPU side on a CUDA machine) is valid bash; it runs only
    there, so the suite checks its syntax, and shellcheck's verdict where installed."""
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_check_script_wants_an_output_folder():
    """Without OUT_DIR it prints its usage and exits 64, before running anything."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True
    )
    assert done.returncode == 64
    assert "usage: bash scripts/gpu_check.sh OUT_DIR" in done.stderr
